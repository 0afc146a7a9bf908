//! Starts the hypervisor as a child and supervises it for systemd: readiness, guest
//! notifications, watchdog, graceful stop, and the exit status. What is specific to a
//! hypervisor lives in `hypervisor`.

use std::future::pending;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::cli::Ready;
use crate::exit::End;
use crate::guestnotify::{self, Bound, GuestMessage, Inbox, LogLimit, Relay};
use crate::hostenv::HostEnv;
use crate::hypervisor::Target;
use crate::hypervisor::{Backend, BackendEvent, SetupError, Spawn, StopSoFar};
use crate::lifecycle::{Effect, Lifecycle, Verdict};
use crate::notify::Notifier;
use crate::plan::Plan;
use crate::select::{Boxed, maybe, sleep_until, tick};
use crate::sys;

/// After SIGTERM, how long the hypervisor gets before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(10);
/// After QEMU's `quit`, how long it gets before SIGTERM.
const QUIT_WAIT: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Each guest STATUS before readiness extends systemd's start timeout by this much: a guest
/// that keeps reporting progress is not timed out, one that falls silent is.
const GUEST_PROGRESS_EXTENSION: Duration = Duration::from_secs(30);
/// How long a failed hand-over waits for the hypervisor's exit to explain it.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// Guest messages logged per window (#11): the guest's PID 1 sends a STATUS= about every 333 ms
/// while boot jobs run, and a hostile guest as many as it can. Each is still acted on.
const GUEST_STATUS_LOG_BURST: u32 = 30;
const GUEST_STATUS_LOG_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(transparent)]
    Setup(#[from] SetupError),
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
    /// Power button pressed; the next step at the deadline.
    PowerButton,
    /// The hypervisor's quit step (QEMU's `quit`) sent; SIGTERM at the deadline.
    Quit,
    /// SIGTERM sent; SIGKILL at the deadline.
    Terminated,
    Killed,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    chld: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            chld: signal(SignalKind::child())?,
        })
    }
}

/// The lifecycle: prepare the child's world, start the hypervisor, supervise it until it
/// exits, clean up. Errors here are credbridge's own; the hypervisor's end is the `Outcome`.
pub async fn run(
    mut plan: Plan,
    target: Target,
    env: &HostEnv,
    notify: &Notifier,
) -> Result<Outcome, SuperviseError> {
    // Handlers first: from here on SIGTERM means "stop the VM", never "die and orphan it".
    let signals = Signals::new().map_err(SuperviseError::Signals)?;
    // Before the backend: with QEMU the port the kernel picks goes into an OEM string.
    let guest = bind_guest_relay(&mut plan, notify)?;
    // A relay the argv promised that another process serves: readiness is not ours to time.
    let foreign_relay = plan.guest_notify.is_some() && guest.is_none();
    let delivery = target.delivery();
    let (mut backend, spawn) = Backend::prepare(&plan, target, env)?;
    // Said only now: a start refused in prepare (a vsock CID in use) never listened for real.
    if let Some(relay) = &guest {
        tracing::info!(
            "listening for the guest's notifications on {}",
            relay.describe()
        );
    }
    let result = async {
        announce(&plan, delivery, notify);
        let child = spawn_child(&plan, env, spawn)?;
        backend.spawned(&plan);
        let pid = Pid::from_raw(child.id().unwrap_or(0) as i32);
        let sup = Supervisor::new(plan, env, notify, &mut backend, pid, foreign_relay);
        sup.supervise(child, signals, guest).await
    }
    .await;
    // Whatever happened: what prepare created on disk goes.
    backend.cleanup();
    result
}

/// The start status (`systemctl status` shows it while the VM comes up) and the plan's
/// warnings.
fn announce(plan: &Plan, delivery: &str, notify: &Notifier) {
    let n = plan.credential_count;
    let status = format!(
        "Starting {} with {n} credential{} ({delivery} delivery)",
        plan.program.to_string_lossy(),
        if n == 1 { "" } else { "s" },
    );
    tracing::info!("{status}");
    notify.status(&status);
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
}

