//! The guest's own sd_notify messages, relayed natively: since systemd 253 a guest sends
//! `READY=1` and `STATUS=` to the address in its `vmm.notify_socket` credential,
//! `vsock-stream:2:PORT`. With cloud-hypervisor's hybrid vsock that connection arrives on the
//! host Unix socket `<vsock socket>_PORT`; with QEMU's kernel vhost-vsock on an AF_VSOCK
//! listener (`crate::vsock`), where only the guest's own CID is heard.
//!
//! One message per connection, closed at once: a guest with systemd >= 256 waits for the peer
//! to close each connection, and a relay that lingers stalls its boot by seconds per message
//! (microvm.nix issues #297, #568).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixListener;

use crate::plan::GuestNotifyPlan;
use crate::sockpath::{self, Probe};
use crate::vsock::{self, VsockError};

/// The largest message we read; sd_notify messages are a few hundred bytes.
const MAX_MESSAGE: usize = 64 * 1024;
/// After the first bytes, how long to wait for the rest of a message split in transit.
const TAIL_WAIT: Duration = Duration::from_millis(5);
/// A connection that sends nothing is closed after this.
const IDLE_LIMIT: Duration = Duration::from_secs(5);

/// What a guest said, reduced to what the host acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestMessage {
    pub ready: bool,
    pub status: Option<String>,
    pub stopping: bool,
    pub errno: Option<String>,
    pub exit_status: Option<String>,
}

/// Parses one notify datagram's worth of `KEY=VALUE` lines (sd_notify(3)). Unknown keys and
/// malformed lines are ignored, as systemd does.
pub fn parse(bytes: &[u8]) -> GuestMessage {
    let mut m = GuestMessage::default();
    let text = String::from_utf8_lossy(bytes);
    for line in text.split('\n') {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "READY" => m.ready |= value == "1",
            "STATUS" => m.status = Some(sanitize(value)),
            "STOPPING" => m.stopping |= value == "1",
            "ERRNO" => m.errno = Some(sanitize(value)),
            "EXIT_STATUS" => m.exit_status = Some(sanitize(value)),
            _ => {}
        }
    }
    m
}

/// The guest is not trusted: its text is shown in `systemctl status` and the journal, so
/// control characters go and the length is bounded.
fn sanitize(s: &str) -> String {
    // Bidirectional overrides and zero-width characters could make a guest's text read
    // differently in a terminal than it is.
    let invisible = |c: char| {
        matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'
        )
    };
    s.chars()
        .filter(|&c| !c.is_control() && !invisible(c))
        .take(200)
        .collect()
}

