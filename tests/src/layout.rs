//! The crates' module graphs, read from their sources: which module names which.
//!
//! A module is one source file (`a/mod.rs` is `a`, `a/b.rs` is `a::b`). It names another by a
//! path — `crate::x::y`, `super::y`, `self::y`, or a bare `y::` for one of its own submodules —
//! in a `use` or in code, tests (`#[cfg(test)] mod tests`) excepted. Declaring a submodule
//! (`mod y;`) names nothing. The layout rule the tests hold the crates to: no module names one that
//! names it back, directly or through others, and the same for the top-level modules taken whole
//! (a folder and everything in it), so each folder of the request path can be read, tested and
//! moved without the ones that use it.
//!
//! What this reading does not see: a path through a module imported under its own name
//! (`use crate::quota; quota::memory::f()` names `quota`, not `quota::memory`), paths inside macro
//! bodies, and `super` inside an inline `mod {}` (read as the file's). The folder-level check
//! catches the first between folders; none of the three occurs in these crates today.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};

/// Module path (`pipeline::checks`, `""` for the crate root) to the modules it names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Reads every `.rs` file under `src` and returns the module graph.
pub fn module_graph(src: &Path) -> Result<Graph> {
    let mut sources = BTreeMap::new();
    collect(src, src, &mut sources)?;
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, text) in &sources {
        let named = graph.entry(module.clone()).or_default();
        for path in paths_in(&without_tests(text)) {
            if let Some(target) = resolve(module, &path, &modules)
                && &target != module
            {
                named.insert(target);
            }
        }
    }
    Ok(graph)
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root)?.with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            out.entry(parts.join("::")).or_default().push_str(&text);
        }
    }
    Ok(())
}