/// Starts the hypervisor with an explicit environment and only the fds `spawn` names.
fn spawn_child(
    plan: &Plan,
    env: &HostEnv,
    spawn: Spawn,
) -> Result<tokio::process::Child, SuperviseError> {
    let mut cmd = tokio::process::Command::new(&plan.program);
    cmd.arg0(&plan.argv0)
        .args(&spawn.args.0)
        .env_clear()
        .envs(env.child_vars())
        .kill_on_drop(true);
    sys::prepare_child(&mut cmd, spawn.keep_fds, nix::unistd::getpid().as_raw());
    let spawned = cmd.spawn();
    // The argv may hold secrets (argv delivery): zeroed now that exec has copied it.
    drop(spawn.args);
    drop(cmd);
    let child = spawned.map_err(|source| SuperviseError::Spawn {
        program: plan.program.to_string_lossy().into_owned(),
        source,
    })?;
    tracing::info!(
        "started {} as pid {}",
        plan.program.to_string_lossy(),
        child.id().unwrap_or(0)
    );
    Ok(child)
}

/// The guest's next message; pending forever without a relay.
async fn next_message(inbox: &mut Option<Inbox>) -> GuestMessage {
    match inbox.as_mut() {
        Some(g) => g.next().await,
        None => pending().await,
    }
}

/// `--ready guest`: the listener for the guest's notifications. `None` also when another
/// process already relays them (microvm.nix's socat), which is said in the status.
fn bind_guest_relay(plan: &mut Plan, notify: &Notifier) -> Result<Option<Relay>, SuperviseError> {
    let Some(g) = &plan.guest_notify else {
        return Ok(None);
    };
    match Relay::bind(g)? {
        Bound::Relay(relay) => {
            if let Some(port) = relay.port() {
                plan.set_notify_port(port);
            }
            Ok(Some(relay))
        }
        Bound::Foreign(p) => {
            let msg = format!(
                "{} is served by another process (microvm.nix's notify relay?); leaving guest readiness to it, which needs NotifyAccess=all",
                p.display()
            );
            tracing::warn!("{msg}");
            notify.status(&msg);
            Ok(None)
        }
    }
}

struct Supervisor<'a> {
    plan: Plan,
    notify: &'a Notifier,
    backend: &'a mut Backend,
    child_pid: Pid,
    ready: bool,
    booted: bool,
    stop: Stop,
    stop_deadline: Option<Instant>,
    failure: Option<String>,
    power_fut: Option<Boxed<Result<(), String>>>,
    guest_log: LogLimit,
    /// What the guest's systemd said of its lifecycle (#14).
    life: Lifecycle,
    /// After a reset of a guest that was ready: `--ready-timeout` for it to be up again.
    reboot_deadline: Option<Instant>,
    /// `--ready-timeout` from the start; `None` once passed, or when readiness is not ours.
    ready_deadline: Option<Instant>,
    /// A failed hand-over, held back briefly for the hypervisor's exit to explain it better.
    boot_error: Option<(String, Instant)>,
    /// systemd's watchdog: a `vmm.ping`/QMP ping every half period, WATCHDOG=1 per answer.
    watchdog: Option<tokio::time::Interval>,
    ping_timeout: Duration,
    ping_fut: Option<Boxed<Result<(), String>>>,
    ping_failing: bool,
}

