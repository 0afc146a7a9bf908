//! The start-path benchmark that `bench/run.sh` prints (issue #7): what credbridge costs on the
//! way to a running VM, measured against the fake cloud-hypervisor started directly and against
//! the shell pattern units use today, all in one run so that the ratios compare like with like.
//!
//! Measured per round, round-robin over every variant so that drift in the machine's load
//! spreads evenly:
//! - start → ready: from `spawn` to the fake's `vm:booted` event (read from its
//!   `--event-monitor`, a FIFO we hold) when it runs alone or under the shell pattern, and to
//!   `READY=1` on our notify socket under `credbridge run`;
//! - `vm:booted` → `READY=1`: the fake records the OEM strings (`oem_strings.json`, renamed
//!   into place, seen here through inotify) immediately before it writes `vm:booted`;
//! - guest `READY=1` → host `READY=1` with `--ready guest`: the fake, acting as the guest,
//!   records the wall-clock time it wrote the message; once with a sender that shuts down its
//!   write side after the message (systemd >= 256 through cloud-hypervisor >= 53 or kernel
//!   vhost-vsock), once with one whose half-close never arrives (cloud-hypervisor <= 52);
//! - the relay under a flood of junk guest connections (#11): credbridge's peak RSS, CPU
//!   seconds, log bytes, and how long a `READY=1` sent in the middle of it takes;
//! - VmRSS/VmHWM of credbridge once it is supervising, and the binary's size;
//! - the criterion medians of `benches/codec.rs`, read from its `estimates.json`.
//!
//! Needs the release fake: `bench/run.sh` builds it. Alone: `cargo bench --bench startup`.
//! `BENCH_ROUNDS` (default 20) sets the rounds. `BENCH_BASELINE=<credbridge binary>` (with
//! `BENCH_BASELINE_REV`, its git revision, for the label) measures the relay figures of an older
//! build beside this one; `bench/run.sh` builds it. `BENCH_FLOOD_SECS` (default 10) sets the
//! flood's length, `BENCH_FLOOD_CAP_MIB` (default 2048) the RSS at which a flood is cut short.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use credbridge::hypervisor::cloud_hypervisor::events::EventParser;

#[path = "../tests/common/guest.rs"]
mod guest;

const COUNTS: [usize; 3] = [1, 10, 100];
const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The fake started directly with the strings already on its command line.
    Direct,
    /// `bench/shell-pattern.sh`: `cat` each credential into `--platform oem_strings=[...]`.
    Shell,
    /// `credbridge run` (default api delivery).
    Api,
    /// `credbridge run --delivery argv`.
    Argv,
}

const VARIANTS: [Variant; 4] = [Variant::Direct, Variant::Shell, Variant::Api, Variant::Argv];

struct Bins {
    credbridge: PathBuf,
    fake: PathBuf,
    shell_pattern: PathBuf,
}

/// A datagram socket standing in for systemd: every message with its arrival time.
struct NotifySocket {
    path: PathBuf,
    rx: mpsc::Receiver<(Instant, SystemTime, String)>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Self {
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), SystemTime::now(), msg)).is_err() {
                    break;
                }
            }
        });
        NotifySocket { path, rx }
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Waits up to `within` for a message containing `needle`.
    fn wait_for(&self, needle: &str, within: Duration) -> Option<(Instant, SystemTime)> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, wall, m)) if m.contains(needle) => return Some((t, wall)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    fn wait_ready(&self) -> (Instant, SystemTime) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, wall, m)) if m.starts_with("READY=1") => return (t, wall),
                Ok((_, _, m)) if m.contains("Failed") => panic!("credbridge failed: {m}"),
                Ok(_) => {}
                Err(_) => panic!("no READY=1 within {WAIT:?}"),
            }
        }
    }
}

/// The world one variant runs in: credentials, a kernel file, the fake under its real name.
struct World {
    dir: tempfile::TempDir,
    creds: PathBuf,
    ch: PathBuf,
    kernel: String,
    /// The same strings credbridge delivers, for the variants that put them in argv.
    plain_strings: Vec<String>,
    notify: NotifySocket,
    runs: usize,
}

