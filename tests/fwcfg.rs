//! #15: credentials over fw_cfg to cloud-hypervisor through its API, against the fake in
//! both builds: with the `fw_cfg` feature (FAKE_CH_FW_CFG=1) and a stock build, which drops
//! fw_cfg items silently, so credbridge must never send any to it.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;

const T: Duration = Duration::from_secs(20);

/// "small" fits SMBIOS; "big" (5000 bytes, every byte value) does not fit the 4096 budget.
fn rig() -> (Rig, Vec<u8>) {
    let mut rig = Rig::new();
    rig.add_credential("small", b"small-secret-value");
    let big: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    rig.add_credential("big", &big);
    (rig, big)
}

fn routes(rig: &Rig) -> Vec<String> {
    rig.requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_fw_cfg_build_gets_the_big_credential_as_a_memfd_file() {
    let (rig, big) = rig();
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rig
        .command("run", &["--ready", "booted"], &args)
        .env("FAKE_CH_FW_CFG", "1")
        .spawn()
        .unwrap();
    assert!(
        rig.wait_record("fw_cfg.json", T),
        "{}",
        stderr_of(&mut child)
    );
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut child, T);
    let stderr = stderr_of(&mut child);
    assert!(status.success(), "{stderr}");
    rig.assert_no_secret_in("stderr", stderr.as_bytes());

    // vmm.ping before vm.create: the only way to learn the build's features.
    let r = routes(&rig);
    let pos = |s: &str| r.iter().position(|p| p.ends_with(s)).unwrap();
    assert!(pos("vmm.ping") < pos("vm.create"), "{r:?}");

    // The JSON shape of cloud-hypervisor.md section 7; the value itself is not in it.
    let cfg = rig.read_record_json("vm_config.json");
    let fw = &cfg["payload"]["fw_cfg_config"];
    let items = fw["items"]["item_list"]
        .as_array()
        .expect("items.item_list");
    assert_eq!(items.len(), 1, "{fw}");
    assert_eq!(items[0]["name"], "opt/io.systemd.credentials/big");
    let file = items[0]["file"].as_str().unwrap();
    assert!(file.starts_with("/proc/self/fd/"), "{file}");
    assert_eq!(fw["initramfs"], false, "no --initramfs in the argv: {fw}");
    assert!(
        fw.get("kernel").is_none() && fw.get("cmdline").is_none(),
        "{fw}"
    );
    let big_b64 = base64::engine::general_purpose::STANDARD.encode(&big);
    assert!(
        !contains(cfg.to_string().as_bytes(), &big_b64.as_bytes()[..64]),
        "the fw_cfg value is not in the JSON, only its path"
    );

    // What the fake read at vm.boot through that path: the bytes, exactly.
    let loaded = rig.read_record_json("fw_cfg.json");
    assert_eq!(loaded[0]["name"], "opt/io.systemd.credentials/big");
    assert_eq!(loaded[0]["size"], 5000);
    let content = base64::engine::general_purpose::STANDARD
        .decode(loaded[0]["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(content, big);

    // The small one stays SMBIOS; the big one is not there.
    let oem = rig.read_record_json("oem_strings.json").to_string();
    let decode = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let strings: Vec<Vec<u8>> = rig.read_record_json("oem_strings.json")["oem_strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(decode)
        .collect();
    assert!(
        strings
            .iter()
            .any(|s| s == b"io.systemd.credential:small=small-secret-value"),
        "{oem}"
    );
    assert!(!strings.iter().any(|s| contains(s, b"big=")), "{oem}");
}

#[test]
fn a_stock_build_is_never_sent_fw_cfg_items() {
    let (rig, _) = rig();
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = rig
        .command("run", &["--ready", "booted"], &args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    for needle in [
        "credential \"big\" goes over fw_cfg (it would make the type 11 entry",
        "lacks the fw_cfg feature",
        "[\"io_uring\", \"kvm\"]",
        "--features fw_cfg",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    rig.assert_no_secret_in("stderr", &out.stderr);
    let r = routes(&rig);
    assert!(r.iter().any(|p| p.ends_with("vmm.ping")), "{r:?}");
    assert!(!r.iter().any(|p| p.ends_with("vm.create")), "{r:?}");
}

#[test]
fn the_fake_stock_build_drops_fw_cfg_silently_and_the_fw_cfg_build_reads_files() {
    // The fake itself, as the reference describes both builds (cloud-hypervisor.md s. 7).
    let (rig, _) = rig();
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // --channel smbios with a budget that holds both: only the fake's behaviour is probed,
    // through the API socket credbridge keeps private, so the check is on the records.
    let mut child = rig
        .command(
            "run",
            &["--ready", "booted", "--smbios-budget", "8192"],
            &args,
        )
        .spawn()
        .unwrap();
    assert!(rig.wait_record("oem_strings.json", T));
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    wait_exit(&mut child, T);
    let r = routes(&rig);
    assert!(
        !r.iter().any(|p| p.ends_with("vmm.ping")),
        "nothing needs fw_cfg, so nothing asks: {r:?}"
    );
    assert!(!rig.record_file("fw_cfg.json").exists());
}

#[test]
fn render_shows_each_choice_and_the_ping_step() {
    let (rig, _) = rig();
    let args = rig.vm_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = rig.command("render", &[], &args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    rig.assert_no_secret_in("stdout", &out.stdout);
    for needle in [
        "big                           fw_cfg  it would make the type 11 entry",
        "small                         SMBIOS  fits the SMBIOS budget",
        "GET /api/v1/vmm.ping: the build's features must include fw_cfg",
        "\"file\": \"/proc/self/fd/<fw_cfg-1>\"",
        "\"initramfs\": false",
    ] {
        assert!(stdout.contains(needle), "{needle:?} in {stdout}");
    }
    assert!(
        stdout.lines().any(|l| l
            .trim_start()
            .starts_with("opt/io.systemd.credentials/big ")
            && l.ends_with(" 5000  <redacted 5000 bytes>")),
        "{stdout}"
    );
    let ping = stdout.find("GET /api/v1/vmm.ping").unwrap();
    assert!(
        ping < stdout.find("PUT /api/v1/vm.create").unwrap(),
        "{stdout}"
    );
    // --channel fw-cfg: both go that way; a guest name over 28 bytes cannot.
    let out = rig
        .command("render", &["--channel", "fw-cfg"], &args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("small                         fw_cfg  --channel fw-cfg"),
        "{stdout}"
    );
    let long = "a-guest-name-of-29-bytes-long";
    assert_eq!(long.len(), 29);
    let out = rig
        .command(
            "render",
            &[
                "--channel",
                "fw-cfg",
                "--credential",
                &format!("small={long}"),
            ],
            &args,
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("(--channel fw-cfg)")
            && stderr.contains("at most 55 bytes, so NAME at most 28")
            && stderr.contains("--channel auto"),
        "{stderr}"
    );
}
