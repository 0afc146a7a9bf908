//! Faults and abuse (issue #7): a hypervisor that fails in each way the fake can fail, credbridge
//! itself killed outright, and hostile credentials and command lines. Every case asserts the
//! exit status, what systemd was told, the error text, whether anything was started, and ends
//! with a leak sweep. Cases already covered by `run.rs` and `input.rs` are not repeated here.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The leak sweep.

/// Every regular file under the rig's temp tree except the credentials directory and the fake's
/// record directory (which holds what the hypervisor received, by design).
fn sweep_tree(rig: &Rig) {
    fn walk(rig: &Rig, dir: &Path, files: &mut usize) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path == rig.creds || path == rig.record {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(rig, &path, files);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                rig.assert_no_secret_in(&format!("file {}", path.display()), &bytes);
                *files += 1;
            }
        }
    }
    let mut files = 0;
    walk(rig, rig.dir.path(), &mut files);
    assert!(files > 0, "the sweep looked at no file at all");
}

/// A live process's command line and environment, as any local user reads them.
fn sweep_process(rig: &Rig, pid: u32, who: &str) {
    for what in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{what}"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/{what} of {who}: {e}"));
        rig.assert_no_secret_in(&format!("{who}'s {what}"), &bytes);
    }
}

/// stdout, stderr, every notify message and the temp tree.
fn sweep(rig: &mut Rig, stdout: &[u8], stderr: &[u8]) {
    rig.assert_no_secret_in("stdout", stdout);
    rig.assert_no_secret_in("stderr", stderr);
    let msgs = rig.notify.messages().join("\n");
    rig.assert_no_secret_in("the notify messages", msgs.as_bytes());
    sweep_tree(rig);
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn vm_args(rig: &Rig) -> Vec<String> {
    rig.vm_args()
}

/// `credbridge run FLAGS -- <the rig's VM>`, with one FAKE_CH_* knob set for the fake.
fn spawn_vm(rig: &Rig, flags: &[&str], (knob, value): (&str, &str)) -> Child {
    let args = vm_args(rig);
    rig.command("run", flags, &strs(&args))
        .env(knob, value)
        .spawn()
        .unwrap()
}

fn has(msgs: &[String], needle: &str) -> bool {
    msgs.iter().any(|m| m.contains(needle))
}

/// The hypervisor the rig started is gone (not even a zombie).
fn assert_fake_gone(rig: &Rig) {
    let pid = rig.fake_pid().expect("the fake recorded its pid");
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(pid)),
        "cloud-hypervisor (pid {pid}) outlived the scenario"
    );
}

/// Bad input: exit 125, the error text, STATUS=Failed with ERRNO, no READY, nothing started,
/// and no secret anywhere.
fn assert_refused(rig: &mut Rig, out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "missing {n:?} in: {stderr}");
    }
    assert!(
        !rig.record_file("pid").exists(),
        "the hypervisor must not have been started: {stderr}"
    );
    let msgs = rig.notify.messages();
    let failed = msgs
        .iter()
        .rev()
        .find(|m| m.contains("STATUS=Failed: "))
        .unwrap_or_else(|| panic!("no STATUS=Failed: {msgs:?}"));
    assert!(failed.contains("\nERRNO="), "{failed:?}");
    assert!(!has(&msgs, "READY=1"), "{msgs:?}");
    sweep(rig, &out.stdout, &out.stderr);
}

// ---------------------------------------------------------------------------------------------
// The hypervisor misbehaves.

