//! credbridge(1), rendered from `credbridge::cli`: the same clap definitions `--help` prints,
//! so a flag added, renamed or re-documented there is in the man page at the next build.
//!
//! One page for the whole program: NAME, SYNOPSIS and DESCRIPTION of `credbridge`, its own
//! options, a COMMANDS list, then a section per subcommand (`CREDBRIDGE RUN`, `CREDBRIDGE
//! RENDER`) with that subcommand's synopsis and every option, rendered by clap_mangen; then
//! the environment credbridge reads, its exit status and where to read on, written here.

use std::io::Write;

use clap::CommandFactory;
use clap_mangen::Man;
use roff::{Roff, bold, italic, roman};

/// The clap command the page is rendered from, built (subcommands carry their bin names,
/// `--help`/`--version` are added), as `credbridge --help` sees it.
pub fn command() -> clap::Command {
    let mut cmd = credbridge::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The subcommands that get a section, in the order `--help` lists them.
pub fn subcommands(cmd: &clap::Command) -> Vec<&clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect()
}

/// The section heading of a subcommand: `CREDBRIDGE RUN`.
pub fn section_name(sub: &clap::Command) -> String {
    sub.get_bin_name()
        .unwrap_or_else(|| sub.get_name())
        .to_uppercase()
}

/// The whole page, roff source.
pub fn page() -> std::io::Result<Vec<u8>> {
    let cmd = command();
    let man = Man::new(cmd.clone());
    let mut w = Vec::new();
    man.render_title(&mut w)?;
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    description(&cmd).to_writer(&mut w)?;
    man.render_options_section(&mut w)?;
    commands(&cmd).to_writer(&mut w)?;
    for sub in subcommands(&cmd) {
        let mut r = Roff::new();
        r.control("SH", [section_name(sub).as_str()]);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            r.text([roman(about.to_string())]);
        }
        r.to_writer(&mut w)?;
        let sub_man = Man::new(sub.clone());
        let mut part = Vec::new();
        sub_man.render_synopsis_section(&mut part)?;
        sub_man.render_options_section(&mut part)?;
        w.write_all(&subsections(&part))?;
    }
    trailer().to_writer(&mut w)?;
    Ok(one_preamble(&w))
}

