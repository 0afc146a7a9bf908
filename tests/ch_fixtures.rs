//! Every case of the cloud-hypervisor ground truth (`../shared/fixtures/cloud-hypervisor/
//! argv-to-vmconfig.jsonl`, produced by CH 54's own argv code) run through
//! `credbridge::hypervisor::cloud_hypervisor::cmdline::parse_argv`: accepted VMs must give CH's
//! exact `vm.create` JSON, refused command lines must be refused with an error that names the
//! offending option.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use credbridge::hypervisor::cloud_hypervisor::cmdline::{
    ArgvError, ChArgv, Mode, SocketArg, parse_argv,
};
use serde_json::Value;

const FIXTURE_ROOT: &str = "/tmp/credbridge-fixture-root/";

fn fixture_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/cloud-hypervisor/argv-to-vmconfig.jsonl")
}

/// Every case of the fixture file, with the paths they name created.
fn load_cases() -> Vec<Value> {
    let text = fs::read_to_string(fixture_file()).expect("fixture file");
    let cases: Vec<Value> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("fixture line is JSON"))
        .collect();
    create_fixture_paths(&cases);
    cases
}

/// `--landlock-rules path=` must exist when CH parses it; the cases only use paths under
/// `FIXTURE_ROOT`, which we create (a file where the name has an extension, else a directory).
fn create_fixture_paths(cases: &[Value]) {
    for case in cases {
        for token in case["argv"].as_array().into_iter().flatten() {
            let Some(token) = token.as_str() else {
                continue;
            };
            let mut rest = token;
            while let Some(start) = rest.find(FIXTURE_ROOT) {
                let tail = &rest[start..];
                let end = tail.find([',', '"']).unwrap_or(tail.len());
                let path = Path::new(&tail[..end]);
                if path.extension().is_some() {
                    fs::create_dir_all(path.parent().unwrap()).unwrap();
                    fs::write(path, b"").unwrap();
                } else {
                    fs::create_dir_all(path).unwrap();
                }
                rest = &tail[end..];
            }
        }
    }
}

