//! The examples in README.md and docs/*.md against what the code accepts (#12). Four checks:
//!
//! 1. Command lines. Every `credbridge` invocation in a fenced block parses with the real
//!    command line (`credbridge::cli::Cli::try_parse_from`): in ```sh, ```console, ```bash and
//!    ```shell blocks wherever the command is one of a line's commands (the first word, or the
//!    first after `;`, `&&`, `||`, `|`, `sudo`, `exec`, `env` or a `VAR=value`; console blocks:
//!    only lines after a `$ ` or `# ` prompt); in unlabelled ``` blocks (excerpts) on lines that
//!    start with the command; and every `ExecStart=` of an ```ini block. ```text blocks are
//!    program output and are not read. The command is the word
//!    `credbridge` or a path ending in `/credbridge`; its arguments run to the end of the
//!    logical line (`\` continues it) or to a shell operator (`;`, `&&`, `||`, `|`, a
//!    redirection). Placeholders, the one rule: a `$NAME` or `${NAME}` (a shell or systemd
//!    variable, e.g. `--vsock-cid ${VSOCK_CID}`) is replaced by `1`. Nothing else is skipped:
//!    `...` for elided hypervisor arguments is fine after `--`, and refused before it.
//! 2. Unit examples. Every ```ini block follows a marker line saying what it is:
//!    `<!-- excerpt: units/FILE -->`: its lines are in FILE, in order, with nothing between
//!    them but FILE's comment and blank lines (a verbatim excerpt, comments left out);
//!    `<!-- verify: NAME.service -->`: it is written as NAME.service into a throw-away root
//!    made by tests/units/root.sh and `systemd-analyze verify` must print nothing, as
//!    tests/units/verify.sh does for units/. A block without a marker fails.
//! 3. Links. Every relative link of README.md and docs/*.md names a file or directory that
//!    exists, and every `#anchor` a heading of the linked Markdown file (GitHub's slugs).
//! 4. Source files. Every `src/...rs`, `tests/...rs` or `tests/...sh` the prose names exists.
//!
//! The NixOS examples are checked by tests/nixos/check.sh (step 6).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and docs/*.md, relative to the repository.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(repo()).unwrap().to_path_buf())
        .collect();
    docs.sort();
    docs.insert(0, PathBuf::from("README.md"));
    docs
}

fn read(rel: &Path) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.display()))
}

/// Every problem a check found, and a floor under how many things it checked: fewer means
/// the extraction, not the docs, went wrong.
fn assert_clean(bad: &[String], checked: usize, at_least: usize, what: &str) {
    assert!(bad.is_empty(), "{what} that fail:\n{}", bad.join("\n\n"));
    assert!(
        checked >= at_least,
        "only {checked} {what} found, expected at least {at_least}"
    );
}

struct Block {
    lang: String,
    /// 1-based line of the opening fence.
    line: usize,
    lines: Vec<String>,
    /// The last non-blank line before the fence.
    before: String,
}

/// The fenced blocks of a Markdown text (fences may be indented, as in list items).
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Block)> = None;
    let mut before = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.take() {
            None => {
                if let Some(lang) = trimmed.strip_prefix("```") {
                    open = Some((
                        indent,
                        Block {
                            lang: lang.trim().to_owned(),
                            line: i + 1,
                            lines: Vec::new(),
                            before: before.clone(),
                        },
                    ));
                } else if !trimmed.is_empty() {
                    before = trimmed.to_owned();
                }
            }
            Some((ind, mut b)) => {
                if trimmed == "```" {
                    out.push(b);
                    before.clear();
                } else {
                    b.lines.push(line.get(ind..).unwrap_or(trimmed).to_owned());
                    open = Some((ind, b));
                }
            }
        }
    }
    assert!(open.is_none(), "unclosed fence");
    out
}

