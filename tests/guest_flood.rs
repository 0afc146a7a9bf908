//! #11: the guest is not trusted, and with `--ready guest` it can connect to credbridge's notify
//! relay as often as it likes. Here the test plays a hostile guest on cloud-hypervisor's hybrid
//! vsock socket `<vsock socket>_8888` (where cloud-hypervisor connects for each guest
//! connection), against the real binary and the fake cloud-hypervisor.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

/// Far above what credbridge needs (a few MiB) and far below what an unbounded relay reaches in
/// a flood (GiBs): the flood stops early when it is passed, to spare the machine.
const HWM_LIMIT_KIB: u64 = 32 * 1024;

fn vsock_vm(rig: &Rig) -> Vec<String> {
    let mut a = rig.vm_args();
    a.extend(["--vsock".into(), "cid=3,socket=notify.vsock".into()]);
    a
}

/// credbridge's stderr, drained as it comes (a full pipe would stall a flooding logger and
/// hide the flood): its size, line count and first 64 KiB.
struct Stderr {
    bytes: Arc<AtomicUsize>,
    lines: Arc<AtomicUsize>,
    head: Arc<Mutex<Vec<u8>>>,
}

impl Stderr {
    fn drain(child: &mut Child) -> Stderr {
        let mut pipe = child.stderr.take().unwrap();
        let s = Stderr {
            bytes: Arc::default(),
            lines: Arc::default(),
            head: Arc::default(),
        };
        let (bytes, lines, head) = (s.bytes.clone(), s.lines.clone(), s.head.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                bytes.fetch_add(n, Ordering::Relaxed);
                lines.fetch_add(
                    buf[..n].iter().filter(|&&b| b == b'\n').count(),
                    Ordering::Relaxed,
                );
                let mut h = head.lock().unwrap();
                let room = 65536usize.saturating_sub(h.len());
                h.extend_from_slice(&buf[..n.min(room)]);
            }
        });
        s
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.head.lock().unwrap()).into_owned()
    }
}

fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn power_button_pressed(rig: &Rig) -> bool {
    rig.requests().iter().any(|r| {
        r["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("vm.power-button"))
    })
}

#[test]
fn a_guest_ready_gets_through_a_flood_of_junk_connections_with_memory_and_log_bounded_11() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"flood-secret-value");
    let args = vsock_vm(&rig);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &["--ready", "guest"], &args)
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = Stderr::drain(&mut child);
    rig.notify
        .wait_for("VM booted", T)
        .expect("the VM boots and waits for the guest");
    let relay = rig.path("notify.vsock_8888");
    assert!(relay.exists());

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..3)
        .map(|_| guest::flood(relay.clone(), stop.clone(), sent.clone()))
        .collect();
    // Memory is watched throughout: an unbounded relay is stopped before it hurts the machine.
    let started = Instant::now();
    let mut hwm = 0;
    let mut ready_after = None;
    let mut ready_sender = None;
    while started.elapsed() < Duration::from_secs(4) && hwm < HWM_LIMIT_KIB {
        if ready_sender.is_none() && started.elapsed() >= Duration::from_secs(2) {
            let path = relay.clone();
            let t0 = Instant::now();
            ready_sender = Some((
                t0,
                thread::spawn(move || guest::systemd_notify(&path, "READY=1", T)),
            ));
        }
        if let Some((t0, _)) = &ready_sender {
            if ready_after.is_none() && rig.notify.wait_for("READY=1", Duration::ZERO).is_some() {
                ready_after = Some(t0.elapsed());
            }
        }
        hwm = status_field(pid, "VmHWM:");
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.join();
    }
    let ready_seen = ready_after.is_some() || rig.notify.wait_for("READY=1", T).is_some();
    let connections = sent.load(Ordering::Relaxed);
    assert!(
        hwm < HWM_LIMIT_KIB,
        "credbridge reached {hwm} KiB during the flood ({connections} connections)"
    );
    assert!(ready_seen, "the guest's READY=1 was never relayed");
    let after = ready_after.expect("READY=1 within the flood");
    assert!(
        after < Duration::from_secs(1),
        "READY=1 took {after:?} through a flood of {connections} connections"
    );
    assert!(connections > 100, "the flood ran: {connections}");
    eprintln!("{connections} connections, READY=1 after {after:?}, VmHWM {hwm} KiB");

    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
    let log = stderr.bytes.load(Ordering::Relaxed);
    assert!(
        log < 16 * 1024,
        "{log} bytes of log for {connections} connections:\n{}",
        stderr.text()
    );
    rig.assert_no_secret_in("stderr", stderr.text().as_bytes());
}

/// Few fds (a low `LimitNOFILE=`) and a guest that holds its connections open: no busy loop of
/// accept errors, and SIGTERM still stops the VM through the ACPI power button, which needs an
/// fd for its API connection.
#[test]
fn few_fds_and_a_guest_holding_connections_neither_flood_the_log_nor_stop_the_power_button_11() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"fd-limit-secret");
    let args = vsock_vm(&rig);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let inner = rig.command("run", &["--ready", "guest"], &args);
    // prlimit execs credbridge: the pid stays the same.
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=24:24")
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(rig.path(""))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().expect("prlimit (util-linux)");
    let stderr = Stderr::drain(&mut child);
    rig.notify.wait_for("VM booted", T).expect("booted");
    let relay = rig.path("notify.vsock_8888");

    // The guest opens connections and never writes nor closes them.
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let (relay, stop) = (relay.clone(), stop.clone());
        thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) && held.len() < 200 {
                match UnixStream::connect(&relay) {
                    Ok(s) => held.push(s),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(20));
            }
            held.len()
        })
    };
    thread::sleep(Duration::from_secs(3));
    let lines_before_stop = stderr.lines.load(Ordering::Relaxed);
    signal(&child, Signal::SIGTERM);
    let st = wait_exit(&mut child, Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    let _ = holder.join();
    let text = stderr.text();
    assert!(
        lines_before_stop < 30,
        "{lines_before_stop} log lines in 3 s:\n{}",
        &text[..text.len().min(4000)]
    );
    assert!(
        !text.contains("power button failed"),
        "the power button got its API connection:\n{text}"
    );
    assert!(power_button_pressed(&rig), "the power button was pressed");
    assert_eq!(st.code(), Some(0), "{text}");
}