#[test]
fn hang_without_events_fails_at_the_ready_timeout() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-no-events-timeout");
    let child = spawn_vm(&rig, &["--ready-timeout", "1s"], ("FAKE_CH_NO_EVENTS", "1"));
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(125), "{}", end.stderr);
    assert!(
        end.stderr
            .contains("the VM was not ready within 1s (--ready-timeout); stopping it"),
        "{}",
        end.stderr
    );
    assert!(!has(&end.msgs, "READY=1"), "{:?}", end.msgs);
    assert!(
        has(&end.msgs, "STATUS=Failed: the VM was not ready within 1s"),
        "{:?}",
        end.msgs
    );
    // Never seen booting, so nothing in the guest could answer the power button.
    assert!(
        has(&end.msgs, "STOPPING=1\nSTATUS=Stopping VM: SIGTERM"),
        "{:?}",
        end.msgs
    );
    let signals = std::fs::read_to_string(rig.record_file("signals.log")).unwrap_or_default();
    assert!(signals.contains("SIGTERM exit"), "{signals:?}");
    assert_fake_gone(&rig);
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

#[test]
fn hang_without_events_and_no_timeout_is_never_ready_and_stops_cleanly() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-no-events-no-timeout");
    let child = spawn_vm(&rig, &[], ("FAKE_CH_NO_EVENTS", "1"));
    // The VM boots (the fake records its strings at boot), but no event says so.
    assert!(rig.wait_record("oem_strings.json", T), "the VM booted");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        rig.notify.index_of("READY=1").is_none(),
        "READY=1 without vm:booted: {:?}",
        rig.notify.seen
    );
    sweep_process(&rig, child.id(), "credbridge");
    sweep_process(&rig, rig.fake_pid().unwrap() as u32, "cloud-hypervisor");
    signal(&child, Signal::SIGTERM);
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert!(has(&end.msgs, "Stopping VM: SIGTERM"), "{:?}", end.msgs);
    assert!(!has(&end.msgs, "Failed"), "{:?}", end.msgs);
    assert_fake_gone(&rig);
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

#[test]
fn event_pipe_closed_after_boot_keeps_the_vm_supervised() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-events-closed");
    let child = spawn_vm(&rig, &[], ("FAKE_CH_CLOSE_EVENTS_AFTER_BOOT", "1"));
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let pid = rig.fake_pid().unwrap();
    // EOF on the event pipe is not the hypervisor's exit: nothing is stopped.
    std::thread::sleep(Duration::from_millis(500));
    assert!(pid_alive(pid), "cloud-hypervisor was stopped");
    assert!(!has(&rig.notify.messages(), "STOPPING=1"));
    signal(&child, Signal::SIGTERM);
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert!(
        has(&end.msgs, "Stopping VM: ACPI power button"),
        "{:?}",
        end.msgs
    );
    let requests = rig.requests();
    assert!(
        requests.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("vm.power-button"))),
        "the guest was asked to power off: {requests:?}"
    );
    assert_fake_gone(&rig);
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

#[test]
fn api_that_never_answers_is_bounded_by_the_ready_timeout() {
    for route in ["vm.create", "vm.boot"] {
        let mut rig = Rig::new();
        put(&mut rig, "k", format!("secret-api-hang-{route}").as_bytes());
        let t0 = Instant::now();
        let child = spawn_vm(
            &rig,
            &["--ready-timeout", "1s"],
            ("FAKE_CH_API_HANG", route),
        );
        let end = finish(&mut rig, child, T);
        assert_eq!(end.status.code(), Some(125), "{route}: {}", end.stderr);
        assert!(
            t0.elapsed() >= Duration::from_secs(1),
            "{route}: failed before the timeout"
        );
        assert!(
            end.stderr.contains("not ready within 1s"),
            "{route}: {}",
            end.stderr
        );
        assert!(!has(&end.msgs, "READY=1"), "{route}: {:?}", end.msgs);
        assert!(has(&end.msgs, "STATUS=Failed: "), "{route}: {:?}", end.msgs);
        assert_fake_gone(&rig);
        sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
    }
}

