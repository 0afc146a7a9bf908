//! The `credbridge` binary: parse, run, turn the outcome into an exit status.

use anyhow::Context;
use clap::Parser;

use credbridge::cli::{Cli, Command, LogLevel};
use credbridge::hostenv::HostEnv;
use credbridge::hypervisor;
use credbridge::notify::Notifier;
use credbridge::supervisor::{self, End};
use credbridge::{EXIT_FAILURE, logging, render, sys};

fn main() {
    // Before any secret is read: no core dump, no /proc/PID/mem for the same uid (#11).
    let dumpable = sys::set_non_dumpable();
    // Before anything else opens an fd: inherited ones must not leak into the hypervisor.
    let sweep = sys::cloexec_inherited_fds();
    let cli = Cli::parse();
    let env = HostEnv::from_process();
    let args = match &cli.command {
        Command::Run(a) | Command::Render(a) => a,
    };
    let level = match args.log_level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
    };
    logging::init(level, logging::stderr_is_journal(env.journal_stream()));
    let notify = match Notifier::new(env.notify_socket()) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("{e}");
            std::process::exit(EXIT_FAILURE);
        }
    };
    let result = dumpable
        .context("cannot make credbridge non-dumpable (prctl PR_SET_DUMPABLE)")
        .and_then(|()| sweep.context("cannot mark inherited fds close-on-exec"))
        .and_then(|()| run(&cli.command, &env, &notify));
    match result {
        Ok(End::Code(c)) => std::process::exit(c),
        Ok(End::Signal(s)) => sys::die_by_signal(s),
        Err(e) => {
            let text = chain_text(&e);
            tracing::error!("{text}");
            notify.errno(
                &format!("Failed: {}", text.lines().next().unwrap_or("")),
                libc::EINVAL,
            );
            std::process::exit(EXIT_FAILURE);
        }
    }
}

fn run(command: &Command, env: &HostEnv, notify: &Notifier) -> anyhow::Result<End> {
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
            Ok(exit_after(outcome.failure.is_some(), outcome.end))
        }
    }
}

/// How credbridge ends once the hypervisor has: as the hypervisor did, except that a failed
/// start must not look like success to systemd. Exit 0 is success, and so is death by SIGHUP,
/// SIGINT, SIGTERM or SIGPIPE (systemd's `is_clean_exit()`); after a failed start the
/// hypervisor usually dies by the very SIGTERM credbridge sent it (#11).
fn exit_after(failed: bool, end: End) -> End {
    let clean = match end {
        End::Code(c) => c == 0,
        End::Signal(s) => [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE].contains(&s),
    };
    if failed && clean {
        End::Code(EXIT_FAILURE)
    } else {
        end
    }
}

/// The error and its causes, each once: our messages often embed their source already, and
/// anyhow's `{:#}` would print it twice.
fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
