//! Host-side AF_VSOCK for QEMU's kernel vhost-vsock device: the listener the guest's systemd
//! connects to (`vsock-stream:2:PORT`), and the reservation of the guest's CID.
//!
//! Neutral rather than in the QEMU wing: it is the host kernel's vsock, not QEMU's, the
//! neutral guest notify relay listens on it, and crosvm's `--vsock` uses the same device.
//!
//! Written on nix rather than tokio-vsock: that crate's `vsock` dependency pulls a second,
//! older nix. What it would add is small: a socket, its address, and tokio readiness.
//!
//! Ports on the host are one namespace for every guest: any VM on the host can connect to
//! host CID 2 at our port, and host processes can too through vsock_loopback (CID 1). So a
//! connection is read only when its peer is the guest's own CID; otherwise one VM could make
//! another's unit report ready.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, bind, getpeername, getsockname, listen,
    socket,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, ReadBuf};

/// The kernel's vhost-vsock device: QEMU's `vhost-vsock-*` devices open it.
pub const VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// `VMADDR_CID_ANY` and `VMADDR_PORT_ANY` (linux/vm_sockets.h).
const ANY: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(
        "this host has no {VHOST_VSOCK}, so no guest can reach it over vsock\nhint: load the kernel module (modprobe vhost_vsock; NixOS: boot.kernelModules = [ \"vhost_vsock\" ]), or use --ready booted"
    )]
    NoDevice,
    #[error(
        "cannot open {VHOST_VSOCK}: {0}\nhint: credbridge opens it for QEMU when it adds the vsock device (--vsock-cid); run it as a user that may (root, or the kvm group with a udev rule), or use --ready booted"
    )]
    Open(#[source] io::Error),
    #[error(
        "vsock CID {0} is in use by another VM on this host\nhint: give each VM its own --vsock-cid (microvm.nix: microvm.vsock.cid)"
    )]
    CidInUse(u32),
    #[error("cannot reserve vsock CID {cid}: {source}")]
    Reserve { cid: u32, source: io::Error },
    #[error(
        "cannot listen on vsock port {port} for the guest's notifications: {source}{hint}",
        port = match .port { Some(p) => p.to_string(), None => "(any)".to_owned() },
        hint = if .source.raw_os_error() == Some(libc::EADDRINUSE) {
            "\nhint: another listener on this host has that port; ports are shared by all VMs of a host, so drop --notify-port and let the kernel pick one"
        } else if .source.raw_os_error() == Some(libc::EAFNOSUPPORT) {
            "\nhint: this kernel has no AF_VSOCK (modprobe vhost_vsock)"
        } else {
            ""
        }
    )]
    Listen {
        port: Option<u32>,
        source: io::Error,
    },
}

/// Opens the vhost-vsock device and claims `cid` for the guest on it, so that a CID another VM
/// holds is refused before QEMU starts. QEMU gets the fd as `vhostfd=` and sets the same CID
/// on it again, which the kernel accepts for the fd that already holds it.
pub fn reserve_cid(cid: u32) -> Result<OwnedFd, VsockError> {
    reserve_cid_on(Path::new(VHOST_VSOCK), cid)
}

fn reserve_cid_on(device: &Path, cid: u32) -> Result<OwnedFd, VsockError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                VsockError::NoDevice
            } else {
                VsockError::Open(e)
            }
        })?;
    let fd = OwnedFd::from(file);
    // O_CLOEXEC from std; the supervisor clears it for QEMU alone.
    crate::sys::vhost_vsock_set_guest_cid(fd.as_fd(), cid).map_err(|e| {
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            VsockError::CidInUse(cid)
        } else {
            VsockError::Reserve { cid, source: e }
        }
    })?;
    Ok(fd)
}

/// Whether the host can serve vsock guests at all.
pub fn host_has_vhost() -> bool {
    Path::new(VHOST_VSOCK).exists()
}

/// An AF_VSOCK stream listener on the host, for one guest.
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
    port: u32,
    guest_cid: u32,
}

