//! Process hardening, input bounds and truthful status (issue #11): what credbridge says about
//! the VM matches what happened, bad bounds are usage errors, and the process cannot be dumped.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Output};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

/// `credbridge run FLAGS -- <the rig's VM>` with the fake's knobs set.
fn spawn(rig: &Rig, flags: &[&str], knobs: &[(&str, &str)]) -> Child {
    let args = rig.vm_args();
    let mut cmd = rig.command("run", flags, &strs(&args));
    for (k, v) in knobs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// [`finish`], and no value in stderr or the notify messages.
fn end_of(rig: &mut Rig, child: Child) -> Ended {
    let end = finish(rig, child, T);
    rig.assert_no_secret_in("stderr", end.stderr.as_bytes());
    rig.assert_no_secret_in("the notify messages", end.msgs.join("\n").as_bytes());
    end
}

/// `credbridge run FLAGS -- <the rig's VM>` to its end, within the deadline.
fn output_within(rig: &Rig, flags: &[&str]) -> Output {
    let args = rig.vm_args();
    rig.command("run", flags, &strs(&args)).output_within()
}

/// The STATUS= of every notify message, in order.
fn statuses(msgs: &[String]) -> Vec<String> {
    msgs.iter()
        .flat_map(|m| m.lines())
        .filter_map(|l| l.strip_prefix("STATUS="))
        .map(str::to_owned)
        .collect()
}

#[test]
fn durations_beyond_a_day_are_usage_errors_before_anything_starts() {
    // #11: 18446744073709551615 s parsed, then `Instant + Duration` panicked in the supervisor
    // and the VM was killed without a graceful stop.
    for flag in ["--ready-timeout", "--stop-timeout"] {
        let mut rig = Rig::new();
        put(&mut rig, "k", b"secret-huge-timeout");
        let out = output_within(&rig, &[flag, "18446744073709551615"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("86400s"),
            "{flag}: {stderr}"
        );
        assert!(
            !rig.record_file("pid").exists(),
            "{flag}: the hypervisor must not have been started"
        );
    }
}

#[test]
fn a_failed_start_whose_hypervisor_dies_by_our_sigterm_exits_125_and_says_why_last() {
    // #11: credbridge re-raised the SIGTERM it had sent itself, which systemd counts as a
    // clean stop, and the last STATUS was "Stopping VM: SIGTERM to the hypervisor".
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-failed-then-sigterm");
    let child = spawn(
        &rig,
        &[],
        &[
            ("FAKE_CH_API_ERROR", "vm.boot:500"),
            ("FAKE_CH_DIE_BY_SIGTERM", "1"),
        ],
    );
    let end = end_of(&mut rig, child);
    assert_eq!(end.status.signal(), None, "{}", end.stderr);
    assert_eq!(end.status.code(), Some(125), "{}", end.stderr);
    let log = std::fs::read_to_string(rig.record_file("signals.log")).unwrap();
    assert!(log.contains("SIGTERM death"), "{log}");
    let statuses = statuses(&end.msgs);
    let last = statuses.last().expect("a STATUS");
    assert!(
        last.starts_with("Failed: could not boot the VM"),
        "last STATUS must be the failure: {statuses:?}"
    );
}

#[test]
fn a_failed_start_ends_with_the_failure_when_the_hypervisor_exits_cleanly_too() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-failed-then-exit");
    let child = spawn(&rig, &[], &[("FAKE_CH_API_ERROR", "vm.boot:500")]);
    let end = end_of(&mut rig, child);
    assert_eq!(end.status.code(), Some(125), "{}", end.stderr);
    let statuses = statuses(&end.msgs);
    assert!(
        statuses
            .iter()
            .any(|s| s == "Stopping VM: SIGTERM to the hypervisor"),
        "{statuses:?}"
    );
    assert!(
        statuses
            .last()
            .is_some_and(|s| s.starts_with("Failed: could not boot the VM")),
        "{statuses:?}"
    );
}

#[test]
fn ready_spawn_does_not_claim_delivery_before_the_handover() {
    // #11: `--ready spawn` said "1 credential delivered" before vm.create was even sent.
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-ready-spawn");
    let mut child = spawn(
        &rig,
        &["--ready", "spawn"],
        &[("FAKE_CH_API_HANG", "vm.create")],
    );
    let ready = rig.notify.wait_for("READY=1", T).expect("READY=1");
    assert!(!ready.contains("delivered"), "{ready}");
    assert!(ready.contains("credentials not yet handed over"), "{ready}");
    signal(&child, Signal::SIGTERM);
    let end = end_of(&mut rig, child);
    assert!(
        !statuses(&end.msgs).iter().any(|s| s.contains("delivered")),
        "vm.create never answered: {:?}",
        end.msgs
    );
    let _ = end.status;

    // Once vm.create and vm.boot went through, the status says so.
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-ready-spawn-2");
    child = spawn(&rig, &["--ready", "spawn"], &[]);
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let delivered = rig
        .notify
        .wait_for("STATUS=VM running, 1 credential delivered", T)
        .expect("the status after the handover");
    assert!(!delivered.contains("READY=1"), "{delivered}");
    signal(&child, Signal::SIGTERM);
    let end = end_of(&mut rig, child);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
}

#[test]
fn console_socket_is_refused_before_start() {
    // #11: cloud-hypervisor's parser takes `--console socket=`, and vm.create then fails with
    // "No socket option support for console device".
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-console-socket");
    let mut args = rig.vm_args();
    let sock = rig.path("console.sock");
    args.extend(["--console".into(), format!("socket={}", sock.display())]);
    let mut child = rig.command("run", &[], &strs(&args)).spawn().unwrap();
    let status = wait_exit(&mut child, T);
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(125), "{stderr}");
    for needle in [
        "--console",
        "No socket option support for console device",
        "--serial socket=",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    assert!(!rig.record_file("pid").exists(), "nothing started");
    // `--serial socket=` is fine.
    let mut args = rig.vm_args();
    args.extend(["--serial".into(), format!("socket={}", sock.display())]);
    let out = rig.command("render", &[], &strs(&args)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The info lines credbridge logged about the end of the VM.
fn says_powered_off(stderr: &str) -> bool {
    stderr.contains("the guest powered off")
}

#[test]
fn a_sigterm_forced_stop_is_not_called_a_poweroff() {
    // #11: cloud-hypervisor emits vm:shutdown after our SIGTERM too, and credbridge logged
    // "the guest powered off".
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-forced-stop");
    let child = spawn(
        &rig,
        &["--stop-timeout", "300ms"],
        &[("FAKE_CH_IGNORE_POWER_BUTTON", "1")],
    );
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    signal(&child, Signal::SIGTERM);
    let end = end_of(&mut rig, child);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert!(!says_powered_off(&end.stderr), "{}", end.stderr);
    assert!(
        end.stderr
            .contains("cloud-hypervisor shut the VM down on our SIGTERM"),
        "{}",
        end.stderr
    );
}

#[test]
fn a_guest_that_answers_the_power_button_powered_off() {
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-clean-stop");
    let child = spawn(&rig, &[], &[]);
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    signal(&child, Signal::SIGTERM);
    let end = end_of(&mut rig, child);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert!(
        end.stderr
            .contains("the guest powered off (it answered the ACPI power button)"),
        "{}",
        end.stderr
    );
}

#[test]
fn a_vcpu_error_is_not_called_a_poweroff() {
    // #11: a vCPU error ends cloud-hypervisor exactly like a guest poweroff (vm:shutdown,
    // exit 0); credbridge must not claim the guest did it.
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-vcpu-error");
    let child = spawn(&rig, &[], &[("FAKE_CH_VCPU_ERROR_AFTER_BOOT_MS", "200")]);
    let end = end_of(&mut rig, child);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
    assert!(
        end.stderr.contains("VCPU generated error"),
        "{}",
        end.stderr
    );
    assert!(!says_powered_off(&end.stderr), "{}", end.stderr);
    assert!(
        end.stderr.contains("the VM stopped without a stop request")
            && end.stderr.contains("a vCPU error"),
        "{}",
        end.stderr
    );
}

#[test]
fn the_running_process_is_not_dumpable() {
    // #11: a core of credbridge held plaintext values, and the same uid could read
    // /proc/PID/mem. A non-dumpable process's /proc/PID files belong to root, whatever its uid;
    // run as nobody, that is visible from outside.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run credbridge as another user");
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut rig = Rig::new();
    put(&mut rig, "k", b"secret-not-dumpable");
    let open = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Reachable for nobody, but no directory it binds in is writable by others (the API
    // socket's directory checks refuse that): a runtime directory of its own.
    open(rig.dir.path(), 0o755);
    open(&rig.path("notify"), 0o777);
    open(&rig.creds, 0o755);
    open(&rig.creds.join("k"), 0o644);
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    let run = rig.path("run");
    std::fs::create_dir(&run).unwrap();
    open(&run, 0o700);
    for dir in [&run, &rig.record] {
        nix::unistd::chown(dir.as_path(), nobody, None).unwrap();
    }
    let inner = {
        let args = rig.vm_args();
        let mut c = rig.command("run", &[], &strs(&args));
        c.env("RUNTIME_DIRECTORY", &run);
        c
    };
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(rig.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let child = cmd.spawn().unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    // setpriv execs credbridge in place: the child's pid is credbridge's.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(status.contains("Uid:\t65534"), "{status}");
    let owner = std::fs::metadata(format!("/proc/{}/mem", child.id()))
        .unwrap()
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/PID/mem of a non-dumpable process is root's"
    );
    signal(&child, Signal::SIGTERM);
    let end = end_of(&mut rig, child);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
}

#[test]
fn too_many_credentials_name_the_first_that_does_not_fit_and_its_number() {
    // #11: with 300 credentials the error named the 256th but said "number 301".
    let mut rig = Rig::new();
    for i in 0..300 {
        put(
            &mut rig,
            format!("c{i:03}"),
            format!("value-{i:03}").as_bytes(),
        );
    }
    // SMBIOS only (#15: by default what does not fit would go over fw_cfg).
    let out = output_within(&rig, &["--smbios-budget", "65404", "--channel", "smbios"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    // The argv's own vmm.notify_socket string is number 1, so c254 is number 256.
    assert!(
        stderr.contains("credential \"c254\" is OEM string number 256 of 301"),
        "{stderr}"
    );
    assert!(!stderr.contains("number 301"), "{stderr}");
}

#[test]
fn credentials_over_the_total_are_refused_by_size_before_they_are_read() {
    // #11: every file was read (2000 files of 1 MiB: 2 GB) before the 1 MiB total was
    // checked. The error names the file that crosses the limit, the limit and the fix.
    let mut rig = Rig::new();
    let big = vec![b'x'; 600 * 1024];
    for name in ["a", "b", "c"] {
        put(&mut rig, name, &big);
    }
    let out = output_within(&rig, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    for needle in [
        "credential \"b\"",
        "1048576 bytes (1 MiB)",
        "--credential NAME",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    assert!(!rig.record_file("pid").exists(), "nothing started");
}

/// Every readable mapping of `pid`'s memory, through /proc/PID/mem (root reads it even for a
/// non-dumpable process).
fn process_memory(pid: u32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut all = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let perms = fields.next().unwrap();
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            all.extend_from_slice(&buf);
        }
    }
    assert!(all.len() > 1 << 20, "read {} bytes of memory", all.len());
    all
}

#[test]
fn no_copy_of_a_value_is_left_in_memory_once_handed_over_even_at_debug_level() {
    // #11: at --log-level debug the redaction helpers copied every value for every argv token
    // and every event, and freed the copies unzeroed, so they stayed in the heap while the VM
    // ran. Once the VM has the strings, no byte of a value may remain in credbridge.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: reading another process's memory needs root");
        return;
    }
    let mut rig = Rig::new();
    let value = format!("h11c-memory-scan-{}-value", std::process::id());
    put(&mut rig, "plain", value.as_bytes());
    let binary: Vec<u8> = value.bytes().chain([0xff, 0x00, 0xfe]).collect();
    put(&mut rig, "binary", &binary);
    let child = spawn(&rig, &["--log-level", "debug"], &[]);
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    // The hand-over (vm.boot's answer) can come just after vm:booted.
    std::thread::sleep(Duration::from_millis(500));
    let memory = process_memory(child.id());
    rig.assert_no_secret_in("credbridge's memory", &memory);
    signal(&child, Signal::SIGTERM);
    let end = end_of(&mut rig, child);
    assert_eq!(end.status.code(), Some(0), "{}", end.stderr);
}