/// Lines joined where they end in `\`.
fn logical_lines(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for l in lines {
        match l.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(l);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Shell words: quotes, backslashes and comments as sh reads them; operators as own words.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
            }
            '#' if cur.is_none() => break,
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).extend(chars.next()),
            ';' | '&' | '|' | '<' | '>' => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
                let mut op = c.to_string();
                while let Some(&n) = chars.peek() {
                    if matches!(n, '&' | '|' | '>' | '<') {
                        op.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(op);
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(cur);
    out
}

fn is_operator(w: &str) -> bool {
    w.chars().all(|c| matches!(c, ';' | '&' | '|' | '<' | '>')) || w.ends_with('>')
}

fn is_credbridge(w: &str) -> bool {
    w == "credbridge" || w.ends_with("/credbridge")
}

/// The one placeholder rule: `$NAME` and `${NAME}` become `1`.
fn substitute(w: &str) -> String {
    let mut out = String::new();
    let mut rest = w;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let (name_len, skip) = if let Some(t) = tail.strip_prefix('{') {
            let end = t.find('}').expect("unclosed ${");
            (end, end + 2)
        } else {
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            (end, end)
        };
        assert!(name_len > 0, "a lone $ in {w:?}");
        out.push('1');
        rest = &tail[skip..];
    }
    out.push_str(rest);
    out
}

/// A command line found in a document, and where.
struct Found {
    place: String,
    argv: Vec<String>,
}

/// The credbridge invocation in `ws`, if any: from the command word to an operator.
/// `anywhere`: the command may be any command of the line (sh blocks: the first word, or the
/// first after an operator, `sudo`, `exec`, `env` or a `VAR=value`); else only the first word.
fn invocation(ws: &[String], anywhere: bool) -> Option<Vec<String>> {
    let mut start = None;
    let mut command_position = true;
    for (i, w) in ws.iter().enumerate() {
        if is_operator(w) {
            command_position = true;
        } else if command_position && is_credbridge(w) {
            start = Some(i);
            break;
        } else if command_position
            && (matches!(w.as_str(), "sudo" | "exec" | "env" | "time" | "nohup")
                || (w.contains('=') && !w.starts_with('-')))
        {
        } else {
            command_position = false;
        }
        if !anywhere && start.is_none() && i == 0 {
            return None;
        }
    }
    let argv = ws[start?..]
        .iter()
        .take_while(|w| !is_operator(w))
        .map(|w| substitute(w))
        .collect();
    Some(argv)
}

fn command_lines() -> Vec<Found> {
    let mut out = Vec::new();
    for doc in documents() {
        for b in blocks(&read(&doc)) {
            let place =
                |n: usize| format!("{}:{} (line {} of the block)", doc.display(), b.line, n + 1);
            for (n, line) in logical_lines(&b.lines).iter().enumerate() {
                let found = match b.lang.as_str() {
                    "sh" | "bash" | "shell" => invocation(&words(line), true),
                    "console" => line
                        .strip_prefix("$ ")
                        .or_else(|| line.strip_prefix("# "))
                        .and_then(|cmd| invocation(&words(cmd), true)),
                    "" => invocation(&words(line), false),
                    "ini" => line
                        .strip_prefix("ExecStart=")
                        .map(|v| v.trim_start_matches(['-', '@', ':', '+', '!']))
                        .and_then(|v| invocation(&words(v), false)),
                    _ => None,
                };
                if let Some(argv) = found {
                    out.push(Found {
                        place: place(n),
                        argv,
                    });
                }
            }
        }
    }
    out
}

#[test]
fn every_credbridge_command_line_in_the_docs_parses() {
    let found = command_lines();
    let mut bad = Vec::new();
    for f in &found {
        if let Err(e) = credbridge::cli::Cli::try_parse_from(&f.argv) {
            bad.push(format!("{}: {:?}\n{}", f.place, f.argv, e.render()));
        }
    }
    for f in &found {
        eprintln!("checked {}: {}", f.place, f.argv.join(" "));
    }
    // The extraction itself: the README's unit, docs/units.md's ExecStart, docs/cli.md's
    // render examples at least.
    assert_clean(&bad, found.len(), 4, "command lines");
}

/// The lines of `file` that are neither comments nor blank.
fn unit_lines(file: &str) -> Vec<(usize, &str)> {
    file.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim();
            !(t.is_empty() || t.starts_with('#') || t.starts_with(';'))
        })
        .collect()
}

/// `block` is in `file`, in order, with only comments and blank lines between its lines.
fn is_excerpt(block: &[String], file: &str) -> bool {
    let body: Vec<&String> = block.iter().filter(|l| !l.trim().is_empty()).collect();
    let lines = unit_lines(file);
    lines
        .windows(body.len().max(1))
        .any(|w| !body.is_empty() && w.iter().zip(&body).all(|((_, a), b)| *a == b.as_str()))
}

