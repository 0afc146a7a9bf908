//! `--ready guest`: the guest's own READY=1 over vsock, relayed natively (issue #4). The fake
//! cloud-hypervisor plays the guest: after boot it connects to `<vsock socket>_PORT` as
//! cloud-hypervisor does for a guest connection and, like guest systemd >= 256, waits for the
//! host to close; its half-close never arrives, as with cloud-hypervisor <= 52 (the end of
//! stream that newer ones pass on is tested in src/guestnotify.rs).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

fn guest_log(rig: &Rig) -> Vec<Value> {
    std::fs::read_to_string(rig.record_file("guest_notify.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn realtime_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn vsock_vm(rig: &Rig) -> Vec<String> {
    let mut a = rig.vm_args();
    a.extend(["--vsock".into(), "cid=3,socket=notify.vsock".into()]);
    a
}

#[test]
fn guest_ready_is_relayed_after_the_guests_own_and_connections_close_at_once() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"guest-ready-secret");
    let args = vsock_vm(&rig);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &["--ready", "guest"], &args)
        .env(
            "FAKE_CH_GUEST_NOTIFY",
            "8888:STATUS=Starting services|STATUS=Reached target multi-user|READY=1",
        )
        .env("FAKE_CH_GUEST_NOTIFY_GAP_MS", "100")
        .spawn()
        .unwrap();
    let ready = rig.notify.wait_for("READY=1", T).expect("READY=1");
    let ready_at = realtime_ns();
    assert!(ready.contains("VM running"), "{ready}");
    let msgs = rig.notify.messages();
    let i = |needle: &str| msgs.iter().position(|m| m.contains(needle));
    let i_booted = i("STATUS=VM booted, waiting for the guest").expect("boot reported");
    let i_status = i("STATUS=guest: Starting services").expect("guest STATUS relayed");
    assert!(i_booted < i_status, "{msgs:?}");
    let i_status2 = i("STATUS=guest: Reached target multi-user").unwrap();
    let i_ready = i("READY=1").unwrap();
    assert!(i_status < i_status2 && i_status2 < i_ready, "{msgs:?}");
    assert!(
        i("EXTEND_TIMEOUT_USEC=").is_some_and(|x| x < i_ready),
        "{msgs:?}"
    );

    // Wait until the fake has logged all three exchanges.
    assert!(wait_until(T, || guest_log(&rig).len() == 3));
    let log = guest_log(&rig);
    for entry in &log {
        assert_eq!(entry["connect_failed"], false, "{entry}");
        let written = entry["written_ms"].as_f64().unwrap();
        let closed = entry["peer_closed_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("credbridge never closed: {entry}"));
        assert!(
            closed - written < 50.0,
            "closed {:.1} ms after the message: {entry}",
            closed - written
        );
    }
    let guest_ready_ns: u128 = log[2]["written_realtime_ns"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        guest_ready_ns <= ready_at,
        "credbridge's READY=1 came after the guest's"
    );
    // Before the guest said READY=1, credbridge said nothing of the kind, although the VM had
    // booted long before.
    assert!(rig.record_file("oem_strings.json").exists());
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
    assert!(
        !rig.path("notify.vsock_8888").exists(),
        "the relay socket is removed"
    );
}

#[test]
fn vsock_cid_adds_the_device_and_the_notify_string() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"vsock-cid-secret");
    let kernel = rig.kernel();
    let mut child = rig
        .command(
            "run",
            &[
                "--ready",
                "guest",
                "--vsock-cid",
                "7",
                "--notify-port",
                "9999",
            ],
            &["--kernel", &kernel],
        )
        .env("FAKE_CH_GUEST_NOTIFY", "9999:READY=1")
        .spawn()
        .unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let config = rig.read_record_json("vm_config.json");
    assert_eq!(config["vsock"]["cid"], 7, "{config}");
    let sock = config["vsock"]["socket"].as_str().unwrap();
    assert_eq!(sock, rig.path("notify.vsock").to_str().unwrap());
    let strings = rig.read_record_json("oem_strings.json");
    let first = strings["oem_strings"][0].as_str().unwrap();
    use base64::Engine;
    let first = base64::engine::general_purpose::STANDARD
        .decode(first)
        .unwrap();
    assert_eq!(
        first, b"io.systemd.credential:vmm.notify_socket=vsock-stream:2:9999",
        "credbridge's notify string comes before the credentials"
    );
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
}

