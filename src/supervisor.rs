//! Starts cloud-hypervisor as a child and supervises it for systemd: boot through the API,
//! events, readiness, watchdog, graceful stop, and the exit status.

use std::future::{Future, pending};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::time::Duration;

use hyper::Method;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::apiclient::{ApiClient, ApiError};
use crate::apisocket::{ApiSocket, ApiSocketError};
use crate::cli::{Delivery, Ready};
use crate::events::EventParser;
use crate::guestnotify::{self, GuestMessage, Listener};
use crate::hostenv::HostEnv;
use crate::notify::Notifier;
use crate::plan::{ApiSource, FdNames, Plan, PlanError};
use crate::sys;

/// After SIGTERM, how long cloud-hypervisor gets before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(10);
/// vm.create and vm.boot may prefault guest memory; be generous.
const BOOT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const SHORT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Each guest STATUS before readiness extends systemd's start timeout by this much: a guest
/// that keeps reporting progress is not timed out, one that falls silent is.
const GUEST_PROGRESS_EXTENSION: Duration = Duration::from_secs(30);
/// How long a failed API exchange waits for the hypervisor's exit to explain it.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How often `vm.info` is polled when the argv keeps its own event monitor.
const INFO_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(transparent)]
    ApiSocket(#[from] ApiSocketError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot create the event monitor pipe: {0}")]
    Pipe(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot wait for the hypervisor: {0}")]
    Wait(std::io::Error),
    #[error(transparent)]
    GuestNotify(#[from] guestnotify::GuestNotifyError),
}

/// How the hypervisor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Code(i32),
    Signal(i32),
}

#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    /// Set when the start failed (or readiness timed out): credbridge reports it and exits
    /// non-zero even if the hypervisor itself exited 0.
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Power button pressed; SIGTERM at the deadline.
    PowerButton,
    /// SIGTERM sent; SIGKILL at the deadline.
    Terminated,
    Killed,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T>>>;

async fn maybe<T>(f: &mut Option<Boxed<T>>) -> T {
    match f {
        Some(f) => f.as_mut().await,
        None => pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => pending().await,
    }
}

async fn read_events(
    rx: &mut Option<tokio::net::unix::pipe::Receiver>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match rx {
        Some(r) => r.read(buf).await,
        None => pending().await,
    }
}

fn api_socket(plan: &Plan, env: &HostEnv) -> Result<ApiSocket, ApiSocketError> {
    // Socket activation wins: the .socket unit owns the path and keeps it across our restarts.
    if let Some(s) = ApiSocket::from_activation(env)? {
        return Ok(s);
    }
    match &plan.api_source {
        ApiSource::Path(p) => ApiSocket::bind_path(p),
        ApiSource::Fd(fd) => ApiSocket::from_inherited_fd(*fd),
        ApiSource::Default => ApiSocket::bind_private(env),
    }
}

pub async fn run(plan: Plan, env: &HostEnv, notify: &Notifier) -> Result<Outcome, SuperviseError> {
    // Handlers first: from here on SIGTERM means "stop the VM", never "die and orphan it".
    let signals = Signals::new().map_err(SuperviseError::Signals)?;
    let mut api = api_socket(&plan, env)?;
    tracing::info!("API socket: {}", api.describe);
    let result = Supervisor::start(plan, env, notify, &api, signals).await;
    api.cleanup();
    result
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

struct Supervisor<'a> {
    plan: Plan,
    notify: &'a Notifier,
    client: ApiClient,
    child_pid: Pid,
    ready: bool,
    booted: bool,
    stop: Stop,
    stop_deadline: Option<Instant>,
    failure: Option<String>,
    power_fut: Option<Boxed<Result<(), ApiError>>>,
}

impl<'a> Supervisor<'a> {
    async fn start(
        mut plan: Plan,
        env: &HostEnv,
        notify: &'a Notifier,
        api: &ApiSocket,
        mut signals: Signals,
    ) -> Result<Outcome, SuperviseError> {
        // The event pipe exists before spawn because its write end is the child's
        // `--event-monitor fd=`; our copy of that end is closed right after spawn so that EOF
        // on the read end means the hypervisor is gone.
        let (events_rx, events_tx) = if plan.own_event_monitor {
            let (r, w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SuperviseError::Pipe(e.into()))?;
            let rx =
                tokio::net::unix::pipe::Receiver::from_owned_fd(r).map_err(SuperviseError::Pipe)?;
            (Some(rx), Some(w))
        } else {
            (None, None)
        };
        let fds = FdNames {
            api: api.fd.as_raw_fd().to_string(),
            events: events_tx.as_ref().map(|w| w.as_raw_fd().to_string()),
        };
        let mut keep: Vec<RawFd> = vec![api.fd.as_raw_fd()];
        keep.extend(events_tx.as_ref().map(OwnedFd::as_raw_fd));
        keep.extend(plan.inherited_fds_for_child());

        if let Some((_, path)) = &plan.add_vsock {
            // cloud-hypervisor binds the vsock socket itself and fails on a leftover one.
            remove_stale_socket(path);
        }
        let mut guest = match &plan.guest_notify {
            Some(g) => match Listener::bind(&g.listen_path)? {
                Listener::Ours(l, p) => {
                    tracing::info!("listening for the guest's notifications on {}", p.display());
                    Some(GuestRelay::new(l, p))
                }
                Listener::Foreign(p) => {
                    let msg = format!(
                        "{} is served by another process (microvm.nix's notify relay?); leaving guest readiness to it, which needs NotifyAccess=all",
                        p.display()
                    );
                    tracing::warn!("{msg}");
                    notify.status(&msg);
                    None
                }
            },
            None => None,
        };
        let foreign_relay = plan.guest_notify.is_some() && guest.is_none();

        let n = plan.credential_count;
        let status = format!(
            "Starting {} with {n} credential{} ({} delivery)",
            plan.program.to_string_lossy(),
            if n == 1 { "" } else { "s" },
            match plan.delivery {
                Delivery::Api => "api",
                Delivery::Argv => "argv",
            }
        );
        tracing::info!("{status}");
        notify.status(&status);
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        tracing::debug!(
            "hypervisor argv: {}",
            plan.redacted_child_args(&fds)?.join(" ")
        );

        let args = plan.child_args(&fds)?;
        let mut cmd = tokio::process::Command::new(&plan.program);
        cmd.arg0(&plan.argv0)
            .args(&args.0)
            .env_clear()
            .envs(env.child_vars())
            .kill_on_drop(true);
        sys::prepare_child(&mut cmd, keep, nix::unistd::getpid().as_raw());
        let spawned = cmd.spawn();
        drop(args);
        drop(events_tx);
        let mut child = spawned.map_err(|source| SuperviseError::Spawn {
            program: plan.program.to_string_lossy().into_owned(),
            source,
        })?;
        let child_pid = Pid::from_raw(child.id().unwrap_or(0) as i32);
        tracing::info!(
            "started {} as pid {child_pid}",
            plan.program.to_string_lossy()
        );

        let mut boot_fut: Option<Boxed<Result<(), ApiError>>> = None;
        let client = ApiClient::new(api.connect_to.clone(), SHORT_REQUEST_TIMEOUT);
        match &plan.create {
            Some(create) => {
                let body = create.body(&plan.strings);
                let nets: Vec<_> = create
                    .add_nets
                    .iter()
                    .map(|(v, fds)| (json_body(v), fds.clone()))
                    .collect();
                let devices: Vec<_> = create
                    .add_devices
                    .iter()
                    .map(|(v, fd)| (json_body(v), *fd))
                    .collect();
                boot_fut = Some(Box::pin(boot_sequence(
                    client.with_timeout(BOOT_REQUEST_TIMEOUT),
                    body,
                    nets,
                    devices,
                )));
            }
            None => plan.forget_secrets(),
        }

        let mut sup = Supervisor {
            plan,
            notify,
            client,
            child_pid,
            ready: false,
            booted: false,
            stop: Stop::Running,
            stop_deadline: None,
            failure: None,
            power_fut: None,
        };
        if sup.plan.ready == Ready::Spawn {
            sup.become_ready("hypervisor started");
        }

        // With a foreign relay, readiness is not ours to time.
        let mut ready_deadline = sup
            .plan
            .ready_timeout
            .filter(|_| !foreign_relay)
            .map(|d| Instant::now() + d);
        let (guest_tx, mut guest_rx) = tokio::sync::mpsc::unbounded_channel();
        let watchdog_half = env.watchdog_usec().map(|u| Duration::from_micros(u / 2));
        let mut watchdog =
            watchdog_half.map(|p| tokio::time::interval(p.max(Duration::from_millis(1))));
        let mut ping_fut: Option<Boxed<Result<(), ApiError>>> = None;
        let mut ping_failing = false;
        let mut info_fut: Option<Boxed<Result<bool, ApiError>>> = None;
        let mut info_next: Option<Instant> =
            (!sup.plan.own_event_monitor && sup.plan.create.is_none()).then(Instant::now);
        let mut events_rx = events_rx;
        let mut boot_error: Option<(String, Instant)> = None;
        let mut parser = EventParser::new();
        let mut buf = vec![0u8; 16 * 1024];

        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(SuperviseError::Wait)?,
                read = read_events(&mut events_rx, &mut buf) => match read {
                    Ok(0) | Err(_) => {
                        tracing::debug!("event monitor closed");
                        events_rx = None;
                    }
                    Ok(n) => {
                        for ev in parser.push(&buf[..n]) {
                            match ev {
                                Ok(ev) => sup.on_event(&ev),
                                Err(e) => tracing::warn!("event monitor: {e}"),
                            }
                        }
                    }
                },
                result = maybe(&mut boot_fut) => {
                    boot_fut = None;
                    match result {
                        Ok(()) => {
                            tracing::info!("VM created and booted through the API");
                            if !sup.plan.own_event_monitor {
                                sup.on_booted();
                            }
                        }
                        Err(e) => {
                            let msg = format!("could not boot the VM: {}", sup.plan.scrub(&e.to_string()));
                            if matches!(e, ApiError::Status { .. }) {
                                sup.fail(msg);
                                sup.escalate_to(Stop::Terminated);
                            } else {
                                // A dropped connection usually means the hypervisor is exiting;
                                // its exit status is the better message, so wait for it briefly.
                                boot_error = Some((msg, Instant::now() + EXIT_GRACE));
                            }
                        }
                    }
                    // The secrets are in the hypervisor now; ours are no longer needed.
                    sup.plan.forget_secrets();
                },
                result = maybe(&mut sup.power_fut) => {
                    sup.power_fut = None;
                    if let Err(e) = result {
                        tracing::warn!("ACPI power button failed ({}); sending SIGTERM", sup.plan.scrub(&e.to_string()));
                        sup.escalate_to(Stop::Terminated);
                    }
                },
                _ = sleep_until(boot_error.as_ref().map(|(_, d)| *d)) => {
                    if let Some((msg, _)) = boot_error.take() {
                        sup.fail(msg);
                        sup.escalate_to(Stop::Terminated);
                    }
                },
                _ = sleep_until(sup.stop_deadline) => {
                    let next = match sup.stop {
                        Stop::PowerButton => {
                            tracing::warn!("the guest did not power off within {:?}; sending SIGTERM", sup.plan.stop_timeout);
                            Stop::Terminated
                        }
                        _ => {
                            tracing::warn!("cloud-hypervisor did not exit within {KILL_AFTER:?} of SIGTERM; sending SIGKILL");
                            Stop::Killed
                        }
                    };
                    sup.escalate_to(next);
                },
                _ = sleep_until(if sup.ready { None } else { ready_deadline }) => {
                    ready_deadline = None;
                    let t = sup.plan.ready_timeout.unwrap_or_default();
                    sup.fail(format!("the VM was not ready within {t:?} (--ready-timeout); stopping it"));
                    sup.request_stop();
                },
                _ = async { match watchdog.as_mut() { Some(w) => w.tick().await, None => pending().await } } => {
                    if ping_fut.is_none() {
                        let c = sup.client.with_timeout(watchdog_half.unwrap_or(SHORT_REQUEST_TIMEOUT).min(SHORT_REQUEST_TIMEOUT));
                        ping_fut = Some(Box::pin(async move { c.ping().await }));
                    }
                },
                result = maybe(&mut ping_fut) => {
                    ping_fut = None;
                    match result {
                        Ok(()) => {
                            if ping_failing {
                                tracing::info!("cloud-hypervisor answers vmm.ping again; watchdog resumed");
                                ping_failing = false;
                            }
                            sup.notify.watchdog();
                        }
                        Err(e) => if !ping_failing {
                            ping_failing = true;
                            tracing::warn!("cloud-hypervisor does not answer vmm.ping ({e}); withholding WATCHDOG=1");
                        }
                    }
                },
                _ = sleep_until(if info_fut.is_none() { info_next } else { None }) => {
                    let c = sup.client.clone();
                    info_fut = Some(Box::pin(async move { vm_running(&c).await }));
                    info_next = None;
                },
                result = maybe(&mut info_fut) => {
                    info_fut = None;
                    match result {
                        Ok(true) => sup.on_booted(),
                        _ => if !sup.booted { info_next = Some(Instant::now() + INFO_POLL) },
                    }
                },
                conn = async { match guest.as_ref() { Some(g) => g.listener.accept().await, None => pending().await } } => {
                    match conn {
                        Ok((stream, _)) => {
                            let tx = guest_tx.clone();
                            // Each connection is read and closed on its own, so a slow or silent
                            // guest connection never holds up the others or the supervisor.
                            tokio::spawn(async move {
                                let _ = tx.send(guestnotify::read_one(stream).await);
                            });
                        }
                        Err(e) => tracing::warn!("accepting a guest notification failed: {e}"),
                    }
                },
                Some(msg) = guest_rx.recv() => match msg {
                    Ok(bytes) => sup.on_guest_message(&guestnotify::parse(&bytes)),
                    Err(e) => tracing::debug!("guest notification connection: {e}"),
                },
                _ = signals.term.recv() => sup.on_stop_signal("SIGTERM"),
                _ = signals.int.recv() => sup.on_stop_signal("SIGINT"),
                _ = signals.hup.recv() => {
                    tracing::info!("SIGHUP received and ignored; not forwarded, because cloud-hypervisor dies on SIGHUP");
                },
            }
        };
        if let Some(g) = guest.take() {
            let _ = std::fs::remove_file(&g.path);
        }
        Ok(sup.finish(status))
    }

    fn on_guest_message(&mut self, m: &GuestMessage) {
        if let Some(status) = &m.status {
            tracing::info!("guest: {status}");
            self.notify.status(&format!("guest: {status}"));
            if !self.ready && self.stop == Stop::Running {
                self.notify
                    .extend_timeout(GUEST_PROGRESS_EXTENSION.as_micros() as u64);
            }
        }
        if m.stopping {
            tracing::info!("the guest is stopping");
        }
        if let Some(e) = &m.errno {
            tracing::warn!("the guest reported ERRNO={e}");
        }
        if let Some(e) = &m.exit_status {
            tracing::info!("the guest reported EXIT_STATUS={e}");
        }
        if m.ready && self.plan.ready == Ready::Guest && self.stop == Stop::Running {
            self.become_ready("the guest's systemd sent READY=1");
        }
    }

    fn become_ready(&mut self, why: &str) {
        if self.ready {
            return;
        }
        self.ready = true;
        let n = self.plan.credential_count;
        let status = format!(
            "VM running, {n} credential{} delivered",
            if n == 1 { "" } else { "s" }
        );
        tracing::info!("ready ({why}): {status}");
        self.notify.ready(&status);
    }

    fn on_booted(&mut self) {
        if self.booted {
            return;
        }
        self.booted = true;
        if self.plan.ready == Ready::Booted && self.stop == Stop::Running {
            self.become_ready("VM booted");
        }
    }

    fn on_event(&mut self, ev: &crate::events::Event) {
        tracing::debug!("event {}:{}", ev.source, ev.event);
        match (ev.source.as_str(), ev.event.as_str()) {
            ("vm", "booted") => self.on_booted(),
            ("vm", "rebooting") => tracing::info!("the guest is rebooting"),
            ("vm", "shutdown") => tracing::info!("the guest powered off"),
            ("guest", "panic") => tracing::warn!("the guest kernel panicked"),
            _ => {}
        }
    }

    fn fail(&mut self, msg: String) {
        tracing::error!("{msg}");
        self.notify.status(&format!("Failed: {msg}"));
        if self.failure.is_none() {
            self.failure = Some(msg);
        }
    }

    fn on_stop_signal(&mut self, name: &str) {
        if self.stop == Stop::Running {
            tracing::info!("{name} received: stopping the VM");
            self.request_stop();
        } else {
            // A second request means "faster": take the next step now.
            let next = match self.stop {
                Stop::PowerButton => Stop::Terminated,
                _ => Stop::Killed,
            };
            tracing::info!("{name} received again: escalating");
            self.escalate_to(next);
        }
    }

    /// The graceful path: ACPI power button, SIGTERM after --stop-timeout, SIGKILL 10 s later.
    fn request_stop(&mut self) {
        if self.stop != Stop::Running {
            return;
        }
        if !self.booted {
            // Nothing in the guest can answer the power button yet.
            self.escalate_to(Stop::Terminated);
            return;
        }
        self.stop = Stop::PowerButton;
        let t = self.plan.stop_timeout;
        self.notify.stopping(&format!(
            "Stopping VM: ACPI power button, SIGTERM after {t:?}"
        ));
        self.stop_deadline = Some(Instant::now() + t);
        let c = self.client.clone();
        self.power_fut = Some(Box::pin(
            async move { c.put("vm.power-button", None).await },
        ));
    }

    fn escalate_to(&mut self, next: Stop) {
        match next {
            Stop::Running | Stop::PowerButton => {}
            Stop::Terminated => {
                self.notify
                    .stopping("Stopping VM: SIGTERM to cloud-hypervisor");
                let _ = nix::sys::signal::kill(self.child_pid, Signal::SIGTERM);
                self.stop_deadline = Some(Instant::now() + KILL_AFTER);
            }
            Stop::Killed => {
                self.notify
                    .stopping("Stopping VM: SIGKILL to cloud-hypervisor");
                let _ = nix::sys::signal::kill(self.child_pid, Signal::SIGKILL);
                self.stop_deadline = None;
            }
        }
        self.power_fut = None;
        self.stop = next;
    }

    fn finish(mut self, status: std::process::ExitStatus) -> Outcome {
        let end = match (status.code(), status.signal()) {
            (Some(c), _) => End::Code(c),
            (None, Some(s)) => End::Signal(s),
            (None, None) => End::Code(1),
        };
        let how = match end {
            End::Code(c) => format!("exit code {c}"),
            End::Signal(s) => format!(
                "signal {}",
                Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?")
            ),
        };
        if !self.booted && self.stop == Stop::Running && self.failure.is_none() {
            self.fail(format!(
                "cloud-hypervisor exited before the VM booted ({how}); see its messages above"
            ));
        } else if self.failure.is_none() {
            let msg = format!("cloud-hypervisor exited ({how})");
            match end {
                End::Code(0) => tracing::info!("{msg}"),
                _ if self.stop != Stop::Running => tracing::info!("{msg}"),
                _ => tracing::warn!("{msg}"),
            }
            self.notify
                .status(&format!("cloud-hypervisor exited with {how}"));
        }
        Outcome {
            end,
            failure: self.failure,
        }
    }
}