impl<'a> Supervisor<'a> {
    fn new(
        plan: Plan,
        env: &HostEnv,
        notify: &'a Notifier,
        backend: &'a mut Backend,
        child_pid: Pid,
        foreign_relay: bool,
    ) -> Self {
        let watchdog_half = env.watchdog_usec().map(|u| Duration::from_micros(u / 2));
        // The first ping after one period, not at once: QEMU's monitor is connected only after
        // the QMP greeting, and a ping before it would be logged as a hypervisor that does not
        // answer. systemd arms the watchdog at start, so the first WATCHDOG=1 at half its
        // period is still in time.
        let watchdog = watchdog_half.map(|p| {
            let p = p.max(Duration::from_millis(1));
            tokio::time::interval_at(Instant::now() + p, p)
        });
        let mut sup = Supervisor {
            notify,
            backend,
            child_pid,
            ready: false,
            booted: false,
            stop: Stop::Running,
            stop_deadline: None,
            failure: None,
            power_fut: None,
            guest_log: LogLimit::new(GUEST_STATUS_LOG_BURST, GUEST_STATUS_LOG_WINDOW),
            life: Lifecycle::new(
                plan.ready == Ready::Guest && !foreign_relay,
                plan.ready_target.clone(),
            ),
            reboot_deadline: None,
            // With a foreign relay, readiness is not ours to time.
            ready_deadline: plan
                .ready_timeout
                .filter(|_| !foreign_relay)
                .map(|d| Instant::now() + d),
            boot_error: None,
            watchdog,
            ping_timeout: watchdog_half.unwrap_or(PING_TIMEOUT).min(PING_TIMEOUT),
            ping_fut: None,
            ping_failing: false,
            plan,
        };
        if sup.plan.ready == Ready::Spawn {
            // The strings reach the guest only when the VM is created and boots; until then
            // "delivered" would be a promise (#11).
            sup.become_ready(
                "hypervisor started",
                "Hypervisor started, credentials not yet handed over to the VM",
            );
        }
        sup
    }

