//! Bad input is refused before anything starts, with an error naming the subject, the limit
//! and the fix; `render` shows the plan with every value redacted (issue #2).

mod common;

use std::process::Output;

use common::*;

fn run_to_end(rig: &Rig, sub: &str, flags: &[&str], ch_args: &[&str]) -> Output {
    let out = rig.command(sub, flags, ch_args).output().unwrap();
    rig.assert_no_secret_in("stdout", &out.stdout);
    rig.assert_no_secret_in("stderr", &out.stderr);
    out
}

/// Exit 125, the error text, nothing started, and systemd told why.
fn assert_refused(rig: &mut Rig, out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "missing {n:?} in: {stderr}");
    }
    assert!(
        !rig.record_file("pid").exists(),
        "the hypervisor must not have been started"
    );
    let msgs = rig.notify.messages();
    assert!(
        msgs.iter()
            .any(|m| m.contains("STATUS=Failed: ") && m.contains("ERRNO=")),
        "{msgs:?}"
    );
    assert!(!msgs.iter().any(|m| m.contains("READY=1")));
}

fn vm(rig: &Rig) -> Vec<String> {
    rig.vm_args()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn no_credentials_directory_says_how_to_set_it() {
    let mut rig = Rig::new();
    let args = vm(&rig);
    let out = rig
        .command("run", &[], &strs(&args))
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_refused(
        &mut rig,
        &out,
        &["$CREDENTIALS_DIRECTORY is not set", "--credentials-dir"],
    );
}

#[test]
fn missing_or_unreadable_directory_is_named() {
    let mut rig = Rig::new();
    let args = vm(&rig);
    let missing = rig.path("nope");
    let out = run_to_end(
        &rig,
        "run",
        &["--credentials-dir", missing.to_str().unwrap()],
        &strs(&args),
    );
    assert_refused(
        &mut rig,
        &out,
        &["cannot read credentials directory", "nope"],
    );
}

#[test]
fn non_regular_entries_are_named() {
    let mut rig = Rig::new();
    rig.add_credential("good", b"a-good-secret");
    std::os::unix::fs::symlink("/etc/hostname", rig.creds.join("link")).unwrap();
    let args = vm(&rig);
    let out = run_to_end(&rig, "run", &[], &strs(&args));
    assert_refused(&mut rig, &out, &["credential \"link\"", "a symlink"]);

    let mut rig = Rig::new();
    nix::unistd::mkfifo(&rig.creds.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let out = run_to_end(&rig, "run", &[], &strs(&args));
    assert_refused(&mut rig, &out, &["credential \"fifo\"", "a FIFO"]);

    let mut rig = Rig::new();
    std::fs::create_dir(rig.creds.join("dir")).unwrap();
    let out = run_to_end(&rig, "run", &[], &strs(&args));
    assert_refused(&mut rig, &out, &["credential \"dir\"", "a directory"]);
}

#[test]
fn selected_credential_missing_is_named() {
    let mut rig = Rig::new();
    rig.add_credential("present", b"present-secret");
    let args = vm(&rig);
    let out = run_to_end(&rig, "run", &["--credential", "absent"], &strs(&args));
    assert_refused(&mut rig, &out, &["credential \"absent\"", "--credential"]);
}

#[test]
fn bad_names_are_usage_errors() {
    let rig = Rig::new();
    let args = vm(&rig);
    for bad in ["a:b", "a/b", "", &"n".repeat(256)] {
        let out = rig
            .command("run", &["--credential", bad], &strs(&args))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(!rig.record_file("pid").exists());
    }
    // 255 bytes is the largest valid name; the file need not exist for the name check.
    let ok = "n".repeat(255);
    let out = rig
        .command("render", &["--credential", &ok], &strs(&args))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr.contains("is not in"),
        "a valid name, but absent: {stderr}"
    );
}

#[test]
fn smbios_budget_at_below_and_above() {
    // Through the API an ASCII credential "k" of n bytes is the plain-form string
    // `io.systemd.credential:k=` + value (24 + n bytes); the argv adds its 59-byte
    // vmm.notify_socket string. Entry = 5-byte header + (59 + 1) + (24 + n + 1) + final NUL.
    let entry = |n: usize| 5 + 60 + 24 + n + 1 + 1;
    let exact = 4096 - entry(0);
    for (size, fits) in [(exact - 1, true), (exact, true), (exact + 1, false)] {
        let mut rig = Rig::new();
        rig.add_credential("k", &vec![b'x'; size]);
        let args = vm(&rig);
        let out = run_to_end(&rig, "render", &[], &strs(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if fits {
            assert_eq!(out.status.code(), Some(0), "{size}: {stderr}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("type 11 entry of {} bytes", entry(size))),
                "{stdout}"
            );
        } else {
            // #15: by default the credential goes over fw_cfg instead, saying why.
            assert_eq!(out.status.code(), Some(0), "{size}: {stderr}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(
                    "fw_cfg  it would make the type 11 entry 4097 bytes, over the budget of 4096"
                ),
                "{stdout}"
            );
            let out = run_to_end(&rig, "render", &["--channel", "smbios"], &strs(&args));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(125), "{size}");
            for needle in [
                "credential \"k\"",
                "a 4097-byte type 11 entry",
                "the limit is 4096",
                "--smbios-budget",
            ] {
                assert!(stderr.contains(needle), "{needle:?} in {stderr}");
            }
            let out = run_to_end(&rig, "render", &["--smbios-budget", "4097"], &strs(&args));
            assert_eq!(out.status.code(), Some(0), "the flag raises the budget");
        }
    }
}

#[test]
fn budget_beyond_cloud_hypervisors_ceiling_is_refused() {
    let rig = Rig::new();
    let args = vm(&rig);
    let out = run_to_end(&rig, "render", &["--smbios-budget", "65405"], &strs(&args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr.contains("at most 65404"), "{stderr}");
    let out = run_to_end(&rig, "render", &["--smbios-budget", "65404"], &strs(&args));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn too_many_strings_is_refused_and_255_pass() {
    for (count, ok) in [(254usize, true), (255, true), (256, false)] {
        let rig = Rig::new();
        // The argv has one string already.
        for i in 0..count - 1 {
            std::fs::write(rig.creds.join(format!("c{i:03}")), b"v").unwrap();
        }
        let args = vm(&rig);
        let out = run_to_end(
            &rig,
            "render",
            &["--smbios-budget", "65404", "--channel", "smbios"],
            &strs(&args),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !ok {
            // #15: by default the 256th goes over fw_cfg instead.
            let out = run_to_end(&rig, "render", &["--smbios-budget", "65404"], &strs(&args));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{stdout}");
            assert!(
                stdout.contains("c254                          fw_cfg  the type 11 entry holds at most 255 strings"),
                "{stdout}"
            );
        }
        if ok {
            assert_eq!(out.status.code(), Some(0), "{count}: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(125));
            assert!(
                stderr.contains("OEM string number 256") && stderr.contains("255"),
                "{stderr}"
            );
            assert!(stderr.contains("credential \"c254\""), "{stderr}");
        }
    }
}

#[test]
fn duplicate_guest_name_is_refused() {
    let mut rig = Rig::new();
    rig.add_credential("a", b"secret-a-value");
    rig.add_credential("b", b"secret-b-value");
    let args = vm(&rig);
    let out = run_to_end(
        &rig,
        "run",
        &["--credential", "a=same", "--credential", "b=same"],
        &strs(&args),
    );
    assert_refused(&mut rig, &out, &["guest name \"same\"", "credential \"a\""]);
    // The argv's own vmm.notify_socket counts too.
    let mut rig = Rig::new();
    rig.add_credential("vmm.notify_socket", b"vsock-stream:2:1");
    let out = run_to_end(&rig, "run", &[], &strs(&args));
    assert_refused(&mut rig, &out, &["\"vmm.notify_socket\"", "--platform"]);
}

#[test]
fn bad_hypervisor_argv_is_refused_before_start() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"secret-bad-argv");
    let kernel = rig.kernel();
    let out = run_to_end(
        &rig,
        "run",
        &[],
        &[
            "--kernel",
            &kernel,
            "--platform",
            "a=1",
            "--platform",
            "b=2",
        ],
    );
    assert_refused(&mut rig, &out, &["--platform"]);
    let out = run_to_end(&rig, "run", &[], &["--cpus", "boot=1"]);
    assert_refused(&mut rig, &out, &[]);
}

#[test]
fn landlock_is_refused_in_api_delivery_with_the_alternative() {
    let mut rig = Rig::new();
    rig.add_credential("k", b"secret-landlock");
    let kernel = rig.kernel();
    let out = run_to_end(&rig, "run", &[], &["--kernel", &kernel, "--landlock"]);
    assert_refused(&mut rig, &out, &["--landlock", "--delivery argv"]);
}

#[test]
fn argv_delivery_refuses_strings_the_grammar_cannot_carry() {
    let mut rig = Rig::new();
    let args = vm(&rig);
    let out = run_to_end(
        &rig,
        "run",
        &["--delivery", "argv", "--oem-string", "a,b"],
        &strs(&args),
    );
    assert_refused(&mut rig, &out, &["--oem-string \"a,b\"", "--delivery api"]);
}

#[test]
fn render_redacts_values_and_starts_nothing() {
    let mut rig = Rig::new();
    rig.add_credential("api-key", b"render-me-not-please");
    rig.add_credential("bin", &[0xff, 0xfe, 0xfd, 0xfc, 0xfb]);
    let args = vm(&rig);
    let out = run_to_end(
        &rig,
        "render",
        &["--credential", "api-key=guest-key", "--credential", "bin"],
        &strs(&args),
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("credentials:  2"), "{stdout}");
    assert!(
        stdout.contains("io.systemd.credential:guest-key=<redacted 20 bytes>"),
        "{stdout}"
    );
    assert!(
        stdout.contains("io.systemd.credential.binary:bin=<redacted 8 bytes>"),
        "{stdout}"
    );
    assert!(stdout.contains("--api-socket fd=<api>"), "{stdout}");
    assert!(stdout.contains("PUT /api/v1/vm.create"), "{stdout}");
    assert!(stdout.contains("\"oem_strings\""), "{stdout}");
    assert!(!rig.record_file("pid").exists());

    let out = run_to_end(&rig, "render", &["--delivery", "argv"], &strs(&args));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("io.systemd.credential.binary:api-key=<redacted 28 bytes>"),
        "argv delivery is always binary: {stdout}"
    );
    assert!(!stdout.contains("vm.create"));
}

#[test]
fn platform_system_strings_lower_cloud_hypervisors_ceiling() {
    let rig = Rig::new();
    let kernel = rig.kernel();
    let platform = [
        "--kernel",
        &kernel,
        "--platform",
        "system_manufacturer=Acme",
    ];
    // "Acme" and its NUL take 5 bytes of the table: the largest budget drops from 65404.
    let out = run_to_end(&rig, "render", &["--smbios-budget", "65400"], &platform);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("at most 65399"), "{stderr}");
    let out = run_to_end(&rig, "render", &["--smbios-budget", "65399"], &platform);
    assert_eq!(out.status.code(), Some(0));
}
