//! Black-box tests of `credbridge run` against the fake cloud-hypervisor (issues #2 and #3).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use base64::Engine;
use common::*;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

fn oem_strings(rig: &Rig) -> Vec<Vec<u8>> {
    let v = rig.read_record_json("oem_strings.json");
    v["oem_strings"]
        .as_array()
        .expect("oem_strings.json is a list")
        .iter()
        .map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.as_str().unwrap())
                .unwrap()
        })
        .collect()
}

/// Starts a VM that the test stops with SIGTERM, asserting the whole protocol on the way.
#[test]
fn api_delivery_boots_reports_ready_and_stops_gracefully() {
    let mut rig = Rig::new();
    rig.add_credential("api-key", b"s3cr3t-api-key-value");
    let all: Vec<u8> = (0..=255).collect();
    rig.add_credential("binary", &all);
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig.command("run", &[], &args).spawn().unwrap();

    let ready = rig.notify.wait_for("READY=1", T).expect("READY=1");
    assert!(
        ready.contains("STATUS=VM running, 2 credentials delivered"),
        "{ready}"
    );
    // The fake records the strings at boot; READY must not come before vm:booted.
    assert!(rig.record_file("oem_strings.json").exists());
    let strings = oem_strings(&rig);
    assert_eq!(
        strings[0], b"io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888",
        "the argv's own string comes first, untouched"
    );
    assert_eq!(
        strings[1],
        b"io.systemd.credential:api-key=s3cr3t-api-key-value"
    );
    let bin = std::str::from_utf8(&strings[2]).unwrap();
    let b64 = bin
        .strip_prefix("io.systemd.credential.binary:binary=")
        .expect("non-UTF-8 values use the binary form");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        all
    );

    // Nothing secret where other local users can look.
    let pid = rig.fake_pid().expect("fake pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    rig.assert_no_secret_in("the hypervisor's cmdline", &cmdline);
    rig.assert_no_secret_in("the hypervisor's environment", &environ);
    let env = String::from_utf8_lossy(&environ);
    for var in [
        "NOTIFY_SOCKET=",
        "CREDENTIALS_DIRECTORY=",
        "LISTEN_",
        "WATCHDOG_",
    ] {
        assert!(!env.contains(var), "child environment has {var}");
    }
    assert!(
        env.contains("FAKE_CH_RECORD_DIR="),
        "other variables pass through"
    );

    // Only stdio, the API socket and the event pipe reach the child.
    let fds = rig.read_record_json("fds.json");
    let fds = fds.as_array().unwrap();
    assert_eq!(fds.len(), 5, "fds: {fds:?}");
    let argv = rig.read_record_json("argv.json");
    assert_eq!(
        argv["argv0"],
        rig.ch().to_string_lossy().as_ref(),
        "argv[0] preserved"
    );
    let argv: Vec<String> = argv["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert!(argv.contains(&"--seccomp".to_owned()));
    assert!(
        !argv.iter().any(|a| a == "--kernel"),
        "VM config went via the API: {argv:?}"
    );
    assert!(argv.iter().any(|a| a.starts_with("fd=")));

    signal(&child, Signal::SIGTERM);
    let st = wait_exit(&mut child, T);
    assert_eq!(st.code(), Some(0), "guest powered off: exit 0");
    let msgs = rig.notify.messages();
    let i_ready = msgs.iter().position(|m| m.contains("READY=1")).unwrap();
    let i_stop = msgs.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    let i_start = msgs
        .iter()
        .position(|m| m.contains("STATUS=Starting"))
        .unwrap();
    assert!(i_start < i_ready && i_ready < i_stop, "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.contains("exited with exit code 0")),
        "{msgs:?}"
    );
    let routes: Vec<String> = rig
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or("").to_owned())
        .collect();
    let pos = |r: &str| routes.iter().position(|p| p.ends_with(r));
    assert!(pos("vm.create") < pos("vm.boot"), "{routes:?}");
    assert!(pos("vm.power-button").is_some(), "{routes:?}");
    let stderr = stderr_of(&mut child);
    rig.assert_no_secret_in("stderr", stderr.as_bytes());
    for m in &msgs {
        rig.assert_no_secret_in("notify messages", m.as_bytes());
    }
}

