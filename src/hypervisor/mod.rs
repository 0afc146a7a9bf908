//! The interface between the neutral parts and the hypervisors. Each hypervisor is a wing,
//! a folder here holding everything specific to it: its argv grammar, how it plans a run
//! (`<wing>/plan.rs`), and how a run drives it (`<wing>/backend.rs`). The neutral modules
//! see the wings only through this file:
//!
//! - [`plan`] picks the wing from the hypervisor's file name (or `--hypervisor`) and returns
//!   the neutral [`Plan`] with the wing's own part, a [`Target`];
//! - [`Target`] answers what `render` and the start status say about the wing;
//! - [`Backend`] is what the supervisor drives: prepare the child's world, hand over the VM,
//!   report boot and resets, press the power button, ping, quit, clean up.
//!
//! The dependency rule (tests/layout.rs): wings import neutral modules and this file, never
//! each other; neutral modules never import a wing.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

use crate::cli::{HypervisorKind, RunArgs};
use crate::hostenv::HostEnv;
use crate::plan::{ChildArgs, Plan};
use crate::select::Boxed;
use crate::vsock::VsockError;
use cloud_hypervisor::apisocket::ApiSocketError;

pub mod cloud_hypervisor;
pub mod qemu;

/// What the plan refuses, for whichever hypervisor: every message names its subject and,
/// where the fix is known, a `hint:`.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error(
        "cannot tell which hypervisor {0:?} is from its file name\nhint: pass --hypervisor cloud-hypervisor or --hypervisor qemu"
    )]
    UnknownHypervisor(String),
    #[error(transparent)]
    CloudHypervisor(#[from] cloud_hypervisor::ChPlanError),
    #[error(transparent)]
    Qemu(#[from] qemu::QemuPlanError),
}

/// The hypervisor's own part of a run's plan.
pub enum Target {
    CloudHypervisor(cloud_hypervisor::plan::ChPlan),
    Qemu(qemu::plan::QemuPlan),
}

/// Turns the command line, the environment and the credentials into a checked plan: the
/// neutral part and the hypervisor's own. Nothing is started, bound or created here.
pub fn plan(args: &RunArgs, env: &HostEnv) -> Result<(Plan, Target), HypervisorError> {
    let (program, user_args) = args
        .command
        .split_first()
        .expect("clap requires HYPERVISOR");
    Ok(match detect(program, args.hypervisor)? {
        HypervisorKind::CloudHypervisor => {
            let (plan, ch) = cloud_hypervisor::plan::ChPlan::build(args, env, program, user_args)?;
            (plan, Target::CloudHypervisor(ch))
        }
        HypervisorKind::Qemu => {
            let (plan, q) = qemu::plan::QemuPlan::build(args, env, program, user_args)?;
            (plan, Target::Qemu(q))
        }
    })
}

/// Which hypervisor `program` is: `--hypervisor`, else its file name.
fn detect(
    program: &OsStr,
    forced: Option<HypervisorKind>,
) -> Result<HypervisorKind, HypervisorError> {
    if let Some(k) = forced {
        return Ok(k);
    }
    let name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("cloud-hypervisor") {
        Ok(HypervisorKind::CloudHypervisor)
    } else if name.starts_with("qemu-system-") || name == "qemu-kvm" {
        Ok(HypervisorKind::Qemu)
    } else {
        Err(HypervisorError::UnknownHypervisor(
            program.to_string_lossy().into_owned(),
        ))
    }
}

impl Target {
    /// How the strings travel, in a word, for the start status.
    pub fn delivery(&self) -> &'static str {
        match self {
            Target::CloudHypervisor(ch) => ch.delivery_word(),
            Target::Qemu(_) => "memfd",
        }
    }

    /// How the strings travel, for `render`.
    pub fn describe_delivery(&self) -> &'static str {
        match self {
            Target::CloudHypervisor(ch) => ch.describe_delivery(),
            Target::Qemu(_) => {
                "memfd (-smbios type=11,path=/dev/fd/N and -fw_cfg name=..,file=/dev/fd/N of sealed memfds; nothing secret in argv)"
            }
        }
    }

    /// What `run` would start and send, for `render`: the child's argv and (cloud-hypervisor)
    /// the API requests, every credential redacted and the fds named by placeholders.
    pub fn render_launch(&self, plan: &Plan, out: &mut dyn Write) -> io::Result<()> {
        match self {
            Target::CloudHypervisor(ch) => ch.render_launch(plan, out),
            Target::Qemu(q) => q.render_launch(plan, out),
        }
    }
}

