//! The guest's own word on its lifecycle (#14): exit status, power-off versus crash, reboots,
//! and `--ready guest:TARGET`. The fake cloud-hypervisor plays a guest with systemd >= 256 (or
//! an older one) sending the messages below, and resets or ends the VM in between (`@reboot`,
//! `@crash`, `@poweroff`, `@vcpu-error` in `FAKE_CH_GUEST_NOTIFY`).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(15);

// One message per connection, as systemd sends them; the sources are named in
// src/lifecycle.rs's tests: src/shared/machine-id-setup.c, src/shared/hostname-setup.c,
// src/core/target.c, src/core/manager.c (READY=1), src/shutdown/shutdown.c.
const BOOT_257: &str = "X_SYSTEMD_MACHINE_ID=bc7b125b9d8d47ffab31cefb22679654|X_SYSTEMD_HOSTNAME=vm1|X_SYSTEMD_UNIT_ACTIVE=sysinit.target|X_SYSTEMD_UNIT_ACTIVE=basic.target|READY=1\\nSTATUS=Ready.|X_SYSTEMD_UNIT_ACTIVE=multi-user.target";
const SHUTDOWN_TARGETS: &str =
    "X_SYSTEMD_UNIT_INACTIVE=multi-user.target|X_SYSTEMD_UNIT_ACTIVE=shutdown.target";
// systemd 252 (Debian 12): READY=1 and STATUS= only (src/core/manager.c).
const BOOT_252: &str = "STATUS=Startup finished.|READY=1\\nSTATUS=Ready.";

fn run_guest(rig: &Rig, flags: &[&str], script: &str) -> std::process::Child {
    run_guest_gap(rig, flags, script, 10)
}

/// With `gap_ms` between the guest's messages and actions.
fn run_guest_gap(rig: &Rig, flags: &[&str], script: &str, gap_ms: u64) -> std::process::Child {
    let mut a = rig.vm_args();
    a.extend(["--vsock".into(), "cid=3,socket=notify.vsock".into()]);
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    rig.command("run", flags, &args)
        .env("FAKE_CH_GUEST_NOTIFY", format!("8888:{script}"))
        .env("FAKE_CH_GUEST_NOTIFY_GAP_MS", gap_ms.to_string())
        .spawn()
        .unwrap()
}

/// Runs the guest's script to credbridge's end: its exit code and stderr.
fn run_to_end(rig: &Rig, flags: &[&str], script: &str) -> (Option<i32>, String) {
    let mut child = run_guest(rig, flags, script);
    let st = wait_exit(&mut child, T);
    (st.code(), stderr_of(&mut child))
}

fn count(msgs: &[String], needle: &str) -> usize {
    msgs.iter().filter(|m| m.contains(needle)).count()
}

/// Rule 1: `systemctl exit 3` in the guest makes credbridge exit 3.
#[test]
fn the_guests_exit_status_is_credbridges_after_its_poweroff() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"exit-status-secret");
    let script = format!(
        "{BOOT_257}|{SHUTDOWN_TARGETS}|EXIT_STATUS=3\\nX_SYSTEMD_SHUTDOWN=poweroff|@poweroff"
    );
    let (code, stderr) = run_to_end(&rig, &["--ready", "guest"], &script);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("exit status 3; exiting with it"),
        "{stderr}"
    );
    assert!(stderr.contains("the guest's machine ID is bc7b125b9d8d47ffab31cefb22679654"));
    let msgs = rig.notify.messages();
    assert_eq!(count(&msgs, "READY=1"), 1, "{msgs:?}");
    assert!(
        count(
            &msgs,
            "STATUS=guest vm1: shutting down (poweroff, exit status 3)"
        ) == 1,
        "{msgs:?}"
    );
    // The last STATUS= is what `systemctl status` keeps: it names the code the unit exits with.
    let last = msgs
        .iter()
        .rev()
        .find(|m| m.starts_with("STATUS="))
        .unwrap();
    assert!(
        last.ends_with("the guest powered off with exit status 3"),
        "{msgs:?}"
    );
}