/// The port in a `vmm.notify_socket` value, if it is one credbridge can relay.
pub fn port_of(value: &str) -> Option<u32> {
    let rest = value.strip_prefix("vsock-stream:2:")?;
    rest.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum GuestNotifyError {
    #[error("cannot listen for guest notifications on {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("{} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket { path: PathBuf },
    #[error(transparent)]
    Vsock(#[from] VsockError),
}

/// Where the guest's notifications arrive, while credbridge relays them.
pub enum Relay {
    /// cloud-hypervisor's hybrid vsock: removed from disk when dropped.
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
    /// QEMU's kernel vhost-vsock.
    Vsock(vsock::Listener),
}

pub enum Bound {
    Relay(Relay),
    /// Someone else (microvm.nix's socat relay) already serves the Unix socket.
    Foreign(PathBuf),
}

/// A connection that reached the relay.
pub enum Accepted {
    Guest(Box<dyn AsyncRead + Unpin + Send>),
    /// From another vsock CID: another VM on the host, or the host itself. Closed unread.
    Stranger {
        cid: u32,
    },
}

impl Relay {
    /// Binds the listener the plan names. Needs a tokio runtime.
    pub fn bind(plan: &GuestNotifyPlan) -> Result<Bound, GuestNotifyError> {
        match plan {
            GuestNotifyPlan::Hybrid { listen_path } => Self::bind_unix(listen_path),
            GuestNotifyPlan::Vhost { cid, port } => {
                // Without the device no guest can connect; say so rather than wait for nothing.
                if !vsock::host_has_vhost() {
                    return Err(VsockError::NoDevice.into());
                }
                Ok(Bound::Relay(Relay::Vsock(vsock::Listener::bind(
                    *port, *cid,
                )?)))
            }
        }
    }

    /// The vsock port when the kernel has just picked it.
    pub fn port(&self) -> Option<u32> {
        match self {
            Relay::Unix { .. } => None,
            Relay::Vsock(l) => Some(l.port()),
        }
    }

    /// For the log: where the relay listens.
    pub fn describe(&self) -> String {
        match self {
            Relay::Unix { path, .. } => path.display().to_string(),
            Relay::Vsock(l) => format!(
                "vsock port {}, from guest CID {} only",
                l.port(),
                l.guest_cid()
            ),
        }
    }

    pub async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Relay::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok(Accepted::Guest(Box::new(stream)))
            }
            Relay::Vsock(l) => {
                let (stream, cid) = l.accept().await?;
                Ok(if l.is_guest(cid) {
                    Accepted::Guest(Box::new(stream))
                } else {
                    Accepted::Stranger { cid }
                })
            }
        }
    }

    /// Binds `<vsock socket>_PORT`, replacing a stale socket but never a live one, nor one
    /// whose state the probe cannot tell. Mode 0600 from the start (`sockpath::bind_listen`):
    /// only the hypervisor, which runs as our user, connects.
    fn bind_unix(path: &Path) -> Result<Bound, GuestNotifyError> {
        let bind_err = |source| GuestNotifyError::Bind {
            path: path.to_owned(),
            source,
        };
        match sockpath::probe(path).map_err(bind_err)? {
            Probe::NotASocket => {
                return Err(GuestNotifyError::NotASocket {
                    path: path.to_owned(),
                });
            }
            Probe::Live => return Ok(Bound::Foreign(path.to_owned())),
            Probe::Stale => std::fs::remove_file(path).map_err(bind_err)?,
            Probe::Absent => {}
        }
        let fd = sockpath::bind_listen(path, 0o600).map_err(bind_err)?;
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = UnixListener::from_std(std_listener).map_err(bind_err)?;
        Ok(Bound::Relay(Relay::Unix {
            listener,
            path: path.to_owned(),
        }))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Relay::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads one message and closes the connection (by dropping it) as soon as it is in.
pub async fn read_one<S: AsyncRead + Unpin>(mut stream: S) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut len = match tokio::time::timeout(IDLE_LIMIT, stream.read(&mut buf)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no message")),
    };
    while len > 0 && len < buf.len() {
        match tokio::time::timeout(TAIL_WAIT, stream.read(&mut buf[len..])).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => len += n,
            Ok(Err(e)) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_the_host_acts_on() {
        let m = parse(b"READY=1\nSTATUS=Reached target multi-user\nX=y\nnoequals\n");
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("Reached target multi-user"));
        let m = parse(b"STOPPING=1\nERRNO=5\nEXIT_STATUS=3");
        assert!(m.stopping && !m.ready);
        assert_eq!(m.errno.as_deref(), Some("5"));
        assert_eq!(m.exit_status.as_deref(), Some("3"));
        assert!(!parse(b"READY=0").ready);
        assert_eq!(parse(b"").status, None);
    }

    #[test]
    fn guest_text_is_sanitized() {
        let m = parse(b"STATUS=a\x1b[31mb\rc");
        assert_eq!(m.status.as_deref(), Some("a[31mbc"));
        let long = format!("STATUS={}", "x".repeat(1000));
        assert_eq!(parse(long.as_bytes()).status.unwrap().len(), 200);
        let m = parse("STATUS=a\u{202e}b\u{200b}c".as_bytes());
        assert_eq!(m.status.as_deref(), Some("abc"));
        let m = parse(b"STATUS=\xff\xfe ok");
        assert!(m.status.unwrap().ends_with(" ok"));
    }

    #[test]
    fn ports() {
        assert_eq!(port_of("vsock-stream:2:8888"), Some(8888));
        assert_eq!(port_of("vsock:2:8888"), None);
        assert_eq!(port_of("vsock-stream:3:8888"), None);
        assert_eq!(port_of("vsock-stream:2:x"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_one_message_and_closes_without_waiting_for_eof() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify.vsock_8888");
        let plan = GuestNotifyPlan::Hybrid {
            listen_path: p.clone(),
        };
        let Bound::Relay(relay) = Relay::bind(&plan).unwrap() else {
            panic!("fresh path")
        };
        assert_eq!(relay.port(), None);
        let mut guest = std::os::unix::net::UnixStream::connect(&p).unwrap();
        use std::io::{Read, Write};
        guest.write_all(b"READY=1").unwrap();
        let Accepted::Guest(conn) = relay.accept().await.unwrap() else {
            panic!("a Unix connection is the guest's")
        };
        let t = std::time::Instant::now();
        let msg = read_one(conn).await.unwrap();
        assert_eq!(msg, b"READY=1");
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        // The guest sees the close although it never shut down its write side.
        let mut rest = Vec::new();
        guest
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(guest.read_to_end(&mut rest).unwrap(), 0);
        drop(relay);
        assert!(!p.exists(), "the socket goes with the relay");
    }

    /// #11: the relay socket is never on disk with the umask's mode, not even for a moment.
    /// Sets the process umask to 0 (nextest runs each test in its own process).
    #[test]
    fn the_relay_socket_is_never_wider_than_0600() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n_8888");
        let stop = Arc::new(AtomicBool::new(false));
        let wider = Arc::new(Mutex::new(Vec::new()));
        let watcher = {
            let (p, stop, wider) = (p.clone(), stop.clone(), wider.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::symlink_metadata(&p) {
                        let mode = m.permissions().mode() & 0o777;
                        if mode != 0o600 {
                            wider.lock().unwrap().push(mode);
                        }
                    }
                }
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let plan = GuestNotifyPlan::Hybrid {
            listen_path: p.clone(),
        };
        rt.block_on(async {
            for _ in 0..300 {
                let Bound::Relay(relay) = Relay::bind(&plan).unwrap() else {
                    panic!("fresh path")
                };
                drop(relay);
            }
        });
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        let wider = wider.lock().unwrap();
        assert!(
            wider.is_empty(),
            "modes seen: {:?}",
            &wider[..wider.len().min(5)]
        );
    }

    #[test]
    fn a_live_listener_is_left_alone_and_a_stale_one_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n_8888");
        let live = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(Relay::bind_unix(&p), Ok(Bound::Foreign(_))));
            drop(live);
            assert!(matches!(Relay::bind_unix(&p), Ok(Bound::Relay(..))));
        });
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            Relay::bind_unix(&f),
            Err(GuestNotifyError::NotASocket { .. })
        ));
    }
}
