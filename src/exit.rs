//! Exit status: how the hypervisor ended, and how credbridge ends after it. The hypervisor's
//! code is passed through and its signal re-raised; a failed start never ends as a clean
//! exit; credbridge's own failures end with [`EXIT_FAILURE`].

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

use crate::notify::Notifier;
use crate::sys;

/// credbridge's own failures: bad input, nothing could be started, or the start failed
/// although the hypervisor exited 0. Chosen outside the hypervisor's own codes (0, 1, 2) and
/// systemd's reserved range, like `env`/`timeout`'s 125.
pub const EXIT_FAILURE: i32 = 125;

/// How the hypervisor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Code(i32),
    Signal(i32),
}

impl End {
    pub fn of(status: ExitStatus) -> End {
        match (status.code(), status.signal()) {
            (Some(c), _) => End::Code(c),
            (None, Some(s)) => End::Signal(s),
            (None, None) => End::Code(1),
        }
    }

    /// `exit code N` or `signal SIGX`, as messages name it.
    pub fn describe(self) -> String {
        match self {
            End::Code(c) => format!("exit code {c}"),
            End::Signal(s) => format!(
                "signal {}",
                Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?")
            ),
        }
    }

    /// Ends credbridge the same way: the code, or death by the same signal.
    pub fn exit(self) -> ! {
        match self {
            End::Code(c) => std::process::exit(c),
            End::Signal(s) => sys::die_by_signal(s),
        }
    }
}

/// How credbridge ends once the hypervisor has: as the hypervisor did, except that a failed
/// start must not look like success to systemd. Exit 0 is success, and so is death by SIGHUP,
/// SIGINT, SIGTERM or SIGPIPE (systemd's `is_clean_exit()`); after a failed start the
/// hypervisor usually dies by the very SIGTERM credbridge sent it (#11).
pub fn after(failed: bool, end: End) -> End {
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

/// credbridge's own failure, said once with its whole chain, in the log and in systemd's
/// status (with ERRNO=, so that `systemctl status` shows an error code beside it).
pub fn fail(e: &anyhow::Error, notify: &Notifier) -> End {
    let text = chain_text(e);
    tracing::error!("{text}");
    notify.errno(
        &format!("Failed: {}", text.lines().next().unwrap_or("")),
        libc::EINVAL,
    );
    End::Code(EXIT_FAILURE)
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