/// Rule 2: cloud-hypervisor exits 0 after a vCPU error; a guest that speaks the protocol and
/// never announced a shutdown has not powered off.
#[test]
fn an_exit_0_without_the_guests_shutdown_fails_the_unit() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"vcpu-error-secret");
    let (code, stderr) = run_to_end(
        &rig,
        &["--ready", "guest"],
        &format!("{BOOT_257}|@vcpu-error"),
    );
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("the VM stopped without the guest vm1 shutting down"),
        "{stderr}"
    );
    let msgs = rig.notify.messages();
    assert!(
        msgs.iter()
            .any(|m| m.contains("STATUS=Failed: the VM stopped without the guest vm1")),
        "{msgs:?}"
    );
}

/// Rule 2, limit: an older guest says nothing, so the old rule stands (exit 0 is exit 0).
#[test]
fn an_older_guests_exit_0_stays_exit_0() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"old-guest-secret");
    let (code, stderr) = run_to_end(
        &rig,
        &["--ready", "guest"],
        &format!("{BOOT_252}|@vcpu-error"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("without the guest"), "{stderr}");
}

/// Rule 3: a reboot shows in STATUS, the VM comes back, READY=1 is not withdrawn or repeated.
#[test]
fn a_guest_reboot_is_shown_and_the_guest_comes_back() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"reboot-secret");
    let script = format!(
        "{BOOT_257}|{SHUTDOWN_TARGETS}|EXIT_STATUS=0\\nX_SYSTEMD_SHUTDOWN=reboot|@reboot|{BOOT_257}"
    );
    let mut child = run_guest(
        &rig,
        &["--ready", "guest", "--ready-timeout", "5s"],
        &script,
    );
    rig.notify
        .wait_for("running again after reboot", T)
        .expect("the guest came back");
    let msgs = rig.notify.messages();
    let i = |n: &str| msgs.iter().position(|m| m.contains(n)).unwrap();
    assert!(i("READY=1") < i("STATUS=guest vm1: rebooting"), "{msgs:?}");
    assert!(
        i("STATUS=guest vm1: rebooting") < i("running again"),
        "{msgs:?}"
    );
    assert_eq!(count(&msgs, "READY=1"), 1, "{msgs:?}");
    assert!(!msgs.iter().any(|m| m.contains("crashed")), "{msgs:?}");
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
}

/// Rule 2: unannounced resets are crashes, said in STATUS and the log; three within five
/// minutes stop the VM and fail the unit.
#[test]
fn a_crash_loop_stops_the_vm_and_fails() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"crash-loop-secret");
    // Each crash a double reset, as QEMU reports one, and boots that take over a second
    // (lifecycle::RESET_MERGE): six messages 200 ms apart.
    let script = format!(
        "{BOOT_257}|@crash|@crash|{BOOT_257}|@crash|@crash|{BOOT_257}|@crash|@crash|{BOOT_257}"
    );
    let mut child = run_guest_gap(&rig, &["--ready", "guest"], &script, 200);
    let code = wait_exit(&mut child, T).code();
    let stderr = stderr_of(&mut child);
    assert_eq!(code, Some(125), "{stderr}");
    assert_eq!(
        stderr
            .matches("guest vm1 crashed: the VM was reset")
            .count(),
        2,
        "{stderr}"
    );
    assert!(
        stderr.contains("guest vm1 crashed 3 times within 5 min"),
        "{stderr}"
    );
    let msgs = rig.notify.messages();
    assert!(
        count(
            &msgs,
            "STATUS=guest vm1 crashed and is restarting (crash 1 of 3"
        ) == 1,
        "{msgs:?}"
    );
    assert!(
        count(&msgs, "STOPPING=1") >= 1,
        "the VM was stopped: {msgs:?}"
    );
    assert!(
        rig.requests().iter().any(|r| r["path"]
            .as_str()
            .unwrap_or("")
            .ends_with("vm.power-button")),
        "stopped through the power button"
    );
}

