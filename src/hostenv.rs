//! The process environment, read once. Nothing else in credbridge touches `std::env`; tests
//! build a `HostEnv` by hand instead of mutating their own environment.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// Variables that belong to credbridge's conversation with systemd and must not reach the
/// hypervisor: with them it could send notify messages in our name (NOTIFY_SOCKET has no pid
/// guard), claim our sockets, or find the decrypted credentials.
const PRIVATE_VARS: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "CREDENTIALS_DIRECTORY",
];

#[derive(Debug, Clone, Default)]
pub struct HostEnv {
    /// Everything, in order, for building the child's explicit environment.
    pub vars: Vec<(OsString, OsString)>,
    pub pid: u32,
}

impl HostEnv {
    pub fn from_process() -> Self {
        HostEnv {
            vars: std::env::vars_os().collect(),
            pid: std::process::id(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&OsStr> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_os_str())
    }

    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(OsStr::to_str)
    }

    pub fn credentials_directory(&self) -> Option<PathBuf> {
        self.get("CREDENTIALS_DIRECTORY")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    pub fn notify_socket(&self) -> Option<&OsStr> {
        self.get("NOTIFY_SOCKET").filter(|v| !v.is_empty())
    }

    pub fn runtime_directory(&self) -> Option<PathBuf> {
        // RUNTIME_DIRECTORY may list several, colon-separated; the first is the unit's own.
        self.get_str("RUNTIME_DIRECTORY")
            .and_then(|v| v.split(':').next())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    pub fn journal_stream(&self) -> Option<&str> {
        self.get_str("JOURNAL_STREAM")
    }

    /// Socket activation, only when it is addressed to us (sd_listen_fds(3)).
    pub fn listen_fds(&self) -> Option<(usize, Option<Vec<String>>)> {
        let pid: u32 = self.get_str("LISTEN_PID")?.parse().ok()?;
        if pid != self.pid {
            return None;
        }
        let n: usize = self.get_str("LISTEN_FDS")?.parse().ok()?;
        let names = self
            .get_str("LISTEN_FDNAMES")
            .map(|v| v.split(':').map(str::to_owned).collect());
        Some((n, names))
    }

    /// The watchdog period, only when it is meant for us: WATCHDOG_PID unset or ours.
    pub fn watchdog_usec(&self) -> Option<u64> {
        if let Some(pid) = self.get_str("WATCHDOG_PID") {
            if pid.parse::<u32>().ok() != Some(self.pid) {
                return None;
            }
        }
        self.get_str("WATCHDOG_USEC")?
            .parse()
            .ok()
            .filter(|&u: &u64| u > 0)
    }

    /// The environment the hypervisor gets: ours minus the private variables.
    pub fn child_vars(&self) -> Vec<(OsString, OsString)> {
        self.vars
            .iter()
            .filter(|(k, _)| !PRIVATE_VARS.iter().any(|p| k == p))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)], pid: u32) -> HostEnv {
        HostEnv {
            vars: pairs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            pid,
        }
    }

    #[test]
    fn child_env_drops_systemd_private_vars_only() {
        let e = env(
            &[
                ("PATH", "/bin"),
                ("NOTIFY_SOCKET", "/run/n"),
                ("LISTEN_FDS", "1"),
                ("LISTEN_PID", "7"),
                ("LISTEN_FDNAMES", "api"),
                ("WATCHDOG_USEC", "1"),
                ("WATCHDOG_PID", "7"),
                ("CREDENTIALS_DIRECTORY", "/run/c"),
                ("FOO", "bar"),
            ],
            7,
        );
        let keys: Vec<_> = e.child_vars().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![OsString::from("PATH"), OsString::from("FOO")]);
    }

    #[test]
    fn listen_fds_require_our_pid() {
        let e = env(&[("LISTEN_PID", "8"), ("LISTEN_FDS", "1")], 7);
        assert_eq!(e.listen_fds(), None);
        let e = env(
            &[
                ("LISTEN_PID", "7"),
                ("LISTEN_FDS", "2"),
                ("LISTEN_FDNAMES", "api:x"),
            ],
            7,
        );
        assert_eq!(
            e.listen_fds(),
            Some((2, Some(vec!["api".to_owned(), "x".to_owned()])))
        );
    }

    #[test]
    fn watchdog_honoured_only_for_our_pid() {
        assert_eq!(
            env(&[("WATCHDOG_USEC", "100")], 7).watchdog_usec(),
            Some(100)
        );
        assert_eq!(
            env(&[("WATCHDOG_USEC", "100"), ("WATCHDOG_PID", "7")], 7).watchdog_usec(),
            Some(100)
        );
        assert_eq!(
            env(&[("WATCHDOG_USEC", "100"), ("WATCHDOG_PID", "8")], 7).watchdog_usec(),
            None
        );
        assert_eq!(env(&[("WATCHDOG_USEC", "0")], 7).watchdog_usec(), None);
    }
}
