//! The one place that calls libc directly: fd flags, the child's pre-exec setup, signal
//! re-raising, sealed memfds, and the pages that hold secrets. Every `unsafe` block in the crate
//! lives here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// Makes credbridge non-dumpable: no core file of it, and no `/proc/PID/mem`, `environ` or
/// ptrace for other processes of the same uid (prctl(2) PR_SET_DUMPABLE; proc(5): the files of
/// a non-dumpable process belong to root). Its memory holds every credential in plaintext
/// until the VM has them. Called first thing in `main`. The hypervisor is not affected: exec
/// makes a process dumpable again.
pub fn set_non_dumpable() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers and changes only this process.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process is dumpable (prctl(2) PR_GET_DUMPABLE).
pub fn is_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE reads a flag of this process; the other arguments are unused.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 }
}

/// Anonymous private pages for secret bytes, apart from the heap: marked MADV_DONTDUMP so that
/// no core dump holds them (even where `fs.suid_dumpable=2` dumps non-dumpable processes),
/// locked in RAM with mlock(2) where RLIMIT_MEMLOCK allows (best effort: a failed mlock only
/// means the pages may be swapped), and zeroed and unmapped on drop. A heap buffer could share
/// its pages with anything, and the allocator may keep its bytes after free; these pages hold
/// nothing else and go back to the kernel whole.
pub struct SecretPages {
    ptr: std::ptr::NonNull<u8>,
    /// The mapped length, a multiple of the page size; 0 maps nothing.
    len: usize,
    /// How far writes may have reached: drop zeroes only this much (a 4 KiB page for a
    /// 100-byte string would otherwise cost 4096 volatile writes).
    dirty: usize,
    locked: bool,
}

// SAFETY: SecretPages owns its mapping exclusively, like a Vec owns its allocation; nothing
// else holds the pointer, so moving it to or sharing `&` across threads is sound.
unsafe impl Send for SecretPages {}
// SAFETY: as above; `&SecretPages` only reads.
unsafe impl Sync for SecretPages {}

impl SecretPages {
    /// At least `capacity` zeroed bytes. Aborts like a Vec on out-of-memory.
    pub fn new(capacity: usize) -> SecretPages {
        if capacity == 0 {
            return SecretPages {
                ptr: std::ptr::NonNull::dangling(),
                len: 0,
                dirty: 0,
                locked: false,
            };
        }
        let page = page_size();
        let len = capacity.div_ceil(page) * page;
        // SAFETY: an anonymous private mapping at an address the kernel picks; no fd, no
        // existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(len, page).expect("page-aligned layout"),
            );
        }
        // SAFETY: ptr..ptr+len is the mapping just made; madvise only sets a flag on it.
        // Failure (a kernel without MADV_DONTDUMP) leaves the pages usable.
        unsafe { libc::madvise(ptr, len, libc::MADV_DONTDUMP) };
        // SAFETY: as above; mlock fails cleanly with ENOMEM/EPERM above RLIMIT_MEMLOCK.
        let locked = unsafe { libc::mlock(ptr, len) } == 0;
        SecretPages {
            ptr: std::ptr::NonNull::new(ptr.cast()).expect("mmap never returns NULL here"),
            len,
            dirty: 0,
            locked,
        }
    }

    pub fn capacity(&self) -> usize {
        self.len
    }

    /// Whether mlock succeeded.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes (or dangling with len 0), initialised (zero pages
        // from the kernel, then our writes), and borrowed for &self's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The first `n` bytes (at most the capacity), writable; drop zeroes them.
    pub fn as_mut_prefix(&mut self, n: usize) -> &mut [u8] {
        let n = n.min(self.len);
        self.dirty = self.dirty.max(n);
        // SAFETY: as in as_slice, n <= len, and &mut self makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), n) }
    }
}

