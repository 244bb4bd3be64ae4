//! The crate's shape: no dependency cycle between its top-level modules, no source file
//! over 800 lines, no trait of more than 15 methods. A module depends on another when
//! its source names `crate::<other>` (comments aside); a cycle is reported with the
//! files that close it.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found
}

/// Top-level module name → its files (`src/x.rs`, or everything under `src/x/`).
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(SRC).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let files = if path.is_dir() {
            sources(&path)
        } else {
            vec![path]
        };
        modules.entry(name).or_insert_with(Vec::new).extend(files);
    }
    modules
}

/// The module names a piece of source reaches through `crate::`, with `crate::{a, b}`
/// groups opened; line comments (doc comments included) are left out.
fn reached(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for item in group.split(',') {
                names.insert(ident(item.trim()));
            }
        } else {
            names.insert(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// Edges `from → to`, each with the first file of `from` that names `to`.
fn graph() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let modules = modules();
    let mut edges: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for (name, files) in &modules {
        let out = edges.entry(name.clone()).or_default();
        for file in files {
            let source = std::fs::read_to_string(file).unwrap();
            for to in reached(&source) {
                if &to != name && modules.contains_key(&to) {
                    out.entry(to).or_insert_with(|| file.clone());
                }
            }
        }
    }
    edges
}

/// A path from `from` back to `to`, if there is one.
fn path_back(
    edges: &BTreeMap<String, BTreeMap<String, PathBuf>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_owned()]);
    }
    if !seen.insert(from.to_owned()) {
        return None;
    }
    for next in edges.get(from).into_iter().flat_map(|e| e.keys()) {
        if let Some(mut rest) = path_back(edges, next, to, seen) {
            rest.insert(0, from.to_owned());
            return Some(rest);
        }
    }
    None
}

#[test]
fn top_level_modules_have_no_dependency_cycle() {
    let edges = graph();
    assert!(edges.len() > 10, "the source tree was found: {edges:?}");
    let mut cycles = Vec::new();
    for (from, outs) in &edges {
        for (to, file) in outs {
            if let Some(back) = path_back(&edges, to, from, &mut BTreeSet::new()) {
                cycles.push(format!(
                    "{from} → {} (closed by {})",
                    back.join(" → "),
                    file.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                        .unwrap_or(file)
                        .display()
                ));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "dependency cycles:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_check_sees_paths_groups_and_skips_comments() {
    let source = "use crate::store::Store;\nuse crate::{app, fhir::set};\n// crate::cli\nlet x = crate::audit::verify(); /// crate::http\n";
    let found: Vec<String> = reached(source).into_iter().collect();
    assert_eq!(found, ["app", "audit", "fhir", "store"]);
}

#[test]
fn no_source_file_is_over_800_lines() {
    let long: Vec<String> = sources(Path::new(SRC))
        .into_iter()
        .filter_map(|file| {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            (lines > 800).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these files: {long:?}");
}

/// Each `trait` in `source` with the number of methods it declares.
fn traits(source: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line
            .strip_prefix("pub trait ")
            .or_else(|| line.strip_prefix("trait "))
        else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The trait's body ends at the first closing brace in the first column.
        let methods = lines
            .by_ref()
            .take_while(|l| !l.starts_with('}'))
            .filter(|l| {
                let l = l.trim_start();
                l.starts_with("fn ") || l.starts_with("async fn ")
            })
            .count();
        found.push((name, methods));
    }
    found
}

#[test]
fn no_trait_has_more_than_15_methods() {
    let mut all = Vec::new();
    for file in sources(Path::new(SRC)) {
        all.extend(traits(&std::fs::read_to_string(&file).unwrap()));
    }
    assert!(
        all.iter().any(|(name, n)| name == "AuditStore" && *n > 5),
        "the store's traits were found: {all:?}"
    );
    let big: Vec<_> = all.iter().filter(|(_, n)| *n > 15).collect();
    assert!(big.is_empty(), "split these traits: {big:?}");
}