impl World {
    fn new(bins: &Bins, count: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let ch = dir.path().join("bin/cloud-hypervisor");
        std::os::unix::fs::symlink(&bins.fake, &ch).unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"not really a kernel").unwrap();
        let mut x: u32 = 0x9e37_79b9 ^ count as u32;
        let mut plain_strings = Vec::new();
        for i in 0..count {
            // 32 random alphanumerics: what a generated token looks like, and safe in the
            // argv grammar so that every variant can carry it.
            let value: String = (0..32)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    const ALNUM: &[u8] =
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                    ALNUM[x as usize % ALNUM.len()] as char
                })
                .collect();
            let name = format!("cred-{i:03}");
            std::fs::write(creds.join(&name), &value).unwrap();
            plain_strings.push(format!("io.systemd.credential:{name}={value}"));
        }
        let notify = NotifySocket::bind(dir.path().join("notify"));
        World {
            dir,
            creds,
            ch,
            kernel: kernel.to_string_lossy().into_owned(),
            plain_strings,
            notify,
            runs: 0,
        }
    }

    fn vm_args(&self) -> Vec<String> {
        vec![
            "--kernel".into(),
            self.kernel.clone(),
            "--cmdline".into(),
            "console=ttyS0".into(),
            "--seccomp".into(),
            "true".into(),
        ]
    }

    fn fresh(&mut self, what: &str) -> PathBuf {
        self.runs += 1;
        self.dir.path().join(format!("{what}-{}", self.runs))
    }

    fn credbridge(&self, bins: &Bins, extra: &[&str]) -> Command {
        self.credbridge_bin(&bins.credbridge, extra)
    }

    fn credbridge_bin(&self, bin: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.arg("run")
            .args(["--smbios-budget", "65404", "--log-level", "warn"])
            .args(extra)
            .arg("--")
            .arg(&self.ch)
            .args(self.vm_args())
            .env("CREDENTIALS_DIRECTORY", &self.creds)
            .env("NOTIFY_SOCKET", &self.notify.path)
            .env("RUNTIME_DIRECTORY", self.dir.path())
            .env("FAKE_CH_POWEROFF_DELAY_MS", "0")
            .env_remove("FAKE_CH_RECORD_DIR")
            .env_remove("LISTEN_FDS")
            .env_remove("WATCHDOG_USEC")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }
}

/// Opens a fresh FIFO read-write (so neither open nor read sees EOF before the writer comes)
/// and reports when a `vm:booted` event comes through it.
fn booted_via_fifo(path: &Path) -> mpsc::Receiver<Instant> {
    nix::unistd::mkfifo(
        path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .expect("mkfifo");
    let mut file = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .expect("open the event FIFO");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut parser = EventParser::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = file.read(&mut buf) {
            let t = Instant::now();
            if n == 0 {
                return;
            }
            if parser
                .push(&buf[..n])
                .iter()
                .any(|e| e.as_ref().is_ok_and(|e| e.is("vm", "booted")))
            {
                let _ = tx.send(t);
                return;
            }
        }
    });
    rx
}

/// Reports when `name` is renamed into `dir` (the fake's atomic record writes).
fn renamed_into(dir: &Path, name: &'static str) -> mpsc::Receiver<Instant> {
    let cdir = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain syscalls; the fd is checked and then owned by `file` alone.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(
        fd >= 0,
        "inotify_init1: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above; `fd` was just checked open.
    let mut file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: `cdir` is a valid NUL-terminated path that outlives the call.
    let wd = unsafe { libc::inotify_add_watch(fd, cdir.as_ptr(), libc::IN_MOVED_TO) };
    assert!(
        wd >= 0,
        "inotify_add_watch: {}",
        std::io::Error::last_os_error()
    );
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = file.read(&mut buf) {
            let t = Instant::now();
            let mut at = 0;
            // struct inotify_event { int wd; u32 mask, cookie, len; char name[len]; }
            while at + 16 <= n {
                let field =
                    |o: usize| u32::from_ne_bytes(buf[at + o..at + o + 4].try_into().unwrap());
                let (mask, len) = (field(4), field(12) as usize);
                let raw = &buf[at + 16..(at + 16 + len).min(n)];
                let got = raw.split(|&b| b == 0).next().unwrap_or_default();
                if got == name.as_bytes() {
                    let _ = tx.send(t);
                    return;
                }
                if mask & libc::IN_IGNORED != 0 {
                    return;
                }
                at += 16 + len;
            }
        }
    });
    rx
}

fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pid {} did not stop within {WAIT:?}", child.id());
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// credbridge's memory, in KiB.
#[derive(Clone, Copy)]
struct Mem {
    rss: u64,
    hwm: u64,
    /// Heap, stacks and other private memory: what credbridge itself allocates.
    anon: u64,
    /// Proportional set size: shared pages (libc, the binary's text) split among their users.
    pss: u64,
}