/// What can stop a backend from preparing the child's world (sockets, pipes, fds). Its own
/// type, not the supervisor's, so that the backends do not import the supervisor that drives
/// them.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    ApiSocket(#[from] ApiSocketError),
    #[error(transparent)]
    Plan(#[from] HypervisorError),
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
    /// `cause` reads it by how far credbridge's own stop had gone, which only the supervisor
    /// knows; the words are the hypervisor's wing's.
    VmShutdown {
        cause: fn(StopSoFar) -> &'static str,
    },
    Info(String),
    Warn(String),
    Debug(String),
}

/// How far credbridge's own stop had gone when the hypervisor reported a shutdown: where the
/// report does not say why (cloud-hypervisor's `vm:shutdown`), only this tells a guest
/// poweroff from a hard stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSoFar {
    NotAsked,
    PowerButton,
    /// The hypervisor's quit step, SIGTERM or SIGKILL.
    Forced,
}

// One backend exists per run, so boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    CloudHypervisor(cloud_hypervisor::backend::ChBackend),
    Qemu(qemu::backend::QemuBackend),
}

/// What the child needs: its arguments (after argv[0]) and the fds it keeps at their numbers.
pub struct Spawn {
    pub args: ChildArgs,
    pub keep_fds: Vec<RawFd>,
}

impl Backend {
    /// Creates the sockets, pipes and fds the child will get. Nothing is spawned here.
    pub fn prepare(
        plan: &Plan,
        target: Target,
        env: &HostEnv,
    ) -> Result<(Backend, Spawn), SetupError> {
        match target {
            Target::CloudHypervisor(ch) => {
                let (b, spawn) = cloud_hypervisor::backend::ChBackend::prepare(plan, ch, env)?;
                Ok((Backend::CloudHypervisor(b), spawn))
            }
            Target::Qemu(q) => {
                let (b, spawn) = qemu::backend::QemuBackend::prepare(plan, q)?;
                Ok((Backend::Qemu(b), spawn))
            }
        }
    }

    /// Right after spawn: drops our copies of the child's fds and starts handing over the VM.
    pub fn spawned(&mut self, plan: &Plan) {
        match self {
            Backend::CloudHypervisor(b) => b.spawned(plan),
            Backend::Qemu(b) => b.spawned(plan),
        }
    }

    /// The next thing worth the supervisor's attention; pending forever when there is none.
    /// Cancel-safe: state lives in the backend, not in the returned future.
    pub async fn next(&mut self) -> BackendEvent {
        match self {
            Backend::CloudHypervisor(b) => b.next().await,
            Backend::Qemu(b) => b.next().await,
        }
    }

    /// The ACPI power button; `None` when no guest can hear it (QEMU with `-no-acpi`).
    pub fn power_button(&self) -> Option<Boxed<Result<(), String>>> {
        match self {
            Backend::CloudHypervisor(b) => Some(b.power_button()),
            Backend::Qemu(b) => b.power_button(),
        }
    }

    /// Whether the hypervisor still answers, for the watchdog.
    pub fn ping(&self, timeout: Duration) -> Boxed<Result<(), String>> {
        match self {
            Backend::CloudHypervisor(b) => b.ping(timeout),
            Backend::Qemu(b) => b.ping(timeout),
        }
    }

    /// The step between the power button and SIGTERM, in the words `STATUS=` shows while it
    /// runs; `None` when the hypervisor has no such step.
    pub fn quit_step(&self) -> Option<&'static str> {
        match self {
            Backend::CloudHypervisor(_) => None,
            Backend::Qemu(_) => Some(qemu::backend::QUIT_STEP),
        }
    }

    /// A step between the power button and SIGTERM (QEMU's `quit`), if the hypervisor has one.
    pub fn quit(&self) -> Option<Boxed<Result<(), String>>> {
        match self {
            Backend::CloudHypervisor(_) => None,
            Backend::Qemu(b) => Some(b.quit()),
        }
    }

    /// Removes what `prepare` created on disk.
    pub fn cleanup(&mut self) {
        match self {
            Backend::CloudHypervisor(b) => b.cleanup(),
            Backend::Qemu(b) => b.cleanup(),
        }
    }
}
