//! QEMU: the OEM strings in sealed memfds (`-smbios type=11,path=/dev/fd/N`), boot and stop
//! through a private QMP monitor on a socketpair.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::time::Instant;

use super::plan::QemuPlan;
use crate::hypervisor::qemu::qmp::EventKind;
use crate::hypervisor::qemu::{Qmp, QmpError, QmpEvents};
use crate::hypervisor::{BackendEvent, SetupError, Spawn};
use crate::plan::{ChildArgs, Plan};
use crate::select::{Boxed, maybe, sleep_until};

/// QEMU answers its monitor within milliseconds once it runs; its start may take a while on a
/// loaded host (TCG, large memory).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const STATUS_POLL: Duration = Duration::from_millis(100);

/// QEMU's step between the power button and SIGTERM, as `STATUS=` names it.
pub const QUIT_STEP: &str = "quit through QEMU's monitor";

pub struct QemuBackend {
    /// The child's copies of these are what QEMU reads; ours close right after spawn.
    memfds: Vec<OwnedFd>,
    /// `/dev/vhost-vsock` holding the guest's CID; QEMU's copy keeps it held.
    vhost: Option<OwnedFd>,
    qmp_child: Option<OwnedFd>,
    qmp_stream: Option<tokio::net::UnixStream>,
    connect_fut: Option<Boxed<Result<(Qmp, QmpEvents), QmpError>>>,
    qmp: Option<Qmp>,
    events: Option<QmpEvents>,
    status_fut: Option<Boxed<Result<String, QmpError>>>,
    status_next: Option<Instant>,
    said_paused: bool,
    booted: bool,
    pending: VecDeque<BackendEvent>,
    /// `-no-acpi`: no guest can hear the power button.
    acpi_off: bool,
    /// `-no-shutdown`: QEMU stays up, paused, after the guest powers off; we end it.
    no_shutdown: bool,
    quit_fut: Option<Boxed<Result<(), String>>>,
}

impl QemuBackend {
    pub fn prepare(plan: &Plan, q: QemuPlan) -> Result<(QemuBackend, Spawn), SetupError> {
        let argv = &q.argv;
        // The CID first: one another VM holds is refused before anything else exists.
        let vhost = match q.add_vhost_vsock {
            Some(cid) => Some((cid, crate::vsock::reserve_cid(cid)?)),
            None => None,
        };
        let launch = crate::hypervisor::qemu::launch(
            &plan.user_args,
            argv,
            &plan.strings,
            &plan.fw_cfg,
            vhost,
        )
        .map_err(SetupError::Pipe)?;
        tracing::debug!(
            "hypervisor argv: {}",
            plan.redact_args(&launch.args).join(" ")
        );
        launch.qmp.set_nonblocking(true).map_err(SetupError::Pipe)?;
        let qmp_stream = tokio::net::UnixStream::from_std(launch.qmp).map_err(SetupError::Pipe)?;
        Ok((
            QemuBackend {
                memfds: launch.memfds,
                vhost: launch.vhost,
                qmp_child: Some(launch.qmp_child),
                qmp_stream: Some(qmp_stream),
                connect_fut: None,
                qmp: None,
                events: None,
                status_fut: None,
                status_next: None,
                said_paused: false,
                booted: false,
                pending: VecDeque::new(),
                acpi_off: argv.acpi_off,
                no_shutdown: argv.no_shutdown,
                quit_fut: None,
            },
            Spawn {
                args: ChildArgs(launch.args),
                keep_fds: launch.keep,
            },
        ))
    }

    pub fn spawned(&mut self, _plan: &Plan) {
        // The child holds its own copies; the memfds are sealed, so nothing can change what it
        // reads, and our copies of the secrets can go.
        self.memfds.clear();
        self.vhost = None;
        self.qmp_child = None;
        self.pending.push_back(BackendEvent::Handed);
        if let Some(stream) = self.qmp_stream.take() {
            self.connect_fut = Some(Box::pin(Qmp::connect(stream, CONNECT_TIMEOUT)));
        }
    }

