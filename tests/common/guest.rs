//! A guest on cloud-hypervisor's hybrid vsock socket `<vsock socket>_PORT`, where
//! cloud-hypervisor connects for each guest connection: its systemd's notifications, and a
//! hostile guest's junk (#11). Shared by tests/guest_flood.rs and benches/startup.rs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// Junk connections, as fast as one thread can make them, until `stop`, counted in `sent`:
/// short junk, 8 KiB (twice what a notification may be), a STATUS= line (relayed, but not
/// logged each time), nothing at all.
pub fn flood(
    path: PathBuf,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let big = vec![b'A'; 8192];
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut s) = UnixStream::connect(&path) else {
                thread::sleep(Duration::from_millis(1));
                continue;
            };
            let _ = match i % 4 {
                0 => s.write_all(b"X_JUNK=1\nSTATUS"),
                1 => s.write_all(&big),
                2 => s.write_all(b"STATUS=junk status from a hostile guest"),
                _ => Ok(()),
            };
            i += 1;
            sent.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// What the guest's systemd (>= 256) does for one notification: connect, write, shut down the
/// write side, wait (up to `wait`) for the host to close.
pub fn systemd_notify(path: &Path, msg: &str, wait: Duration) -> std::io::Result<()> {
    let mut s = UnixStream::connect(path)?;
    s.write_all(msg.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(wait))?;
    s.read_to_end(&mut Vec::new())?;
    Ok(())
}
