//! credbridge(1) against the clap definitions it is rendered from: a section per subcommand,
//! every long option `--help` shows, and a page groff renders without a warning.
//!
//! Needs groff (Debian package groff-base; tests/run.sh installs it).

use std::io::Write;
use std::process::{Command, Stdio};

fn groff(args: &[&str], page: &[u8]) -> (bool, String, String) {
    let mut child = Command::new("groff")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("groff not found: install the Debian package groff-base (tests/run.sh does)");
    child.stdin.take().unwrap().write_all(page).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The page as a reader sees it: plain ASCII, no hyphenation, lines wide enough that no
/// option name is broken.
fn rendered() -> String {
    let page = credbridge_man::page().unwrap();
    let (ok, text, err) = groff(
        &["-man", "-Tascii", "-P-cbou", "-rLL=300n", "-rHY=0"],
        &page,
    );
    assert!(ok && err.is_empty(), "groff failed: {err}");
    text
}

/// The sections of the rendered page: heading (a line starting in column 0) -> its body.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if !line.is_empty() && !line.starts_with(' ') {
            out.push((line.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// Long options of a command, from its definition (hidden ones are not in --help either).
fn long_options(cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect()
}

/// Long options as `--help` prints them: the first option name of each option line.
fn long_options_in_help(cmd: &mut clap::Command) -> Vec<String> {
    let help = cmd.render_long_help().to_string();
    let mut out = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        let t = match t.strip_prefix('-') {
            Some(rest) if !rest.starts_with('-') => rest.get(3..).unwrap_or(""), // "-h, --help"
            _ => t,
        };
        if let Some(rest) = t.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            out.push(format!("--{name}"));
        }
    }
    out
}

#[test]
fn the_options_read_from_the_command_are_those_help_shows() {
    let mut cmd = credbridge_man::command();
    let mut top = long_options(&cmd);
    let mut help = long_options_in_help(&mut cmd);
    top.sort();
    help.sort();
    assert_eq!(top, help, "credbridge --help");
    let names: Vec<String> = credbridge_man::subcommands(&cmd)
        .iter()
        .map(|s| s.get_name().to_owned())
        .collect();
    assert!(names.len() >= 2, "subcommands: {names:?}");
    for name in names {
        let sub = cmd.find_subcommand_mut(&name).unwrap();
        let mut want = long_options(sub);
        let mut got = long_options_in_help(sub);
        want.sort();
        got.sort();
        assert!(want.len() > 10, "credbridge {name}: {want:?}");
        assert_eq!(want, got, "credbridge {name} --help");
    }
}

#[test]
fn the_page_has_a_section_per_subcommand_naming_each_of_its_options() {
    let cmd = credbridge_man::command();
    let text = rendered();
    let secs = sections(&text);
    let section = |h: &str| {
        secs.iter()
            .find(|(head, _)| head == h)
            .map(|(_, body)| body.clone())
            .unwrap_or_else(|| {
                panic!(
                    "no section {h:?} in the page; sections: {:?}",
                    secs.iter().map(|s| &s.0).collect::<Vec<_>>()
                )
            })
    };
    let options = section("OPTIONS");
    for opt in long_options(&cmd) {
        assert!(options.contains(&opt), "OPTIONS lacks {opt}");
    }
    let commands = section("COMMANDS");
    for sub in credbridge_man::subcommands(&cmd) {
        let heading = credbridge_man::section_name(sub);
        assert!(
            commands.contains(&heading),
            "COMMANDS does not point at {heading}"
        );
        let body = section(&heading);
        assert!(
            body.contains("   Synopsis\n") && body.contains("   Options\n"),
            "{heading}:\n{body}"
        );
        let bin = sub.get_bin_name().unwrap();
        let words = body.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains(&format!("Synopsis {bin} ")),
            "{heading} has no synopsis of {bin}:\n{body}"
        );
        for opt in long_options(sub) {
            // An option's own entry: at the start of an indented line.
            let entry = body.lines().any(|l| {
                let t = l.trim_start();
                t.starts_with(&format!("{opt} "))
                    || t == opt
                    || t.starts_with(&format!("-h, {opt}"))
            });
            assert!(entry, "{heading} has no entry for {opt}:\n{body}");
        }
    }
    for s in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "ENVIRONMENT",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        section(s);
    }
}

#[test]
fn groff_renders_the_page_without_a_warning() {
    let page = credbridge_man::page().unwrap();
    let (ok, _, err) = groff(&["-man", "-ww", "-z"], &page);
    assert!(ok && err.is_empty(), "groff -man -ww -z:\n{err}");
}

#[test]
fn the_binary_prints_the_page() {
    let out = Command::new(env!("CARGO_BIN_EXE_credbridge-man"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, credbridge_man::page().unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with(".TH credbridge 1 ")),
        "{text}"
    );
}