fn verify_unit(name: &str, text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let status = Command::new("bash")
        .arg("-c")
        .arg(r#"set -e; binary=/bin/true; . "$1/tests/units/root.sh"; new_root "$2""#)
        .arg("bash")
        .arg(repo())
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success(), "tests/units/root.sh failed");
    std::fs::write(root.join("etc/systemd/system").join(name), text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(name)
        .output()
        .expect("systemd-analyze not found (Debian package systemd; tests/run.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!(
            "systemd-analyze verify {name} ({}):\n{said}",
            out.status
        ))
    }
}

#[test]
fn every_unit_example_is_an_excerpt_of_units_or_verifies() {
    let mut bad = Vec::new();
    let mut seen = 0;
    for doc in documents() {
        for b in blocks(&read(&doc)).into_iter().filter(|b| b.lang == "ini") {
            seen += 1;
            let place = format!("{}:{}", doc.display(), b.line);
            let marker = b
                .before
                .strip_prefix("<!-- ")
                .and_then(|m| m.strip_suffix(" -->"))
                .and_then(|m| m.split_once(": "));
            match marker {
                Some(("excerpt", file)) => {
                    let Ok(text) = std::fs::read_to_string(repo().join(file)) else {
                        bad.push(format!("{place}: excerpt of {file}, which does not exist"));
                        continue;
                    };
                    if !file.starts_with("units/") {
                        bad.push(format!(
                            "{place}: excerpt of {file}, not of a file in units/"
                        ));
                    } else if !is_excerpt(&b.lines, &text) {
                        bad.push(format!(
                            "{place}: not a verbatim excerpt of {file}:\n{}",
                            b.lines.join("\n")
                        ));
                    }
                }
                Some(("verify", unit)) => {
                    if let Err(e) = verify_unit(unit, &(b.lines.join("\n") + "\n")) {
                        bad.push(format!("{place}: {e}"));
                    }
                }
                _ => bad.push(format!(
                    "{place}: an ```ini block needs `<!-- excerpt: units/FILE -->` or \
                     `<!-- verify: NAME.service -->` on the line before it, got {:?}",
                    b.before
                )),
            }
        }
    }
    assert_clean(&bad, seen, 2, "ini blocks");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let s = slug(&line[hashes..]);
            let mut n = 0;
            let mut a = s.clone();
            while !out.insert(a.clone()) {
                n += 1;
                a = format!("{s}-{n}");
            }
        }
    }
    out
}

/// The text outside fenced blocks and inline code spans.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            out.push('\n');
            continue;
        }
        if !fence {
            // A code span opens with a run of backticks and closes with a run as long.
            let chars: Vec<char> = line.chars().collect();
            let mut open: Option<usize> = None;
            let mut i = 0;
            while i < chars.len() {
                if chars[i] == '`' {
                    let run = chars[i..].iter().take_while(|&&c| c == '`').count();
                    open = match open {
                        None => Some(run),
                        Some(n) if n == run => None,
                        o => o,
                    };
                    i += run;
                    continue;
                }
                if open.is_none() {
                    out.push(chars[i]);
                }
                i += 1;
            }
        }
        out.push('\n');
    }
    out
}

/// Link targets: `[text](target)` (text may span lines) and `[label]: target`.
fn link_targets(text: &str) -> Vec<String> {
    let p = prose(text);
    let mut out = Vec::new();
    let mut rest = p.as_str();
    while let Some(i) = rest.find("](") {
        let tail = &rest[i + 2..];
        let end = tail.find(')').unwrap_or(tail.len());
        out.push(tail[..end].trim().to_owned());
        rest = &tail[end..];
    }
    for line in p.lines() {
        let t = line.trim_start();
        if let Some(close) = t.strip_prefix('[').and_then(|r| r.find("]: ")) {
            out.push(t[close + 4..].trim().to_owned());
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut bad = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = read(&doc);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(path)
            };
            let full = repo().join(&file);
            if !full.exists() {
                bad.push(format!(
                    "{}: link to {target}: {} does not exist",
                    doc.display(),
                    file.display()
                ));
                continue;
            }
            if let Some(a) = anchor {
                let ok = file.extension().is_some_and(|e| e == "md")
                    && anchors(&std::fs::read_to_string(&full).unwrap()).contains(a);
                if !ok {
                    bad.push(format!(
                        "{}: link to {target}: no heading #{a} in {}",
                        doc.display(),
                        file.display()
                    ));
                }
            }
        }
    }
    assert_clean(&bad, checked, 20, "relative links");
}