#[test]
fn hostile_bytes_reach_the_hypervisor_exactly_through_the_api() {
    let mut rig = Rig::new();
    let values: Vec<(&str, Vec<u8>)> = vec![
        ("commas", b"a,b,,c".to_vec()),
        ("quotes", b"say \"hi\" [x] ]y[ {z}".to_vec()),
        ("lines", b"line1\nline2\ttab\r\n".to_vec()),
        ("latin1", vec![0xe9, 0x20, 0xff, 0xfe, 0x00, 0x01]),
    ];
    for (n, v) in &values {
        rig.add_credential(n, v);
    }
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig.command("run", &[], &args).spawn().unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let strings = oem_strings(&rig);
    // Credentials are passed in name order.
    let mut sorted = values.clone();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (name, value)) in sorted.iter().enumerate() {
        let s = &strings[i + 1];
        let got = if let Some(rest) =
            s.strip_prefix(format!("io.systemd.credential:{name}=").as_bytes())
        {
            rest.to_vec()
        } else {
            let rest = s
                .strip_prefix(format!("io.systemd.credential.binary:{name}=").as_bytes())
                .unwrap();
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .unwrap()
        };
        assert_eq!(&got, value, "credential {name}");
    }
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
}

#[test]
fn argv_delivery_merges_into_the_single_platform_and_warns() {
    let mut rig = Rig::new();
    rig.add_credential("token", b"argv-mode-secret");
    let kernel = rig.kernel();
    let args = [
        "--kernel",
        &kernel,
        "--platform",
        "num_pci_segments=2,oem_strings=[first,second]",
    ];
    let mut child = rig
        .command(
            "run",
            &["--delivery", "argv", "--oem-string", "extra"],
            &args,
        )
        .spawn()
        .unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let argv = rig.read_record_json("argv.json");
    let platforms: Vec<&str> = argv["args"]
        .as_array()
        .unwrap()
        .windows(2)
        .filter(|w| w[0] == "--platform")
        .map(|w| w[1].as_str().unwrap())
        .collect();
    assert_eq!(platforms.len(), 1, "exactly one --platform: {argv}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"argv-mode-secret");
    assert!(
        platforms[0].contains("num_pci_segments=2"),
        "{}",
        platforms[0]
    );
    assert!(
        platforms[0].contains(&format!(
            "first,second,extra,io.systemd.credential.binary:token={b64}"
        )),
        "{}",
        platforms[0]
    );
    let strings = oem_strings(&rig);
    assert_eq!(strings.len(), 4);
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
    let stderr = stderr_of(&mut child);
    assert!(
        stderr.contains("/proc/PID/cmdline"),
        "argv warning: {stderr}"
    );
    rig.assert_no_secret_in("stderr", stderr.as_bytes());
}

#[test]
fn exit_codes_pass_through() {
    for code in [0, 1, 3] {
        let mut rig = Rig::new();
        rig.add_credential("k", b"value-for-exit-test");
        let args = rig.vm_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = rig
            .command("run", &[], &args)
            .env("FAKE_CH_EXIT_AFTER_BOOT", format!("{code}:200"))
            .spawn()
            .unwrap();
        let st = wait_exit(&mut child, T);
        assert_eq!(st.code(), Some(code), "child exit {code}");
        assert!(rig.notify.index_of("READY=1").is_some());
        let status = format!("exited with exit code {code}");
        assert!(
            rig.notify.index_of(&status).is_some(),
            "{:?}",
            rig.notify.seen
        );
    }
}

#[test]
fn death_by_signal_passes_through() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-for-signal-test");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &[], &args)
        .env("FAKE_CH_KILL_SELF_AFTER_BOOT_MS", "200")
        .spawn()
        .unwrap();
    let st = wait_exit(&mut child, T);
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    assert!(st.core_dumped().not());
    assert!(
        rig.notify.index_of("signal SIGKILL").is_some(),
        "{:?}",
        rig.notify.seen
    );
}

trait Not {
    fn not(self) -> bool;
}
impl Not for bool {
    fn not(self) -> bool {
        !self
    }
}

