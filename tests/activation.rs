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

/// Starts credbridge under systemd-socket-activate, lets `prepare` change the socket it bound
/// (systemd-socket-activate binds 0644, root-owned: accepted as is by the tests above), then
/// triggers the start. Returns credbridge's exit status and stderr.
fn activate_after(
    rig: &Rig,
    sock: &Path,
    flags: &[&str],
    prepare: impl FnOnce(),
) -> (Option<i32>, String) {
    let mut child = activate_with(rig, sock, flags, &rig.vm_args(), &[]);
    assert!(wait_until(T, || sock.exists()), "socket bound");
    prepare();
    let _ = get(sock, "vmm.ping");
    let code = wait_exit(&mut child, T).code();
    (code, stderr_of(&mut child))
}

/// #11: a .socket unit without SocketMode= (systemd's default is 0666) lets every local user
/// read the secrets with `GET vm.info`: refused before the hypervisor starts.
#[test]
fn an_activated_api_socket_everyone_can_connect_to_is_refused() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"activation-mode-secret");
    let sock = rig.path("api.sock");
    let (code, stderr) = activate_after(&rig, &sock, &[], || chmod(&sock, 0o666));
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("can be connected to by every local user"),
        "{stderr}"
    );
    assert!(stderr.contains("SocketMode=0600"), "{stderr}");
    assert!(!rig.record_file("pid").exists(), "no hypervisor started");
    assert!(
        rig.notify
            .messages()
            .iter()
            .any(|m| m.contains("STATUS=Failed: socket-activated fd 3")),
        "{:?}",
        rig.notify.seen
    );
}

/// #11: group access only with --api-socket-group-access.
#[test]
fn group_access_to_an_activated_api_socket_needs_the_flag() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"activation-group-secret");
    let sock = rig.path("api.sock");
    let (code, stderr) = activate_after(&rig, &sock, &[], || chmod(&sock, 0o660));
    assert_eq!(code, Some(125), "{stderr}");
    assert!(stderr.contains("members of group 0"), "{stderr}");
    assert!(stderr.contains("--api-socket-group-access"), "{stderr}");
    assert!(!rig.record_file("pid").exists());

    let mut child = activate_with(
        &rig,
        &sock,
        &["--api-socket-group-access"],
        &rig.vm_args(),
        &[],
    );
    assert!(wait_until(T, || sock.exists()));
    chmod(&sock, 0o660);
    assert!(get(&sock, "vmm.ping").starts_with("HTTP/1.1 200"));
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
}

/// #11: a directory others may write lets them put their own socket in its place.
#[test]
fn an_activated_api_socket_in_a_directory_others_can_write_is_refused() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"activation-dir-secret");
    let dir = rig.path("open");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o777);
    let sock = dir.join("api.sock");
    let (code, stderr) = activate_after(&rig, &sock, &[], || {});
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "directory {} is writable by everyone (mode 0777) without the sticky bit",
            dir.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("DirectoryMode=0755"), "{stderr}");
    assert!(!rig.record_file("pid").exists());
}

/// A listening socket made by hand and handed over as LISTEN_FDS=1 on fd 3, the way a
/// service manager does: the runner shell moves it from stdin to fd 3 and execs credbridge
/// with its own pid in LISTEN_PID.
fn with_listen_fd(rig: &Rig, listener: std::os::unix::net::UnixListener) -> Child {
    let inner = rig.command("run", &[], &strs(&rig.vm_args()));
    let mut cmd = rig.through_shell(
        "exec 3<&0 </dev/null; export LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES=api; exec \"$@\"",
        &inner,
    );
    cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)));
    cmd.spawn().unwrap()
}

/// #11: an abstract socket has no permissions at all.
#[test]
fn an_abstract_activated_api_socket_is_refused() {
    use std::os::linux::net::SocketAddrExt;
    let mut rig = Rig::new();
    rig.add_credential("k", b"abstract-secret");
    let name = format!("credbridge-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let mut child = with_listen_fd(&rig, listener);
    assert_eq!(wait_exit(&mut child, T).code(), Some(125));
    let stderr = stderr_of(&mut child);
    assert!(
        stderr.contains(&format!(
            "socket-activated fd 3 is the abstract socket @{name}, which every local user can connect to"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("SocketMode=0600"), "{stderr}");
    assert!(!rig.record_file("pid").exists());
}

/// #11: hand-made path sockets: the mode counts unless a directory on the way shuts others
/// out; a socket owned by another user is refused whatever its mode.
#[test]
fn hand_made_activated_sockets_are_judged_by_mode_directories_and_owner() {
    use std::os::unix::net::UnixListener;
    let mut rig = Rig::new();
    rig.add_credential("k", b"hand-made-secret");
    let open = rig.path("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o755);
    let p = open.join("api.sock");
    let l = UnixListener::bind(&p).unwrap();
    chmod(&p, 0o777);
    let mut child = with_listen_fd(&rig, l);
    assert_eq!(wait_exit(&mut child, T).code(), Some(125));
    let stderr = stderr_of(&mut child);
    assert!(stderr.contains("every local user"), "{stderr}");
    std::fs::remove_file(&p).unwrap();

    let l = UnixListener::bind(&p).unwrap();
    nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    chmod(&p, 0o600);
    let mut child = with_listen_fd(&rig, l);
    assert_eq!(wait_exit(&mut child, T).code(), Some(125));
    let stderr = stderr_of(&mut child);
    assert!(stderr.contains("is owned by uid 65534"), "{stderr}");
    std::fs::remove_file(&p).unwrap();

    // The same 0777 socket behind a 0700 directory of ours: nobody else gets to it.
    let l = UnixListener::bind(&p).unwrap();
    chmod(&p, 0o777);
    chmod(&open, 0o700);
    let mut child = with_listen_fd(&rig, l);
    rig.notify
        .wait_for("READY=1", T)
        .expect("accepted and ready");
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
}
