//! The fake against the ground truth in `shared/fixtures/cloud-hypervisor/argv-to-vmconfig.jsonl`
//! (CH's own argv handling at ae44c297): the clap stage for every case, and the `--platform`
//! grammar end to end (the built binary, with a record dir) for every case whose argv has
//! `--platform`. No case is skipped: each lands in a named bucket and the buckets add up.

mod common;

use std::ffi::OsString;
use std::path::PathBuf;

use common::*;
use fake_cloud_hypervisor::cli::{self, CliExit};
use serde_json::Value;

/// Cases CH rejects in `VmConfig::validate` for options the fake keeps opaque (it models
/// `--platform`, `--net`, `--vsock`, `--api-socket`, `--event-monitor` only). For these the fake
/// must get past `--platform` and create the VM.
const OUT_OF_MODEL: &[&str] = &[
    "mnix-brief-shape-mergeable-shared",
    "err-platform-on-iommu-segment",
    "err-pci-segment-weight-0",
];

fn fixtures() -> Vec<Value> {
    let path = std::env::var_os("FAKE_CH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/fixtures/cloud-hypervisor/argv-to-vmconfig.jsonl"
            ))
        });
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixtures {}: {e}", path.display()));
    let cases: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cases.len(), 255, "fixture file changed: update the counts");
    cases
}

fn argv(c: &Value) -> Vec<String> {
    c["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn clap_stage_matches_every_case() {
    let mut mismatches = vec![];
    let (mut usage, mut help, mut accepted) = (0, 0, 0);
    for c in fixtures() {
        let args: Vec<OsString> = argv(&c).into_iter().map(OsString::from).collect();
        let got = cli::parse(&args);
        let ok = match (c["exit_class"].as_str(), &got) {
            (Some("clap"), Err(CliExit::Usage(_))) => {
                usage += 1;
                true
            }
            (Some("help"), Err(CliExit::Help)) => {
                help += 1;
                true
            }
            (Some("clap" | "help"), _) => false,
            (_, Ok(_)) => {
                accepted += 1;
                true
            }
            (_, Err(_)) => false,
        };
        if !ok {
            mismatches.push(format!(
                "{}: fixture {:?}, fake {:?}",
                c["name"], c["exit_class"], got
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "clap-stage mismatches:\n{}",
        mismatches.join("\n")
    );
    assert_eq!((usage, help, accepted), (18, 1, 236));
}

#[test]
fn platform_grammar_matches_every_platform_case() {
    let cases: Vec<Value> = fixtures()
        .into_iter()
        .filter(|c| {
            argv(c)
                .iter()
                .any(|a| a == "--platform" || a.starts_with("--platform="))
        })
        .collect();
    let mut failures = vec![];
    let (mut accepted, mut rejected_platform, mut rejected_other, mut clap, mut out_of_model) =
        (0, 0, 0, 0, 0);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let dir = TempDir::new("fixture");
        let out = run_with_timeout(fake_os(&dir, argv(c)), 20);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        let created = dir.join("rec/vm_config.json");
        let mut fail = |why: String| failures.push(format!("{name}: {why}\n  stderr: {stderr}"));
        if c["ok"] == true && c["mode"] == "vm" {
            // The payload paths do not exist here: CH (and the fake) fail at boot, after
            // parsing, with exit 1.
            if code != Some(1) || !stderr.contains("Error booting VM") {
                fail(format!("expected boot failure (exit 1), got {code:?}"));
                continue;
            }
            if !created.exists() {
                fail("no vm_config.json".into());
                continue;
            }
            let got = read_json(&created);
            let want = &c["vm_config"]["platform"];
            if got["platform"]["oem_strings"] != want["oem_strings"] {
                fail(format!(
                    "oem_strings: got {}, want {}",
                    got["platform"]["oem_strings"], want["oem_strings"]
                ));
            } else if got["platform"] != *want {
                fail(format!("platform: got {}, want {want}", got["platform"]));
            } else {
                accepted += 1;
            }
        } else if c["exit_class"] == "clap" {
            if code == Some(2) {
                clap += 1;
            } else {
                fail(format!("expected exit 2, got {code:?}"));
            }
        } else if c["exit_class"] == "config" {
            let want = c["error"].as_str().unwrap();
            if code == Some(1) && stderr.contains(want) {
                if want.contains("Error parsing --platform") {
                    rejected_platform += 1;
                } else {
                    rejected_other += 1;
                }
            } else if OUT_OF_MODEL.contains(&name) {
                if created.exists() && !stderr.contains("--platform") {
                    out_of_model += 1;
                } else {
                    fail("out-of-model case did not get past --platform".into());
                }
            } else {
                fail(format!("expected exit 1 with {want:?}, got {code:?}"));
            }
        } else {
            fail(format!("unexpected fixture shape: {}", c["exit_class"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "platform cases: {} = {accepted} accepted + {rejected_platform} rejected at --platform + {rejected_other} rejected elsewhere (modelled) + {clap} clap + {out_of_model} out of model",
        cases.len()
    );
    assert_eq!(
        accepted + rejected_platform + rejected_other + clap + out_of_model,
        cases.len(),
        "a case fell through"
    );
    assert_eq!(cases.len(), 49, "fixture file changed: update the counts");
    assert_eq!(out_of_model, OUT_OF_MODEL.len());
    assert!(rejected_platform >= 4);
}
