//! The API socket credbridge binds itself, and the probes that decide whether a socket on a
//! path is stale (issue #11).

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
};

const T: Duration = Duration::from_secs(10);

fn vm_args_with_socket(rig: &Rig, sock: &Path) -> Vec<String> {
    let mut args = rig.vm_args();
    args.push("--api-socket".into());
    args.push(format!("path={}", sock.display()));
    args
}

fn run_with_socket(rig: &Rig, sock: &Path) -> std::process::Child {
    rig.command("run", &[], &strs(&vm_args_with_socket(rig, sock)))
        .spawn()
        .unwrap()
}

/// Runs to a refused start; returns stderr.
fn refused_with_socket(rig: &Rig, sock: &Path) -> String {
    let mut child = run_with_socket(rig, sock);
    let code = wait_exit(&mut child, T).code();
    let stderr = stderr_of(&mut child);
    assert_eq!(code, Some(125), "{stderr}");
    stderr
}

/// #11: in a directory another user can write (or owns), that user could rename the socket
/// away and put theirs in its place: refused before anything is bound.
#[test]
fn a_directory_another_user_controls_is_refused_before_binding() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"dir-check-secret");
    let dir = rig.path("shared");
    std::fs::create_dir(&dir).unwrap();
    for (setup, expect) in [
        (
            0o777,
            "is writable by everyone (mode 0777) without the sticky bit",
        ),
        (
            0o775,
            "is writable by its group (mode 0775) without the sticky bit",
        ),
        (0o755, "is owned by uid 65534, not by us"),
    ] {
        chmod(&dir, setup);
        if setup == 0o755 {
            nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        }
        let sock = dir.join("vm.sock");
        let stderr = refused_with_socket(&rig, &sock);
        assert!(
            stderr.contains(&format!(
                "refusing the API socket {}: directory {} {expect}",
                sock.display(),
                dir.display()
            )),
            "{stderr}"
        );
        assert!(
            stderr.contains("hint: put the API socket in a directory"),
            "{stderr}"
        );
        assert!(!sock.exists(), "nothing bound");
        assert!(!rig.record_file("pid").exists(), "nothing started");
    }
    // With the sticky bit nobody else may rename our entries: /tmp's 1777 is fine.
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    chmod(&dir, 0o1777);
    let sock = dir.join("vm.sock");
    let mut child = run_with_socket(&rig, &sock);
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
}

/// #11: a listener put at the API socket's path by someone else gets nothing: SO_PEERCRED
/// names the process that listened, and credbridge listened on its own socket itself.
#[test]
fn a_replaced_api_socket_gets_nothing() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"peer-check-secret");
    let sock = rig.path("vm.sock");
    let mut child = run_with_socket(&rig, &sock);
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    // The attacker moves the real socket aside and listens at its path (here the test
    // process, another pid than credbridge's).
    std::fs::rename(&sock, rig.path("moved.sock")).unwrap();
    let attacker = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    attacker.set_nonblocking(true).unwrap();
    signal(&child, Signal::SIGTERM);
    // The power button request is refused at connect; the stop goes on with SIGTERM.
    let code = wait_exit(&mut child, Duration::from_secs(30)).code();
    let stderr = stderr_of(&mut child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the API socket is served by another listener"),
        "{stderr}"
    );
    let mut received = Vec::new();
    while let Ok((mut conn, _)) = attacker.accept() {
        use std::io::Read;
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = conn.read_to_end(&mut received);
    }
    assert!(
        received.is_empty(),
        "the attacker got {:?}",
        String::from_utf8_lossy(&received)
    );
    let _ = std::fs::remove_file(rig.path("moved.sock"));
}

/// A listener on `path` whose backlog is full, and the connections that fill it.
fn full_listener(path: &Path) -> Vec<std::os::fd::OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let mut held = vec![fd];
    for _ in 0..64 {
        let c = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        if connect(c.as_raw_fd(), &UnixAddr::new(path).unwrap()).is_err() {
            return held;
        }
        held.push(c);
    }
    panic!("the backlog never filled");
}

/// #11: a live socket whose backlog is full is in use; the probe must not wait in connect().
#[test]
fn a_live_api_socket_with_a_full_backlog_is_in_use_at_once() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"backlog-secret");
    let sock = rig.path("vm.sock");
    let _held = full_listener(&sock);
    let t = Instant::now();
    let stderr = refused_with_socket(&rig, &sock);
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(sock.exists());
}

/// #11: the guest relay's probe is the same: a full backlog means someone else relays.
#[test]
fn a_live_relay_socket_with_a_full_backlog_is_left_to_its_owner() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"relay-backlog-secret");
    let mut args = rig.vm_args();
    args.extend(["--vsock".into(), "cid=3,socket=vsock.sock".into()]);
    let relay = rig.path("vsock.sock_8888");
    let _held = full_listener(&relay);
    let mut child = rig
        .command("run", &["--ready", "guest"], &strs(&args))
        .spawn()
        .unwrap();
    rig.notify
        .wait_for("is served by another process", T)
        .expect("the live relay socket is left alone");
    signal(&child, Signal::SIGTERM);
    wait_exit(&mut child, T);
    assert!(relay.exists());
}

/// #11: EACCES says nothing about whether a socket is in use; only ECONNREFUSED means stale.
/// credbridge runs as nobody here, next to a live root-owned 0600 socket in a directory
/// nobody owns (so removing it would succeed).
#[test]
fn a_socket_we_may_not_connect_to_is_not_removed() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"eacces-secret");
    // nobody must be able to read the rig: credentials, kernel, record directory.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(rig.dir.path())
        .status()
        .unwrap();
    chmod(&rig.record, 0o777);
    let dir = rig.path("nobody");
    std::fs::create_dir(&dir).unwrap();
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    chmod(&dir, 0o755);
    let sock = dir.join("vm.sock");
    let live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    chmod(&sock, 0o600);
    let inner = rig.command("run", &[], &strs(&vm_args_with_socket(&rig, &sock)));
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(rig.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().unwrap();
    let code = wait_exit(&mut child, T).code();
    let stderr = stderr_of(&mut child);
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot tell whether the API socket {} is in use (Permission denied",
            sock.display()
        )),
        "{stderr}"
    );
    assert!(sock.exists(), "the live socket is still there");
    drop(live);
}

/// #11: whichever step runs out of fds, no empty api.PID directory is left behind.
#[test]
fn no_private_api_directory_is_left_when_fds_run_out() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"fd-limit-secret");
    let args = rig.vm_args();
    let mut saw_emfile = false;
    for limit in 4..=24 {
        let inner = rig.command("run", &[], &strs(&args));
        let mut child = rig
            .through_shell(&format!("ulimit -n {limit}; exec \"$@\""), &inner)
            .spawn()
            .unwrap();
        // A limit high enough to start: stop it again.
        while child.try_wait().unwrap().is_none() {
            if rig
                .notify
                .wait_for("READY=1", Duration::from_millis(50))
                .is_some()
            {
                signal(&child, Signal::SIGTERM);
                break;
            }
        }
        wait_exit(&mut child, T);
        let stderr = stderr_of(&mut child);
        saw_emfile |= stderr.contains("Too many open files");
        let left: Vec<_> = std::fs::read_dir(rig.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("api.") || n.starts_with(".credbridge-bind"))
            .collect();
        assert!(
            left.is_empty(),
            "ulimit -n {limit}: left {left:?}\n{stderr}"
        );
        rig.notify.seen.clear();
    }
    assert!(saw_emfile, "some limit ran out of fds");
}
