//! Unix sockets on a path that secrets travel through (the hypervisor API socket, the guest's
//! notify relay): whether one is live, binding one whose mode is never wider than asked,
//! which directories are safe to bind in, who can reach an existing one, and who answers.
//!
//! Linux grants connect(2) on a path socket to whoever can search every directory on the way
//! and write the socket inode (unix(7), "Pathname socket ownership and permissions"); root
//! passes every check. Whoever can rename entries in one of those directories can put their
//! own socket at the path instead. Both are checked here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, getsockopt, listen,
    socket, sockopt,
};

/// What is at a socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Absent,
    NotASocket,
    /// Nobody listens: connect(2) was refused.
    Stale,
    /// Somebody listens, or the backlog is full (which also means somebody listens).
    Live,
}

/// Finds out whether a socket at `path` is in use, without blocking.
///
/// Only ECONNREFUSED means stale. A blocking connect to a listener whose backlog is full waits
/// until it accepts; nonblocking, it fails at once with EAGAIN, which means live. Any other
/// error (EACCES from a socket we may not write, say) says nothing about whether it is in use,
/// so it is returned and the socket left alone.
pub fn probe(path: &Path) -> io::Result<Probe> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Ok(Probe::NotASocket),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Absent),
        Err(e) => return Err(e),
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => Ok(Probe::Live),
        Err(Errno::ECONNREFUSED) => Ok(Probe::Stale),
        Err(Errno::ENOENT) => Ok(Probe::Absent),
        Err(e) => Err(e.into()),
    }
}

/// Binds and listens on `path` with `mode`, so that the socket never exists on disk with a
/// wider mode (the umask's), and never replaces anything at `path`.
///
/// AF_UNIX on Linux takes its inode mode from the umask at bind(2); fchmod on the socket fd
/// does not change the inode. Changing the umask is process-wide and would race other threads
/// that create files. So the socket is bound in a fresh 0700 directory beside `path` (the same
/// filesystem), chmod-ed, listened on, and renamed into place with RENAME_NOREPLACE. Bound
/// through `/proc/self/fd/N/s`, the directory's O_PATH fd, so that the temporary path is never
/// longer than `path` itself. getsockname(2) on the fd later shows that temporary name.
pub fn bind_listen(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = TempDir::create(parent)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let dir = nix::fcntl::open(
        &tmp.0,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let inner = format!("/proc/self/fd/{}/s", dir.as_raw_fd());
    bind(fd.as_raw_fd(), &UnixAddr::new(inner.as_str())?)?;
    let bound = tmp.0.join("s");
    std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(mode))?;
    listen(&fd, Backlog::new(32).unwrap_or(Backlog::MAXCONN))?;
    rename_noreplace(&bound, path)?;
    Ok(fd)
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        // A filesystem without RENAME_NOREPLACE: the caller's probe found the path free.
        Err(Errno::EINVAL) if std::fs::symlink_metadata(to).is_err() => std::fs::rename(from, to),
        Err(e) => Err(e.into()),
    }
}

/// A private directory for one bind, removed with whatever is left in it.
struct TempDir(PathBuf);

impl TempDir {
    fn create(parent: &Path) -> io::Result<TempDir> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = parent.join(format!(".credbridge-bind.{}.{n}", std::process::id()));
        let mut b = std::fs::DirBuilder::new();
        b.mode(0o700);
        match b.create(&p) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left by a crashed credbridge whose pid we now have.
                std::fs::remove_dir_all(&p)?;
                b.create(&p)?;
            }
            other => other?,
        }
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    /// unlink and rmdir by name: remove_dir_all needs an fd, and running out of fds is one of
    /// the errors this cleans up after.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A directory on the way to a socket that someone other than us (or root) controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeDir {
    pub dir: PathBuf,
    pub why: String,
}

/// Refuses a directory chain in which another user could rename our socket away and put
/// theirs in its place. Every directory from `dir` up to `/`, as written and with symlinks
/// resolved, must be owned by us or root, and writable by group or others only with the
/// sticky bit (then nobody else may rename or remove our entries: /tmp is fine).
pub fn check_dir_chain(dir: &Path) -> Result<(), UnsafeDir> {
    let me = nix::unistd::geteuid().as_raw();
    let fail = |dir: &Path, why: String| UnsafeDir {
        dir: dir.to_owned(),
        why,
    };
    let absolute = std::path::absolute(dir).map_err(|e| fail(dir, e.to_string()))?;
    let mut chains = vec![absolute.clone()];
    if let Ok(real) = absolute.canonicalize() {
        if real != absolute {
            chains.push(real);
        }
    }
    for chain in chains {
        for d in ancestors(&chain) {
            let m = std::fs::metadata(&d).map_err(|e| fail(&d, e.to_string()))?;
            let mode = m.mode() & 0o7777;
            if m.uid() != me && m.uid() != 0 {
                return Err(fail(
                    &d,
                    format!("is owned by uid {}, not by us (uid {me}) or root", m.uid()),
                ));
            }
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                let who = if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                };
                return Err(fail(
                    &d,
                    format!("is writable by {who} (mode {mode:04o}) without the sticky bit"),
                ));
            }
        }
    }
    Ok(())
}

/// `/a/b/c` -> `/a/b/c`, `/a/b`, `/a`, `/` (lexically, `..` resolved against what precedes).
fn ancestors(abs: &Path) -> Vec<PathBuf> {
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    clean.ancestors().map(Path::to_owned).collect()
}

/// Who besides the socket's owner (and root) can connect to a path socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    OwnerOnly,
    /// Members of this group (the socket's, or a directory's on the way).
    Group(u32),
    Everyone,
}

