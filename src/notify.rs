//! sd_notify(3) datagrams to `$NOTIFY_SOCKET`, path or `@abstract`.
//!
//! Hand-written rather than the `sd-notify` crate: sd-notify 0.5 connects to an `@abstract`
//! address as a literal path and fails, and it reads `std::env` itself, which would make a
//! second place that touches the environment. The protocol is one datagram per message.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "NOTIFY_SOCKET={0:?} is a vsock address; credbridge supports only AF_UNIX notify sockets\nhint: run credbridge on the host, where systemd's notify socket is a path"
    )]
    Vsock(String),
    #[error("NOTIFY_SOCKET={0:?} is not a usable socket address: {1}")]
    BadAddress(String, std::io::Error),
    #[error("cannot create the notify socket: {0}")]
    Socket(std::io::Error),
}

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier that sends nothing: not started by systemd.
    pub fn disabled() -> Self {
        Notifier { target: None }
    }

    pub fn new(notify_socket: Option<&OsStr>) -> Result<Self, NotifyError> {
        let Some(value) = notify_socket else {
            return Ok(Self::disabled());
        };
        let bytes = value.as_bytes();
        let shown = || value.to_string_lossy().into_owned();
        if bytes.starts_with(b"vsock") {
            return Err(NotifyError::Vsock(shown()));
        }
        let addr = if let Some(name) = bytes.strip_prefix(b"@") {
            SocketAddr::from_abstract_name(name)
        } else {
            SocketAddr::from_pathname(std::path::Path::new(value))
        }
        .map_err(|e| NotifyError::BadAddress(shown(), e))?;
        let sock = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        Ok(Notifier {
            target: Some((sock, addr)),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message. A failure is logged, not fatal: systemd may be gone during shutdown.
    pub fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
                tracing::debug!("sd_notify failed: {e}");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn extend_timeout(&self, usec: u64) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={usec}"));
    }

    pub fn errno(&self, status: &str, errno: i32) {
        self.send(&format!("STATUS={}\nERRNO={errno}", one_line(status)));
    }
}

/// STATUS= is one line; a newline would start a new (bogus) assignment.
fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        let n = Notifier::new(Some(p.as_os_str())).unwrap();
        n.ready("VM booted\nsecond line dropped");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=VM booted");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("credbridge-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        let n = Notifier::new(Some(OsStr::new(&format!("@{name}")))).unwrap();
        n.watchdog();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn vsock_is_refused_and_unset_is_silent() {
        assert!(matches!(
            Notifier::new(Some(OsStr::new("vsock:2:1"))),
            Err(NotifyError::Vsock(_))
        ));
        let n = Notifier::new(None).unwrap();
        assert!(!n.is_enabled());
        n.ready("nothing happens");
    }
}
