//! The cloud-hypervisor API socket: taken from socket activation, or bound by credbridge before
//! the hypervisor starts, and always handed to it as a listening fd.
//!
//! credbridge listens itself because cloud-hypervisor never calls listen() on an `fd=` socket:
//! a bound but not listening fd makes its HTTP thread spin and its SIGTERM hang
//! (cloud-hypervisor.md section 3).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{Backlog, SockType, UnixAddr, getsockname, getsockopt, listen, sockopt};

use crate::hostenv::HostEnv;
use crate::sockpath::{self, PeerRule, Probe, Reach};
use crate::sys;

/// sun_path is 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ApiSocketError {
    #[error(
        "socket activation passed {count} fds and none is named `api`\nhint: set FileDescriptorName=api in the .socket unit"
    )]
    NoApiFd { count: usize },
    #[error(
        "socket-activated fd {fd} (`api`) is not a listening AF_UNIX stream socket ({why})\nhint: use ListenStream=/path with Accept=no in the .socket unit"
    )]
    NotListening { fd: i32, why: String },
    #[error(
        "{describe} is the abstract socket @{name}, which every local user can connect to and read every secret from through the API\nhint: use ListenStream=/run/NAME/api.sock (a path) with SocketMode=0600 in the .socket unit"
    )]
    Abstract { describe: String, name: String },
    #[error(
        "{describe} ({}) can be connected to by {who}, who could read every secret from it through the API\nhint: set SocketMode=0600 in the .socket unit{}",
        path.display(),
        if *group { ", or pass --api-socket-group-access if that group is meant to reach it" } else { "" }
    )]
    Reachable {
        describe: String,
        path: PathBuf,
        who: String,
        group: bool,
    },
    #[error(
        "{describe} ({}) is owned by uid {uid}, not by credbridge's user (uid {me}) or root; its owner could let anyone connect\nhint: set SocketUser= in the .socket unit to the service's user, and SocketMode=0600",
        path.display()
    )]
    Owner {
        describe: String,
        path: PathBuf,
        uid: u32,
        me: u32,
    },
    #[error(
        "refusing the API socket {}: directory {} {why}, so another user could put their own socket in its place and receive the VM config with every secret\nhint: {hint}",
        path.display(),
        dir.display()
    )]
    UnsafeDir {
        path: PathBuf,
        dir: PathBuf,
        why: String,
        hint: &'static str,
    },
    #[error("API socket path {} is {len} bytes; AF_UNIX paths are at most {MAX_SOCKET_PATH}\nhint: use a shorter --api-socket path or a relative one", path.display())]
    PathTooLong { path: PathBuf, len: usize },
    #[error("API socket {} is in use by another process\nhint: stop the other VM or choose another --api-socket path", path.display())]
    InUse { path: PathBuf },
    #[error("API socket path {} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot tell whether the API socket {} is in use ({source}); refusing to remove it", path.display())]
    Probe { path: PathBuf, source: io::Error },
    #[error("cannot create the API socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot create a private directory for the API socket under {}: {source}\nhint: set RuntimeDirectory= in the unit", base.display())]
    PrivateDir { base: PathBuf, source: io::Error },
}

/// Hints for a directory another user controls, by who made it.
const HINT_ACTIVATED: &str = "keep the .socket unit's directory owned by root and not writable by others (DirectoryMode=0755)";
const HINT_BOUND: &str = "put the API socket in a directory only credbridge's user and root can write, such as the unit's RuntimeDirectory=";

enum Cleanup {
    Nothing,
    RemoveSocket(PathBuf),
    RemoveDir(PathBuf),
}

pub struct ApiSocket {
    pub fd: OwnedFd,
    /// Where credbridge connects to reach the hypervisor's API.
    pub connect_to: std::os::unix::net::SocketAddr,
    /// Who must be listening there (SO_PEERCRED), checked before anything is sent.
    pub peer: PeerRule,
    /// For messages: how the socket was obtained.
    pub describe: String,
    cleanup: Cleanup,
}

impl ApiSocket {
    /// A socket-activated fd named `api`, or a single unnamed one (sd_listen_fds_with_names(3)).
    /// `group_ok`: members of the socket's group may connect (`--api-socket-group-access`).
    pub fn from_activation(
        env: &HostEnv,
        group_ok: bool,
    ) -> Result<Option<ApiSocket>, ApiSocketError> {
        let Some((count, names)) = env.listen_fds() else {
            return Ok(None);
        };
        if count == 0 {
            return Ok(None);
        }
        let index = match &names {
            Some(names) => names.iter().position(|n| n == "api").or_else(|| {
                (count == 1 && matches!(names[0].as_str(), "" | "unknown" | "stored")).then_some(0)
            }),
            None => (count == 1).then_some(0),
        };
        let Some(index) = index.filter(|&i| i < count) else {
            return Err(ApiSocketError::NoApiFd { count });
        };
        let raw = 3 + index as i32;
        Self::adopt(raw, format!("socket-activated fd {raw}"), false, group_ok).map(Some)
    }

