//! Black-box tests of the fake's process behaviour: usage errors, the event monitor, signals,
//! the API over a socket the test owns, SCM_RIGHTS on add-net, poweroff, guest notify, knobs.

mod common;

use std::fs::File;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, bind, sendmsg, socket,
};
use nix::unistd::{Pid, pipe2};
use serde_json::{Value, json};

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn events_log(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.join("rec/events.log")).unwrap_or_default()
}

/// Splits the event stream into its JSON objects (each followed by a blank line).
fn parse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|b| !b.is_empty())
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["source"].as_str().unwrap(),
                e["event"].as_str().unwrap()
            )
        })
        .collect()
}

fn kernel(dir: &TempDir) -> String {
    let k = dir.join("vmlinux");
    std::fs::write(&k, b"not a kernel").unwrap();
    k.to_str().unwrap().to_owned()
}

#[test]
fn usage_errors_exit_2() {
    let dir = TempDir::new("usage");
    for args in [
        &["--platform", "oem_strings=[a]"][..],
        &["--landlock"],
        &[
            "--kernel",
            "k",
            "--platform",
            "oem_strings=[a]",
            "--platform",
            "oem_strings=[b]",
        ],
        &["--kernel", "k", "--gpu", "x"],
        &["--kernel", "k", "--watchdog", "on"],
        &[],
    ] {
        let out = run_with_timeout(fake(&dir, args), 10);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        // No arguments at all prints the help (clap's arg_required_else_help), still exit 2.
        let want = if args.is_empty() {
            "Usage: cloud-hypervisor"
        } else {
            "error: "
        };
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}"
        );
    }
    // Invalid UTF-8 in argv is a clap error.
    let bad = std::ffi::OsStr::from_bytes(b"oem_strings=[\xff]");
    let out = run_with_timeout(
        fake_os(
            &dir,
            [
                std::ffi::OsStr::new("--kernel"),
                "k".as_ref(),
                "--platform".as_ref(),
                bad,
            ],
        ),
        10,
    );
    assert_eq!(out.status.code(), Some(2));
    // And the argv record keeps the bytes.
    let rec = read_json(&dir.join("rec/argv.json"));
    assert_eq!(
        rec["args"][3]["b64"],
        STANDARD.encode(b"oem_strings=[\xff]")
    );
}

#[test]
fn config_and_boot_errors_exit_1() {
    let dir = TempDir::new("cfgerr");
    let out = run_with_timeout(fake(&dir, &["--kernel", "/nonexistent/vmlinux"]), 10);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "  0: Error booting VM\n  1: The VM could not boot\n  2: Cannot open kernel file"
        ),
        "{err}"
    );
    let k = kernel(&dir);
    let out = run_with_timeout(
        fake(&dir, &["--kernel", &k, "--platform", "oem_strings=[a,b"]),
        10,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("  1: Error parsing --platform\n  2: Invalid syntax: oem_strings=[a,b\n"),
        "{err}"
    );
}

