//! Recording for tests, into `$FAKE_CH_RECORD_DIR` when set. Whole files are written to a
//! temporary name and renamed (a reader never sees half a file); `*.jsonl`/`*.log` files get one
//! complete line per append, under a lock.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

static RECORDER: OnceLock<Recorder> = OnceLock::new();
static START: OnceLock<Instant> = OnceLock::new();

struct Recorder {
    dir: Option<PathBuf>,
    lock: Mutex<()>,
}

/// Sets the start instant and the record directory; call first thing in `main`.
pub fn init(dir: Option<PathBuf>) {
    START.get_or_init(Instant::now);
    RECORDER.get_or_init(|| Recorder {
        dir,
        lock: Mutex::new(()),
    });
}

/// Milliseconds (monotonic) since the fake started.
pub fn mono_ms() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

/// `CLOCK_REALTIME` in nanoseconds since the epoch.
pub fn realtime_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub fn enabled() -> bool {
    RECORDER.get().is_some_and(|r| r.dir.is_some())
}

/// A string as JSON, or `{"b64": ...}` when it is not UTF-8.
pub fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => json!({ "b64": STANDARD.encode(b) }),
    }
}

pub fn os_json(s: &std::ffi::OsStr) -> Value {
    bytes_json(s.as_bytes())
}

pub fn b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

/// Writes `name` atomically (tmp file + rename).
pub fn write_file(name: &str, contents: &[u8]) {
    let Some(r) = RECORDER.get() else { return };
    let Some(dir) = &r.dir else { return };
    let _g = r.lock.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = fs::write(&tmp, contents).and_then(|()| fs::rename(&tmp, dir.join(name)));
    if let Err(e) = res {
        eprintln!("fake-cloud-hypervisor: cannot record {name}: {e}");
    }
}

pub fn write_json(name: &str, v: &Value) {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    write_file(name, &s);
}

/// Appends one line (a newline is added).
pub fn append_line(name: &str, line: &str) {
    let Some(r) = RECORDER.get() else { return };
    let Some(dir) = &r.dir else { return };
    let _g = r.lock.lock().unwrap_or_else(|e| e.into_inner());
    let res = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = res {
        eprintln!("fake-cloud-hypervisor: cannot record {name}: {e}");
    }
}

pub fn append_json(name: &str, v: &Value) {
    append_line(name, &v.to_string());
}

/// The open fds of this process: number, `readlink /proc/self/fd/N`, and the `flags:` of
/// `/proc/self/fdinfo/N` (octal), from which `nonblock` (O_NONBLOCK = 0o4000) is taken.
pub fn open_fds() -> Vec<Value> {
    let mut nums: Vec<i32> = match fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return vec![],
    };
    nums.sort_unstable();
    // The directory handle used for the listing is closed by now: its fd fails below.
    nums.into_iter()
        .filter_map(|fd| {
            let target = fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            let flags = fdinfo_flags(fd)?;
            Some(json!({
                "fd": fd,
                "target": os_json(target.as_os_str()),
                "flags_octal": format!("{flags:o}"),
                "nonblock": flags & 0o4000 != 0,
                "cloexec": flags & 0o2000000 != 0,
            }))
        })
        .collect()
}

/// The `flags:` field of `/proc/self/fdinfo/N`.
pub fn fdinfo_flags(fd: i32) -> Option<u32> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}