    /// `--api-socket fd=N` in the argv: an fd our parent opened. If it is bound but not yet
    /// listening, credbridge calls listen() itself, which cloud-hypervisor never does.
    pub fn from_inherited_fd(raw: i32, group_ok: bool) -> Result<ApiSocket, ApiSocketError> {
        Self::adopt(raw, format!("inherited fd {raw}"), true, group_ok)
    }

    fn adopt(
        raw: i32,
        describe: String,
        may_listen: bool,
        group_ok: bool,
    ) -> Result<ApiSocket, ApiSocketError> {
        if !sys::fd_is_open(raw) {
            return Err(ApiSocketError::NotListening {
                fd: raw,
                why: "not open".into(),
            });
        }
        let fd = sys::own_inherited(raw);
        let not = |why: String| ApiSocketError::NotListening { fd: raw, why };
        match getsockopt(&fd, sockopt::SockType) {
            Ok(SockType::Stream) => {}
            Ok(other) => return Err(not(format!("type {other:?}"))),
            Err(e) => return Err(not(e.to_string())),
        }
        let addr: UnixAddr = getsockname(fd.as_raw_fd()).map_err(|e| not(e.to_string()))?;
        // Whoever called listen() is who SO_PEERCRED names later.
        let peer = match getsockopt(&fd, sockopt::AcceptConn) {
            Ok(true) => PeerRule::root_or_us(),
            Ok(false) if may_listen => {
                listen(&fd, Backlog::new(32).unwrap_or(Backlog::MAXCONN))
                    .map_err(|e| not(format!("listen: {e}")))?;
                PeerRule::ours()
            }
            Ok(false) => return Err(not("not listening (Accept=yes?)".into())),
            Err(e) => return Err(not(e.to_string())),
        };
        let connect_to = if let Some(p) = addr.path() {
            check_reach(raw, p, &describe, group_ok)?;
            std::os::unix::net::SocketAddr::from_pathname(p).map_err(|e| not(e.to_string()))?
        } else if let Some(name) = addr.as_abstract() {
            return Err(ApiSocketError::Abstract {
                describe,
                name: String::from_utf8_lossy(name).into_owned(),
            });
        } else {
            return Err(not("unnamed socket".into()));
        };
        Ok(ApiSocket {
            fd,
            connect_to,
            peer,
            describe,
            cleanup: Cleanup::Nothing,
        })
    }

    /// Binds `path` (relative to the working directory, like microvm.nix's `<name>.sock`) with
    /// mode 0600, so `microvm-shutdown` and `ch-remote` keep working.
    pub fn bind_path(path: &Path) -> Result<ApiSocket, ApiSocketError> {
        let fd = bind_listen(path)?;
        Ok(ApiSocket {
            connect_to: connect_addr(path)?,
            fd,
            peer: PeerRule::ours(),
            describe: path.display().to_string(),
            cleanup: Cleanup::RemoveSocket(path.to_owned()),
        })
    }

