//! The `credbridge` binary: parse, run, turn the outcome into an exit status.

use anyhow::Context;
use clap::Parser;

use credbridge::cli::Cli;
use credbridge::exit::{self, EXIT_FAILURE, End};
use credbridge::hostenv::HostEnv;
use credbridge::notify::Notifier;
use credbridge::{logging, sys};

fn main() {
    // Before any secret is read: no core dump, no /proc/PID/mem for the same uid (#11).
    let dumpable = sys::set_non_dumpable();
    // Before anything else opens an fd: inherited ones must not leak into the hypervisor.
    let sweep = sys::cloexec_inherited_fds();
    let cli = Cli::parse();
    let env = HostEnv::from_process();
    let journal = logging::stderr_is_journal(env.journal_stream());
    logging::init(logging::level(&cli.command), journal);
    let notify = match Notifier::new(env.notify_socket()) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("{e}");
            End::Code(EXIT_FAILURE).exit()
        }
    };
    let result = dumpable
        .context("cannot make credbridge non-dumpable (prctl PR_SET_DUMPABLE)")
        .and_then(|()| sweep.context("cannot mark inherited fds close-on-exec"))
        .and_then(|()| credbridge::run(&cli.command, &env, &notify));
    match result {
        Ok(end) => end.exit(),
        Err(e) => exit::fail(&e, &notify).exit(),
    }
}
