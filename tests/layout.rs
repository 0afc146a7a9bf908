//! The layout of src/ is the architecture (#12), and this test keeps it so. It reads the
//! sources (no compiler help: plain text, paths only) and fails when
//!
//! - two modules import each other, directly or around a longer loop. Modules are compared
//!   where they meet: an import from `a::x::y` of `a::z` counts as `x -> z` among `a`'s
//!   children, and a module's imports of its own submodules (or theirs of it) are its own
//!   business, as with any `mod.rs` facade;
//! - a neutral module (anything outside `src/hypervisor/`) imports a hypervisor's own module
//!   (`hypervisor::cloud_hypervisor::*`, `hypervisor::qemu::*`): neutral code sees
//!   hypervisors only through `src/hypervisor/mod.rs`;
//! - one hypervisor's wing imports another's.
//!
//! Test code inside a module counts like the rest of it. docs/architecture.md explains the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path below the crate root: `["hypervisor", "qemu", "qmp"]`.
type ModPath = Vec<String>;

/// The folder that holds one module per hypervisor.
const WINGS_PARENT: &str = "hypervisor";

struct Source {
    module: ModPath,
    file: PathBuf,
    text: String,
    /// `main.rs` names the library `credbridge::`, everything else `crate::`.
    root: &'static str,
}