/// Rule 3: a guest that does not come back within --ready-timeout fails the unit.
#[test]
fn a_guest_that_does_not_come_back_in_time_fails() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"no-return-secret");
    let (code, stderr) = run_to_end(
        &rig,
        &["--ready", "guest", "--ready-timeout", "1s"],
        &format!("{BOOT_257}|@crash"),
    );
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("the guest was not up again within 1s of the VM's reset"),
        "{stderr}"
    );
}

/// Rules 4 and 5: READY=1 when the target is reached, STATUS with hostname and target before.
#[test]
fn ready_guest_target_waits_for_the_target() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"target-secret");
    let mut child = run_guest(&rig, &["--ready", "guest:multi-user.target"], BOOT_257);
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let msgs = rig.notify.messages();
    let i = |n: &str| {
        msgs.iter()
            .position(|m| m.contains(n))
            .unwrap_or_else(|| panic!("{n}: {msgs:?}"))
    };
    assert!(
        i("waiting for the guest's systemd to reach multi-user.target")
            < i("guest vm1: sysinit.target")
    );
    assert!(
        i("guest vm1: basic.target") < i("STATUS=guest: Ready."),
        "{msgs:?}"
    );
    // The guest's READY=1 came before its multi-user.target; ours waits for the target.
    assert!(
        i("STATUS=guest: Ready.") < i("guest vm1: multi-user.target"),
        "{msgs:?}"
    );
    assert!(i("guest vm1: multi-user.target") < i("READY=1"), "{msgs:?}");
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
    let stderr = stderr_of(&mut child);
    assert!(
        stderr.contains("ready (the guest reached multi-user.target)"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("machine ID").count(), 1, "{stderr}");
}

/// Rule 4: an older guest cannot report targets: refused with its message, not waited for.
#[test]
fn ready_guest_target_is_refused_for_an_older_guest() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"old-target-secret");
    let (code, stderr) = run_to_end(&rig, &["--ready", "guest:multi-user.target"], BOOT_252);
    assert_eq!(code, Some(125), "{stderr}");
    assert!(stderr.contains("older than 256"), "{stderr}");
    assert!(stderr.contains("hint: use --ready guest"), "{stderr}");
    let msgs = rig.notify.messages();
    assert!(!msgs.iter().any(|m| m.starts_with("READY=1")), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m
            .contains("STATUS=Failed: the guest's systemd sent READY=1 without any X_SYSTEMD_*")),
        "{msgs:?}"
    );
}

/// Rule 6: invalid X_SYSTEMD_* values never reach STATUS or the log.
#[test]
fn invalid_guest_fields_reach_neither_status_nor_log() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"invalid-fields-secret");
    let script = "X_SYSTEMD_HOSTNAME=evil\\x1b[2J|X_SYSTEMD_HOSTNAME=vm1 injected|X_SYSTEMD_UNIT_ACTIVE=../../x.target|X_SYSTEMD_UNIT_ACTIVE=multi-user.target";
    let mut child = run_guest(&rig, &["--ready", "guest:multi-user.target"], script);
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    signal(&child, Signal::SIGTERM);
    wait_exit(&mut child, T);
    let stderr = stderr_of(&mut child);
    let msgs = rig.notify.messages().join("\n");
    for bad in ["evil", "injected", "../"] {
        assert!(!msgs.contains(bad), "{bad} in {msgs}");
        assert!(!stderr.contains(bad), "{bad} in {stderr}");
    }
    assert!(msgs.contains("STATUS=guest: multi-user.target"), "{msgs}");
}

/// Rule 4 for systemd 252, which sends nothing at all: the ready timeout says why.
#[test]
fn a_silent_guest_is_named_in_the_ready_timeout() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"silent-secret");
    let (code, stderr) = run_to_end(
        &rig,
        &[
            "--ready",
            "guest:multi-user.target",
            "--ready-timeout",
            "1s",
        ],
        "",
    );
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("not ready within 1s (--ready-timeout); the guest sent no notification at all (systemd before 253"),
        "{stderr}"
    );
}