fn memory(pid: u32) -> Mem {
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Mem {
        rss: field(&status, "VmRSS:"),
        hwm: field(&status, "VmHWM:"),
        anon: field(&status, "RssAnon:"),
        pss: field(&rollup, "Pss:"),
    }
}

/// One start of `variant`: time from spawn to ready, and credbridge's memory if it ran.
fn run_once(bins: &Bins, world: &mut World, variant: Variant) -> (Duration, Option<Mem>) {
    match variant {
        Variant::Direct | Variant::Shell => {
            let fifo = world.fresh("events");
            let booted = booted_via_fifo(&fifo);
            let monitor = format!("path={}", fifo.display());
            let mut cmd = if variant == Variant::Direct {
                let mut c = Command::new(&world.ch);
                c.args(world.vm_args()).args([
                    "--platform".to_owned(),
                    format!("oem_strings=[{}]", world.plain_strings.join(",")),
                ]);
                c
            } else {
                let mut c = Command::new("bash");
                c.arg(&bins.shell_pattern)
                    .arg(&world.ch)
                    .args(world.vm_args());
                c
            };
            cmd.args(["--event-monitor", &monitor])
                .env("CREDENTIALS_DIRECTORY", &world.creds)
                .env_remove("FAKE_CH_RECORD_DIR")
                .current_dir(world.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let t0 = Instant::now();
            let mut child = cmd.spawn().expect("spawn");
            let t = booted.recv_timeout(WAIT).expect("vm:booted from the fake");
            stop(&mut child);
            let _ = std::fs::remove_file(&fifo);
            (t - t0, None)
        }
        Variant::Api | Variant::Argv => {
            let extra: &[&str] = if variant == Variant::Argv {
                &["--delivery", "argv"]
            } else {
                &[]
            };
            let mut cmd = world.credbridge(bins, extra);
            world.notify.drain();
            let t0 = Instant::now();
            let mut child = cmd.spawn().expect("spawn credbridge");
            let (t, _) = world.notify.wait_ready();
            let rss = memory(child.id());
            stop(&mut child);
            (t - t0, Some(rss))
        }
    }
}

/// `credbridge run` of binary BIN: spawn → `READY=1`, and its memory then.
fn start_to_ready(bin: &Path, world: &mut World, extra: &[&str]) -> (Duration, Mem) {
    let mut cmd = world.credbridge_bin(bin, extra);
    world.notify.drain();
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn credbridge");
    let (t, _) = world.notify.wait_ready();
    let rss = memory(child.id());
    stop(&mut child);
    (t - t0, rss)
}

/// `vm:booted` → `READY=1` with api delivery.
fn booted_to_ready(bins: &Bins, world: &mut World) -> Duration {
    let record = world.fresh("record");
    std::fs::create_dir(&record).unwrap();
    let booted = renamed_into(&record, "oem_strings.json");
    let mut cmd = world.credbridge(bins, &[]);
    cmd.env("FAKE_CH_RECORD_DIR", &record);
    world.notify.drain();
    let mut child = cmd.spawn().expect("spawn credbridge");
    let (ready, _) = world.notify.wait_ready();
    let booted = booted.recv_timeout(WAIT).expect("the fake booted");
    stop(&mut child);
    let _ = std::fs::remove_dir_all(&record);
    ready.saturating_duration_since(booted)
}

/// The guest's `READY=1` written → `READY=1` to systemd, with `--ready guest`; `half_close`:
/// the sender shuts down its write side after the message.
fn guest_to_ready(bin: &Path, world: &mut World, half_close: bool) -> Duration {
    let record = world.fresh("record");
    std::fs::create_dir(&record).unwrap();
    let mut cmd = world.credbridge_bin(bin, &["--ready", "guest", "--vsock-cid", "3"]);
    cmd.env("FAKE_CH_RECORD_DIR", &record)
        .env("FAKE_CH_GUEST_NOTIFY", "8888:READY=1")
        .env("FAKE_CH_GUEST_NOTIFY_CLOSE_TIMEOUT_MS", "500")
        .env(
            "FAKE_CH_GUEST_NOTIFY_HALF_CLOSE",
            if half_close { "1" } else { "0" },
        );
    world.notify.drain();
    let mut child = cmd.spawn().expect("spawn credbridge");
    let (_, ready_wall) = world.notify.wait_ready();
    // The fake writes its line once the host has closed the connection.
    let log = record.join("guest_notify.jsonl");
    let deadline = Instant::now() + WAIT;
    let written_ns: u128 = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            break v["written_realtime_ns"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("guest notify failed: {v}"));
        }
        assert!(Instant::now() < deadline, "no guest_notify.jsonl");
        thread::sleep(Duration::from_millis(2));
    };
    stop(&mut child);
    let _ = std::fs::remove_dir_all(&record);
    let ready_ns = ready_wall.duration_since(UNIX_EPOCH).unwrap().as_nanos();
    Duration::from_nanos(ready_ns.saturating_sub(written_ns) as u64)
}

