//! The QEMU pieces against the real qemu-system-x86_64 (TCG, no guest): the child argv with
//! sealed memfds and the QMP monitor on a socketpair, started the way the supervisor starts
//! it (`sys::prepare_child`), and the QMP client talking to it.
//!
//! Needs qemu-system-x86_64 (Debian: qemu-system-x86); fails with that hint without it.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use credbridge::hypervisor::qemu::{self, Qmp, qmp::EventKind};
use credbridge::oem::{OemString, Origin};
use tokio::io::AsyncReadExt;

const QEMU: &str = "qemu-system-x86_64";

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn require_qemu() {
    let ok = std::process::Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{QEMU} is not installed; install it (Debian: apt-get install qemu-system-x86)"
    );
}

struct Started {
    child: tokio::process::Child,
    qmp: std::os::unix::net::UnixStream,
}

/// Parses `user_args`, creates the memfds and the socketpair, and spawns QEMU as the
/// supervisor would.
fn start(user_args: &[&str], strings: &[OemString]) -> Started {
    require_qemu();
    let user_args = os(user_args);
    let parsed = qemu::parse_argv(&user_args).unwrap();
    let launch = qemu::launch(&user_args, &parsed, strings, &[], None).unwrap();
    let mut cmd = tokio::process::Command::new(QEMU);
    cmd.args(&launch.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    credbridge::sys::prepare_child(
        &mut cmd,
        launch.keep.clone(),
        nix::unistd::getpid().as_raw(),
    );
    let child = cmd.spawn().unwrap();
    // The child has its copies; ours go now (the memfds' contents live on in QEMU's fds).
    let qemu::Launch { qmp, .. } = launch;
    Started { child, qmp }
}

/// A QEMU with no machine at all: enough for the monitor.
const NO_MACHINE: [&str; 5] = ["-machine", "none", "-nodefaults", "-display", "none"];

/// A `pc` machine under TCG, started paused (`-S`), with `mem` of RAM.
fn paused_pc(mem: &str) -> Vec<&str> {
    vec![
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        mem,
        "-S",
    ]
}

async fn stderr_of(child: &mut tokio::process::Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s).await;
    }
    s
}

#[tokio::test]
async fn qmp_on_a_socketpair_queries_and_quits_a_real_qemu() {
    let mut s = start(&NO_MACHINE, &[]);
    let (qmp, mut events) = Qmp::connect_std(s.qmp, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(qmp.version().starts_with(|c: char| c.is_ascii_digit()));
    assert_eq!(qmp.query_status().await.unwrap(), "running");
    let e = qmp.execute("no-such-command", None).await.unwrap_err();
    assert!(e.to_string().contains("CommandNotFound"), "{e}");
    qmp.quit().await.unwrap();
    let ev = events.recv().await.unwrap();
    assert_eq!(
        ev.kind(),
        EventKind::Shutdown {
            guest: false,
            reason: "host-qmp-quit".into()
        }
    );
    let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "{status:?}: {}",
        stderr_of(&mut s.child).await
    );
    assert!(events.recv().await.is_none(), "events end when QEMU exits");
}

#[tokio::test]
async fn paused_start_powerdown_and_events() {
    let mut s = start(&paused_pc("64M"), &[]);
    let (qmp, mut events) = Qmp::connect_std(s.qmp, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(qmp.query_status().await.unwrap(), "prelaunch");
    qmp.cont().await.unwrap();
    assert_eq!(events.recv().await.unwrap().kind(), EventKind::Resume);
    assert_eq!(qmp.query_status().await.unwrap(), "running");
    // No guest OS to act on it, but QEMU accepts the button press and reports it.
    qmp.system_powerdown().await.unwrap();
    assert_eq!(events.recv().await.unwrap().kind(), EventKind::Powerdown);
    qmp.quit().await.unwrap();
    let status = s.child.wait().await.unwrap();
    assert!(status.success(), "{}", stderr_of(&mut s.child).await);
}

/// QEMU reads each memfd through `path=/dev/fd/N`: shown by its own size check, which sees
/// exactly the bytes we wrote (its other tables take 321 bytes on this machine).
#[tokio::test]
async fn qemu_reads_the_memfds_and_checks_its_table_size() {
    let pc = paused_pc("512M");
    let big = OemString::public(&"a".repeat(65500), Origin::Flag);
    let mut s = start(&pc, &[big]);
    let status = tokio::time::timeout(Duration::from_secs(20), s.child.wait())
        .await
        .unwrap()
        .unwrap();
    let err = stderr_of(&mut s.child).await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("SMBIOS 2.1 table length 65828 exceeds 65535"),
        "{err}"
    );

    // The largest strings credbridge's QEMU limits accept do fit, split over two memfds and
    // after a string of the argv's own.
    let l = qemu::limits(usize::MAX);
    let argv_string = "io.systemd.credential:argv=1";
    let first = 30000;
    let second = l.strings_ceiling - (argv_string.len() + 1) - (first + 1) - 1;
    let strings = vec![
        OemString::public(argv_string, Origin::Argv),
        OemString::public(&"b".repeat(first), Origin::Flag),
        OemString::public(&"c".repeat(second), Origin::Flag),
    ];
    credbridge::oem::validate(&strings, &l).unwrap();
    let mut args = pc.clone();
    let own = format!("type=11,value={argv_string}");
    args.extend(["-smbios", &own]);
    let mut s = start(&args, &strings);
    let (qmp, _events) = Qmp::connect_std(s.qmp, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qmp.query_status().await.unwrap(), "prelaunch");
    qmp.quit().await.unwrap();
    let status = s.child.wait().await.unwrap();
    assert!(status.success(), "{}", stderr_of(&mut s.child).await);
}

/// A connection that QEMU never answers on must not hang credbridge.
#[tokio::test]
async fn commands_time_out_when_qemu_is_stopped() {
    let mut s = start(&NO_MACHINE, &[]);
    let (qmp, _events) = Qmp::connect_std(s.qmp, Duration::from_secs(10))
        .await
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(s.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let e = qmp
        .with_timeout(Duration::from_millis(300))
        .query_status()
        .await
        .unwrap_err();
    assert!(
        matches!(e, credbridge::hypervisor::qemu::QmpError::Timeout { .. }),
        "{e}"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // The late reply to the timed-out command is dropped; the next one is answered.
    assert_eq!(qmp.query_status().await.unwrap(), "running");
    qmp.quit().await.unwrap();
    s.child.wait().await.unwrap();
}