#[test]
fn api_error_on_boot_fails_the_start_and_stops_the_hypervisor() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-boot-error");
    let child = spawn_vm(&rig, &[], ("FAKE_CH_API_ERROR", "vm.boot:500"));
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(125), "{}", end.stderr);
    for needle in [
        "could not boot the VM",
        "vm.boot: cloud-hypervisor answered 500",
        "fake failure on vm.boot",
    ] {
        assert!(end.stderr.contains(needle), "{needle:?} in {}", end.stderr);
    }
    assert!(!has(&end.msgs, "READY=1"), "{:?}", end.msgs);
    assert!(
        has(&end.msgs, "STATUS=Failed: could not boot the VM"),
        "{:?}",
        end.msgs
    );
    assert!(has(&end.msgs, "Stopping VM: SIGTERM"), "{:?}", end.msgs);
    assert!(
        rig.record_file("vm_config.json").exists(),
        "vm.create went through"
    );
    assert!(
        !rig.record_file("oem_strings.json").exists(),
        "but it never booted"
    );
    assert_fake_gone(&rig);
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

#[test]
fn power_button_never_answered_escalates_after_the_stop_timeout() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-power-hang");
    let child = spawn_vm(
        &rig,
        &["--stop-timeout", "500ms"],
        ("FAKE_CH_API_HANG", "vm.power-button"),
    );
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let t0 = Instant::now();
    signal(&child, Signal::SIGTERM);
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert!(t0.elapsed() >= Duration::from_millis(500));
    let power = end
        .msgs
        .iter()
        .position(|m| m.contains("Stopping VM: ACPI power button"));
    let term = end
        .msgs
        .iter()
        .position(|m| m.contains("Stopping VM: SIGTERM"));
    assert!(
        power.is_some() && power < term,
        "power button, then SIGTERM: {:?}",
        end.msgs
    );
    let signals = std::fs::read_to_string(rig.record_file("signals.log")).unwrap_or_default();
    assert!(signals.contains("SIGTERM exit"), "{signals:?}");
    assert_fake_gone(&rig);
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

#[test]
fn power_button_error_escalates_without_waiting_for_the_stop_timeout() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-power-error");
    // The default --stop-timeout is 30 s; an answered error must not wait for it.
    let child = spawn_vm(&rig, &[], ("FAKE_CH_API_ERROR", "vm.power-button:500"));
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    signal(&child, Signal::SIGTERM);
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert!(
        end.stderr.contains("ACPI power button failed"),
        "{}",
        end.stderr
    );
    assert!(has(&end.msgs, "Stopping VM: SIGTERM"), "{:?}", end.msgs);
    assert_fake_gone(&rig);
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

#[test]
fn slow_to_bind_is_waited_for() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-slow-bind");
    let t0 = Instant::now();
    let child = spawn_vm(&rig, &[], ("FAKE_CH_BIND_DELAY_MS", "1500"));
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "READY=1 before the API was served"
    );
    signal(&child, Signal::SIGTERM);
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert!(!has(&end.msgs, "Failed"), "{:?}", end.msgs);
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

#[test]
fn stop_requested_while_the_hypervisor_is_still_binding() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-stop-while-binding");
    let child = spawn_vm(&rig, &[], ("FAKE_CH_BIND_DELAY_MS", "5000"));
    assert!(rig.wait_record("pid", T), "the fake started");
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    signal(&child, Signal::SIGTERM);
    let end = finish(&mut rig, child, T);
    // The fake exits 0 on SIGTERM; a requested stop is not a failed start.
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "did not wait out the bind delay"
    );
    assert!(!has(&end.msgs, "READY=1"), "{:?}", end.msgs);
    assert!(has(&end.msgs, "Stopping VM: SIGTERM"), "{:?}", end.msgs);
    assert_fake_gone(&rig);
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

#[test]
fn crash_after_boot_leaves_no_socket_and_no_secret() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-crash-after-boot");
    let child = spawn_vm(&rig, &[], ("FAKE_CH_KILL_SELF_AFTER_BOOT_MS", "1500"));
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    // Listed within the 1.5 s the fake lives after boot.
    let sockets_while_running = sockets_in(rig.dir.path());
    assert!(!sockets_while_running.is_empty(), "a private API socket");
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.signal(), Some(libc::SIGKILL), "{:?}", end.status);
    assert!(
        has(&end.msgs, "cloud-hypervisor exited with signal SIGKILL"),
        "{:?}",
        end.msgs
    );
    let left: Vec<_> = sockets_in(rig.dir.path())
        .into_iter()
        .filter(|p| sockets_while_running.contains(p) && !p.ends_with("notify"))
        .collect();
    assert!(left.is_empty(), "API socket left behind: {left:?}");
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