/// Each `Roff::to_writer` starts with the same two lines that define `\*(Aq`; keep the first.
fn one_preamble(page: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(page);
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for line in text.lines() {
        let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
        if preamble && !seen.insert(line.to_owned()) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.into_bytes()
}

/// clap_mangen renders a subcommand as a page of its own (`.SH SYNOPSIS`, `.SH OPTIONS`);
/// inside this page they are subsections of the subcommand's section.
fn subsections(part: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(part);
    let mut out = String::new();
    for line in text.lines() {
        match line.strip_prefix(".SH ") {
            Some(title) => {
                let title = title.trim_matches('"');
                out.push_str(&format!(".SS {}\n", title_case(title)));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.into_bytes()
}

fn title_case(s: &str) -> String {
    let lower = s.to_lowercase();
    let mut c = lower.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn description(cmd: &clap::Command) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["DESCRIPTION"]);
    if let Some(about) = cmd.get_about() {
        r.text([roman(format!("{about}."))]);
    }
    r.control("PP", []);
    r.text([
        bold("credbridge run"),
        roman(
            " is the ExecStart= of a VM's systemd unit. It reads the unit's decrypted credentials \
             from $CREDENTIALS_DIRECTORY, checks them against systemd's and the hypervisor's \
             limits, and starts the hypervisor (cloud-hypervisor or QEMU) as its child with no \
             secret on any command line or on disk: cloud-hypervisor through its private REST \
             API, QEMU through sealed memfds. The guest's systemd (252 or later) imports each \
             credential from an SMBIOS type 11 OEM string or a fw_cfg file. credbridge then \
             speaks systemd's notify protocol for the VM (READY=1, STATUS=, WATCHDOG=1, \
             STOPPING=1), stops it through the ACPI power button, and exits with the \
             hypervisor's (or the guest's) exit status.",
        ),
    ]);
    r.control("PP", []);
    r.text([
        bold("credbridge render"),
        roman(
            " does every check run does, starts nothing, and prints what run would hand over, \
             every value redacted.",
        ),
    ]);
    r.control("PP", []);
    r.text([roman(
        "Everything after -- is the hypervisor's command line, exactly as it would be run.",
    )]);
    r
}

fn commands(cmd: &clap::Command) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    for sub in subcommands(cmd) {
        r.control("TP", []);
        r.text([bold(sub.get_bin_name().unwrap_or_else(|| sub.get_name()))]);
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        let stop = if about.ends_with('.') { "" } else { "." };
        r.text([roman(format!(
            "{about}{stop} See {} below.",
            section_name(sub)
        ))]);
    }
    r
}

fn trailer() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["ENVIRONMENT"]);
    for (name, what) in [
        (
            "CREDENTIALS_DIRECTORY",
            "where systemd put the unit's decrypted credentials (--credentials-dir overrides it).",
        ),
        (
            "NOTIFY_SOCKET",
            "systemd's notification socket: READY=1, STATUS=, WATCHDOG=1, STOPPING=1 go there.",
        ),
        (
            "LISTEN_FDS, LISTEN_FDNAMES",
            "a socket-activated API socket (named api, or a single unnamed one).",
        ),
        (
            "WATCHDOG_USEC, WATCHDOG_PID",
            "WatchdogSec=: WATCHDOG=1 every half period while the hypervisor answers.",
        ),
        (
            "RUNTIME_DIRECTORY",
            "where credbridge puts the sockets it makes itself (else /run/credbridge).",
        ),
        (
            "JOURNAL_STREAM",
            "when it matches stderr, log lines carry <N> priority prefixes.",
        ),
    ] {
        r.control("TP", []);
        r.text([bold(name)]);
        r.text([roman(what)]);
    }
    r.control("PP", []);
    r.text([roman(
        "The hypervisor gets the environment without NOTIFY_SOCKET, LISTEN_*, WATCHDOG_* and \
         CREDENTIALS_DIRECTORY.",
    )]);
    r.control("SH", ["EXIT STATUS"]);
    let own_failure = credbridge::EXIT_FAILURE.to_string();
    for (status, what) in [
        (
            "the hypervisor's exit code",
            "passed through; with --ready guest, the guest's EXIT_STATUS= when it announced its \
             poweroff and the hypervisor then exited 0.",
        ),
        (
            "death by the hypervisor's signal",
            "re-raised, so systemd sees the same signal.",
        ),
        (
            own_failure.as_str(),
            "credbridge's own failure: bad input (credentials, limits, hypervisor argv), nothing \
             could be started, or the start failed; also a VM that ended, or crashed three times \
             in five minutes, without the guest shutting down.",
        ),
        (
            "2",
            "usage error (unknown flag, invalid credential name, a duration above one day).",
        ),
    ] {
        r.control("TP", []);
        r.text([bold(status)]);
        r.text([roman(what)]);
    }
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("systemd.exec"),
        roman("(5) (LoadCredentialEncrypted=), "),
        bold("systemd-creds"),
        roman("(1), "),
        bold("sd_notify"),
        roman("(3), "),
        bold("systemd.system-credentials"),
        roman("(7), "),
        bold("cloud-hypervisor"),
        roman("(1), "),
        bold("qemu"),
        roman("(1)."),
    ]);
    r.control("PP", []);
    r.text([
        roman("The reference is docs/ in credbridge's source: "),
        italic("docs/cli.md"),
        roman(" (flags, exit status, logs), "),
        italic("docs/deliveries.md"),
        roman(", "),
        italic("docs/readiness.md"),
        roman(", "),
        italic("docs/limits.md"),
        roman(", "),
        italic("docs/security.md"),
        roman(", "),
        italic("docs/units.md"),
        roman(", "),
        italic("docs/nixos.md"),
        roman("."),
    ]);
    r
}
