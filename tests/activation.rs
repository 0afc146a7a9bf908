//! Socket activation under `systemd-socket-activate`, as a `.socket` unit with
//! `FileDescriptorName=api` would hand the API socket over (issues #2 and #3).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

fn activate(rig: &Rig, sock: &Path) -> Child {
    activate_with(rig, sock, &[], &rig.vm_args(), &[])
}

fn activate_with(
    rig: &Rig,
    sock: &Path,
    flags: &[&str],
    args: &[String],
    extra_env: &[(&str, &str)],
) -> Child {
    let mut inner = rig.command("run", flags, &[]);
    for (k, v) in extra_env {
        inner.env(k, v);
    }
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(sock).arg("--fdname=api");
    // systemd-socket-activate starts the program with a fresh environment but for these.
    for (k, v) in inner.get_envs() {
        if let (Some(k), Some(_)) = (k.to_str(), v) {
            cmd.args(["-E", k]);
        }
    }
    cmd.args(["-E", "PATH"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .args(args)
        .current_dir(rig.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.spawn().expect("systemd-socket-activate is installed")
}

/// With Accept=no the first connection also starts the service.
fn get(sock: &Path, path: &str) -> String {
    http_get(sock, &format!("/api/v1/{path}"))
}

#[test]
fn socket_activated_api_socket_is_used_and_survives_restarts() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"activation-secret");
    let sock = rig.path("api.sock");
    for round in 0..2 {
        let mut child = activate(&rig, &sock);
        assert!(wait_until(T, || sock.exists()), "socket bound");
        // The triggering connection is queued on the listening socket and answered by the
        // hypervisor once it runs: the socket works before the VM does.
        let ping = get(&sock, "vmm.ping");
        assert!(ping.starts_with("HTTP/1.1 200"), "round {round}: {ping}");
        rig.notify.wait_for("READY=1", T).expect("READY=1");
        let info = get(&sock, "vm.info");
        assert!(
            info.contains("io.systemd.credential:k=activation-secret"),
            "{info}"
        );
        // The hypervisor got the activated socket, not one of credbridge's.
        let argv = rig.read_record_json("argv.json").to_string();
        assert!(argv.contains("fd=3"), "{argv}");
        assert!(!rig.path(&format!("api.{}", child.id())).exists());
        signal(&child, Signal::SIGTERM);
        assert_eq!(wait_exit(&mut child, T).code(), Some(0), "round {round}");
        assert!(
            sock.exists(),
            "the activated socket belongs to the socket unit and stays"
        );
        rig.notify.seen.clear();
        std::fs::remove_file(rig.record_file("pid")).unwrap();
    }
}

/// The credbridge flags of the shipped `credbridge-example@.service`, so the unit and this test
/// cannot drift apart.
fn example_unit_flags() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/units/credbridge-example@.service"
    ))
    .unwrap();
    let exec = unit
        .split("\nExecStart=")
        .nth(1)
        .expect("ExecStart= in the unit");
    let mut line = String::new();
    for l in exec.lines() {
        line.push_str(l.trim_end_matches('\\'));
        line.push(' ');
        if !l.ends_with('\\') {
            break;
        }
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let start = words.iter().position(|w| *w == "run").unwrap() + 1;
    let end = words.iter().position(|w| *w == "--").unwrap();
    words[start..end]
        .iter()
        .map(|w| w.replace("${VSOCK_CID}", "5"))
        .collect()
}

#[test]
fn the_example_socket_and_service_pair_works_under_socket_activation() {
    let mut rig = Rig::new();
    rig.add_credential("api-key", b"example-unit-secret");
    rig.add_credential("not-selected", b"must-not-reach-the-guest");
    let flags = example_unit_flags();
    assert!(flags.contains(&"guest".to_owned()), "{flags:?}");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let kernel = rig.kernel();
    let args: Vec<String> = ["--kernel", &kernel, "--seccomp", "true"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let sock = rig.path("api.sock");
    let mut child = activate_with(
        &rig,
        &sock,
        &flags,
        &args,
        &[("FAKE_CH_GUEST_NOTIFY", "8888:STATUS=up|READY=1")],
    );
    assert!(wait_until(T, || sock.exists()));
    let ping = get(&sock, "vmm.ping");
    assert!(ping.starts_with("HTTP/1.1 200"), "{ping}");
    let ready = rig
        .notify
        .wait_for("READY=1", T)
        .expect("READY=1 from the guest");
    assert!(ready.contains("1 credential delivered"), "{ready}");
    let info = get(&sock, "vm.info");
    assert!(info.contains("api-key=example-unit-secret"), "{info}");
    assert!(
        !info.contains("not-selected"),
        "--credential selects: {info}"
    );
    assert!(rig.notify.index_of("STATUS=guest: up").is_some());
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
    assert!(sock.exists());
}