fn sockets_in(dir: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_socket())
        .map(|e| e.path())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// credbridge itself is killed.

#[test]
fn credbridge_sigkilled_takes_the_hypervisor_with_it() {
    // After READY, and in the middle of a slow boot (the API exchange under way).
    for (label, boot_delay) in [("running", "0"), ("booting", "5000")] {
        let mut rig = Rig::new();
        put(&mut rig, "k", format!("secret-sigkill-{label}").as_bytes());
        let mut child = spawn_vm(&rig, &[], ("FAKE_CH_BOOT_DELAY_MS", boot_delay));
        if label == "running" {
            rig.notify.wait_for("READY=1", T).expect("READY=1");
        } else {
            assert!(
                rig.wait_record("vm_config.json", T),
                "{label}: vm.create arrived"
            );
        }
        let pid = rig.fake_pid().expect("fake pid");
        sweep_process(&rig, child.id(), "credbridge");
        sweep_process(&rig, pid as u32, "cloud-hypervisor");
        signal(&child, Signal::SIGKILL);
        let st = wait_exit(&mut child, T);
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{label}");
        assert!(
            wait_until(Duration::from_secs(5), || !pid_alive(pid)),
            "{label}: cloud-hypervisor (pid {pid}) outlived credbridge"
        );
        let stderr = stderr_of(&mut child);
        sweep(&mut rig, b"", stderr.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile credentials.

#[test]
fn every_forbidden_byte_in_a_file_name_is_refused() {
    let mut rig = Rig::new();
    let args = vm_args(&rig);
    // Every byte a file name can hold that a credential name cannot (NUL and `/` cannot be
    // in a file name at all). One run per byte; the sweep and the notify check at the end.
    let mut bytes: Vec<u8> = (0x01..=0x1f).chain(0x7f..=0xff).collect();
    bytes.push(b':');
    for &b in &bytes {
        let name = OsStr::from_bytes(&[b'x', b, b'y']).to_owned();
        put(
            &mut rig,
            &name,
            format!("secret-bad-name-{b:02x}").as_bytes(),
        );
        let out = rig.command("run", &[], &strs(&args)).output_within();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "0x{b:02x}: {stderr}");
        for needle in [
            &format!("invalid name: contains byte 0x{b:02x} at offset 1")[..],
            "hint: rename it",
        ] {
            assert!(stderr.contains(needle), "0x{b:02x}: {needle:?} in {stderr}");
        }
        rig.assert_no_secret_in("stdout", &out.stdout);
        rig.assert_no_secret_in("stderr", &out.stderr);
        assert!(!rig.record_file("pid").exists(), "0x{b:02x}: started");
        std::fs::remove_file(rig.creds.join(&name)).unwrap();
    }
    let msgs = rig.notify.messages();
    for &b in &bytes {
        let needle = format!("contains byte 0x{b:02x} at offset 1");
        assert!(
            msgs.iter().any(|m| m.starts_with("STATUS=Failed: ")
                && m.contains(&needle)
                && m.contains("\nERRNO=")),
            "no STATUS=Failed/ERRNO for 0x{b:02x}: {msgs:?}"
        );
    }
    assert!(!has(&msgs, "READY=1"));
    sweep(&mut rig, b"", b"");
    // The same bytes in --credential are usage errors (exit 2); clap takes only UTF-8.
    for b in (0x01..=0x1fu8).chain([0x7f, b':', b'/']) {
        let name = format!("x{}y", b as char);
        let out = rig
            .command("run", &["--credential", &name], &strs(&args))
            .output_within();
        assert_eq!(out.status.code(), Some(2), "{name:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--credential"), "{stderr}");
        assert!(!rig.record_file("pid").exists());
    }
}

/// Regression for issue #7 (found by fuzz/fuzz_targets/credential.rs): `=` is valid in a
/// systemd credential name, but the guest splits an OEM string at its first `=`, so `a=b` would
/// have arrived as credential `a`.
#[test]
fn equals_in_a_name_is_refused_before_start() {
    let mut rig = Rig::new();
    put(&mut rig, "api=key", b"secret-equals-in-name");
    let args = vm_args(&rig);
    let out = rig.command("run", &[], &strs(&args)).output_within();
    assert_refused(
        &mut rig,
        &out,
        &[
            "credential file \"api=key\"",
            "contains `=` at offset 3",
            "hint: rename it",
        ],
    );
    let out = rig
        .command("run", &["--credential", "api=guest=name"], &strs(&args))
        .output_within();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("guest name \"guest=name\""), "{stderr}");
    assert!(!rig.record_file("pid").exists());
}

