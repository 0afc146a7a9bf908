//! Hypervisor backends: what differs between hypervisors (how the VM and its OEM strings are
//! handed over, how boot and stop are observed and requested) behind one interface the
//! supervisor drives.

use std::os::fd::RawFd;
use std::time::Duration;

use crate::hostenv::HostEnv;
use crate::plan::PlanError;
use crate::plan::{ChildArgs, Plan, Target};
use crate::select::Boxed;
use crate::vsock::VsockError;
use cloud_hypervisor::apisocket::ApiSocketError;

pub mod cloud_hypervisor;
pub mod qemu;

/// What can stop a backend from preparing the child's world (sockets, pipes, fds). Its own
/// type, not the supervisor's, so that the backends do not import the supervisor that drives
/// them.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    ApiSocket(#[from] ApiSocketError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot create the event monitor pipe: {0}")]
    Pipe(std::io::Error),
    #[error(transparent)]
    Vsock(#[from] VsockError),
}

/// What a backend saw, for the supervisor to act on.
#[derive(Debug)]
pub enum BackendEvent {
    /// The VM runs (vCPUs started).
    Booted,
    /// The VM config, secrets included, is in the hypervisor: credbridge's copies can go.
    Handed,
    /// The hypervisor reset the VM: a guest reboot, or a crash that looks like one
    /// (cloud-hypervisor's `vm:rebooting`, QEMU's `RESET`).
    Reset,
    /// Handing over or booting the VM failed. `maybe_exiting`: the failure looks like the
    /// hypervisor going away, whose exit status would explain it better.
    BootFailed {
        msg: String,
        maybe_exiting: bool,
    },
    /// cloud-hypervisor's `vm:shutdown`: the VM stopped, for a reason the event does not say
    /// (a guest poweroff, a vCPU error and SIGTERM all emit it; cloud-hypervisor.md section 5).
    VmShutdown,
    Info(String),
    Warn(String),
    Debug(String),
}

// One backend exists per run, so boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Ch(cloud_hypervisor::backend::ChBackend),
    Qemu(qemu::backend::QemuBackend),
}

/// What the child needs: its arguments (after argv[0]) and the fds it keeps at their numbers.
pub struct Spawn {
    pub args: ChildArgs,
    pub keep_fds: Vec<RawFd>,
}

impl Backend {
    /// Creates the sockets, pipes and fds the child will get. Nothing is spawned here.
    pub fn prepare(plan: &Plan, env: &HostEnv) -> Result<(Backend, Spawn), SetupError> {
        match &plan.target {
            Target::Ch(argv) => {
                let (b, spawn) = cloud_hypervisor::backend::ChBackend::prepare(plan, argv, env)?;
                Ok((Backend::Ch(b), spawn))
            }
            Target::Qemu(argv) => {
                let (b, spawn) = qemu::backend::QemuBackend::prepare(plan, argv)?;
                Ok((Backend::Qemu(b), spawn))
            }
        }
    }

    /// Right after spawn: drops our copies of the child's fds and starts handing over the VM.
    pub fn spawned(&mut self, plan: &Plan) {
        match self {
            Backend::Ch(b) => b.spawned(plan),
            Backend::Qemu(b) => b.spawned(plan),
        }
    }

    /// The next thing worth the supervisor's attention; pending forever when there is none.
    /// Cancel-safe: state lives in the backend, not in the returned future.
    pub async fn next(&mut self) -> BackendEvent {
        match self {
            Backend::Ch(b) => b.next().await,
            Backend::Qemu(b) => b.next().await,
        }
    }

    /// The ACPI power button; `None` when no guest can hear it (QEMU with `-no-acpi`).
    pub fn power_button(&self) -> Option<Boxed<Result<(), String>>> {
        match self {
            Backend::Ch(b) => Some(b.power_button()),
            Backend::Qemu(b) => b.power_button(),
        }
    }

    /// Whether the hypervisor still answers, for the watchdog.
    pub fn ping(&self, timeout: Duration) -> Boxed<Result<(), String>> {
        match self {
            Backend::Ch(b) => b.ping(timeout),
            Backend::Qemu(b) => b.ping(timeout),
        }
    }

    /// Whether the hypervisor has a step between the power button and SIGTERM.
    pub fn has_quit(&self) -> bool {
        matches!(self, Backend::Qemu(_))
    }

    /// A step between the power button and SIGTERM (QEMU's `quit`), if the hypervisor has one.
    pub fn quit(&self) -> Option<Boxed<Result<(), String>>> {
        match self {
            Backend::Ch(_) => None,
            Backend::Qemu(b) => Some(b.quit()),
        }
    }

    /// Removes what `prepare` created on disk.
    pub fn cleanup(&mut self) {
        match self {
            Backend::Ch(b) => b.cleanup(),
            Backend::Qemu(b) => b.cleanup(),
        }
    }
}