/// Works out `Reach` from the socket's mode and the directories on the way: a directory owned
/// by us or root without search permission for group and others stops everyone else, one
/// without it for others stops all but its group. A directory owned by anyone else is counted
/// as open: its owner can change its mode.
pub fn reach(socket: &Path) -> io::Result<Reach> {
    let me = nix::unistd::geteuid().as_raw();
    let m = std::fs::metadata(socket)?;
    let mode = m.mode();
    let absolute = std::path::absolute(socket)?;
    let mut dir_group: Option<u32> = None;
    for d in ancestors(&absolute).into_iter().skip(1) {
        let dm = std::fs::metadata(&d)?;
        if dm.uid() != me && dm.uid() != 0 {
            continue;
        }
        match dm.mode() & 0o011 {
            0 => return Ok(Reach::OwnerOnly),
            0o010 => dir_group = dir_group.or(Some(dm.gid())),
            _ => {}
        }
    }
    Ok(match (mode & 0o002 != 0, mode & 0o020 != 0, dir_group) {
        (true, _, None) => Reach::Everyone,
        (true, _, Some(g)) => Reach::Group(g),
        (false, true, _) => Reach::Group(m.gid()),
        (false, false, _) => Reach::OwnerOnly,
    })
}

/// Who listens on the other end of a connected Unix socket.
///
/// SO_PEERCRED on a connecting socket reports the process that called listen(2) on the other
/// end, with its credentials at that time (unix(7), socket(7)): not the process that accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRule {
    /// credbridge called listen() itself, so only its own pid is right: another listener at
    /// the same path (someone renamed ours away) has another pid.
    ListenedBy(u32),
    /// Someone else listened (socket activation, a parent's fd): root or our own uid, since a
    /// process with either could read our memory anyway.
    RootOrUid(u32),
}

impl PeerRule {
    pub fn ours() -> PeerRule {
        PeerRule::ListenedBy(std::process::id())
    }

    pub fn root_or_us() -> PeerRule {
        PeerRule::RootOrUid(nix::unistd::geteuid().as_raw())
    }

    /// `Err` names who is listening instead.
    pub fn check(&self, conn: impl AsFd) -> Result<(), String> {
        let cred = getsockopt(&conn, sockopt::PeerCredentials)
            .map_err(|e| format!("SO_PEERCRED failed: {e}"))?;
        let (pid, uid) = (cred.pid(), cred.uid());
        let ok = match *self {
            PeerRule::ListenedBy(want) => pid >= 0 && pid as u32 == want,
            PeerRule::RootOrUid(want) => uid == 0 || uid == want,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("pid {pid}, uid {uid}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn probe_tells_live_stale_absent_and_files_apart() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        assert_eq!(probe(&p).unwrap(), Probe::Absent);
        let l = UnixListener::bind(&p).unwrap();
        assert_eq!(probe(&p).unwrap(), Probe::Live);
        drop(l);
        assert_eq!(probe(&p).unwrap(), Probe::Stale);
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(probe(&f).unwrap(), Probe::NotASocket);
    }

    /// #11: a listener whose backlog is full must read as live, at once.
    #[test]
    fn probe_does_not_block_on_a_full_backlog() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(&p).unwrap()).unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        // Fill the backlog with nonblocking connects until they fail with EAGAIN.
        let mut held = Vec::new();
        for _ in 0..64 {
            let c = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK,
                None,
            )
            .unwrap();
            if connect(c.as_raw_fd(), &UnixAddr::new(&p).unwrap()).is_err() {
                break;
            }
            held.push(c);
        }
        let t = std::time::Instant::now();
        assert_eq!(probe(&p).unwrap(), Probe::Live);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn bind_listen_sets_the_mode_and_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("api.sock");
        let _fd = bind_listen(&p, 0o600).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert!(UnixStream::connect(&p).is_ok());
        let e = bind_listen(&p, 0o600).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary directory left: {left:?}");
    }

    #[test]
    fn reach_counts_the_socket_mode_unless_a_directory_shuts_others_out() {
        let d = tempfile::tempdir().unwrap();
        let chmod =
            |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        chmod(d.path(), 0o755);
        let p = d.path().join("s");
        let _l = UnixListener::bind(&p).unwrap();
        let gid = std::fs::metadata(&p).unwrap().gid();
        for (sock, dir, want) in [
            (0o600, 0o755, Reach::OwnerOnly),
            (0o644, 0o755, Reach::OwnerOnly),
            (0o660, 0o755, Reach::Group(gid)),
            (0o666, 0o755, Reach::Everyone),
            (0o666, 0o711, Reach::Everyone),
            (0o666, 0o750, Reach::Group(gid)),
            (0o777, 0o700, Reach::OwnerOnly),
        ] {
            chmod(&p, sock);
            chmod(d.path(), dir);
            assert_eq!(reach(&p).unwrap(), want, "socket {sock:o} in {dir:o}");
        }
    }

    #[test]
    fn dir_chain_rules() {
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("ok");
        std::fs::create_dir(&ok).unwrap();
        assert_eq!(check_dir_chain(&ok), Ok(()));
        let sticky = d.path().join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(check_dir_chain(&sticky), Ok(()));
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = check_dir_chain(&open.join("..").join("open")).unwrap_err();
        assert_eq!(e.dir, open);
        assert!(e.why.contains("its group"), "{e:?}");
        // A safe directory below an unsafe one is still unsafe.
        let below = open.join("below");
        std::fs::create_dir(&below).unwrap();
        assert_eq!(check_dir_chain(&below).unwrap_err().dir, open);
    }
}