#[test]
fn longest_file_name_is_delivered_and_a_longer_one_cannot_exist() {
    let mut rig = Rig::new();
    let long = "n".repeat(255);
    put(&mut rig, &long, b"secret-longest-name");
    let args = vm_args(&rig);
    let child = rig.command("run", &[], &strs(&args)).spawn().unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let strings = rig.read_record_json("oem_strings.json");
    let want = base64_of(format!("io.systemd.credential:{long}=secret-longest-name").as_bytes());
    assert!(
        strings["oem_strings"]
            .as_array()
            .unwrap()
            .contains(&serde_json::Value::String(want)),
        "{strings}"
    );
    signal(&child, Signal::SIGTERM);
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(0));
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
    // A 256-byte name is refused by the file system itself (NAME_MAX); the 256-byte
    // --credential name is a usage error (input.rs).
    let err = std::fs::write(rig.creds.join("n".repeat(256)), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn oversized_values_are_refused_before_start() {
    let mut rig = Rig::new();
    let args = vm_args(&rig);
    let mut big = vec![b'v'; 1024 * 1024 + 1];
    big[..16].copy_from_slice(b"secret-oversized");
    put(&mut rig, "big", &big);
    let out = rig.command("run", &[], &strs(&args)).output_within();
    assert_refused(
        &mut rig,
        &out,
        &[
            "credential \"big\" is 1048577 bytes, the limit is 1048576 bytes (1 MiB) per credential",
            "hint:",
        ],
    );
    // Exactly 1 MiB passes the per-credential limit; with its name it breaks the total.
    big.truncate(1024 * 1024);
    put(&mut rig, "big", &big);
    let out = rig.command("run", &[], &strs(&args)).output_within();
    assert_refused(
        &mut rig,
        &out,
        &[
            "credential \"big\" brings the credentials' total to 1048579 bytes",
            "the limit is 1048576 bytes",
        ],
    );
}

#[test]
fn empty_credential_is_delivered_empty() {
    let mut rig = Rig::new();
    std::fs::write(rig.creds.join("empty"), b"").unwrap();
    put(&mut rig, "other", b"secret-next-to-empty");
    let args = vm_args(&rig);
    let child = rig.command("run", &[], &strs(&args)).spawn().unwrap();
    let ready = rig.notify.wait_for("READY=1", T).expect("READY=1");
    assert!(ready.contains("2 credentials delivered"), "{ready}");
    let strings = rig.read_record_json("oem_strings.json");
    assert!(
        strings["oem_strings"]
            .as_array()
            .unwrap()
            .contains(&serde_json::Value::String(base64_of(
                b"io.systemd.credential:empty="
            ))),
        "{strings}"
    );
    signal(&child, Signal::SIGTERM);
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(0));
    sweep(&mut rig, &end.stdout, end.stderr.as_bytes());
}

