//! Criterion benches of the pure work on credbridge's start path (issue #7): reading,
//! encoding and checking a full load of credentials, and translating the largest
//! cloud-hypervisor fixture command line into its `vm.create` JSON.
//!
//! `bench/run.sh` runs these and folds their medians into its table; alone:
//! `cargo bench --bench codec`.

use std::ffi::OsString;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};

use credbridge::credentials::{self, Credential, Secret, SecretBytes};
use credbridge::hypervisor::cloud_hypervisor::cmdline as ch;
use credbridge::oem::{self, CH_STRINGS_CEILING, Limits, OemString};

/// 255 strings (the SMBIOS type 11 count limit) whose entry is 60 KiB: the largest round
/// figure below cloud-hypervisor's 65398-byte strings ceiling.
const COUNT: usize = 255;
const ENTRY_TARGET: usize = 60 * 1024;

fn name(i: usize) -> String {
    format!("cred-{i:03}")
}

/// Values sized so that, in `form`'s encoding, the 255 strings make a 60 KiB type 11 entry.
/// `binary` values are arbitrary bytes (argv delivery); the others printable ASCII (api).
fn credentials(binary: bool) -> Vec<Credential> {
    let prefix = if binary {
        oem::BINARY_PREFIX.len()
    } else {
        oem::PLAIN_PREFIX.len()
    };
    // header 5 + final NUL 1 + per string: prefix, name (8), '=', NUL.
    let fixed = 6 + COUNT * (prefix + name(0).len() + 2);
    let encoded_per_value = (ENTRY_TARGET - fixed) / COUNT;
    let value_len = if binary {
        encoded_per_value / 4 * 3
    } else {
        encoded_per_value
    };
    let mut x: u32 = 0x2545_f491;
    (0..COUNT)
        .map(|i| {
            let value: Vec<u8> = (0..value_len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if binary {
                        x as u8
                    } else {
                        b'!' + (x % 94) as u8
                    }
                })
                .collect();
            Credential {
                name: name(i),
                guest_name: name(i),
                value: Secret::new(SecretBytes::from_slice(&value)),
            }
        })
        .collect()
}

fn limits() -> Limits {
    Limits {
        budget: oem::entry_size(&[]) + CH_STRINGS_CEILING,
        strings_ceiling: CH_STRINGS_CEILING,
        hypervisor: "cloud-hypervisor",
    }
}

/// What `hypervisor::plan` does with loaded credentials: check each name, encode, check limits.
fn encode_and_validate(creds: &[Credential], plain_ok: bool) -> usize {
    for c in creds {
        credentials::validate_name(&c.guest_name).expect("valid name");
    }
    let strings: Vec<OemString> = creds
        .iter()
        .map(|c| OemString::from_credential(c, plain_ok))
        .collect();
    oem::validate(&strings, &limits()).expect("the set fits");
    oem::entry_size(&strings)
}

fn bench_credentials(c: &mut Criterion) {
    let mut group = c.benchmark_group("credentials");
    for (id, binary) in [
        ("encode_validate_255_plain", false),
        ("encode_validate_255_binary", true),
    ] {
        let creds = credentials(binary);
        let size = encode_and_validate(&creds, !binary);
        assert!(
            (ENTRY_TARGET - 512..=ENTRY_TARGET).contains(&size),
            "{id}: entry of {size} bytes"
        );
        group.bench_function(id, |b| {
            b.iter(|| encode_and_validate(black_box(&creds), !binary))
        });
    }
    // The same set read from a credentials directory (page cache warm), as `run` starts.
    let dir = tempfile::tempdir().unwrap();
    for cred in credentials(false) {
        std::fs::write(dir.path().join(&cred.name), cred.value.expose()).unwrap();
    }
    group.bench_function("load_255_from_dir", |b| {
        b.iter(|| credentials::load(black_box(dir.path()), &[]).unwrap().len())
    });
    group.finish();
}

/// The accepted VM case with the longest command line.
fn largest_fixture_argv() -> (String, Vec<OsString>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/cloud-hypervisor/argv-to-vmconfig.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|c| c["ok"] == true && c["mode"] == "vm")
        .map(|c| {
            let argv: Vec<OsString> = c["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| OsString::from(a.as_str().unwrap()))
                .collect();
            (c["name"].as_str().unwrap().to_owned(), argv)
        })
        .max_by_key(|(_, argv)| argv.iter().map(|a| a.len() + 1).sum::<usize>())
        .expect("fixture has accepted VM cases")
}

fn bench_argv(c: &mut Criterion) {
    let (name, argv) = largest_fixture_argv();
    let translate = |argv: &[OsString]| -> Vec<u8> {
        let parsed = ch::parse_argv(argv).expect("fixture case is accepted");
        serde_json::to_vec(parsed.vm_config.as_ref().expect("a VM")).unwrap()
    };
    let bytes: usize = argv.iter().map(|a| a.len() + 1).sum();
    eprintln!(
        "argv translation: fixture case {name:?}, {} tokens, {bytes} bytes -> {} bytes of JSON",
        argv.len(),
        translate(&argv).len()
    );
    let mut group = c.benchmark_group("argv");
    group.bench_function("translate_largest_fixture", |b| {
        b.iter(|| translate(black_box(&argv)))
    });
    group.finish();
}

criterion_group!(benches, bench_credentials, bench_argv);
criterion_main!(benches);