/// O_NONBLOCK on the monitor's open file description, events dropped on EAGAIN, the exact
/// pretty-printed format, then SIGTERM -> shutdown events and exit 0.
#[test]
fn event_monitor_on_a_pipe() {
    let dir = TempDir::new("events");
    let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let ours = w.try_clone().unwrap(); // same open file description
    // Fill the pipe so the first event meets EAGAIN.
    fcntl(&ours, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let mut f = File::from(ours.try_clone().unwrap());
    let mut filled = 0;
    loop {
        match f.write(&[b'x'; 4096]) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    fcntl(&ours, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    let api = dir.join("api.sock");
    let mut cmd = fake(
        &dir,
        &[
            "--event-monitor",
            "fd=1",
            "--api-socket",
            &format!("path={}", api.display()),
        ],
    );
    cmd.stdout(Stdio::from(w));
    let mut child = cmd.spawn().unwrap();
    wait_for_api(&api);
    let fl = OFlag::from_bits_retain(fcntl(&ours, FcntlArg::F_GETFL).unwrap());
    assert!(
        fl.contains(OFlag::O_NONBLOCK),
        "fake must set O_NONBLOCK on the monitor fd"
    );
    assert_eq!(
        std::fs::metadata(&api).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(
        events_log(&dir).contains("vmm:starting dropped"),
        "{}",
        events_log(&dir)
    );

    // Drain: only our filler is in the pipe.
    fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let mut rf = File::from(r);
    let mut drained = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match rf.read(&mut buf) {
            Ok(n) => drained.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(drained.len(), filled);
    assert!(drained.iter().all(|b| *b == b'x'));

    // Create and boot through the API; OEM strings that argv cannot carry arrive byte-exact.
    let k = kernel(&dir);
    let oem = ["io.systemd.credential:a=x,y", "\"q\"", "[x", " lead\ttab"];
    let cfg = json!({"payload": {"kernel": k}, "platform": {"oem_strings": oem}});
    assert_eq!(
        http(&api, "PUT", "vm.create", Some(&cfg.to_string())).status,
        204
    );
    assert_eq!(http(&api, "PUT", "vm.boot", None).status, 204);
    let rec = read_json(&dir.join("rec/oem_strings.json"));
    assert_eq!(rec["source"], "api");
    let got: Vec<String> = rec["oem_strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| String::from_utf8(STANDARD.decode(s.as_str().unwrap()).unwrap()).unwrap())
        .collect();
    assert_eq!(got, oem);
    let info = http(&api, "GET", "vm.info", None);
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["state"], "Running");
    assert_eq!(info.json()["config"]["platform"]["oem_strings"], json!(oem));

    signal(&child, Signal::SIGTERM);
    let st = wait_exit(&mut child, 5);
    assert_eq!(st.code(), Some(0));
    assert!(!api.exists(), "clean exit removes the path= socket");
    let mut text = String::new();
    loop {
        match rf.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.push_str(std::str::from_utf8(&buf[..n]).unwrap()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    let evs = parse_events(&text);
    assert_eq!(
        names(&evs),
        [
            "vm:booting",
            "vm:booted",
            "vm:shutdown",
            "vm:deleted",
            "vmm:shutdown"
        ]
    );
    // The exact layout of the reference example.
    let first = text.split("\n\n").next().unwrap();
    let secs = evs[0]["timestamp"]["secs"].as_u64().unwrap();
    let nanos = evs[0]["timestamp"]["nanos"].as_u64().unwrap();
    assert_eq!(
        first,
        format!(
            "{{\n  \"timestamp\": {{\n    \"secs\": {secs},\n    \"nanos\": {nanos}\n  }},\n  \"source\": \"vm\",\n  \"event\": \"booting\",\n  \"properties\": null\n}}"
        )
    );
    assert!(text.ends_with("}\n\n"));
}

#[test]
fn sighup_is_not_handled() {
    let dir = TempDir::new("hup");
    let api = dir.join("api.sock");
    let mut child = fake(&dir, &["--api-socket", api.to_str().unwrap()])
        .spawn()
        .unwrap();
    wait_for_api(&api);
    signal(&child, Signal::SIGHUP);
    let st = wait_exit(&mut child, 5);
    assert_eq!(st.signal(), Some(1));
    assert!(api.exists(), "killed by SIGHUP: the socket stays behind");
}

#[test]
fn sigint_exits_0_and_ignore_sigterm_knob() {
    let dir = TempDir::new("int");
    let api = dir.join("api.sock");
    let mut child = fake(&dir, &["--api-socket", &format!("path={}", api.display())])
        .env("FAKE_CH_IGNORE_SIGTERM", "1")
        .spawn()
        .unwrap();
    wait_for_api(&api);
    signal(&child, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGTERM must be ignored with the knob"
    );
    signal(&child, Signal::SIGINT);
    assert_eq!(wait_exit(&mut child, 5).code(), Some(0));
}

/// `--api-socket fd=N` with a listening socket the test created (passed as fd 0).
#[test]
fn api_over_inherited_listening_fd() {
    let dir = TempDir::new("fdapi");
    let path = dir.join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let k = kernel(&dir);
    let mut cmd = fake(&dir, &["--api-socket", "fd=0"]);
    cmd.stdin(Stdio::from(OwnedFd::from(listener)));
    let mut child = cmd.spawn().unwrap();
    let ping = http(&path, "GET", "vmm.ping", None);
    assert_eq!(ping.status, 200);
    assert!(ping.head.starts_with(
        "HTTP/1.1 200 \r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n"
    ));
    assert_eq!(ping.json()["pid"], child.id());
    assert_eq!(ping.json()["version"], "v54.0.0");
    assert_eq!(http(&path, "GET", "vm.info", None).status, 404);
    let bad = http(&path, "PUT", "vm.create", Some("{not json"));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()[0], "Failed to deserialize JSON");
    let cfg = json!({"payload": {"kernel": k}, "platform": {"oem_strings": ["a"]}});
    // Keep-alive: create, boot and info on one connection.
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(&request_bytes(
        "PUT",
        "vm.create",
        Some(cfg.to_string().as_bytes()),
    ))
    .unwrap();
    assert_eq!(read_response(&mut s).status, 204);
    s.write_all(&request_bytes("PUT", "vm.boot", None)).unwrap();
    let boot = read_response(&mut s);
    assert_eq!(boot.status, 204);
    assert!(!boot.head.contains("Content-Length"));
    s.write_all(&request_bytes("GET", "vm.info", None)).unwrap();
    let info = read_response(&mut s);
    assert_eq!(info.json()["state"], "Running");
    assert_eq!(http(&path, "GET", "vm.nonexistent", None).status, 404);
    let fds = read_json(&dir.join("rec/fds.json"));
    assert_eq!(fds[0]["fd"], 0);
    assert!(fds[0]["target"].as_str().unwrap().starts_with("socket:"));
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, 5).code(), Some(0));
}

/// A bound but not listening fd: the fake never calls listen(), so connections are refused
/// and its accept loop fails (logged in accept_errors.jsonl).
#[test]
fn api_fd_bound_not_listening_is_refused() {
    let dir = TempDir::new("nolisten");
    let path = dir.join("api.sock");
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(sock.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    let mut cmd = fake(&dir, &["--api-socket", "fd=0"]);
    cmd.stdin(Stdio::from(sock)).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    wait_for("accept errors", 10, || {
        dir.join("rec/accept_errors.jsonl").exists()
    });
    let e = UnixStream::connect(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `vm.create` drops JSON fds; `vm.add-net` takes fds only as SCM_RIGHTS.
#[test]
fn add_net_with_scm_rights() {
    let dir = TempDir::new("addnet");
    let api = dir.join("api.sock");
    let mut child = fake(&dir, &["--api-socket", &format!("path={}", api.display())])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_api(&api);
    let cfg = json!({"payload": {"kernel": "/k"}, "net": [{"id": "net0", "fds": [3, 4]}]});
    assert_eq!(
        http(&api, "PUT", "vm.create", Some(&cfg.to_string())).status,
        204
    );
    let info = http(&api, "GET", "vm.info", None).json();
    assert!(info["config"]["net"][0].get("fds").is_none(), "{info}");

    let a = File::open("/dev/null").unwrap();
    let (pr, _pw) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let body = json!({"id": "tap1", "fds": [99], "num_queues": 2}).to_string();
    let req = request_bytes("PUT", "vm.add-net", Some(body.as_bytes()));
    let mut s = UnixStream::connect(&api).unwrap();
    let raw = [a.as_raw_fd(), pr.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let n = sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(&req)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert_eq!(n, req.len());
    assert_eq!(read_response(&mut s).status, 204);
    let info = http(&api, "GET", "vm.info", None).json();
    let fds = info["config"]["net"][1]["fds"].as_array().unwrap().clone();
    assert_eq!(fds.len(), 2);
    assert!(
        fds.iter()
            .all(|f| f.as_i64().unwrap() > 2 && f.as_i64() != Some(99))
    );
    let reqs = read_jsonl(&dir.join("rec/requests.jsonl"));
    let add = reqs
        .iter()
        .find(|r| r["path"] == "/api/v1/vm.add-net")
        .unwrap();
    assert_eq!(add["nfds"], 2);
    for (i, ours) in [a.as_fd(), pr.as_fd()].into_iter().enumerate() {
        let m = std::fs::metadata(format!("/proc/self/fd/{}", ours.as_raw_fd())).unwrap();
        assert_eq!(add["fds"][i]["st_ino"], m.ino());
        assert_eq!(add["fds"][i]["st_dev"], m.dev());
    }
    assert_eq!(
        STANDARD.decode(add["body_b64"].as_str().unwrap()).unwrap(),
        body.as_bytes()
    );
    signal(&child, Signal::SIGTERM);
    let out = {
        let st = wait_exit(&mut child, 5);
        let mut e = String::new();
        child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        (st, e)
    };
    assert_eq!(out.0.code(), Some(0));
    assert!(out.1.contains(
        "FD numbers were present in HTTP request body for device Some(\"net0\") but will be ignored"
    ));
    assert!(out.1.contains("for device Some(\"tap1\")"));
}

#[test]
fn power_button_poweroff_and_no_shutdown() {
    for no_shutdown in [false, true] {
        let dir = TempDir::new("power");
        let api = dir.join("api.sock");
        let ev = dir.join("events.json");
        let k = kernel(&dir);
        let mut args = vec![
            "--kernel".to_string(),
            k,
            "--api-socket".into(),
            api.to_str().unwrap().into(),
            "--event-monitor".into(),
            format!("path={}", ev.display()),
            "--platform".into(),
            "oem_strings=[io.systemd.credential:x=1]".into(),
        ];
        if no_shutdown {
            args.push("--no-shutdown".into());
        }
        let mut child = fake_os(&dir, &args)
            .env("FAKE_CH_POWEROFF_DELAY_MS", "50")
            .spawn()
            .unwrap();
        wait_for("boot", 10, || events_log(&dir).contains("vm:booted"));
        wait_for_api(&api);
        assert_eq!(http(&api, "PUT", "vm.power-button", None).status, 204);
        if no_shutdown {
            wait_for("vm:shutdown", 5, || {
                events_log(&dir).contains("vm:shutdown")
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                child.try_wait().unwrap().is_none(),
                "--no-shutdown keeps the VMM"
            );
            assert_eq!(
                http(&api, "GET", "vm.info", None).json()["state"],
                "Created"
            );
            assert_eq!(http(&api, "PUT", "vmm.shutdown", None).status, 204);
        }
        assert_eq!(wait_exit(&mut child, 5).code(), Some(0));
        let evs = parse_events(&std::fs::read_to_string(&ev).unwrap());
        // Without --no-shutdown the poweroff runs vmm_shutdown (vm:shutdown, vm:deleted,
        // vmm:shutdown); with it the poweroff gives vm:shutdown and vmm.shutdown the other two.
        assert_eq!(
            names(&evs),
            [
                "vmm:starting",
                "vm:booting",
                "vm:booted",
                "vm:shutdown",
                "vm:deleted",
                "vmm:shutdown"
            ]
        );
        let oem = read_json(&dir.join("rec/oem_strings.json"));
        assert_eq!(oem["source"], "argv");
        assert_eq!(
            oem["oem_strings"][0],
            STANDARD.encode("io.systemd.credential:x=1")
        );
    }
}

/// The guest's notify messages arrive on `<vsock socket>_<port>`, one connection each, and the
/// sender waits for the host to close.
#[test]
fn guest_notify_over_vsock_unix_socket() {
    let dir = TempDir::new("notify");
    let listener = UnixListener::bind(dir.join("notify.vsock_8888")).unwrap();
    let k = kernel(&dir);
    let mut child = fake(
        &dir,
        &["--kernel", &k, "--vsock", "cid=3,socket=notify.vsock"],
    )
    .env("FAKE_CH_GUEST_NOTIFY", "8888:READY=1|STATUS=up\\nX=1")
    .spawn()
    .unwrap();
    let mut got = vec![];
    for _ in 0..2 {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        drop(s); // close at once, as a good host listener must
    }
    assert_eq!(got, ["READY=1", "STATUS=up\nX=1"]);
    let log = dir.join("rec/guest_notify.jsonl");
    wait_for("notify records", 5, || read_jsonl(&log).len() == 2);
    for r in read_jsonl(&log) {
        assert_eq!(r["connect_failed"], false);
        assert!(r["peer_closed_ms"].as_f64().unwrap() >= r["written_ms"].as_f64().unwrap());
    }
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, 5).code(), Some(0));
}

/// With `FAKE_CH_GUEST_NOTIFY_HALF_CLOSE=1` the host reads each message to end of stream (as
/// from systemd >= 256 through cloud-hypervisor >= 53), and the sender still waits for the close.
#[test]
fn guest_notify_half_close_reaches_the_host_as_end_of_stream() {
    let dir = TempDir::new("notify-eof");
    let listener = UnixListener::bind(dir.join("notify.vsock_8888")).unwrap();
    let k = kernel(&dir);
    let mut child = fake(
        &dir,
        &["--kernel", &k, "--vsock", "cid=3,socket=notify.vsock"],
    )
    .env("FAKE_CH_GUEST_NOTIFY", "8888:READY=1")
    .env("FAKE_CH_GUEST_NOTIFY_HALF_CLOSE", "1")
    .spawn()
    .unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got)
        .expect("end of stream, not a timeout");
    assert_eq!(got, "READY=1");
    std::thread::sleep(Duration::from_millis(100));
    let log = dir.join("rec/guest_notify.jsonl");
    assert!(
        read_jsonl(&log).is_empty(),
        "the sender waits for our close"
    );
    drop(s);
    wait_for("notify record", 5, || read_jsonl(&log).len() == 1);
    assert!(read_jsonl(&log)[0]["peer_closed_ms"].is_number());
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, 5).code(), Some(0));
}

/// #14: guest actions between the messages: a reset emits `vm:rebooting`, `vm:rebooted` and CH
/// keeps running; a vCPU error exits 0 without any shutdown event (cloud-hypervisor.md s. 5).
#[test]
fn guest_actions_reset_and_vcpu_error() {
    let dir = TempDir::new("actions");
    let listener = UnixListener::bind(dir.join("notify.vsock_8888")).unwrap();
    let k = kernel(&dir);
    let mut child = fake(
        &dir,
        &[
            "--kernel",
            &k,
            "--vsock",
            "cid=3,socket=notify.vsock",
            "--event-monitor",
            "path=ev",
        ],
    )
    .env(
        "FAKE_CH_GUEST_NOTIFY",
        "8888:READY=1|@crash|READY=1|@vcpu-error",
    )
    .spawn()
    .unwrap();
    for _ in 0..2 {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
    assert_eq!(wait_exit(&mut child, 5).code(), Some(0));
    let ev = std::fs::read_to_string(dir.join("ev")).unwrap();
    let order: Vec<String> = parse_events(&ev)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    let booted = order.iter().position(|e| *e == "booted").unwrap();
    assert_eq!(order[booted + 1..], ["rebooting", "rebooted"], "{ev}");
}

#[test]
fn fault_knobs() {
    // vm.create answers the injected error and creates nothing.
    let dir = TempDir::new("knobs");
    let api = dir.join("api.sock");
    let mut child = fake(&dir, &["--api-socket", api.to_str().unwrap()])
        .env("FAKE_CH_API_ERROR", "vm.create:400")
        .spawn()
        .unwrap();
    wait_for_api(&api);
    let r = http(&api, "PUT", "vm.create", Some("{}"));
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!(["Error creating VM: fake failure"]));
    assert_eq!(http(&api, "GET", "vm.info", None).status, 404);
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, 5).code(), Some(0));

    // Exit before vm:booted.
    let dir = TempDir::new("knobs2");
    let k = kernel(&dir);
    let mut cmd = fake(&dir, &["--kernel", &k, "--event-monitor", "path=ev"]);
    cmd.env("FAKE_CH_EXIT_BEFORE_BOOT", "3")
        .stderr(Stdio::null());
    let out = run_with_timeout(cmd, 10);
    assert_eq!(out.status.code(), Some(3));
    let evs = parse_events(&std::fs::read_to_string(dir.join("ev")).unwrap());
    assert_eq!(names(&evs), ["vmm:starting", "vm:booting"]);

    // A crash after boot.
    let dir = TempDir::new("knobs3");
    let k = kernel(&dir);
    let mut cmd = fake(&dir, &["--kernel", &k]);
    cmd.env("FAKE_CH_KILL_SELF_AFTER_BOOT_MS", "20");
    let out = run_with_timeout(cmd, 10);
    assert_eq!(out.status.signal(), Some(9));
}

#[test]
fn hang_knobs_never_answer() {
    let dir = TempDir::new("hang");
    let api = dir.join("api.sock");
    let mut child = fake(&dir, &["--api-socket", api.to_str().unwrap()])
        .env("FAKE_CH_API_HANG", "vm.boot")
        .env("FAKE_CH_PING_STOP_AFTER_MS", "0")
        .spawn()
        .unwrap();
    wait_for_api(&api);
    for route in ["vm.boot", "vmm.ping"] {
        let method = if route == "vm.boot" { "PUT" } else { "GET" };
        let mut s = UnixStream::connect(&api).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.write_all(&request_bytes(method, route, None)).unwrap();
        let mut buf = [0u8; 64];
        let e = s.read(&mut buf).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{route}: {e}"
        );
    }
    let reqs = read_jsonl(&dir.join("rec/requests.jsonl"));
    assert!(
        reqs.iter()
            .all(|r| r["hung"] == true && r["status"].is_null())
    );
    // Other routes still answer.
    assert_eq!(http(&api, "GET", "vm.info", None).status, 404);
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, 5).code(), Some(0));
}