#[test]
fn symlinks_sockets_and_fifos_are_refused_however_named() {
    let args = {
        let rig = Rig::new();
        vm_args(&rig)
    };
    // A symlink to a real secret, selected by name.
    let mut rig = Rig::new();
    let target = rig.path("elsewhere");
    std::fs::write(&target, b"secret-behind-a-symlink").unwrap();
    rig.secrets.push(b"secret-behind-a-symlink".to_vec());
    std::os::unix::fs::symlink(&target, rig.creds.join("link")).unwrap();
    let out = rig
        .command("run", &["--credential", "link"], &strs(&args))
        .output_within();
    // The symlink's target is outside the credentials directory: the sweep must skip it.
    std::fs::remove_file(&target).unwrap();
    assert_refused(&mut rig, &out, &["credential \"link\"", "a symlink"]);

    // A dangling symlink in the directory.
    let mut rig = Rig::new();
    std::os::unix::fs::symlink("/nonexistent/credential", rig.creds.join("dangling")).unwrap();
    let out = rig.command("run", &[], &strs(&args)).output_within();
    assert_refused(&mut rig, &out, &["credential \"dangling\"", "a symlink"]);

    // A listening socket.
    let mut rig = Rig::new();
    let _listener = std::os::unix::net::UnixListener::bind(rig.creds.join("sock")).unwrap();
    let out = rig.command("run", &[], &strs(&args)).output_within();
    assert_refused(&mut rig, &out, &["credential \"sock\"", "a socket"]);

    // A FIFO selected by name, with no writer: refused at once, never read (it would block).
    let mut rig = Rig::new();
    nix::unistd::mkfifo(&rig.creds.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let child = rig
        .command("run", &["--credential", "pipe"], &strs(&args))
        .spawn()
        .unwrap();
    let end = finish(&mut rig, child, T);
    assert_eq!(end.status.code(), Some(125), "{}", end.stderr);
    assert!(end.stderr.contains("a FIFO"), "{}", end.stderr);
    assert!(!rig.record_file("pid").exists());
}

/// `unshare --mount` as root: a private mount namespace where a kernel file can be bind-mounted
/// over a credential. None when this machine does not allow it.
fn in_private_mounts(rig: &Rig, mounts: &[(&str, &str)], cmd: &Command) -> Option<Output> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let mut script = String::from("set -e\n");
    for (source, name) in mounts {
        let target = rig.creds.join(name);
        std::fs::write(&target, b"").unwrap();
        script.push_str(&format!("mount --bind {source} '{}'\n", target.display()));
    }
    script.push_str("exec \"$@\"\n");
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(cmd.get_program())
    .args(cmd.get_args())
    .current_dir(rig.dir.path());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = c.output_within();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unshare failed") || stderr.contains("mount: ") {
        eprintln!("skipped: no private mount namespace here: {stderr}");
        return None;
    }
    Some(out)
}

/// A credential whose size changes between fstat and read. Kernel files do that
/// deterministically: `/proc/version` says 0 bytes and reads ~150, a sysfs attribute says
/// 4096 and reads a few. (A file that vanishes mid-read cannot be provoked without a racing
/// writer or a FUSE file system; the same `ChangedSize`/`Read` paths report it.)
#[test]
fn credential_that_changes_size_while_read_is_refused() {
    for (source, name, needle) in [
        (
            "/proc/version",
            "grows",
            "changed size while it was read: 0 bytes when opened, more than 0 when read",
        ),
        (
            "/sys/kernel/mm/transparent_hugepage/enabled",
            "shrinks",
            "changed size while it was read: 4096 bytes when opened, ",
        ),
    ] {
        if !Path::new(source).exists() {
            eprintln!("skipped: {source} does not exist here");
            continue;
        }
        let mut rig = Rig::new();
        put(&mut rig, "fine", b"secret-next-to-a-changing-file");
        let args = vm_args(&rig);
        let cmd = rig.command("run", &["--credential", name], &strs(&args));
        let Some(out) = in_private_mounts(&rig, &[(source, name)], &cmd) else {
            eprintln!("skipped: bind mounts need root and unshare(CLONE_NEWNS)");
            return;
        };
        assert_refused(&mut rig, &out, &[&format!("credential \"{name}\""), needle]);
    }
}

