//! cloud-hypervisor's option grammar and argv translator
//! (`credbridge::hypervisor::cloud_hypervisor::cmdline`).
//!
//! Input: the argv tokens after argv[0], separated by NUL bytes (any other bytes, UTF-8 or
//! not, are token content). The corpus is seeded with every fixture argv
//! (`.ci/fuzz.sh` writes them).
//!
//! Checked:
//! - `parse_argv`, `platform_oem_strings` and `rewrite_platform` never panic;
//! - on a fixture case, `parse_argv` agrees with cloud-hypervisor 54's own result: accepted
//!   or refused, the mode, and the exact `vm.create` JSON;
//! - an accepted VM command line rewritten for argv delivery parses again to the same VM
//!   config, its OEM strings followed by the added one.
#![no_main]

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::sync::OnceLock;

use credbridge::hypervisor::cloud_hypervisor::cmdline::{self as ch, Mode};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const EXTRA: &str = "io.systemd.credential.binary:fuzz=ZnV6eg==";

/// Fixture cases by their NUL-joined argv.
fn fixtures() -> &'static HashMap<Vec<u8>, Value> {
    static CASES: OnceLock<HashMap<Vec<u8>, Value>> = OnceLock::new();
    CASES.get_or_init(|| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/cloud-hypervisor/argv-to-vmconfig.jsonl");
        let Ok(text) = std::fs::read_to_string(&file) else {
            eprintln!(
                "ch_argv: {} not found; fixture agreement not checked",
                file.display()
            );
            return HashMap::new();
        };
        let cases: HashMap<Vec<u8>, Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<Value>(l).expect("fixture line is JSON"))
            .map(|case| {
                let argv: Vec<&str> = case["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                (argv.join("\0").into_bytes(), case)
            })
            .collect();
        create_fixture_paths(&cases);
        cases
    })
}

/// `--landlock-rules path=` must exist when parsed; as tests/ch_fixtures.rs does, the paths the
/// cases name under the fixture root are created (a file where the name has an extension).
fn create_fixture_paths(cases: &HashMap<Vec<u8>, Value>) {
    const ROOT: &str = "/tmp/credbridge-fixture-root/";
    for key in cases.keys() {
        let text = String::from_utf8_lossy(key);
        let mut rest: &str = &text;
        while let Some(start) = rest.find(ROOT) {
            let tail = &rest[start..];
            let end = tail.find([',', '"', '\0']).unwrap_or(tail.len());
            let path = Path::new(&tail[..end]);
            if path.extension().is_some() {
                let _ = std::fs::create_dir_all(path.parent().unwrap());
                let _ = std::fs::write(path, b"");
            } else {
                let _ = std::fs::create_dir_all(path);
            }
            rest = &tail[end..];
        }
    }
}

fn argv_of(data: &[u8]) -> Vec<OsString> {
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|&b| b == 0)
        .map(|t| OsString::from_vec(t.to_vec()))
        .collect()
}

fn check_fixture(case: &Value, got: &Result<ch::ChArgv, ch::ArgvError>) {
    let name = case["name"].as_str().unwrap_or("?");
    let ok = case["ok"].as_bool().unwrap();
    match (got, ok, case["exit_class"].as_str()) {
        // `--help` exits 0 without a VM; the fixture files it as not ok.
        (Ok(g), false, Some("help")) => assert_eq!(g.mode, Mode::Help, "{name}"),
        (Ok(g), true, _) => {
            let mode = match case["mode"].as_str() {
                Some("vm") => Mode::Vm,
                Some("restore") => Mode::Restore,
                Some("vmm_only") => Mode::VmmOnly,
                Some("version") => Mode::Version,
                m => panic!("{name}: unknown mode {m:?}"),
            };
            assert_eq!(g.mode, mode, "{name}: mode");
            if mode == Mode::Vm {
                assert_eq!(g.vm_config.as_ref(), Some(&case["vm_config"]), "{name}");
            }
        }
        (Err(e), false, _) => assert!(e.option().is_some() || case["argv"] == Value::Array(vec![])),
        (Ok(g), false, _) => panic!(
            "{name}: accepted ({:?}), cloud-hypervisor refuses it",
            g.mode
        ),
        (Err(e), true, _) => panic!("{name}: refused ({e}), cloud-hypervisor accepts it"),
    }
}

/// The config without `platform`, and `platform` without `oem_strings`.
fn split_platform(config: &Value) -> (Value, Value, Vec<Value>) {
    let mut rest = config.clone();
    let mut platform = rest
        .as_object_mut()
        .and_then(|o| o.remove("platform"))
        .unwrap_or(Value::Null);
    let strings = platform
        .as_object_mut()
        .and_then(|p| p.remove("oem_strings"))
        .and_then(|s| s.as_array().cloned())
        .unwrap_or_default();
    (rest, platform, strings)
}

fuzz_target!(|data: &[u8]| {
    let argv = argv_of(data);
    let parsed = ch::parse_argv(&argv);
    if let Some(case) = fixtures().get(data) {
        check_fixture(case, &parsed);
    }
    if let Ok(p) = &parsed {
        assert_eq!(p.mode == Mode::Vm, p.vm_config.is_some());
        if let Some(cfg) = &p.vm_config {
            // What `run` sends: it must serialize.
            serde_json::to_vec(cfg).expect("the VM config serializes");
        }
    }
    let strings = ch::platform_oem_strings(&argv);
    let rewritten = ch::rewrite_platform(&argv, &[EXTRA]);
    let (Ok(before), Ok(Some(cfg)), Ok(after)) = (
        strings,
        parsed.as_ref().map(|p| p.vm_config.as_ref()),
        rewritten,
    ) else {
        return;
    };
    // Argv delivery starts cloud-hypervisor with `after`: it must mean the same VM plus the
    // one string.
    let again =
        ch::parse_argv(&after).unwrap_or_else(|e| panic!("rewritten argv refused: {e}\n{after:?}"));
    let mut want_strings = before.clone();
    want_strings.push(EXTRA.to_owned());
    assert_eq!(
        ch::platform_oem_strings(&after).expect("rewritten argv parses"),
        want_strings
    );
    let new_cfg = again.vm_config.expect("still a VM");
    let (rest_a, platform_a, strings_a) = split_platform(cfg);
    let (rest_b, platform_b, strings_b) = split_platform(&new_cfg);
    assert_eq!(rest_a, rest_b, "rewriting --platform changed other options");
    if !platform_a.is_null() {
        assert_eq!(
            platform_a, platform_b,
            "rewriting changed other --platform keys"
        );
    }
    let mut want: Vec<Value> = strings_a;
    want.push(Value::String(EXTRA.to_owned()));
    assert_eq!(strings_b, want, "oem_strings after rewriting");
});