#[test]
fn exit_before_boot_is_a_failed_start() {
    for (code, expected) in [(1, 1), (0, 125)] {
        let mut rig = Rig::new();
        rig.add_credential("k", b"value-before-boot");
        let args = rig.vm_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = rig
            .command("run", &[], &args)
            .env("FAKE_CH_EXIT_BEFORE_BOOT", code.to_string())
            .spawn()
            .unwrap();
        let st = wait_exit(&mut child, T);
        assert_eq!(st.code(), Some(expected), "child exit {code}");
        let stderr = stderr_of(&mut child);
        assert!(stderr.contains("exited before the VM booted"), "{stderr}");
        let msgs = rig.notify.messages();
        assert!(!msgs.iter().any(|m| m.contains("READY=1")), "{msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("STATUS=Failed: cloud-hypervisor exited before the VM booted")),
            "{msgs:?}"
        );
    }
}

#[test]
fn power_button_ignored_escalates_to_sigterm_after_stop_timeout() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-stop-timeout");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &["--stop-timeout", "500ms"], &args)
        .env("FAKE_CH_IGNORE_POWER_BUTTON", "1")
        .spawn()
        .unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let t0 = std::time::Instant::now();
    signal(&child, Signal::SIGTERM);
    let st = wait_exit(&mut child, T);
    assert_eq!(st.code(), Some(0), "SIGTERM makes cloud-hypervisor exit 0");
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "waited for the stop timeout"
    );
    let signals = std::fs::read_to_string(rig.record_file("signals.log")).unwrap_or_default();
    assert!(
        signals.contains("TERM"),
        "the child got SIGTERM: {signals:?}"
    );
    assert!(rig.notify.index_of("Stopping VM: SIGTERM").is_some());
}

#[test]
fn sigterm_ignored_escalates_to_sigkill_after_ten_seconds() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-kill-test");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &["--stop-timeout", "100ms"], &args)
        .env("FAKE_CH_IGNORE_POWER_BUTTON", "1")
        .env("FAKE_CH_IGNORE_SIGTERM", "1")
        .spawn()
        .unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let t0 = std::time::Instant::now();
    signal(&child, Signal::SIGTERM);
    let st = wait_exit(&mut child, Duration::from_secs(20));
    let took = t0.elapsed();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert!(rig.notify.index_of("Stopping VM: SIGKILL").is_some());
}

#[test]
fn sighup_is_not_forwarded() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-sighup");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig.command("run", &[], &args).spawn().unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let pid = rig.fake_pid().unwrap();
    signal(&child, Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(pid_alive(pid), "cloud-hypervisor survived our SIGHUP");
    assert!(
        child.try_wait().unwrap().is_none(),
        "credbridge survived SIGHUP"
    );
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
}

#[test]
fn watchdog_stops_when_ping_stops() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-watchdog");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &[], &args)
        .env("WATCHDOG_USEC", "200000")
        .env("FAKE_CH_PING_STOP_AFTER_MS", "1200")
        .spawn()
        .unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    std::thread::sleep(Duration::from_millis(2500));
    let seen: Vec<std::time::Instant> = {
        rig.notify.messages();
        rig.notify
            .seen
            .iter()
            .filter(|(_, m)| m == "WATCHDOG=1")
            .map(|(t, _)| *t)
            .collect()
    };
    assert!(
        seen.len() >= 3,
        "WATCHDOG=1 while ping answers: {}",
        seen.len()
    );
    let last = *seen.last().unwrap();
    assert!(
        last.elapsed() > Duration::from_millis(700),
        "no WATCHDOG=1 after ping stopped answering (last {:?} ago)",
        last.elapsed()
    );
    signal(&child, Signal::SIGTERM);
    wait_exit(&mut child, Duration::from_secs(20));
}

#[test]
fn watchdog_for_another_pid_is_ignored() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-watchdog-pid");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &[], &args)
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .spawn()
        .unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!rig.notify.messages().iter().any(|m| m == "WATCHDOG=1"));
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
}

#[test]
fn abstract_notify_socket_works() {
    let name = format!("credbridge-test-{}", std::process::id());
    let mut rig = Rig::with_notify(|_| NotifyAddr::Abstract(name.clone()));
    rig.add_credential("k", b"value-abstract");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig.command("run", &[], &args).spawn().unwrap();
    rig.notify
        .wait_for("READY=1", T)
        .expect("READY=1 over @abstract");
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
    assert!(rig.notify.index_of("STOPPING=1").is_some());
}