impl Drop for SecretPages {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        let dirty = self.dirty;
        zeroize::Zeroize::zeroize(self.as_mut_prefix(dirty));
        let addr = self.ptr.as_ptr().cast::<libc::c_void>();
        if self.locked {
            // SAFETY: the range is our own locked mapping.
            unsafe { libc::munlock(addr, self.len) };
        }
        // SAFETY: the range is our own mapping, unmapped once; no slice of it outlives self.
        unsafe { libc::munmap(addr, self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

/// Marks every inherited fd above stderr close-on-exec.
///
/// systemd passes socket-activation fds without FD_CLOEXEC (sd_listen_fds(3)) and microvm.nix's
/// runner opens macvtap fds before exec; anything we do not pass on purpose must not reach the
/// hypervisor. Runs first thing in `main`, before any thread or fd of our own exists.
pub fn cloexec_inherited_fds() -> io::Result<()> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        if let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        {
            if fd > 2 {
                fds.push(fd);
            }
        }
    }
    for fd in fds {
        // The read_dir handle itself is gone by now; a number that is no longer open is EBADF.
        // SAFETY: fd is only borrowed for the fcntl call; EBADF is handled below.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match fcntl(borrowed, FcntlArg::F_GETFD) {
            Ok(bits) => {
                let flags = FdFlag::from_bits_truncate(bits) | FdFlag::FD_CLOEXEC;
                fcntl(borrowed, FcntlArg::F_SETFD(flags))?;
            }
            Err(nix::errno::Errno::EBADF) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether `fd` is open in this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    if fd < 0 {
        return false;
    }
    // SAFETY: borrowed for one F_GETFD call, which fails cleanly with EBADF if fd is not open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD).is_ok()
}

/// Takes ownership of an inherited fd (socket activation).
pub fn own_inherited(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the fd was handed to us by LISTEN_FDS, checked open, and is claimed exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Prepares the hypervisor child between fork and exec.
///
/// - the signal mask is emptied: std and tokio children inherit the parent's blocked mask, and a
///   hypervisor with SIGTERM blocked ignores our stop escalation (systemd.md section 5);
/// - SIGHUP/SIGINT/SIGTERM/SIGQUIT/SIGPIPE go back to their defaults, so an ignored disposition
///   (nohup, a shell) is not inherited across exec;
/// - PR_SET_PDEATHSIG(SIGKILL): if credbridge dies, even by SIGKILL, the hypervisor must not
///   outlive it holding the secrets;
/// - FD_CLOEXEC is cleared on exactly the fds the child is meant to have.
///
/// Only async-signal-safe calls, no allocation: `keep` is moved in and only read.
pub fn prepare_child(cmd: &mut tokio::process::Command, keep: Vec<RawFd>, parent: libc::pid_t) {
    // SAFETY: the closure runs in the forked child before exec; it only makes raw syscalls
    // (sigprocmask, signal, prctl, getppid, fcntl) that are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for sig in [
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGQUIT,
                libc::SIGPIPE,
            ] {
                libc::signal(sig, libc::SIG_DFL);
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect; then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(125);
            }
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Ends credbridge the way the child ended: by the same signal, with its default action.
///
/// systemd's `Restart=on-abnormal` and `SuccessExitStatus=` then see the truth. Core dumps are
/// disabled first: the crash was the hypervisor's, and a core of credbridge would mislead.
pub fn die_by_signal(sig: i32) -> ! {
    // SAFETY: plain libc calls on our own process with valid arguments; setrlimit takes a
    // pointer to a stack value that outlives the call.
    unsafe {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        libc::signal(sig, libc::SIG_DFL);
    }
    if let Ok(signal) = Signal::try_from(sig) {
        let mut set = SigSet::empty();
        set.add(signal);
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
        let _ = nix::sys::signal::raise(signal);
    }
    // A signal whose default action is to ignore or stop: fall back to the shell convention.
    std::process::exit(128 + sig);
}

/// A memfd holding `contents`, sealed so that nobody can change it afterwards.
///
/// This is how an OEM string reaches QEMU without a file on disk or a value in argv: the
/// child inherits the fd and reads `-smbios type=11,path=/dev/fd/N` (opening `/dev/fd/N` of a
/// memfd reopens the same memory, at offset 0). MFD_CLOEXEC keeps it from every other child;
/// the supervisor clears the flag for the hypervisor alone. The seals (memfd_create(2),
/// "File sealing") make it immutable and fixed in size: F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW,
/// then F_SEAL_SEAL so that no seal can be removed or added. The kernel refuses F_SEAL_WRITE
/// while a writable shared mapping exists; there is none, we write with write(2).
///
/// `name` is only a label in /proc/PID/fd (`/memfd:NAME`); never put a value in it.
pub fn sealed_memfd(name: &str, contents: &[u8]) -> io::Result<OwnedFd> {
    use nix::fcntl::SealFlag;
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, contents)?;
    let fd = OwnedFd::from(file);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SEAL
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE,
        ),
    )?;
    Ok(fd)
}

/// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK, the connection owned.
pub fn accept_nonblocking(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::sys::socket::{SockFlag, accept4};
    use std::os::fd::{AsRawFd, FromRawFd};
    let fd = accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // SAFETY: accept4 just returned this fd; nothing else holds it, so it is owned exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers an owned fd with tokio's reactor (for sockets tokio has no type for: AF_VSOCK).
/// Needs a tokio runtime.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open until dropped, and it is dropped only with the AsyncFd that
    // owns it; its as_raw_fd always returns the same number.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// How many more fds this process may open: RLIMIT_NOFILE's soft limit less the fds open
/// below it (a new fd always takes the lowest free number, so any above the limit do not count).
pub fn fd_headroom() -> io::Result<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let soft = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    let mut open = 0usize;
    // The directory's own fd is in the listing too, and is closed again right after.
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<usize>().ok())
        {
            if fd < soft {
                open += 1;
            }
        }
    }
    Ok(soft.saturating_sub(open.saturating_sub(1)))
}

