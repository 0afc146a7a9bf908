//! cloud-hypervisor: the VM through the REST API (or argv), boot and guest events from the
//! event monitor, stop through `vm.power-button`, liveness through `vmm.ping`.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use hyper::Method;
use nix::fcntl::OFlag;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::create::CreatePlan;
use super::plan::{ApiSource, ChPlan, FdNames};
use crate::credentials::SecretBytes;
use crate::hostenv::HostEnv;
use crate::hypervisor::cloud_hypervisor::apiclient::{ApiClient, ApiError};
use crate::hypervisor::cloud_hypervisor::apisocket::{ApiSocket, ApiSocketError};
use crate::hypervisor::cloud_hypervisor::events::{Event, EventParser};
use crate::hypervisor::{BackendEvent, HypervisorError, SetupError, Spawn, StopSoFar};
use crate::plan::Plan;
use crate::select::{Boxed, maybe, sleep_until};

/// vm.create and vm.boot may prefault guest memory; be generous.
const BOOT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const SHORT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `vm.info` is polled when the argv keeps its own event monitor.
const INFO_POLL: Duration = Duration::from_millis(200);

/// What a `vm:shutdown` means. cloud-hypervisor emits it alike for a guest poweroff, a vCPU
/// error and our SIGTERM, and exits 0 after each (cloud-hypervisor.md section 5), so only
/// what credbridge itself did tells them apart; it is a poweroff only when the guest had
/// been asked to power off and nothing harder was tried yet.
fn shutdown_cause(stop: StopSoFar) -> &'static str {
    match stop {
        StopSoFar::PowerButton => "the guest powered off (it answered the ACPI power button)",
        StopSoFar::NotAsked => {
            "the VM stopped without a stop request: a guest poweroff or a vCPU error \
             (cloud-hypervisor reports both alike; its log above says which)"
        }
        StopSoFar::Forced => {
            "cloud-hypervisor shut the VM down on our SIGTERM: a hard stop, not a guest poweroff"
        }
    }
}

pub struct ChBackend {
    api: ApiSocket,
    client: ApiClient,
    events_rx: Option<tokio::net::unix::pipe::Receiver>,
    /// The child's end of the event pipe, until it is spawned.
    events_tx: Option<OwnedFd>,
    parser: EventParser,
    buf: Vec<u8>,
    pending: VecDeque<BackendEvent>,
    boot_fut: Option<Boxed<Result<(), BootError>>>,
    /// Readiness without our own event monitor: poll `vm.info`.
    info_fut: Option<Boxed<Result<bool, ApiError>>>,
    info_next: Option<Instant>,
    own_event_monitor: bool,
    /// `vm.create` and the fd devices after it; `None` with argv delivery.
    create: Option<CreatePlan>,
    /// The fw_cfg credentials' sealed memfds (#15): cloud-hypervisor opens its inherited copies
    /// as `/proc/self/fd/N` at vm.boot; ours close right after spawn.
    fw_cfg_memfds: Vec<OwnedFd>,
}

fn api_socket(plan: &ChPlan, env: &HostEnv) -> Result<ApiSocket, ApiSocketError> {
    // Socket activation wins: the .socket unit owns the path and keeps it across our restarts.
    if let Some(s) = ApiSocket::from_activation(env, plan.api_socket_group_access)? {
        return Ok(s);
    }
    match &plan.api_source {
        ApiSource::Path(p) => ApiSocket::bind_path(p),
        ApiSource::Fd(fd) => ApiSocket::from_inherited_fd(*fd, plan.api_socket_group_access),
        ApiSource::Default => ApiSocket::bind_private(env),
    }
}

