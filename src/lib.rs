//! credbridge: systemd service credentials to microVM guests as SMBIOS type 11 OEM strings,
//! with the hypervisor supervised for systemd.
#![deny(unsafe_code)]

pub mod cli;
pub mod credentials;
pub mod exit;
pub mod fwcfg;
pub mod guestnotify;
pub mod hostenv;
pub mod hypervisor;
pub mod lifecycle;
pub mod logging;
pub mod notify;
pub mod oem;
pub mod plan;
pub mod render;
pub mod scrub;
pub mod select;
pub mod sockpath;
pub mod supervisor;
pub mod sys;
pub mod vsock;

pub use exit::EXIT_FAILURE;

use anyhow::Context;

use cli::Command;
use exit::End;
use hostenv::HostEnv;
use notify::Notifier;

/// `credbridge render` or `credbridge run`: plan, then report or start and supervise. How
/// credbridge should end, or its own failure.
pub fn run(command: &Command, env: &HostEnv, notify: &Notifier) -> anyhow::Result<End> {
    match command {
        Command::Render(args) => {
            let (plan, target) = hypervisor::plan(args, env)?;
            render::render(&plan, &target, &mut std::io::stdout().lock())
                .context("writing to stdout")?;
            Ok(End::Code(0))
        }
        Command::Run(args) => {
            let (plan, target) = hypervisor::plan(args, env)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the event loop")?;
            let outcome = runtime.block_on(supervisor::run(plan, target, env, notify))?;
            Ok(exit::after(outcome.failure.is_some(), outcome.end))
        }
    }
}