#[test]
fn ready_timeout_stops_the_vm_and_fails() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"ready-timeout-secret");
    let args = vsock_vm(&rig);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = std::time::Instant::now();
    let mut child = rig
        .command("run", &["--ready", "guest", "--ready-timeout", "1s"], &args)
        .spawn()
        .unwrap();
    let st = wait_exit(&mut child, T);
    assert_eq!(st.code(), Some(125));
    assert!(t0.elapsed() >= Duration::from_secs(1));
    let stderr = stderr_of(&mut child);
    assert!(
        stderr.contains("not ready within 1s (--ready-timeout)"),
        "{stderr}"
    );
    let msgs = rig.notify.messages();
    assert!(!msgs.iter().any(|m| m.contains("READY=1")), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.contains("STOPPING=1")), "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("STATUS=Failed: the VM was not ready") && m.contains("\nERRNO=")),
        "a failure at run time carries ERRNO= too: {msgs:?}"
    );
    let routes: Vec<String> = rig
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        routes.iter().any(|r| r.ends_with("vm.power-button")),
        "the VM was stopped gracefully: {routes:?}"
    );
}

#[test]
fn a_listener_bound_by_someone_else_is_left_alone() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"foreign-relay-secret");
    // microvm.nix's socat relay, as its preStart leaves it.
    let relay = std::os::unix::net::UnixListener::bind(rig.path("notify.vsock_8888")).unwrap();
    let args = vsock_vm(&rig);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &["--ready", "guest"], &args)
        .env("FAKE_CH_GUEST_NOTIFY", "8888:READY=1")
        .spawn()
        .unwrap();
    let status = rig
        .notify
        .wait_for("another process", T)
        .expect("STATUS says who relays");
    assert!(status.contains("NotifyAccess=all"), "{status}");
    // The guest's message reaches the other relay, not credbridge. (credbridge's own probe,
    // which found the relay alive, is the first connection, and carries nothing.)
    relay.set_nonblocking(false).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let (mut conn, _) = relay.accept().unwrap();
        use std::io::Read;
        conn.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).unwrap_or(0);
        if n > 0 {
            got = buf[..n].to_vec();
            break;
        }
    }
    assert_eq!(got, b"READY=1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !rig.notify.messages().iter().any(|m| m.contains("READY=1")),
        "credbridge does not claim readiness it cannot see"
    );
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
    let stderr = stderr_of(&mut child);
    assert_eq!(
        stderr.matches("served by another process").count(),
        1,
        "said once: {stderr}"
    );
    assert!(
        rig.path("notify.vsock_8888").exists(),
        "the other relay's socket stays"
    );
}

#[test]
fn ready_guest_without_vsock_is_refused_with_the_fix() {
    let rig = Rig::new();
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = rig
        .command("run", &["--ready", "guest"], &args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ready guest needs a vsock device") && stderr.contains("--vsock-cid"),
        "{stderr}"
    );
    assert!(!rig.record_file("pid").exists());
}

#[test]
fn a_bad_notify_socket_credential_is_refused_without_showing_it() {
    let mut rig = Rig::new();
    // The guest would take this as its notify address; credbridge cannot relay it.
    rig.add_credential("vmm.notify_socket", b"vsock:2:7777-not-shown");
    let kernel = rig.kernel();
    let out = rig
        .command(
            "run",
            &["--ready", "guest", "--vsock-cid", "5"],
            &["--kernel", &kernel],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("credential \"vmm.notify_socket\" says <redacted>")
            && stderr.contains("vsock-stream:2:PORT"),
        "{stderr}"
    );
    rig.assert_no_secret_in("stderr", &out.stderr);
    assert!(!rig.record_file("pid").exists());
}