#[test]
fn named_api_socket_is_private_and_serves_vm_info() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-named-socket");
    let mut args = rig.vm_args();
    args.extend(["--api-socket".into(), "vm1.sock".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig.command("run", &[], &args).spawn().unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let sock = rig.path("vm1.sock");
    let meta = std::fs::metadata(&sock).expect("the socket is at the argv's relative path");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    let info = http_get(&sock, "/api/v1/vm.info");
    assert!(info.contains("\"state\""), "{info}");
    assert!(
        info.contains("io.systemd.credential:k=value-named-socket"),
        "vm.info has the config"
    );
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
    assert!(!sock.exists(), "credbridge removes the socket it bound");
}

#[test]
fn macvtap_fds_reach_the_hypervisor_through_add_net() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-macvtap");
    let kernel = rig.kernel();
    // microvm.nix's runner opens the macvtap fds before exec; two pipes stand in for them here.
    let script = format!(
        "exec 3<>{dir}/tap-a 4<>{dir}/tap-b; exec \"$@\"",
        dir = rig.dir.path().display()
    );
    std::fs::write(rig.path("tap-a"), b"").unwrap();
    std::fs::write(rig.path("tap-b"), b"").unwrap();
    let inner = rig.command(
        "run",
        &[],
        &[
            "--kernel",
            &kernel,
            "--cpus",
            "boot=2",
            "--net",
            "fd=[3,4],num_queues=4,mac=02:00:00:00:00:01",
        ],
    );
    let mut child = rig.through_shell(&script, &inner).spawn().unwrap();
    let ready = rig.notify.wait_for("READY=1", T);
    let stderr_early = if ready.is_none() {
        stderr_of(&mut child)
    } else {
        String::new()
    };
    assert!(ready.is_some(), "READY=1: {stderr_early}");
    // The fake logs a request after answering it, which can be after vm:booted went out.
    let logged = |r: &str| {
        rig.requests()
            .iter()
            .any(|q| q["path"].as_str().is_some_and(|p| p.ends_with(r)))
    };
    assert!(wait_until(T, || logged("vm.boot")));
    let reqs = rig.requests();
    let add_net = reqs
        .iter()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("vm.add-net"))
        })
        .expect("vm.add-net was sent");
    let fds = add_net["fds"].as_array().expect("received fds");
    assert_eq!(fds.len(), 2, "{add_net}");
    let targets: Vec<String> = fds
        .iter()
        .map(|f| f["target"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        targets[0].ends_with("tap-a") && targets[1].ends_with("tap-b"),
        "{targets:?}"
    );
    let create_pos = reqs
        .iter()
        .position(|r| r["path"].as_str().is_some_and(|p| p.ends_with("vm.create")));
    let boot_pos = reqs
        .iter()
        .position(|r| r["path"].as_str().is_some_and(|p| p.ends_with("vm.boot")));
    let add_pos = reqs.iter().position(|r| {
        r["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("vm.add-net"))
    });
    assert!(
        create_pos < add_pos && add_pos < boot_pos,
        "order: {reqs:?}"
    );
    // In api delivery the child itself never holds the macvtap fds.
    let child_fds = rig.read_record_json("fds.json");
    assert!(!child_fds.to_string().contains("tap-a"), "fds: {child_fds}");
    signal(&child, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child, T).code(), Some(0));
}

#[test]
fn api_errors_are_reported_with_their_strings_and_nothing_secret() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-api-error");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &[], &args)
        .env("FAKE_CH_API_ERROR", "vm.create:400")
        .spawn()
        .unwrap();
    let st = wait_exit(&mut child, T);
    assert_eq!(st.code(), Some(125));
    let stderr = stderr_of(&mut child);
    assert!(
        stderr.contains("vm.create: cloud-hypervisor answered 400"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Error creating VM: fake failure"),
        "{stderr}"
    );
    rig.assert_no_secret_in("stderr", stderr.as_bytes());
    assert!(!rig.notify.messages().iter().any(|m| m.contains("READY=1")));
}