    /// Until the hypervisor exits: each event to its handler.
    async fn supervise(
        mut self,
        mut child: tokio::process::Child,
        mut signals: Signals,
        guest: Option<Relay>,
    ) -> Result<Outcome, SuperviseError> {
        // Made now that the supervisor's own fds are open: its connection limit counts them.
        let mut guest = guest.map(Inbox::new);
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(SuperviseError::Wait)?,
                ev = self.backend.next() => self.on_backend_event(ev),
                _ = sleep_until(self.boot_error.as_ref().map(|(_, d)| *d)) => self.on_boot_error_grace_over(),
                result = maybe(&mut self.power_fut) => self.on_stop_step_failed(result),
                _ = sleep_until(self.stop_deadline) => self.on_stop_deadline(),
                _ = sleep_until(if self.ready { None } else { self.ready_deadline }) => self.on_ready_timeout(),
                _ = sleep_until(self.reboot_deadline) => self.on_reboot_timeout(),
                _ = tick(&mut self.watchdog) => self.on_watchdog_tick(),
                result = maybe(&mut self.ping_fut) => self.on_ping(result),
                m = next_message(&mut guest) => self.on_guest_message(&m),
                _ = signals.term.recv() => self.on_stop_signal("SIGTERM"),
                _ = signals.int.recv() => self.on_stop_signal("SIGINT"),
                _ = signals.chld.recv() => {
                    for pid in sys::reap_strays(child.id()) {
                        tracing::debug!("reaped pid {pid}, a child credbridge inherited but did not start");
                    }
                },
                _ = signals.hup.recv() => {
                    tracing::info!("SIGHUP received and ignored; not forwarded, because cloud-hypervisor dies on SIGHUP");
                },
            }
        };
        // Dropping the relay removes its socket from disk.
        drop(guest);
        Ok(self.finish(status))
    }

    fn on_backend_event(&mut self, ev: BackendEvent) {
        match ev {
            BackendEvent::Booted => self.on_booted(),
            // The secrets are in the hypervisor now; ours are no longer needed.
            BackendEvent::Handed => self.plan.forget_secrets(),
            BackendEvent::Reset => {
                // A guest can reboot as often as it likes: its resets' log lines share the
                // guest's rate limit.
                let effects = self.life.on_reset(Instant::now());
                let log = !effects.is_empty() && self.admit_guest_log();
                self.apply(effects, log);
            }
            BackendEvent::BootFailed { msg, maybe_exiting } => {
                // Before Handed: scrubbing needs the values (#11). The raw text may quote them
                // and is zeroed once scrubbed.
                let msg = self.plan.scrub(&Zeroizing::new(msg));
                if maybe_exiting {
                    // A dropped connection usually means the hypervisor is exiting; its exit
                    // status is the better message, so wait for it briefly.
                    self.boot_error = Some((msg, Instant::now() + EXIT_GRACE));
                } else {
                    self.fail(msg);
                    self.escalate_to(Stop::Terminated);
                }
            }
            BackendEvent::VmShutdown { cause } => tracing::info!("{}", cause(self.stop_so_far())),
            BackendEvent::Info(m) => tracing::info!("{}", self.plan.scrub(&Zeroizing::new(m))),
            BackendEvent::Warn(m) => tracing::warn!("{}", self.plan.scrub(&Zeroizing::new(m))),
            BackendEvent::Debug(m) => tracing::debug!("{}", self.plan.scrub(&Zeroizing::new(m))),
        }
    }

    /// The hypervisor did not exit within the grace: the hand-over's own error stands.
    fn on_boot_error_grace_over(&mut self) {
        if let Some((msg, _)) = self.boot_error.take() {
            self.fail(msg);
            self.escalate_to(Stop::Terminated);
        }
    }

    /// The power button or `quit` request came back; on an error, the next step at once.
    fn on_stop_step_failed(&mut self, result: Result<(), String>) {
        self.power_fut = None;
        if let Err(e) = result {
            let what = match self.stop {
                Stop::PowerButton => "ACPI power button",
                _ => "quit",
            };
            tracing::warn!(
                "{what} failed ({}); taking the next step",
                self.plan.scrub(&e)
            );
            let next = match self.stop {
                Stop::PowerButton => self.after_power_button(),
                _ => Stop::Terminated,
            };
            self.escalate_to(next);
        }
    }

    fn on_stop_deadline(&mut self) {
        let next = match self.stop {
            Stop::PowerButton => {
                tracing::warn!(
                    "the guest did not power off within {:?}",
                    self.plan.stop_timeout
                );
                self.after_power_button()
            }
            Stop::Quit => {
                tracing::warn!(
                    "{} did not quit within {QUIT_WAIT:?}; sending SIGTERM",
                    self.plan.hypervisor_name()
                );
                Stop::Terminated
            }
            _ => {
                tracing::warn!(
                    "the hypervisor did not exit within {KILL_AFTER:?} of SIGTERM; sending SIGKILL"
                );
                Stop::Killed
            }
        };
        self.escalate_to(next);
    }

    fn on_ready_timeout(&mut self) {
        self.ready_deadline = None;
        let t = self.plan.ready_timeout.unwrap_or_default();
        let why = self
            .life
            .not_ready_hint()
            .map(|h| format!("; {h}"))
            .unwrap_or_default();
        self.fail(format!(
            "the VM was not ready within {t:?} (--ready-timeout){why}; stopping it"
        ));
        self.request_stop();
    }

    fn on_reboot_timeout(&mut self) {
        self.reboot_deadline = None;
        if self.stop == Stop::Running {
            let t = self.plan.ready_timeout.unwrap_or_default();
            self.fail(format!(
                "the guest was not up again within {t:?} of the VM's reset (--ready-timeout); stopping it"
            ));
            self.request_stop();
        }
    }

    /// One ping at a time: a hypervisor slower than the period is not pinged twice.
    fn on_watchdog_tick(&mut self) {
        if self.ping_fut.is_none() {
            self.ping_fut = Some(self.backend.ping(self.ping_timeout));
        }
    }

    fn on_ping(&mut self, result: Result<(), String>) {
        self.ping_fut = None;
        match result {
            Ok(()) => {
                if self.ping_failing {
                    tracing::info!("the hypervisor answers again; watchdog resumed");
                    self.ping_failing = false;
                }
                self.notify.watchdog();
            }
            Err(e) => {
                if !self.ping_failing {
                    self.ping_failing = true;
                    tracing::warn!("the hypervisor does not answer ({e}); withholding WATCHDOG=1");
                }
            }
        }
    }

    fn become_ready(&mut self, why: &str, status: &str) {
        if self.ready {
            return;
        }
        self.ready = true;
        tracing::info!("ready ({why}): {status}");
        self.notify.ready(status);
    }

    /// The status once the VM booted: it was created with every string, so they are in the
    /// guest's SMBIOS tables.
    fn running_status(&self) -> String {
        let n = self.plan.credential_count;
        format!(
            "VM running, {n} credential{} delivered",
            if n == 1 { "" } else { "s" }
        )
    }

    /// How far the stop had gone, in the terms a backend reads a shutdown report by.
    fn stop_so_far(&self) -> StopSoFar {
        match self.stop {
            Stop::Running => StopSoFar::NotAsked,
            Stop::PowerButton => StopSoFar::PowerButton,
            Stop::Quit | Stop::Terminated | Stop::Killed => StopSoFar::Forced,
        }
    }

    fn on_booted(&mut self) {
        if self.booted {
            return;
        }
        self.booted = true;
        tracing::info!("VM booted");
        if self.stop != Stop::Running {
            return;
        }
        match self.plan.ready {
            Ready::Booted => {
                let status = self.running_status();
                self.become_ready("VM booted", &status);
            }
            Ready::Spawn => self.notify.status(&self.running_status()),
            Ready::Guest if !self.ready => match &self.plan.ready_target {
                None => self
                    .notify
                    .status("VM booted, waiting for the guest's systemd to report ready"),
                Some(t) => self.notify.status(&format!(
                    "VM booted, waiting for the guest's systemd to reach {t}"
                )),
            },
            _ => {}
        }
    }

    fn on_guest_message(&mut self, m: &GuestMessage) {
        let effects = self.life.on_message(m, Instant::now());
        // The guest decides how often it sends: its messages are logged within a rate limit,
        // and so are the lifecycle's log lines they cause (a guest could alternate hostnames).
        let loggable = m.status.is_some()
            || m.stopping
            || m.errno.is_some()
            || m.exit_status.is_some()
            || !m.rejected.is_empty()
            || effects
                .iter()
                .any(|e| matches!(e, Effect::Info(_) | Effect::Warn(_)));
        let log = loggable && self.admit_guest_log();
        if let Some(status) = &m.status {
            if log {
                tracing::info!("guest: {status}");
            }
            self.notify.status(&format!("guest: {status}"));
            if !self.ready && self.stop == Stop::Running {
                self.notify
                    .extend_timeout(GUEST_PROGRESS_EXTENSION.as_micros() as u64);
            }
        }
        if m.stopping && log {
            tracing::info!("the guest is stopping");
        }
        if let Some(e) = m.errno.as_ref().filter(|_| log) {
            tracing::warn!("the guest reported ERRNO={e}");
        }
        if let Some(e) = m.exit_status.as_ref().filter(|_| log) {
            tracing::info!("the guest reported EXIT_STATUS={e}");
        }
        if !m.rejected.is_empty() && log {
            tracing::debug!(
                "ignored guest fields with invalid values: {}",
                m.rejected.join(", ")
            );
        }
        self.apply(effects, log);
    }

    /// Whether a log line the guest caused may be written now (its rate limit).
    fn admit_guest_log(&mut self) -> bool {
        match self.guest_log.admit(Instant::now()) {
            Some(0) => true,
            Some(n) => {
                tracing::info!("({n} further guest messages not logged)");
                true
            }
            None => false,
        }
    }

    /// Carries out what the guest's lifecycle asks for; its log lines only with `log`.
    fn apply(&mut self, effects: Vec<Effect>, log: bool) {
        for e in effects {
            match e {
                Effect::Status(s) => self.notify.status(&s),
                Effect::Info(s) if log => tracing::info!("{s}"),
                Effect::Warn(s) if log => tracing::warn!("{s}"),
                Effect::Info(_) | Effect::Warn(_) => {}
                Effect::Ready(why) if self.stop == Stop::Running => {
                    let status = self.running_status();
                    self.become_ready(&why, &status);
                }
                Effect::Ready(_) => {}
                Effect::Running => self.reboot_deadline = None,
                Effect::AwaitReady => {
                    self.reboot_deadline = self.plan.ready_timeout.map(|t| Instant::now() + t);
                }
                Effect::Fail(msg) => {
                    self.fail(msg);
                    self.request_stop();
                }
            }
        }
    }

    fn fail(&mut self, msg: String) {
        tracing::error!("{msg}");
        // ERRNO= makes `systemctl status` show an error code beside the STATUS text, as for
        // failures before start.
        self.notify.errno(&format!("Failed: {msg}"), libc::EIO);
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
                Stop::PowerButton => self.after_power_button(),
                Stop::Quit => Stop::Terminated,
                _ => Stop::Killed,
            };
            tracing::info!("{name} received again: escalating");
            self.escalate_to(next);
        }
    }

    /// The graceful path: ACPI power button, then (QEMU) `quit`, SIGTERM after --stop-timeout,
    /// SIGKILL 10 s later.
    fn request_stop(&mut self) {
        if self.stop != Stop::Running {
            return;
        }
        if !self.booted {
            // Nothing in the guest can answer the power button yet.
            self.escalate_to(Stop::Terminated);
            return;
        }
        let Some(button) = self.backend.power_button() else {
            tracing::info!(
                "the VM has no ACPI (-no-acpi), so no guest hears the power button; taking the next step"
            );
            let next = self.after_power_button();
            self.escalate_to(next);
            return;
        };
        self.stop = Stop::PowerButton;
        let t = self.plan.stop_timeout;
        let next = match self.after_power_button() {
            Stop::Quit => "quit",
            _ => "SIGTERM",
        };
        self.notify.stopping(&format!(
            "Stopping VM: ACPI power button, {next} after {t:?}"
        ));
        self.stop_deadline = Some(Instant::now() + t);
        self.power_fut = Some(button);
    }

    /// The step after the power button: `quit` where the hypervisor has it, else SIGTERM.
    fn after_power_button(&self) -> Stop {
        if self.backend.quit_step().is_some() {
            Stop::Quit
        } else {
            Stop::Terminated
        }
    }

    fn escalate_to(&mut self, next: Stop) {
        self.power_fut = None;
        match next {
            Stop::Running | Stop::PowerButton => {}
            Stop::Quit => {
                let step = self.backend.quit_step().unwrap_or("quit");
                self.notify.stopping(&format!("Stopping VM: {step}"));
                self.power_fut = self.backend.quit();
                self.stop_deadline = Some(Instant::now() + QUIT_WAIT);
            }
            Stop::Terminated => {
                self.notify
                    .stopping("Stopping VM: SIGTERM to the hypervisor");
                let _ = nix::sys::signal::kill(self.child_pid, Signal::SIGTERM);
                self.stop_deadline = Some(Instant::now() + KILL_AFTER);
            }
            Stop::Killed => {
                self.notify
                    .stopping("Stopping VM: SIGKILL to the hypervisor");
                let _ = nix::sys::signal::kill(self.child_pid, Signal::SIGKILL);
                self.stop_deadline = None;
            }
        }
        self.stop = next;
    }

    fn finish(mut self, status: std::process::ExitStatus) -> Outcome {
        let end = End::of(status);
        let how = end.describe();
        let name = self.plan.hypervisor_name();
        // #14: the guest's own word on how it ended, when it gave one.
        let mut ours = end;
        if self.booted {
            match self
                .life
                .on_exit(end == End::Code(0), self.stop != Stop::Running)
            {
                Verdict::Exit(n) => {
                    tracing::info!("the guest powered off with exit status {n}; exiting with it");
                    ours = End::Code(n.into());
                }
                Verdict::Fail(msg) if self.failure.is_none() => self.fail(msg),
                _ => {}
            }
        }
        if !self.booted && self.stop == Stop::Running && self.failure.is_none() {
            self.fail(format!(
                "{name} exited before the VM booted ({how}); see its messages above"
            ));
        } else if self.failure.is_none() {
            let msg = format!("{name} exited ({how})");
            match end {
                End::Code(0) => tracing::info!("{msg}"),
                _ if self.stop != Stop::Running => tracing::info!("{msg}"),
                _ => tracing::warn!("{msg}"),
            }
            let status = match ours {
                // The unit's exit status is the guest's: say so where `systemctl status` shows it.
                End::Code(n) if ours != end => {
                    format!("{name} exited with {how}; the guest powered off with exit status {n}")
                }
                _ => format!("{name} exited with {how}"),
            };
            self.notify.status(&status);
        } else if let Some(failure) = &self.failure {
            // The stop that followed the failure sent its own STATUS= lines; the last word is
            // the failure's, so that `systemctl status` shows why (#11).
            self.notify.errno(&format!("Failed: {failure}"), libc::EIO);
        }
        Outcome {
            end: ours,
            failure: self.failure,
        }
    }
}