impl Listener {
    /// Listens on `port` (`None`: a free port the kernel picks) for connections from
    /// `guest_cid`. Needs a tokio runtime.
    pub fn bind(port: Option<u32>, guest_cid: u32) -> Result<Listener, VsockError> {
        let err = |e: nix::Error| VsockError::Listen {
            port,
            source: e.into(),
        };
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(err)?;
        bind(fd.as_raw_fd(), &VsockAddr::new(ANY, port.unwrap_or(ANY))).map_err(err)?;
        listen(&fd, Backlog::new(16).map_err(err)?).map_err(err)?;
        let port = getsockname::<VsockAddr>(fd.as_raw_fd())
            .map_err(err)?
            .port();
        let fd = crate::sys::async_fd(fd).map_err(|source| VsockError::Listen {
            port: Some(port),
            source,
        })?;
        Ok(Listener {
            fd,
            port,
            guest_cid,
        })
    }

    pub fn port(&self) -> u32 {
        self.port
    }

    pub fn guest_cid(&self) -> u32 {
        self.guest_cid
    }

    /// The next connection and its peer's CID. Connections from any other CID are closed
    /// unread by the caller (see [`Listener::is_guest`]).
    pub async fn accept(&self) -> io::Result<(Stream, u32)> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| crate::sys::accept_nonblocking(fd.get_ref().as_fd())) {
                Ok(Ok(conn)) => {
                    // A peer that is gone already has nothing to say; not worth an error.
                    let Ok(peer) = getpeername::<VsockAddr>(conn.as_raw_fd()) else {
                        continue;
                    };
                    return Ok((Stream::new(conn)?, peer.cid()));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    pub fn is_guest(&self, peer_cid: u32) -> bool {
        peer_cid == self.guest_cid
    }
}

/// One accepted connection, readable with tokio.
pub struct Stream {
    fd: AsyncFd<OwnedFd>,
}

impl Stream {
    fn new(fd: OwnedFd) -> io::Result<Stream> {
        Ok(Stream {
            fd: crate::sys::async_fd(fd)?,
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listener itself needs only the vsock core, which this CI machine has (it is a
    /// virtio-vsock guest); no connection can reach it here without vhost_vsock or
    /// vsock_loopback, which tests/e2e/vhost-vsock-e2e.sh covers in a nested VM.
    #[tokio::test(flavor = "current_thread")]
    async fn binds_a_port_the_kernel_picks_and_refuses_a_taken_one() {
        let a = Listener::bind(None, 3).expect("AF_VSOCK listener");
        assert!(a.port() > 1023 && a.port() != ANY, "port {}", a.port());
        assert_eq!(a.guest_cid(), 3);
        let e = Listener::bind(Some(a.port()), 4).err().expect("port taken");
        let msg = e.to_string();
        assert!(msg.contains(&format!("vsock port {}", a.port())), "{msg}");
        assert!(msg.contains("let the kernel pick one"), "{msg}");
        let b = Listener::bind(None, 4).unwrap();
        assert_ne!(a.port(), b.port());
    }

    #[test]
    fn only_the_guest_cid_is_the_guest() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _g = rt.enter();
        let l = Listener::bind(None, 7).unwrap();
        assert!(l.is_guest(7));
        for other in [1, 2, 3, 8, ANY] {
            assert!(!l.is_guest(other), "{other}");
        }
    }

    #[test]
    fn a_missing_device_says_so_and_how_to_fix_it() {
        let d = tempfile::tempdir().unwrap();
        let e = reserve_cid_on(&d.path().join("vhost-vsock"), 3).unwrap_err();
        assert!(matches!(e, VsockError::NoDevice), "{e}");
        assert!(e.to_string().contains("modprobe vhost_vsock"), "{e}");
        // A file that is no vhost device: the ioctl fails, naming the CID.
        let f = d.path().join("plain");
        std::fs::write(&f, b"").unwrap();
        let e = reserve_cid_on(&f, 3).unwrap_err();
        assert!(matches!(e, VsockError::Reserve { cid: 3, .. }), "{e}");
    }
}