/// microvm.nix's runner starts its socat notify relay in the background and then execs the
/// hypervisor command: credbridge inherits a child it never spawned, which must not linger as
/// a zombie once it exits, and must not disturb the hypervisor's exit status.
#[test]
fn children_inherited_from_the_runner_are_reaped() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"value-inherited-child");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let inner = rig.command("run", &[], &args);
    let mut child = rig
        .through_shell("sleep 0.3 & echo $! > stray.pid; exec \"$@\"", &inner)
        .spawn()
        .unwrap();
    rig.notify.wait_for("READY=1", T).expect("READY=1");
    let stray: i32 = std::fs::read_to_string(rig.path("stray.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(T, || !std::path::Path::new(&format!("/proc/{stray}"))
            .exists()),
        "the inherited child was reaped, not left a zombie (state: {:?})",
        std::fs::read_to_string(format!("/proc/{stray}/stat"))
    );
    let fake = rig.fake_pid().unwrap();
    assert!(pid_alive(fake), "the hypervisor itself is untouched");
    signal(&child, Signal::SIGTERM);
    assert_eq!(
        wait_exit(&mut child, T).code(),
        Some(0),
        "its exit status is still ours"
    );
}

/// Every form a value can take in a hypervisor's error text: raw, base64, JSON-escaped
/// (serde_json's and ASCII-only), Rust Debug-escaped, and what U+FFFD leaves of invalid UTF-8.
fn value_forms(value: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forms = vec![
        ("raw", value.to_vec()),
        ("base64", b64.encode(value).into_bytes()),
        (
            "base64 unpadded",
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(value)
                .into_bytes(),
        ),
    ];
    let text = String::from_utf8_lossy(value).into_owned();
    if std::str::from_utf8(value).is_err() {
        forms.push(("lossy", text.clone().into_bytes()));
    }
    let unquote = |s: String| s.as_bytes()[1..s.len() - 1].to_vec();
    forms.push(("json", unquote(serde_json::to_string(&text).unwrap())));
    forms.push(("debug", unquote(format!("{text:?}"))));
    let ascii: String = text
        .chars()
        .map(|c| match c {
            '/' => "\\/".to_owned(),
            c if c.is_ascii() => serde_json::to_string(&c)
                .unwrap()
                .trim_matches('"')
                .to_owned(),
            c => {
                let mut u = [0u16; 2];
                c.encode_utf16(&mut u)
                    .iter()
                    .map(|u| format!("\\u{u:04x}"))
                    .collect()
            }
        })
        .collect();
    forms.push(("json ascii", ascii.into_bytes()));
    forms
}

/// #11: a hypervisor whose error quotes the vm.create body (in every escaping) must not put a
/// value on stderr or in STATUS=: the error is scrubbed while credbridge still knows the values.
#[test]
fn hypervisor_errors_quoting_the_body_are_scrubbed_in_every_form() {
    let mut rig = Rig::new();
    let text = "t\"ext/se\\cr\u{e9}t \u{1f511} value";
    rig.add_credential("plain", text.as_bytes());
    rig.add_credential("bin", b"\x00bin\xffary-secret");
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &[], &args)
        .env("FAKE_CH_API_ERROR", "vm.create:400")
        .env("FAKE_CH_API_ERROR_ECHO", "1")
        .spawn()
        .unwrap();
    let st = wait_exit(&mut child, T);
    assert_eq!(st.code(), Some(125));
    let stderr = stderr_of(&mut child);
    // The fake did echo: its own labels reach us, the values do not.
    for label in [
        "request body (as sent)",
        "oem string (Debug)",
        "oem string (JSON, ASCII only)",
        "value (base64)",
        "value (decoded)",
    ] {
        assert!(stderr.contains(label), "{label}: {stderr}");
    }
    assert!(stderr.contains("<redacted"), "{stderr}");
    let notify = rig.notify.messages().join("\n");
    assert!(notify.contains("STATUS=Failed: "), "{notify}");
    for value in [text.as_bytes(), b"\x00bin\xffary-secret".as_slice()] {
        for (form, bytes) in value_forms(value) {
            for (what, hay) in [("stderr", stderr.as_bytes()), ("notify", notify.as_bytes())] {
                assert!(
                    !contains(hay, &bytes),
                    "{what} holds a value in {form} form: {}",
                    String::from_utf8_lossy(hay)
                );
            }
        }
    }
}