impl ChBackend {
    pub fn prepare(
        plan: &Plan,
        ch: ChPlan,
        env: &HostEnv,
    ) -> Result<(ChBackend, Spawn), SetupError> {
        let api = api_socket(&ch, env)?;
        tracing::info!("API socket: {}", api.describe);
        // The event pipe exists before spawn because its write end is the child's
        // `--event-monitor fd=`; our copy of that end is closed right after spawn so that EOF
        // on the read end means the hypervisor is gone.
        let (events_rx, events_tx) = if ch.own_event_monitor {
            let (r, w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SetupError::Pipe(e.into()))?;
            let rx =
                tokio::net::unix::pipe::Receiver::from_owned_fd(r).map_err(SetupError::Pipe)?;
            (Some(rx), Some(w))
        } else {
            (None, None)
        };
        let fds = FdNames {
            api: api.fd.as_raw_fd().to_string(),
            events: events_tx.as_ref().map(|w| w.as_raw_fd().to_string()),
        };
        let mut fw_cfg_memfds = Vec::new();
        for (i, item) in plan.fw_cfg.iter().enumerate() {
            fw_cfg_memfds.push(
                crate::sys::sealed_memfd(&format!("credbridge-fwcfg-{i}"), item.expose())
                    .map_err(SetupError::Pipe)?,
            );
        }
        let mut keep_fds: Vec<RawFd> = vec![api.fd.as_raw_fd()];
        keep_fds.extend(fw_cfg_memfds.iter().map(OwnedFd::as_raw_fd));
        keep_fds.extend(events_tx.as_ref().map(OwnedFd::as_raw_fd));
        keep_fds.extend(ch.inherited_fds_for_child());
        if let Some((_, path)) = &ch.add_vsock {
            // cloud-hypervisor binds the vsock socket itself and fails on a leftover one.
            remove_stale_socket(path);
        }
        let args = ch.child_args(plan, &fds).map_err(HypervisorError::from)?;
        // Redacted from the argv just built, not from a second one (argv delivery: a second
        // set of copies of every value).
        tracing::debug!("hypervisor argv: {}", plan.redact_args(&args.0).join(" "));
        let client = ApiClient::new(api.connect_to.clone(), api.peer, SHORT_REQUEST_TIMEOUT);
        Ok((
            ChBackend {
                api,
                client,
                events_rx,
                events_tx,
                parser: EventParser::new(),
                buf: vec![0u8; 16 * 1024],
                pending: VecDeque::new(),
                boot_fut: None,
                info_fut: None,
                info_next: None,
                own_event_monitor: ch.own_event_monitor,
                create: ch.create,
                fw_cfg_memfds,
            },
            Spawn { args, keep_fds },
        ))
    }

    pub fn spawned(&mut self, plan: &Plan) {
        self.events_tx = None;
        // A path, never a pipe: cloud-hypervisor sizes a file= item by its metadata and reads
        // it with pread, so a pipe would boot a guest with an empty credential.
        let fw_cfg: Vec<(String, String)> = plan
            .fw_cfg
            .iter()
            .zip(&self.fw_cfg_memfds)
            .map(|(item, fd)| (item.name(), format!("/proc/self/fd/{}", fd.as_raw_fd())))
            .collect();
        self.fw_cfg_memfds.clear();
        // What to say if the build turns out to lack fw_cfg: the first credential that needs it.
        let needs_fw_cfg = plan
            .fw_cfg
            .first()
            .zip(plan.choices.iter().find(|c| c.channel == "fw_cfg"))
            .map(|(item, c)| format!("{} goes over fw_cfg ({})", item.subject, c.reason));
        match &self.create {
            Some(create) => {
                let body = create.body(&plan.strings, &fw_cfg);
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
                self.boot_fut = Some(Box::pin(boot_sequence(
                    self.client.with_timeout(BOOT_REQUEST_TIMEOUT),
                    needs_fw_cfg,
                    body,
                    nets,
                    devices,
                )));
            }
            None => {
                // argv delivery: the strings went with the command line.
                self.pending.push_back(BackendEvent::Handed);
                if !self.own_event_monitor {
                    self.info_next = Some(Instant::now());
                }
            }
        }
    }