#[test]
fn the_extractors_see_what_they_should() {
    assert_eq!(
        slug("Channels: SMBIOS and fw_cfg"),
        "channels-smbios-and-fw_cfg"
    );
    assert_eq!(slug("NixOS and microvm.nix"), "nixos-and-microvmnix");
    assert_eq!(
        slug("A hand-written VM: `credbridge-example@.service` and `.socket`"),
        "a-hand-written-vm-credbridge-exampleservice-and-socket"
    );
    assert_eq!(
        words(r#"credbridge run --cmdline "a b" 'c d' x\ y # comment"#),
        ["credbridge", "run", "--cmdline", "a b", "c d", "x y"]
    );
    assert_eq!(
        words("a && credbridge render -- x > out"),
        ["a", "&&", "credbridge", "render", "--", "x", ">", "out"]
    );
    assert_eq!(
        invocation(
            &words("sudo /usr/local/bin/credbridge run -- ch | tee log"),
            true
        )
        .unwrap(),
        ["/usr/local/bin/credbridge", "run", "--", "ch"]
    );
    assert_eq!(invocation(&words("credbridge[171]: started"), false), None);
    assert_eq!(
        invocation(
            &words("useradd --home-dir /var/lib/credbridge credbridge"),
            true
        ),
        None
    );
    assert_eq!(invocation(&words("x credbridge run"), false), None);
    assert_eq!(
        invocation(&words("cd /tmp; FOO=1 exec credbridge render -- ch"), true).unwrap(),
        ["credbridge", "render", "--", "ch"]
    );
    assert_eq!(substitute("${VSOCK_CID}"), "1");
    assert_eq!(substitute("size=$MEM,x"), "size=1,x");
    let b = blocks(
        "x\n<!-- m -->\n  ```ini\n  [Service]\n  ExecStart=/bin/credbridge run \\\n      -- ch\n  ```\n",
    );
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].lang.as_str(), b[0].before.as_str(), b[0].line),
        ("ini", "<!-- m -->", 3)
    );
    assert_eq!(
        logical_lines(&b[0].lines)[1],
        "ExecStart=/bin/credbridge run      -- ch"
    );
    let unit = "[Socket]\n# c\nA=1\n\nB=2\n[Install]\n";
    assert!(is_excerpt(
        &["[Socket]".into(), "A=1".into(), "B=2".into()],
        unit
    ));
    assert!(!is_excerpt(&["[Socket]".into(), "B=2".into()], unit));
    assert_eq!(
        link_targets(
            "[a\nb](x.md#y) `[no](z)`\n[c]: d.md\n```\n[e](f)\n```\n`` a ` [no](z) `` [g](h)\n"
        ),
        ["x.md#y", "h", "d.md"]
    );
}

/// Paths into this repository's source that the prose names: `src/...rs`, `tests/...rs`,
/// `tests/...sh`. Other projects' paths (systemd's `src/core/...c`, cloud-hypervisor's
/// `vmm/src/...rs`) are left out by the extension and by the rule that the path starts a word.
fn source_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for start in ["src/", "tests/"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || "/_-.".contains(c)) {
                continue;
            }
            let path: String = text[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || "/_-.".contains(*c))
                .collect();
            let path = path.trim_end_matches('.').to_string();
            // `src/...rs` is how the prose names the pattern itself.
            if (path.ends_with(".rs") || path.ends_with(".sh")) && !path.contains("...") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn every_source_file_the_docs_name_exists() {
    let mut bad = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        for path in source_paths(&read(&doc)) {
            checked += 1;
            if !repo().join(&path).exists() {
                bad.push(format!(
                    "{}: names {path}, which does not exist",
                    doc.display()
                ));
            }
        }
    }
    assert_clean(&bad, checked, 10, "source paths");
}

#[test]
fn source_paths_are_this_repositorys_only() {
    let text = "see src/notify.rs, systemd's src/core/kmod-setup.c and vmm/src/config.rs; \
                tests/e2e/lib.sh. Any src/...rs.";
    assert_eq!(source_paths(text), ["src/notify.rs", "tests/e2e/lib.sh"]);
}