struct GuestRelay {
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
}

impl GuestRelay {
    fn new(listener: tokio::net::UnixListener, path: std::path::PathBuf) -> Self {
        GuestRelay { listener, path }
    }
}

/// Removes a socket nobody listens on; leaves anything else alone.
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

fn json_body(v: &serde_json::Value) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(serde_json::to_vec(v).expect("a Value always serializes"))
}

async fn boot_sequence(
    client: ApiClient,
    create: Zeroizing<Vec<u8>>,
    nets: Vec<(Zeroizing<Vec<u8>>, Vec<RawFd>)>,
    devices: Vec<(Zeroizing<Vec<u8>>, RawFd)>,
) -> Result<(), ApiError> {
    client.put("vm.create", Some(create)).await?;
    // vm.create drops fds from the JSON (cloud-hypervisor.md section 3); added before boot,
    // the devices are part of the VM from its first instruction.
    for (net, fds) in nets {
        client
            .request(Method::PUT, "vm.add-net", Some(net), &fds)
            .await?;
    }
    for (dev, fd) in devices {
        client
            .request(Method::PUT, "vm.add-device", Some(dev), &[fd])
            .await?;
    }
    client.put("vm.boot", None).await
}

/// `vm.info`'s state, for argvs that keep their own event monitor. Only `state` is
/// deserialized; the config in the same answer (secrets included) is skipped, and the body
/// buffer is zeroed on drop.
async fn vm_running(client: &ApiClient) -> Result<bool, ApiError> {
    #[derive(serde::Deserialize)]
    struct Info {
        state: String,
    }
    let resp = client.request(Method::GET, "vm.info", None, &[]).await?;
    Ok(serde_json::from_slice::<Info>(&resp.body).is_ok_and(|i| i.state == "Running"))
}