    pub async fn next(&mut self) -> BackendEvent {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return ev;
            }
            tokio::select! {
                read = read_events(&mut self.events_rx, &mut self.buf) => match read {
                    Ok(0) | Err(_) => {
                        self.events_rx = None;
                        return BackendEvent::Debug("event monitor closed".into());
                    }
                    Ok(n) => {
                        for ev in self.parser.push(&self.buf[..n]) {
                            self.pending.push_back(match ev {
                                Ok(ev) => translate(&ev),
                                Err(e) => BackendEvent::Warn(format!("event monitor: {e}")),
                            });
                        }
                    }
                },
                result = maybe(&mut self.boot_fut) => {
                    self.boot_fut = None;
                    match result {
                        Ok(()) => {
                            self.pending.push_back(BackendEvent::Info(
                                "VM created and booted through the API".into(),
                            ));
                            // vm.boot answers once the vCPUs run; without our event monitor
                            // that answer is the boot signal.
                            if !self.own_event_monitor {
                                self.pending.push_back(BackendEvent::Booted);
                            }
                        }
                        Err(BootError::Api(e)) => self.pending.push_back(BackendEvent::BootFailed {
                            maybe_exiting: !matches!(e, ApiError::Status { .. }),
                            msg: format!("could not boot the VM: {e}"),
                        }),
                        Err(e @ BootError::NoFwCfg { .. }) => {
                            self.pending.push_back(BackendEvent::BootFailed {
                                maybe_exiting: false,
                                msg: e.to_string(),
                            })
                        }
                    }
                    // After the failure: its text may quote the values, and the supervisor
                    // can scrub them only while it still has them (#11).
                    self.pending.push_back(BackendEvent::Handed);
                },
                _ = sleep_until(if self.info_fut.is_none() { self.info_next } else { None }) => {
                    let c = self.client.clone();
                    self.info_fut = Some(Box::pin(async move { vm_running(&c).await }));
                    self.info_next = None;
                },
                result = maybe(&mut self.info_fut) => {
                    self.info_fut = None;
                    if let Ok(true) = result {
                        return BackendEvent::Booted;
                    }
                    self.info_next = Some(Instant::now() + INFO_POLL);
                },
            }
        }
    }

    pub fn power_button(&self) -> Boxed<Result<(), String>> {
        let c = self.client.clone();
        Box::pin(async move {
            c.put("vm.power-button", None)
                .await
                .map_err(|e| e.to_string())
        })
    }

    pub fn ping(&self, timeout: Duration) -> Boxed<Result<(), String>> {
        let c = self.client.with_timeout(timeout);
        Box::pin(async move { c.ping().await.map_err(|e| e.to_string()) })
    }

    pub fn cleanup(&mut self) {
        self.api.cleanup();
    }
}

fn translate(ev: &Event) -> BackendEvent {
    match (ev.source.as_str(), ev.event.as_str()) {
        ("vm", "booted") => BackendEvent::Booted,
        ("vm", "rebooting") => BackendEvent::Reset,
        ("vm", "shutdown") => BackendEvent::VmShutdown {
            cause: shutdown_cause,
        },
        ("guest", "panic") => BackendEvent::Warn("the guest kernel panicked".into()),
        (s, e) => BackendEvent::Debug(format!("event {s}:{e}")),
    }
}

async fn read_events(
    rx: &mut Option<tokio::net::unix::pipe::Receiver>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match rx {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Removes a socket nobody listens on; leaves anything else alone (a live one, or one whose
/// state the probe cannot tell, such as EACCES).
fn remove_stale_socket(path: &Path) {
    if let Ok(crate::sockpath::Probe::Stale) = crate::sockpath::probe(path) {
        let _ = std::fs::remove_file(path);
    }
}

/// vm.add-net/vm.add-device bodies: not secret, but the API client takes one buffer type.
fn json_body(v: &serde_json::Value) -> SecretBytes {
    SecretBytes::from_slice(&serde_json::to_vec(v).expect("a Value always serializes"))
}

#[derive(Debug, thiserror::Error)]
enum BootError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(
        "{needs}, but this cloud-hypervisor build lacks the fw_cfg feature (vmm.ping features: {features:?}); such a build silently drops fw_cfg items, so the VM was not created\nhint: use a cloud-hypervisor built with --features fw_cfg, or make the credentials fit SMBIOS (fewer or smaller ones, or --smbios-budget if every guest runs systemd >= 257)"
    )]
    NoFwCfg {
        needs: String,
        features: Vec<String>,
    },
}

/// `vmm.ping`'s `features`: the only way to learn, before vm.create, whether this build has
/// fw_cfg (cloud-hypervisor.md section 7).
async fn features(client: &ApiClient) -> Result<Vec<String>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Ping {
        #[serde(default)]
        features: Vec<String>,
    }
    let resp = client.request(Method::GET, "vmm.ping", None, &[]).await?;
    Ok(serde_json::from_slice::<Ping>(&resp.body)
        .map(|p| p.features)
        .unwrap_or_default())
}

async fn boot_sequence(
    client: ApiClient,
    needs_fw_cfg: Option<String>,
    create: SecretBytes,
    nets: Vec<(SecretBytes, Vec<RawFd>)>,
    devices: Vec<(SecretBytes, RawFd)>,
) -> Result<(), BootError> {
    if let Some(needs) = needs_fw_cfg {
        let features = features(&client).await?;
        if !features.iter().any(|f| f == "fw_cfg") {
            return Err(BootError::NoFwCfg { needs, features });
        }
    }
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
    Ok(client.put("vm.boot", None).await?)
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