/// What a 10 s flood of junk guest connections did to credbridge.
struct Flood {
    connections: usize,
    /// VmHWM, KiB: before the flood and at its end.
    idle_hwm: u64,
    hwm: u64,
    cpu: Duration,
    log_bytes: u64,
    /// From connect to `READY=1` on the notify socket, for a `READY=1` sent half way through.
    ready: Option<Duration>,
    /// Set when the flood was cut short at the RSS cap, after this long.
    cut_at: Option<Duration>,
}

fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of proc_pid_stat(5); the state (field 3) is first here.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// `--ready guest` under `secs` of junk connections to `<vsock socket>_8888`, where
/// cloud-hypervisor connects for each guest connection: short junk, 8 KiB, a STATUS= line, nothing; three
/// threads as fast as they go. Half way through, a `READY=1` as the guest's systemd sends it.
fn flood(bin: &Path, world: &mut World, secs: f64, cap_kib: u64) -> Flood {
    let log = world.fresh("flood-log");
    let cmd = world.credbridge_bin(bin, &["--ready", "guest", "--vsock-cid", "3"]);
    // At the default log level, as a unit runs it: the log's growth is one of the figures.
    let args: Vec<_> = cmd
        .get_args()
        .map(|a| a.to_owned())
        .filter(|a| a != "--log-level" && a != "warn")
        .collect();
    let mut plain = Command::new(cmd.get_program());
    plain.args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => plain.env(k, v),
            None => plain.env_remove(k),
        };
    }
    plain
        .current_dir(world.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap());
    world.notify.drain();
    let mut child = plain.spawn().expect("spawn credbridge");
    let pid = child.id();
    world
        .notify
        .wait_for("VM booted", WAIT)
        .expect("the VM booted");
    let relay = world.dir.path().join("notify.vsock_8888");
    let idle_hwm = memory(pid).hwm;
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (relay, stop, sent) = (relay.clone(), done.clone(), sent.clone());
            guest::flood(relay, stop, sent)
        })
        .collect();
    let t0 = Instant::now();
    let total = Duration::from_secs_f64(secs);
    let mut ready_sent: Option<Instant> = None;
    let mut ready = None;
    let mut hwm = idle_hwm;
    let mut cut_at = None;
    while t0.elapsed() < total {
        if ready_sent.is_none() && t0.elapsed() >= total / 2 {
            let relay = relay.clone();
            ready_sent = Some(Instant::now());
            thread::spawn(move || guest::systemd_notify(&relay, "READY=1", WAIT));
        }
        if let (Some(at), None) = (ready_sent, ready) {
            if let Some((t, _)) = world.notify.wait_for("READY=1", Duration::ZERO) {
                ready = Some(t.saturating_duration_since(at));
            }
        }
        hwm = hwm.max(memory(pid).hwm);
        if hwm > cap_kib {
            cut_at = Some(t0.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    done.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    if let (Some(at), None) = (ready_sent, ready) {
        // Late is reported as late; never is reported as never (within the wait).
        if let Some((t, _)) = world.notify.wait_for("READY=1", Duration::from_secs(1)) {
            ready = Some(t.saturating_duration_since(at));
        }
    }
    hwm = hwm.max(memory(pid).hwm);
    let cpu = proc_cpu(pid);
    stop(&mut child);
    Flood {
        connections: sent.load(Ordering::Relaxed),
        idle_hwm,
        hwm,
        cpu,
        log_bytes: std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0),
        ready,
        cut_at,
    }
}

/// Whether this credbridge has `--ready guest` (added in the same release as this bench).
fn has_guest_ready(bins: &Bins) -> bool {
    Command::new(&bins.credbridge)
        .args(["run", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("guest"))
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Statistics and the table.

struct Stats {
    median: Duration,
    p10: Duration,
    p90: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    assert!(!v.is_empty());
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn spread(s: &Stats) -> String {
    format!("{} [{}–{}]", ms(s.median), ms(s.p10), ms(s.p90))
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

/// A criterion median from `estimates.json`, if `cargo bench --bench codec` has run.
fn criterion_median(id: &str) -> Option<Duration> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let file = target.join("criterion").join(id).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    let ns = v["median"]["point_estimate"].as_f64()?;
    Some(Duration::from_nanos(ns.round() as u64))
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let credbridge = PathBuf::from(env!("CARGO_BIN_EXE_credbridge"));
    let fake = credbridge.with_file_name("fake-cloud-hypervisor");
    assert!(
        fake.exists(),
        "{} is missing: build it with `cargo build --release -p fake-cloud-hypervisor` (bench/run.sh does)",
        fake.display()
    );
    let bins = Bins {
        credbridge,
        fake,
        shell_pattern: Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/shell-pattern.sh"),
    };
    let guest = has_guest_ready(&bins);
    // The relay's figures, for this build and (bench/run.sh) the baseline before #11.
    let mut relay_bins = vec![("this build".to_owned(), bins.credbridge.clone())];
    if let Some(b) = std::env::var_os("BENCH_BASELINE") {
        let rev = std::env::var("BENCH_BASELINE_REV").unwrap_or_else(|_| "baseline".into());
        relay_bins.push((format!("baseline {rev}"), PathBuf::from(b)));
    }
    // guest_lat[binary][0: half-closing sender, 1: half-close never arrives]
    // base_start[binary][0: api, 1: argv]: the start path with 10 credentials, every build.
    let mut base_start: Vec<[Vec<Duration>; 2]> = vec![[Vec::new(), Vec::new()]; relay_bins.len()];
    let mut base_rss: Vec<Vec<u64>> = vec![Vec::new(); relay_bins.len()];
    let mut guest_lat: Vec<[Vec<Duration>; 2]> = vec![[Vec::new(), Vec::new()]; relay_bins.len()];

    let mut worlds: Vec<World> = COUNTS.iter().map(|&n| World::new(&bins, n)).collect();
    // samples[count index][variant index]
    let mut samples: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); VARIANTS.len()]; COUNTS.len()];
    let mut rss: Vec<Vec<Mem>> = vec![Vec::new(); COUNTS.len()];
    let mut booted_ready = Vec::new();
    let warmup = 2;
    eprint!("bench: {rounds} rounds (+{warmup} warm-up) ");
    for round in 0..rounds + warmup {
        for (ci, world) in worlds.iter_mut().enumerate() {
            for (vi, &variant) in VARIANTS.iter().enumerate() {
                let (d, mem) = run_once(&bins, world, variant);
                if round >= warmup {
                    samples[ci][vi].push(d);
                    if let (Some(m), Variant::Api) = (mem, variant) {
                        rss[ci].push(m);
                    }
                }
            }
        }
        let world = &mut worlds[1];
        let d = booted_to_ready(&bins, world);
        if round >= warmup {
            booted_ready.push(d);
        }
        if relay_bins.len() > 1 {
            for (bi, (_, bin)) in relay_bins.iter().enumerate() {
                for (di, extra) in [&[][..], &["--delivery", "argv"][..]].iter().enumerate() {
                    let (d, rss) = start_to_ready(bin, world, extra);
                    if round >= warmup {
                        base_start[bi][di].push(d);
                        if di == 0 {
                            base_rss[bi].push(rss.rss);
                        }
                    }
                }
            }
        }
        for (bi, (_, bin)) in relay_bins.iter().enumerate().filter(|_| guest) {
            for (mi, half_close) in [true, false].into_iter().enumerate() {
                let g = guest_to_ready(bin, world, half_close);
                if round >= warmup {
                    guest_lat[bi][mi].push(g);
                }
            }
        }
        eprint!(".");
    }
    eprintln!();

    let st: Vec<Vec<Stats>> = samples
        .into_iter()
        .map(|per_variant| per_variant.into_iter().map(stats).collect())
        .collect();
    let med = |ci: usize, v: Variant| st[ci][VARIANTS.iter().position(|&x| x == v).unwrap()].median;
    let size = std::fs::metadata(&bins.credbridge).unwrap().len();

    let mut rows: Vec<[String; 4]> = vec![[
        "measure".into(),
        "1 credential".into(),
        "10 credentials".into(),
        "100 credentials".into(),
    ]];
    let header = |s: &str| {
        [
            format!("**{s}**"),
            String::new(),
            String::new(),
            String::new(),
        ]
    };
    rows.push(header(
        "start → ready, median [p10–p90] (× the hypervisor alone)",
    ));
    let labels = [
        (
            Variant::Direct,
            "cloud-hypervisor (fake) alone, strings in argv: spawn → vm:booted",
        ),
        (
            Variant::Shell,
            "shell pattern (`cat` each file into --platform): spawn → vm:booted",
        ),
        (
            Variant::Api,
            "credbridge run, api delivery: spawn → READY=1",
        ),
        (
            Variant::Argv,
            "credbridge run, argv delivery: spawn → READY=1",
        ),
    ];
    for (vi, (variant, label)) in labels.iter().enumerate() {
        let mut row = [
            label.to_string(),
            String::new(),
            String::new(),
            String::new(),
        ];
        for ci in 0..COUNTS.len() {
            let s = &st[ci][vi];
            row[ci + 1] = if *variant == Variant::Direct {
                format!("{} (1.00×)", spread(s))
            } else {
                format!(
                    "{} ({:.2}×)",
                    spread(s),
                    ratio(s.median, med(ci, Variant::Direct))
                )
            };
        }
        rows.push(row);
    }
    let mut ratio_row = |label: &str, a: Variant, b: Variant| {
        let mut row = [
            label.to_owned(),
            String::new(),
            String::new(),
            String::new(),
        ];
        for ci in 0..COUNTS.len() {
            let (ma, mb) = (med(ci, a), med(ci, b));
            let diff = ma.as_secs_f64() - mb.as_secs_f64();
            row[ci + 1] = format!("{:.2}× ({:+.2} ms)", ratio(ma, mb), diff * 1000.0);
        }
        rows.push(row);
    };
    ratio_row(
        "credbridge api ÷ hypervisor alone (overhead)",
        Variant::Api,
        Variant::Direct,
    );
    ratio_row(
        "credbridge api ÷ shell pattern",
        Variant::Api,
        Variant::Shell,
    );
    ratio_row("api delivery ÷ argv delivery", Variant::Api, Variant::Argv);

    rows.push(header("readiness latency, median [p10–p90]"));
    let br = stats(booted_ready);
    rows.push([
        "vm:booted written → READY=1 sent (api delivery)".into(),
        String::new(),
        format!(
            "{} ({:.1}% of start → READY=1)",
            spread(&br),
            100.0 * ratio(br.median, med(1, Variant::Api))
        ),
        String::new(),
    ]);
    rows.push([
        "guest READY=1 written → READY=1 sent (--ready guest): see the relay table".into(),
        String::new(),
        String::new(),
        String::new(),
    ]);

    rows.push(header("footprint (release build)"));
    let median_of = |r: &[Mem], f: fn(&Mem) -> u64| {
        let mut v: Vec<u64> = r.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let mut rss_row = [
        "credbridge VmRSS while supervising, median (max VmHWM); × the 3 MiB target".to_owned(),
        String::new(),
        String::new(),
        String::new(),
    ];
    let mut split_row = [
        "… of which private anon (heap, stacks) / PSS (shared pages split)".to_owned(),
        String::new(),
        String::new(),
        String::new(),
    ];
    for (ci, r) in rss.iter().enumerate() {
        let median = median_of(r, |m| m.rss);
        let hwm = r.iter().map(|m| m.hwm).max().unwrap();
        rss_row[ci + 1] = format!(
            "{} ({}); {:.2}×",
            mib(median),
            mib(hwm),
            median as f64 / 3072.0
        );
        split_row[ci + 1] = format!(
            "{} / {}",
            mib(median_of(r, |m| m.anon)),
            mib(median_of(r, |m| m.pss))
        );
    }
    rows.push(rss_row);
    rows.push(split_row);
    rows.push([
        "credbridge binary (stripped, LTO, opt-level z)".into(),
        format!("{} ({} bytes)", mib(size / 1024), size),
        String::new(),
        String::new(),
    ]);

    rows.push(header(
        "pure work: criterion medians (× credbridge api spawn → READY=1 with 100)",
    ));
    let api100 = med(2, Variant::Api);
    for (id, label) in [
        (
            "credentials/encode_validate_255_plain",
            "encode + validate 255 credentials, 60 KiB entry, plain (api)",
        ),
        (
            "credentials/encode_validate_255_binary",
            "encode + validate 255 credentials, 60 KiB entry, base64 (argv)",
        ),
        (
            "credentials/load_255_from_dir",
            "read 255 credentials (60 KiB) from a directory",
        ),
        (
            "argv/translate_largest_fixture",
            "largest fixture argv → vm.create JSON",
        ),
    ] {
        let cell = match criterion_median(id) {
            Some(d) => format!("{} ({:.3}×)", us(d), ratio(d, api100)),
            None => "n/a: run `cargo bench --bench codec` first".into(),
        };
        rows.push([label.into(), cell, String::new(), String::new()]);
    }

    print_table(&rows, rounds);
    if relay_bins.len() > 1 {
        print_start_vs_baseline(&relay_bins, base_start, &base_rss, rounds);
    }

    if !guest {
        return;
    }
    let secs: f64 = std::env::var("BENCH_FLOOD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let cap_mib: u64 = std::env::var("BENCH_FLOOD_CAP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let floods: Vec<Flood> = relay_bins
        .iter()
        .map(|(name, bin)| {
            eprintln!("bench: {secs} s flood of the guest notify relay, {name}");
            flood(bin, &mut worlds[1], secs, cap_mib * 1024)
        })
        .collect();
    print_relay_table(&relay_bins, guest_lat, &floods, secs, rounds);
}

fn print_relay_table(
    bins: &[(String, PathBuf)],
    lat: Vec<[Vec<Duration>; 2]>,
    floods: &[Flood],
    secs: f64,
    rounds: usize,
) {
    let n = bins.len();
    let mut head = vec!["measure (#11)".to_owned()];
    head.extend(bins.iter().map(|(name, _)| name.clone()));
    if n == 2 {
        head.push(format!("{} ÷ {}", bins[0].0, bins[1].0));
    }
    let width = head.len();
    let mut rows: Vec<Vec<String>> = vec![head];
    let mut row = |label: &str, cells: Vec<String>, ratio: Option<f64>| {
        let cells_empty = cells.is_empty();
        let mut r = vec![label.to_owned()];
        r.extend(cells);
        if n == 2 {
            r.push(match ratio {
                Some(x) if x < 0.1 => format!("{x:.4}× (1/{:.0})", 1.0 / x),
                Some(x) => format!("{x:.2}×"),
                None if cells_empty => String::new(),
                None => "n/a".into(),
            });
        }
        r.resize(width, String::new());
        rows.push(r);
    };
    let lat: Vec<[Stats; 2]> = lat.into_iter().map(|[a, b]| [stats(a), stats(b)]).collect();
    let r2 = |a: f64, b: f64| (n == 2 && b > 0.0).then(|| a / b);
    for (mi, label) in [
        "guest READY=1 written → READY=1 sent, median [p10–p90]: sender half-closes (systemd ≥ 256 via cloud-hypervisor ≥ 53 or vhost-vsock)",
        "… half-close never arrives (cloud-hypervisor ≤ 52): message ends after a quiet pause",
    ]
    .iter()
    .enumerate()
    {
        let med: Vec<f64> = lat.iter().map(|l| l[mi].median.as_secs_f64()).collect();
        row(
            label,
            lat.iter().map(|l| spread(&l[mi])).collect(),
            r2(med[0], *med.last().unwrap()),
        );
    }
    row(
        &format!(
            "**{secs} s flood of junk guest connections (3 threads: short junk, 8 KiB, STATUS=, empty)**"
        ),
        vec![],
        None,
    );
    // One row per figure: each build's cell, and the ratio of this build's value to the baseline's.
    let per_k = |f: &Flood| f.cpu.as_secs_f64() * 1000.0 / f.connections.max(1) as f64;
    type Figure<'a> = (
        &'a str,
        &'a dyn Fn(&Flood) -> String,
        &'a dyn Fn(&Flood) -> f64,
    );
    let figures: [Figure; 5] = [
        (
            "connections the flood made",
            &|f| f.connections.to_string(),
            &|f| f.connections as f64,
        ),
        (
            "credbridge peak RSS (VmHWM) during the flood (before it)",
            &|f| {
                let cut = f
                    .cut_at
                    .map(|t| format!(", flood cut short at {:.1} s", t.as_secs_f64()))
                    .unwrap_or_default();
                format!("{} ({}){cut}", mib(f.hwm), mib(f.idle_hwm))
            },
            &|f| f.hwm as f64,
        ),
        (
            "credbridge CPU time (user + system), whole run",
            &|f| format!("{:.2} s", f.cpu.as_secs_f64()),
            &|f| f.cpu.as_secs_f64(),
        ),
        (
            "… per 1000 connections",
            &|f| format!("{:.1} ms", per_k(f) * 1000.0),
            &per_k,
        ),
        (
            "log bytes written (default log level), whole run",
            &|f| f.log_bytes.to_string(),
            &|f| f.log_bytes as f64,
        ),
    ];
    for (label, cell, value) in figures {
        row(
            label,
            floods.iter().map(cell).collect(),
            r2(value(&floods[0]), value(floods.last().unwrap())),
        );
    }
    row(
        "READY=1 sent half way through → relayed to NOTIFY_SOCKET",
        floods
            .iter()
            .map(|f| match f.ready {
                Some(d) => ms(d),
                None => "never (not within the flood + 1 s)".into(),
            })
            .collect(),
        match (floods[0].ready, floods.last().unwrap().ready) {
            (Some(a), Some(b)) if n == 2 => Some(ratio(a, b)),
            _ => None,
        },
    );
    println!();
    println!(
        "guest notify relay: release builds, {rounds} rounds per latency, one flood each, all from one run"
    );
    println!();
    print_rows(&rows);
}

/// The start path of this build beside the baseline's, measured round-robin in the same rounds:
/// a restructure must not slow the path a unit waits on (#12).
fn print_start_vs_baseline(
    bins: &[(String, PathBuf)],
    start: Vec<[Vec<Duration>; 2]>,
    rss: &[Vec<u64>],
    rounds: usize,
) {
    let mut head = vec!["measure, 10 credentials".to_owned()];
    head.extend(bins.iter().map(|(name, _)| name.clone()));
    head.push(format!("{} ÷ {}", bins[0].0, bins[1].0));
    let mut rows: Vec<Vec<String>> = vec![head];
    let st: Vec<[Stats; 2]> = start
        .into_iter()
        .map(|[a, b]| [stats(a), stats(b)])
        .collect();
    for (di, label) in [
        "credbridge run, api delivery: spawn → READY=1, median [p10–p90]",
        "credbridge run, argv delivery: spawn → READY=1, median [p10–p90]",
    ]
    .iter()
    .enumerate()
    {
        let mut r = vec![label.to_string()];
        r.extend(st.iter().map(|s| spread(&s[di])));
        r.push(format!(
            "{:.2}×",
            ratio(st[0][di].median, st.last().unwrap()[di].median)
        ));
        rows.push(r);
    }
    let medians: Vec<u64> = rss
        .iter()
        .map(|v| {
            let mut v = v.clone();
            v.sort_unstable();
            v[v.len() / 2]
        })
        .collect();
    let mut r = vec!["VmRSS after READY=1 (api delivery), median".to_owned()];
    r.extend(medians.iter().map(|&k| mib(k)));
    r.push(format!(
        "{:.2}×",
        medians[0] as f64 / *medians.last().unwrap() as f64
    ));
    rows.push(r);
    let sizes: Vec<u64> = bins
        .iter()
        .map(|(_, b)| std::fs::metadata(b).map(|m| m.len()).unwrap_or(0))
        .collect();
    let mut r = vec!["binary size (release)".to_owned()];
    r.extend(sizes.iter().map(|s| format!("{s} bytes")));
    r.push(format!(
        "{:.3}×",
        sizes[0] as f64 / *sizes.last().unwrap() as f64
    ));
    rows.push(r);
    println!();
    println!(
        "start path, this build beside the baseline: release builds, {rounds} rounds, round-robin in one run"
    );
    println!();
    print_rows(&rows);
}

fn print_table(rows: &[[String; 4]], rounds: usize) {
    println!(
        "credbridge start-path benchmark: release build, {rounds} rounds per figure, all from one run; {} cores",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    print_rows(rows);
}

/// A Markdown table, columns padded to their widest cell; the first row is the header.
fn print_rows<R: AsRef<[String]>>(rows: &[R]) {
    let width = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..width)
        .map(|c| {
            rows.iter()
                .map(|r| r.as_ref()[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, r) in rows.iter().enumerate() {
        let r = r.as_ref();
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", sep.join("-|-"));
        }
    }
}