// VHOST_VSOCK_SET_GUEST_CID = _IOW(VHOST_VIRTIO 0xAF, 0x60, __u64) (linux/vhost.h).
nix::ioctl_write_ptr!(vhost_vsock_set_guest_cid_raw, 0xAF, 0x60, u64);

/// Claims `cid` for the guest on a `/dev/vhost-vsock` fd; EADDRINUSE if another fd has it.
pub fn vhost_vsock_set_guest_cid(fd: BorrowedFd<'_>, cid: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let cid = u64::from(cid);
    // SAFETY: the ioctl reads one u64 through the pointer, which lives for the call; an fd
    // that is not a vhost-vsock device fails with ENOTTY and changes nothing.
    unsafe { vhost_vsock_set_guest_cid_raw(fd.as_raw_fd(), &cid) }?;
    Ok(())
}

/// Reaps children credbridge did not spawn and leaves `own` alone.
///
/// microvm.nix's runner starts its socat notify relay in the background and then execs the
/// hypervisor command, which is credbridge: the relay becomes our child. When it exits it would
/// stay a zombie, since tokio waits only for the processes it spawned. `waitpid(-1)` would
/// race tokio for the hypervisor's status, so each stray is waited for by pid, found in
/// /proc/self/task/*/children. Returns the pids reaped.
pub fn reap_strays(own: Option<u32>) -> Vec<i32> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let mut reaped = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return reaped;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if Some(pid as u32) == own {
                continue;
            }
            let pid = nix::unistd::Pid::from_raw(pid);
            if let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
                waitpid(pid, Some(WaitPidFlag::WNOHANG))
            {
                reaped.push(pid.as_raw());
            }
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    /// The VmFlags line of the /proc/self/smaps entry that starts at `addr`.
    fn vm_flags_at(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        while let Some(line) = lines.next() {
            let start = line.split('-').next().unwrap_or("");
            if usize::from_str_radix(start, 16).ok() != Some(addr) {
                continue;
            }
            return lines
                .find_map(|l| l.strip_prefix("VmFlags:"))
                .unwrap()
                .to_owned();
        }
        panic!("no mapping at {addr:#x}");
    }

    #[test]
    fn secret_pages_are_not_dumped_and_locked_when_the_limit_allows() {
        // #11: secret buffers are kept out of core dumps (the `dd` flag in smaps(5)) and locked
        // (`lo`) where RLIMIT_MEMLOCK allows.
        let mut p = SecretPages::new(3 * 4096 + 1);
        assert_eq!(p.capacity() % page_size(), 0);
        assert!(p.capacity() > 3 * 4096);
        assert!(p.as_slice().iter().all(|&b| b == 0));
        p.as_mut_prefix(1)[0] = 7;
        let addr = p.as_slice().as_ptr() as usize;
        let flags = vm_flags_at(addr);
        let flags: Vec<&str> = flags.split_whitespace().collect();
        assert!(flags.contains(&"dd"), "{flags:?}");
        assert_eq!(flags.contains(&"lo"), p.is_locked(), "{flags:?}");
        drop(p);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        assert!(!smaps.contains(&format!("{addr:x}-")), "unmapped on drop");
        let empty = SecretPages::new(0);
        assert!(empty.as_slice().is_empty());
    }

    #[test]
    fn non_dumpable_after_the_call() {
        assert!(is_dumpable(), "a test process starts dumpable");
        set_non_dumpable().unwrap();
        assert!(!is_dumpable());
    }

    #[test]
    fn sealed_memfd_reads_back_and_refuses_changes() {
        let value: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let fd = sealed_memfd("credbridge-test", &value).unwrap();
        // Reading through /proc/self/fd reopens it, as QEMU does with /dev/fd/N.
        let back = std::fs::read(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .unwrap();
        assert_eq!(back, value);
        let mut file = std::fs::File::from(fd);
        file.rewind().unwrap();
        let mut again = Vec::new();
        file.read_to_end(&mut again).unwrap();
        assert_eq!(again, value);
        assert!(file.write_all(b"x").is_err(), "F_SEAL_WRITE");
        assert!(file.set_len(1).is_err(), "F_SEAL_SHRINK");
        assert!(file.set_len(10_000).is_err(), "F_SEAL_GROW");
        let seals = fcntl(&file, FcntlArg::F_GET_SEALS).unwrap();
        assert_ne!(seals & libc::F_SEAL_SEAL, 0);
        let flags = fcntl(&file, FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "close-on-exec until the child clears it"
        );
    }
}