/// Runs `cmd` as nobody when we are root (root reads everything), else as we are.
fn as_unprivileged(rig: &Rig, cmd: &Command) -> Option<Output> {
    let mut c = if nix::unistd::geteuid().is_root() {
        if Command::new("setpriv").arg("--version").output().is_err() {
            return None;
        }
        // The rig is private to root; nobody needs to reach the binaries, the notify socket
        // and the runtime directory (not the credentials).
        let open =
            |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        open(rig.dir.path());
        open(&rig.path("notify"));
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    } else {
        let mut c = Command::new(cmd.get_program());
        c.args(cmd.get_args());
        c
    };
    c.current_dir(rig.dir.path());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    Some(c.output_within())
}

#[test]
fn unreadable_directory_and_file_are_named() {
    // The directory.
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-in-a-locked-dir");
    std::fs::set_permissions(&rig.creds, std::fs::Permissions::from_mode(0o000)).unwrap();
    let args = vm_args(&rig);
    let cmd = rig.command("run", &[], &strs(&args));
    let Some(out) = as_unprivileged(&rig, &cmd) else {
        eprintln!("skipped: root without setpriv cannot drop privileges to test permissions");
        return;
    };
    std::fs::set_permissions(&rig.creds, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_refused(
        &mut rig,
        &out,
        &["cannot read credentials directory", "Permission denied"],
    );

    // One file in a readable directory.
    let mut rig = Rig::new();
    put(&mut rig, "locked", b"secret-in-a-locked-file");
    std::fs::set_permissions(&rig.creds, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        rig.creds.join("locked"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let cmd = rig.command("run", &[], &strs(&args));
    let out = as_unprivileged(&rig, &cmd).unwrap();
    assert_refused(
        &mut rig,
        &out,
        &["credential \"locked\": cannot read it", "Permission denied"],
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile hypervisor command lines.

#[test]
fn duplicate_and_malformed_options_are_refused_before_start() {
    let marker = "secret-in-a-broken-platform";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--kernel".into(), "K".into(), "--kernel".into(), "K".into()],
            "--kernel",
        ),
        (
            vec![
                "--kernel".into(),
                "K".into(),
                "--memory".into(),
                "size=lots".into(),
            ],
            "--memory",
        ),
        (
            vec![
                "--kernel".into(),
                "K".into(),
                "--cpus".into(),
                "boot=two".into(),
            ],
            "--cpus",
        ),
        (
            vec!["--kernel".into(), "K".into(), "--frobnicate".into()],
            "--frobnicate",
        ),
        (vec!["--kernel".into()], "--kernel"),
        (
            vec![
                "--kernel".into(),
                "K".into(),
                "--disk".into(),
                "path=/a".into(),
                "--disk".into(),
            ],
            "--disk",
        ),
        (
            vec![
                "--kernel".into(),
                "K".into(),
                "--platform".into(),
                format!("oem_strings=[io.systemd.credential:k={marker}"),
            ],
            "--platform",
        ),
        (
            vec![
                "--kernel".into(),
                "K".into(),
                "--platform".into(),
                format!("oem_strings=[a],oem_strings=[io.systemd.credential:k={marker}]"),
                "--platform=serial_number=1".into(),
            ],
            "--platform",
        ),
    ];
    for (argv, option) in cases {
        let mut rig = Rig::new();
        put(&mut rig, "k", b"secret-malformed-argv");
        // The argv is public, but its values are not echoed: --platform may carry credentials.
        rig.secrets.push(marker.as_bytes().to_vec());
        let kernel = rig.kernel();
        let argv: Vec<String> = argv
            .into_iter()
            .map(|a| if a == "K" { kernel.clone() } else { a })
            .collect();
        let out = rig.command("run", &[], &strs(&argv)).output_within();
        assert_refused(&mut rig, &out, &["hypervisor argv: ", option]);
    }
}