    pub async fn next(&mut self) -> BackendEvent {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return ev;
            }
            tokio::select! {
                result = maybe(&mut self.quit_fut) => {
                    self.quit_fut = None;
                    if let Err(e) = result {
                        return BackendEvent::Warn(format!("quit after the guest's poweroff failed: {e}"));
                    }
                },
                result = maybe(&mut self.connect_fut) => {
                    self.connect_fut = None;
                    match result {
                        Ok((qmp, events)) => {
                            self.pending.push_back(BackendEvent::Debug(format!(
                                "QMP connected (QEMU {})", qmp.version()
                            )));
                            self.qmp = Some(qmp);
                            self.events = Some(events);
                            self.status_next = Some(Instant::now());
                        }
                        Err(e) => return BackendEvent::BootFailed {
                            msg: format!("QEMU's monitor did not come up: {e}"),
                            maybe_exiting: true,
                        },
                    }
                },
                ev = async { match self.events.as_mut() { Some(e) => e.recv().await, None => std::future::pending().await } } => {
                    match ev {
                        Some(ev) => {
                            if let Some(out) = self.translate(ev.kind(), &ev.name) {
                                return out;
                            }
                        }
                        None => {
                            self.events = None;
                            return BackendEvent::Debug("QMP closed".into());
                        }
                    }
                },
                _ = sleep_until(if self.status_fut.is_none() { self.status_next } else { None }) => {
                    self.status_next = None;
                    if let Some(q) = &self.qmp {
                        let q = q.with_timeout(COMMAND_TIMEOUT);
                        self.status_fut = Some(Box::pin(async move { q.query_status().await }));
                    }
                },
                result = maybe(&mut self.status_fut) => {
                    self.status_fut = None;
                    match result.as_deref() {
                        Ok("running") => {
                            self.booted = true;
                            return BackendEvent::Booted;
                        }
                        Ok("prelaunch") | Ok("paused") if !self.said_paused => {
                            self.said_paused = true;
                            self.status_next = Some(Instant::now() + STATUS_POLL);
                            return BackendEvent::Info(
                                "QEMU is paused (-S?); the VM counts as booted once it runs".into(),
                            );
                        }
                        _ => self.status_next = Some(Instant::now() + STATUS_POLL),
                    }
                },
            }
        }
    }

    fn translate(&mut self, kind: EventKind, name: &str) -> Option<BackendEvent> {
        Some(match kind {
            EventKind::Resume if !self.booted => {
                // The first RESUME after -S and `cont`: check rather than assume.
                self.status_next = Some(Instant::now());
                return None;
            }
            EventKind::Shutdown { guest: true, .. } => {
                if self.no_shutdown {
                    // The guest is done; without this QEMU would wait, paused, forever.
                    self.quit_fut = Some(self.quit());
                }
                BackendEvent::Info("the guest powered off".into())
            }
            EventKind::Shutdown { reason, .. } => {
                BackendEvent::Info(format!("QEMU is shutting down ({reason})"))
            }
            EventKind::Reset { .. } => BackendEvent::Reset,
            EventKind::GuestPanicked { action } => {
                BackendEvent::Warn(format!("the guest kernel panicked (action: {action})"))
            }
            _ => BackendEvent::Debug(format!("QMP event {name}")),
        })
    }

    /// `None` with `-no-acpi`: no guest hears the button, so waiting for it only delays the stop.
    pub fn power_button(&self) -> Option<Boxed<Result<(), String>>> {
        if self.acpi_off {
            return None;
        }
        let q = self.qmp.clone();
        Some(Box::pin(async move {
            match q {
                Some(q) => q
                    .with_timeout(COMMAND_TIMEOUT)
                    .system_powerdown()
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("QEMU's monitor is not connected".into()),
            }
        }))
    }

    /// `quit`: QEMU exits at once, a hard stop that still ends the process cleanly.
    pub fn quit(&self) -> Boxed<Result<(), String>> {
        let q = self.qmp.clone();
        Box::pin(async move {
            match q {
                // QEMU may close the monitor before it answers `quit`; that is success too.
                Some(q) => match q.with_timeout(COMMAND_TIMEOUT).quit().await {
                    Ok(()) | Err(QmpError::Closed) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
                None => Err("QEMU's monitor is not connected".into()),
            }
        })
    }

    pub fn ping(&self, timeout: Duration) -> Boxed<Result<(), String>> {
        let q = self.qmp.clone();
        Box::pin(async move {
            match q {
                Some(q) => q
                    .with_timeout(timeout)
                    .query_status()
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Err("QEMU's monitor is not connected".into()),
            }
        })
    }

    pub fn cleanup(&mut self) {}
}