fn socket(parsed: &Value) -> Option<SocketArg> {
    if let Some(fd) = parsed["fd"].as_i64() {
        return Some(SocketArg::Fd(RawFd::try_from(fd).unwrap()));
    }
    parsed["path"]
        .as_str()
        .map(|path| SocketArg::Path(PathBuf::from(path)))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn os_strings(value: &Value) -> Vec<OsString> {
    strings(value).into_iter().map(OsString::from).collect()
}

/// The fixture lists fds per option (`{"option": "--net", "fds": [3]}`); ours is the flat list.
fn fixture_fds(vmm: &Value) -> Vec<RawFd> {
    vmm["inherited_fds"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entry| entry["fds"].as_array().unwrap().clone())
        .map(|fd| RawFd::try_from(fd.as_i64().unwrap()).unwrap())
        .collect()
}

fn check_accepted(name: &str, case: &Value, got: &ChArgv) {
    let vmm = &case["vmm_args"];
    let want_mode = match case["mode"].as_str() {
        Some("vm") => Mode::Vm,
        Some("restore") => Mode::Restore,
        Some("vmm_only") => Mode::VmmOnly,
        Some("version") => Mode::Version,
        other => panic!("{name}: unexpected mode {other:?}"),
    };
    assert_eq!(got.mode, want_mode, "{name}: mode");
    assert_eq!(
        got.vmm_argv,
        os_strings(&vmm["vmm_argv"]),
        "{name}: vmm_argv"
    );
    assert_eq!(
        got.verbosity,
        vmm["v"].as_u64().unwrap() as u8,
        "{name}: -v count"
    );
    if want_mode == Mode::Vm {
        assert_eq!(
            got.vm_config.as_ref(),
            Some(&case["vm_config"]),
            "{name}: vm_config"
        );
    } else {
        assert_eq!(got.vm_config, None, "{name}: vm_config");
    }
    // The version case stops before CH reads its sockets, so the fixture has no parsed values.
    if want_mode != Mode::Version {
        assert_eq!(got.inherited_fds, fixture_fds(vmm), "{name}: inherited fds");
        assert_eq!(
            got.api_socket,
            socket(&vmm["api_socket_parsed"]),
            "{name}: api socket"
        );
        assert_eq!(
            got.event_monitor,
            socket(&vmm["event_monitor_parsed"]),
            "{name}: event monitor"
        );
        assert_eq!(
            got.restore.as_deref(),
            vmm["restore"].as_str(),
            "{name}: restore"
        );
    }
}

/// Whether CH's message names some `--option` (its clap usage line, or `Error parsing --x`).
fn names_an_option(text: &str) -> bool {
    text.match_indices("--")
        .any(|(i, _)| text[i + 2..].starts_with(|c: char| c.is_ascii_lowercase()))
}

/// CH's wording differs from ours, so we check what matters: the error names an option. Where
/// CH's own text names options (clap errors, `Error parsing --disk`), ours must be one of them.
/// Where it names none (validation: "Max CPUs (2) lower than boot CPUs (4)", the logger
/// format, a stray argument), ours must be an option or token the command line really has.
fn check_refused(name: &str, case: &Value, err: &ArgvError) {
    let argv = strings(&case["argv"]);
    let mut text = case["error"].as_str().unwrap_or_default().to_owned();
    for line in case["error_chain"].as_array().into_iter().flatten() {
        text.push('\n');
        text.push_str(line.as_str().unwrap());
    }
    let Some(option) = err.option() else {
        assert!(argv.is_empty(), "{name}: error names no option: {err}");
        return;
    };
    assert!(
        err.to_string().contains(option),
        "{name}: message does not name {option}: {err}"
    );
    if names_an_option(&text) {
        assert!(
            text.contains(option),
            "{name}: we blame {option}, cloud-hypervisor said: {text}"
        );
    } else {
        let given = argv
            .iter()
            .any(|t| t == option || t.starts_with(&format!("{option}=")));
        assert!(given, "{name}: we blame {option}, which is not in {argv:?}");
    }
}

#[test]
fn every_fixture_case() {
    let cases = load_cases();

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let args = os_strings(&case["argv"]);
        let ok = case["ok"].as_bool().unwrap();
        let exit_class = case["exit_class"].as_str();
        let got = parse_argv(&args);
        let category = match (ok, exit_class, case["mode"].as_str()) {
            (true, _, Some("vm")) => "accepted vm",
            (true, _, _) => "accepted other mode",
            // `--help` exits 0 without running anything; the fixture files it as not ok.
            (false, Some("help"), _) => "help",
            (false, Some("clap"), _) => "refused by clap",
            (false, _, _) => "refused by config parsing",
        };
        *counts.entry(category).or_default() += 1;
        let result = std::panic::catch_unwind(|| match (&got, category) {
            (Ok(got), "help") => assert_eq!(got.mode, Mode::Help, "{name}: mode"),
            (Ok(got), "accepted vm" | "accepted other mode") => check_accepted(name, case, got),
            (Err(err), "refused by clap" | "refused by config parsing") => {
                check_refused(name, case, err)
            }
            (Ok(got), _) => panic!("{name}: accepted, but cloud-hypervisor refuses it: {got:?}"),
            (Err(err), _) => panic!("{name}: refused, but cloud-hypervisor accepts it: {err}"),
        });
        if result.is_err() {
            failures.push(name.to_owned());
        }
    }

    let total: usize = counts.values().sum();
    println!("cloud-hypervisor fixture cases: {total}");
    for (category, count) in &counts {
        println!("  {category}: {count}");
    }
    println!(
        "  passed: {}, failed: {}",
        total - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed cases: {failures:?}");
    assert_eq!(total, 255, "every fixture case is counted, none skipped");
    assert_eq!(total, cases.len());
}

/// A small deterministic PRNG (xorshift64*), so the mutation test needs no extra crate and every
/// run sees the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mutates one fixture argv: cuts a token, splices grammar-significant characters into one, or
/// inserts a token that shifts clap's state.
fn mutate(rng: &mut Rng, args: &mut Vec<OsString>) {
    use std::os::unix::ffi::OsStringExt;
    const TOKENS: &[&str] = &[
        "--platform",
        "--disk",
        "--net",
        "--",
        "-",
        "-vV",
        "--rtc",
        "--kernel",
        "--cpus",
        "=",
        "[",
        "]",
        "\"",
        ",",
        "oem_strings=[a",
        "--landlock",
        "-h",
        "--memory=size=0",
        "fd=[0-1048576]",
        "boot=0,max=0",
        "--numa",
        "guest_numa_id=0,cpus=[0-5000]",
    ];
    const CHARS: &[char] = &[
        '[', ']', '"', ',', '=', '@', '-', ':', '0', '9', 'x', 'K', 'G', ' ', 'é',
    ];
    match rng.below(4) {
        0 if !args.is_empty() => {
            let i = rng.below(args.len());
            let text = args[i].to_string_lossy().into_owned();
            let cut = rng.below(text.len() + 1);
            let cut = (0..=cut)
                .rev()
                .find(|&c| text.is_char_boundary(c))
                .unwrap_or(0);
            args[i] = text[..cut].into();
        }
        1 if !args.is_empty() => {
            let i = rng.below(args.len());
            let mut text = args[i].to_string_lossy().into_owned();
            let at = rng.below(text.len() + 1);
            let at = (0..=at)
                .rev()
                .find(|&c| text.is_char_boundary(c))
                .unwrap_or(0);
            text.insert(at, CHARS[rng.below(CHARS.len())]);
            args[i] = text.into();
        }
        2 => {
            let at = rng.below(args.len() + 1);
            args.insert(at, TOKENS[rng.below(TOKENS.len())].into());
        }
        _ => {
            let at = rng.below(args.len() + 1);
            args.insert(at, OsString::from_vec(vec![b'-', b'-', 0xff, b'=', 0xfe]));
        }
    }
}

#[test]
fn mutated_fixture_argv_never_panics() {
    let cases = load_cases();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0;
    for case in &cases {
        for _ in 0..40 {
            let mut args = os_strings(&case["argv"]);
            for _ in 0..=rng.below(3) {
                mutate(&mut rng, &mut args);
            }
            // Only the absence of panics is checked; acceptance is the other test's business.
            let _ = parse_argv(&args);
            let _ = credbridge::hypervisor::cloud_hypervisor::cmdline::platform_oem_strings(&args);
            let _ = credbridge::hypervisor::cloud_hypervisor::cmdline::rewrite_platform(
                &args,
                &["io.systemd.credential:a=b"],
            );
            runs += 1;
        }
    }
    println!("mutated command lines parsed without panic: {runs}");
}