    /// A socket nobody else needs to find: a fresh 0700 directory under `$RUNTIME_DIRECTORY`,
    /// else /run/credbridge. The directory is removed again on every error after it was made.
    pub fn bind_private(env: &HostEnv) -> Result<ApiSocket, ApiSocketError> {
        let base = env
            .runtime_directory()
            .unwrap_or_else(|| PathBuf::from("/run/credbridge"));
        let dir = base.join(format!("api.{}", env.pid));
        let mkdir = |p: &Path, recursive| {
            std::fs::DirBuilder::new()
                .recursive(recursive)
                .mode(0o700)
                .create(p)
        };
        let private_dir = |source| ApiSocketError::PrivateDir {
            base: base.clone(),
            source,
        };
        if !base.exists() {
            mkdir(&base, true).map_err(private_dir)?;
        }
        sockpath::check_dir_chain(&base).map_err(|u| ApiSocketError::UnsafeDir {
            path: dir.join("api.sock"),
            dir: u.dir,
            why: u.why,
            hint: "set RuntimeDirectory= in the unit (systemd makes it owned by the service's user)",
        })?;
        match mkdir(&dir, false) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left by an earlier credbridge with our pid (a pid reused after a crash).
                std::fs::remove_dir_all(&dir).map_err(private_dir)?;
                mkdir(&dir, false)
            }
            other => other,
        }
        .map_err(private_dir)?;
        let made = || -> Result<ApiSocket, ApiSocketError> {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(private_dir)?;
            let path = dir.join("api.sock");
            let fd = bind_listen(&path)?;
            Ok(ApiSocket {
                connect_to: connect_addr(&path)?,
                fd,
                peer: PeerRule::ours(),
                describe: path.display().to_string(),
                cleanup: Cleanup::RemoveDir(dir.clone()),
            })
        };
        made().inspect_err(|_| {
            // An fd limit hit in socket(), say: leave no empty api.PID behind (#11). By name,
            // since remove_dir_all needs an fd.
            let _ = std::fs::remove_file(dir.join("api.sock"));
            let _ = std::fs::remove_dir(&dir);
        })
    }

    /// Removes what credbridge created. A socket-activated socket stays: it belongs to the
    /// .socket unit and must survive our restarts.
    pub fn cleanup(&mut self) {
        match std::mem::replace(&mut self.cleanup, Cleanup::Nothing) {
            Cleanup::Nothing => {}
            Cleanup::RemoveSocket(p) => {
                let _ = std::fs::remove_file(p);
            }
            Cleanup::RemoveDir(d) => {
                // By name first: remove_dir_all needs an fd, and the fd limit may be why we
                // are cleaning up.
                let _ = std::fs::remove_file(d.join("api.sock"));
                if std::fs::remove_dir(&d).is_err() {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
    }
}

/// A start that fails after the socket was made (the event pipe, the spawn) leaves nothing
/// behind either (#11).
impl Drop for ApiSocket {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A path socket someone else bound: only its owner (us or root) may connect, or its group
/// with `group_ok`; and nobody else may be able to replace it.
fn check_reach(fd: i32, path: &Path, describe: &str, group_ok: bool) -> Result<(), ApiSocketError> {
    let meta = std::fs::metadata(path).map_err(|e| ApiSocketError::NotListening {
        fd,
        why: format!("{}: {e}", path.display()),
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(ApiSocketError::Owner {
            describe: describe.to_owned(),
            path: path.to_owned(),
            uid: meta.uid(),
            me,
        });
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    sockpath::check_dir_chain(parent).map_err(|u| ApiSocketError::UnsafeDir {
        path: path.to_owned(),
        dir: u.dir,
        why: u.why,
        hint: HINT_ACTIVATED,
    })?;
    let reach = sockpath::reach(path).map_err(|e| ApiSocketError::NotListening {
        fd,
        why: format!("{}: {e}", path.display()),
    })?;
    let who = match reach {
        Reach::OwnerOnly => return Ok(()),
        Reach::Group(_) if group_ok => return Ok(()),
        Reach::Group(gid) => format!("members of group {gid}"),
        Reach::Everyone => "every local user".to_owned(),
    };
    Err(ApiSocketError::Reachable {
        describe: describe.to_owned(),
        path: path.to_owned(),
        group: matches!(reach, Reach::Group(_)),
        who,
    })
}

fn connect_addr(path: &Path) -> Result<std::os::unix::net::SocketAddr, ApiSocketError> {
    std::os::unix::net::SocketAddr::from_pathname(path).map_err(|source| ApiSocketError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Refuses a directory another user could rename the socket out of, replaces a stale socket
/// (never a live one or anything else), and binds with mode 0600 from the first moment.
fn bind_listen(path: &Path) -> Result<OwnedFd, ApiSocketError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ApiSocketError::PathTooLong {
            path: path.to_owned(),
            len,
        });
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sockpath::check_dir_chain(parent).map_err(|u| ApiSocketError::UnsafeDir {
        path: path.to_owned(),
        dir: u.dir,
        why: u.why,
        hint: HINT_BOUND,
    })?;
    let err = |source: io::Error| ApiSocketError::Bind {
        path: path.to_owned(),
        source,
    };
    match sockpath::probe(path) {
        Ok(Probe::Absent) => {}
        Ok(Probe::Stale) => std::fs::remove_file(path).map_err(err)?,
        Ok(Probe::Live) => {
            return Err(ApiSocketError::InUse {
                path: path.to_owned(),
            });
        }
        Ok(Probe::NotASocket) => {
            return Err(ApiSocketError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(ApiSocketError::Probe {
                path: path.to_owned(),
                source,
            });
        }
    }
    sockpath::bind_listen(path, 0o600).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_0600_and_replaces_a_stale_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vm.sock");
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap()); // stale: nobody listens
        let mut s = ApiSocket::bind_path(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            std::os::unix::net::UnixStream::connect(&p).is_ok(),
            "listening"
        );
        assert!(matches!(
            ApiSocket::bind_path(&p),
            Err(ApiSocketError::InUse { .. })
        ));
        s.cleanup();
        assert!(!p.exists());
    }

    #[test]
    fn refuses_to_remove_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vm.sock");
        std::fs::write(&p, b"precious").unwrap();
        assert!(matches!(
            ApiSocket::bind_path(&p),
            Err(ApiSocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    }

    #[test]
    fn private_socket_lives_in_a_0700_directory() {
        let d = tempfile::tempdir().unwrap();
        let env = HostEnv {
            vars: vec![("RUNTIME_DIRECTORY".into(), d.path().into())],
            pid: 4242,
        };
        let mut s = ApiSocket::bind_private(&env).unwrap();
        let dir = d.path().join("api.4242");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(dir.join("api.sock").exists());
        s.cleanup();
        assert!(!dir.exists());
    }

    #[test]
    fn too_long_path_is_refused() {
        let p = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        assert!(matches!(
            ApiSocket::bind_path(&p),
            Err(ApiSocketError::PathTooLong { .. })
        ));
    }
}