fn read_sources(src: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut module: ModPath = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            let mut root = "crate";
            match module.last().map(String::as_str) {
                Some("mod") | Some("lib") => {
                    module.pop();
                }
                Some("main") if module.len() == 1 => root = "credbridge",
                _ => {}
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.push(Source {
                module,
                file: rel.to_path_buf(),
                text,
                root,
            });
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// The text without `//` comments, so that prose naming a module is not an import.
fn code_only(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => l[..at].to_owned(),
            None => l.to_owned(),
        })
        .collect()
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand_use_tree(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(expand_use_tree)
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path the code names that starts at `crate::`/`credbridge::`, `super::` or `self::`,
/// made absolute. `use` trees are expanded first; other paths are read where they stand.
fn named_paths(source: &Source) -> Vec<ModPath> {
    let lines = code_only(&source.text);
    // Inline modules (in practice `mod tests {`) are one level deeper for `super::`.
    let mut depth_at = Vec::with_capacity(lines.len());
    let mut extra = 0;
    for l in &lines {
        let t = l.trim_start();
        if t.starts_with("mod ") && t.trim_end().ends_with('{') {
            extra += 1;
        }
        depth_at.push(extra);
    }
    let mut spans: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let t = t.strip_prefix("pub ").unwrap_or(t);
        let t = t.strip_prefix("pub(crate) ").unwrap_or(t);
        if let Some(rest) = t.strip_prefix("use ") {
            let mut stmt = rest.to_owned();
            let start = i;
            while !stmt.contains(';') && i + 1 < lines.len() {
                i += 1;
                stmt.push_str(&lines[i]);
            }
            let stmt = stmt.split(';').next().unwrap_or("");
            for p in expand_use_tree(stmt) {
                spans.push((p, depth_at[start]));
            }
        } else {
            spans.push((lines[i].clone(), depth_at[i]));
        }
        i += 1;
    }
    let mut out = Vec::new();
    for (text, depth) in spans {
        for root in [source.root, "super", "self"] {
            let pat = format!("{root}::");
            let mut from = 0;
            while let Some(at) = text[from..].find(&pat) {
                let at = from + at;
                from = at + pat.len();
                if text[..at].chars().next_back().is_some_and(is_ident_char)
                    || text[..at].ends_with("::")
                {
                    continue;
                }
                let segs: Vec<String> = text[at..]
                    .split("::")
                    .map(|s| {
                        s.chars()
                            .take_while(|&c| is_ident_char(c))
                            .collect::<String>()
                    })
                    .take_while(|s| !s.is_empty())
                    .collect();
                let mut base = match root {
                    "super" => {
                        let mut m = source.module.clone();
                        m.extend((0..depth).map(|_| "<inline>".to_owned()));
                        // `super::super::x`: one level up per `super`.
                        let ups = segs.iter().take_while(|s| *s == "super").count();
                        for _ in 0..ups {
                            m.pop();
                        }
                        m.retain(|s| s != "<inline>");
                        m.extend(segs.iter().skip(ups).cloned());
                        out.push(m);
                        continue;
                    }
                    "self" => source.module.clone(),
                    _ => Vec::new(),
                };
                base.extend(segs.into_iter().skip(1));
                out.push(base);
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// The layout's violations, one line each; empty when the layout holds.
fn check(src: &Path) -> Vec<String> {
    let sources = read_sources(src);
    assert!(!sources.is_empty(), "no sources under {}", src.display());
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let mut problems = Vec::new();
    // parent -> (child -> (child -> files that make the edge))
    type Edges = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;
    let mut graphs: BTreeMap<ModPath, Edges> = BTreeMap::new();
    for s in &sources {
        for path in named_paths(s) {
            let Some(target) = resolve(&path, &modules) else {
                continue;
            };
            let from = &s.module;
            let common = from.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == target.len() {
                continue; // a module and its own submodules
            }
            let neutral = from.first().is_none_or(|m| m != WINGS_PARENT);
            if neutral && target.len() >= 2 && target[0] == WINGS_PARENT {
                problems.push(format!(
                    "{}: neutral module {} imports {}, inside a hypervisor's wing; \
                     go through {WINGS_PARENT}/mod.rs",
                    s.file.display(),
                    show(from),
                    show(&target)
                ));
            }
            if !neutral
                && from.len() >= 2
                && target.len() >= 2
                && target[0] == WINGS_PARENT
                && from[1] != target[1]
            {
                problems.push(format!(
                    "{}: the {} wing imports {} of the {} wing",
                    s.file.display(),
                    from[1],
                    show(&target),
                    target[1]
                ));
            }
            graphs
                .entry(from[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .entry(target[common].clone())
                .or_default()
                .insert(s.file.display().to_string());
        }
    }
    for (parent, edges) in &graphs {
        for cycle in cycles(edges) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let files: Vec<&str> = edges[&w[0]][&w[1]].iter().map(String::as_str).collect();
                    format!("{} -> {} ({})", w[0], w[1], files.join(", "))
                })
                .collect();
            problems.push(format!(
                "import cycle among {}'s modules: {}",
                show(parent),
                steps.join("; ")
            ));
        }
    }
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    problems
}

/// One cycle per strongly connected component with more than one member (or a self loop),
/// as a closed walk `[a, b, .., a]`.
fn cycles(edges: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges
        .iter()
        .flat_map(|(a, to)| std::iter::once(a).chain(to.keys()))
        .collect();
    let next = |n: &String| -> Vec<String> {
        edges
            .get(n)
            .map(|to| to.keys().cloned().collect())
            .unwrap_or_default()
    };
    let reaches = |from: &String, to: &String| -> Option<Vec<String>> {
        // Breadth-first, so the reported loop is a shortest one.
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from.clone()]);
        while let Some(n) = queue.pop_front() {
            for m in next(&n) {
                if &m == to {
                    let mut walk = vec![m.clone(), n.clone()];
                    let mut at = n;
                    while let Some(p) = prev.get(&at) {
                        walk.push(p.clone());
                        at = p.clone();
                    }
                    walk.reverse();
                    return Some(walk);
                }
                if !prev.contains_key(&m) && &m != from {
                    prev.insert(m.clone(), n.clone());
                    queue.push_back(m);
                }
            }
        }
        None
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for n in nodes {
        if seen.contains(n) {
            continue;
        }
        if let Some(walk) = reaches(n, n) {
            seen.extend(walk.iter().cloned());
            out.push(walk);
        }
    }
    out
}

#[test]
fn src_has_no_import_cycles_and_neutral_modules_stay_out_of_the_wings() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = check(&src);
    assert!(
        problems.is_empty(),
        "src/ breaks the layout rule (docs/architecture.md):\n{}",
        problems.join("\n")
    );
}

/// The checker itself: a tree with each kind of violation must fail, and its clean twin pass.
#[test]
fn the_layout_check_catches_cycles_and_wing_imports() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "lib.rs",
        "pub mod plan;\npub mod supervisor;\npub mod hypervisor;\n",
    );
    write(
        "plan.rs",
        "use crate::supervisor::Outcome; // plan -> supervisor\n",
    );
    write(
        "supervisor.rs",
        "use crate::{hypervisor::Backend, plan::Plan};\n",
    );
    write(
        "hypervisor/mod.rs",
        "pub mod qemu;\npub mod crosvm;\nuse qemu::QemuBackend;\n",
    );
    write(
        "hypervisor/qemu/mod.rs",
        "pub mod qmp;\nuse super::Backend;\n",
    );
    write(
        "hypervisor/qemu/qmp.rs",
        "use super::super::crosvm::Thing;\n",
    );
    write("hypervisor/crosvm.rs", "use crate::plan::Plan;\n");
    write("main.rs", "use credbridge::hypervisor::qemu::qmp::Qmp;\n");
    let problems = check(src);
    let all = problems.join("\n");
    assert!(all.contains("import cycle among crate's modules:"), "{all}");
    assert!(all.contains("plan -> supervisor (plan.rs)"), "{all}");
    assert!(
        all.contains("neutral module main imports hypervisor::qemu::qmp"),
        "{all}"
    );
    assert!(
        all.contains("the qemu wing imports hypervisor::crosvm of the crosvm wing"),
        "{all}"
    );
    assert_eq!(problems.len(), 3, "{all}");

    // Comments are not imports, and a facade may use its own submodules and they it.
    write("plan.rs", "// see crate::supervisor::Outcome\n");
    write(
        "hypervisor/qemu/qmp.rs",
        "use super::QemuArgv;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
    );
    write("main.rs", "use credbridge::hypervisor::Target;\n");
    let problems = check(src);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