/// The source without its unit tests (which may use anything) and without line comments. A
/// `#[cfg(test)]` module is skipped to its closing brace (or its `;` when it is a file of its own).
fn without_tests(text: &str) -> String {
    let mut kept = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines.peek().is_some_and(|next| {
                let next = next.trim_start();
                next.starts_with("mod ")
                    || next.starts_with("pub mod ")
                    || next.starts_with("pub(crate) mod ")
            })
        {
            let mut depth = 0i32;
            for line in lines.by_ref() {
                depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
                if depth <= 0 && (line.contains('}') || line.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

/// Every path of two or more segments in `code`, as its segments; `use a::{b, c::d}` gives
/// `a::b` and `a::c::d`.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_ident = (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
            && !(i >= 2 && &bytes[i - 2..i] == b"::");
        if !starts_ident {
            i += 1;
            continue;
        }
        let (end, paths) = path_at(code, i, Vec::new());
        out.extend(paths.into_iter().filter(|p| p.len() >= 2));
        i = end.max(i + 1);
    }
    out
}

/// The path starting at `i` (after `prefix`): its end, and the paths it spells (several for a
/// `{...}` group).
fn path_at(code: &str, mut i: usize, prefix: Vec<String>) -> (usize, Vec<Vec<String>>) {
    let bytes = code.as_bytes();
    let mut segments = prefix;
    loop {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i == start {
            break;
        }
        segments.push(code[start..i].to_owned());
        if !code[i..].trim_start().starts_with("::") {
            return (i, vec![segments]);
        }
        i = skip_space(code, i) + 2;
        i = skip_space(code, i);
        if code[i..].starts_with('*') {
            // A glob names the module it opens.
            segments.push("*".to_owned());
            return (i + 1, vec![segments]);
        }
        if code[i..].starts_with('{') {
            // A group: each comma-separated member continues the prefix.
            i += 1;
            let mut paths = Vec::new();
            loop {
                while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    return (i + 1, paths);
                }
                let (end, inner) = path_at(code, i, segments.clone());
                paths.extend(inner);
                // Skip an `as alias` and anything else up to the member's end.
                i = end;
                while i < bytes.len() && bytes[i] != b',' && bytes[i] != b'}' {
                    i += 1;
                }
            }
        }
    }
    (i, vec![segments])
}

fn skip_space(code: &str, i: usize) -> usize {
    i + (code[i..].len() - code[i..].trim_start().len())
}

/// The module `path` (named in `module`) refers to: the longest known module it starts with.
fn resolve(module: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let rest = match path[0].as_str() {
        "crate" => {
            base.clear();
            &path[1..]
        }
        "self" => &path[1..],
        "super" => {
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            rest
        }
        // A bare path names a module only when it is one of this module's own submodules.
        first => {
            let child = join(&base, &[first.to_owned()]);
            if !modules.contains(&child) {
                return None;
            }
            path
        }
    };
    let mut found = None;
    for n in 0..=rest.len() {
        let candidate = join(&base, &rest[..n]);
        if modules.contains(&candidate) {
            found = Some(candidate);
        }
    }
    found
}

fn join(base: &[&str], rest: &[String]) -> String {
    base.iter()
        .map(|s| s.to_string())
        .chain(rest.iter().cloned())
        .collect::<Vec<_>>()
        .join("::")
}

/// The graph with each module replaced by its top-level module (`pipeline::checks` is
/// `pipeline`); edges inside one top-level module are dropped.
pub fn top_level(graph: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_owned();
    let mut out = Graph::new();
    for (from, targets) in graph {
        let entry = out.entry(top(from)).or_default();
        for to in targets {
            if top(to) != top(from) {
                entry.insert(top(to));
            }
        }
    }
    out
}

/// A cycle in `graph` (its modules in order, the first repeated at the end), if there is one.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap_or_default();
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_of(files: &[(&str, &str)]) -> Graph {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        }
        module_graph(dir.path()).expect("graph")
    }

    #[test]
    fn paths_are_read_from_uses_groups_and_code() {
        let g = graph_of(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
            (
                "a/mod.rs",
                "pub mod inner;\nuse crate::{b::Thing, c};\nfn f() { inner::g(); }\n",
            ),
            ("a/inner.rs", "use super::super::c::X;\n"),
            ("b.rs", "// crate::a is only mentioned in a comment\n"),
            (
                "c.rs",
                "fn f() -> crate::b::T { todo!() }\n#[cfg(test)]\nmod tests { use crate::a; }\n",
            ),
        ]);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(g["a"], set(&["a::inner", "b", "c"]));
        assert_eq!(g["a::inner"], set(&["c"]));
        assert_eq!(g["b"], set(&[]));
        assert_eq!(g["c"], set(&["b"]), "test modules do not count");
        assert_eq!(find_cycle(&g), None);
        assert_eq!(find_cycle(&top_level(&g)), None);
    }

    #[test]
    fn globs_split_paths_and_tests_in_the_middle_are_read_right() {
        let g = graph_of(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n"),
            ("a/mod.rs", "pub mod inner;\n"),
            ("a/inner.rs", "use super::*;\n"),
            (
                "b.rs",
                "#[cfg(test)]\nmod tests {\n    use crate::a;\n    fn f() {}\n}\nfn g() -> crate::\n    c::T { todo!() }\n",
            ),
            ("c.rs", "#[cfg(test)]\nmod tests;\nuse crate::d::X;\n"),
            ("d.rs", ""),
        ]);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(g["a::inner"], set(&["a"]), "a glob names its module");
        assert_eq!(
            g["b"],
            set(&["c"]),
            "a path split over lines, after a test module"
        );
        assert_eq!(g["c"], set(&["d"]), "after a test module in its own file");
    }

    #[test]
    fn a_cycle_is_found_directly_and_through_folders() {
        let g = graph_of(&[
            ("lib.rs", "pub mod config;\npub mod quota;\n"),
            (
                "config/mod.rs",
                "pub mod index;\npub mod router;\nuse router::Table;\n",
            ),
            ("config/router.rs", "use super::Entry;\n"),
            ("config/index.rs", "use crate::quota::Plan;\n"),
            ("quota/mod.rs", "pub mod memory;\n"),
            ("quota/memory.rs", "use crate::config::router::Table;\n"),
        ]);
        assert_eq!(
            find_cycle(&g),
            Some(vec![
                "config".into(),
                "config::router".into(),
                "config".into()
            ])
        );
        let folders = top_level(&g);
        assert_eq!(
            find_cycle(&folders),
            Some(vec!["config".into(), "quota".into(), "config".into()])
        );
    }

    /// The rule, held for the crates of this workspace.
    #[test]
    fn no_module_names_one_that_names_it_back() {
        let root = crate::repo_root();
        for krate in ["proxy", "operator", "crds"] {
            let graph = module_graph(&root.join(krate).join("src")).expect("reading the sources");
            assert!(graph.len() > 3, "{krate}: too few modules read: {graph:?}");
            assert_eq!(find_cycle(&graph), None, "{krate}: modules name each other");
            assert_eq!(
                find_cycle(&top_level(&graph)),
                None,
                "{krate}: top-level modules name each other"
            );
        }
    }
}
