//! What the repository itself must hold: no unresolved merge conflicts, no binaries or
//! environments in git, and committed artifacts without absolute paths.

use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Files tracked by git. The integration tests are not packaged (Cargo.toml excludes
/// `tests/it`), so they always run in a checkout: no git is a failure, not a skip.
fn tracked_files() -> Option<Vec<String>> {
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(REPO).output().expect("git runs");
    assert!(out.status.success(), "the integration tests run in a git checkout: {}", String::from_utf8_lossy(&out.stderr));
    let list = String::from_utf8(out.stdout).expect("git ls-files prints UTF-8 paths");
    let files: Vec<String> = list.split('\0').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    assert!(files.len() > 100, "git ls-files listed only {} files", files.len());
    Some(files)
}

fn text(path: &str) -> Option<String> {
    std::fs::read(Path::new(REPO).join(path)).ok().and_then(|b| String::from_utf8(b).ok())
}

#[test]
fn no_file_holds_merge_conflict_markers() {
    let Some(files) = tracked_files() else { return };
    let mut bad = Vec::new();
    for f in &files {
        let Some(t) = text(f) else { continue };
        for (i, line) in t.lines().enumerate() {
            if line.starts_with("<<<<<<< ") || line.starts_with(">>>>>>> ") {
                bad.push(format!("{f}:{}", i + 1));
            }
        }
    }
    assert!(bad.is_empty(), "merge conflict markers at {bad:?}");
}

#[test]
fn no_plugins_environments_or_build_output_in_git() {
    let Some(files) = tracked_files() else { return };
    let bad: Vec<_> = files
        .iter()
        .filter(|f| {
            f.ends_with(".so")
                || f.contains(".so.")
                || f.starts_with(".venv")
                || f.starts_with("target/")
                || f.contains("/target/")
                || f.contains("__pycache__")
        })
        .collect();
    assert!(bad.is_empty(), "files that don't belong in git: {bad:?}");
}

#[test]
fn committed_artifacts_carry_no_absolute_paths() {
    let Some(files) = tracked_files() else { return };
    let needles: [&[u8]; 4] = [b"/home/", b"/work/", b"/tmp/", b"/root/"];
    let mut bad = Vec::new();
    for f in files.iter().filter(|f| f.starts_with("hlo/") || f.starts_with("tests/fixtures/")) {
        let Ok(bytes) = std::fs::read(Path::new(REPO).join(f)) else { continue };
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n) {
                bad.push(format!("{f}: {}", String::from_utf8_lossy(n)));
            }
        }
    }
    assert!(bad.is_empty(), "absolute paths in committed artifacts: {bad:?}");
}

/// The library's source files as modules: (module path, file), e.g. (`crate::pjrt::client`,
/// `src/pjrt/client.rs`); `#[path]` modules included.
fn lib_modules() -> Vec<(String, std::path::PathBuf)> {
    fn walk(dir: &Path, module: &str, out: &mut Vec<(String, std::path::PathBuf)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if module == "crate" && name == "bin" {
                    continue;
                }
                walk(&p, &format!("{module}::{name}"), out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let m = match name.as_str() {
                    "lib" if module == "crate" => module.to_string(),
                    "mod" => module.to_string(),
                    _ => format!("{module}::{name}"),
                };
                out.push((m, p));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(REPO).join("src"), "crate", &mut out);
    // `#[path = "file.rs"] mod name;` makes `file.rs` the module `name` of the declaring file.
    let mut renamed = Vec::new();
    for (m, f) in &out {
        let src = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = src.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let Some(rest) = l.trim().strip_prefix("#[path = \"") else { continue };
            let file = rest.split('"').next().unwrap();
            let decl = lines[i + 1..].iter().find(|l| !l.trim().starts_with("#[")).unwrap();
            let name = decl.split("mod ").nth(1).unwrap().trim_end_matches(';').trim();
            renamed.push((f.parent().unwrap().join(file), format!("{m}::{name}")));
        }
    }
    for (file, module) in renamed {
        let entry = out.iter_mut().find(|(_, f)| *f == file).expect("a #[path] file under src/");
        entry.0 = module;
    }
    out
}

/// `src` without comments (line and block comments; strings are left alone, which is good
/// enough for paths in code).
fn strip_comments(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Every path the code names from `crate::` or `super::`, made absolute from `module`,
/// with `use` groups (`a::{b, c::{d}}`) expanded; and the facade re-exports (`pub use`).
fn paths_in(code: &str, module: &str) -> Vec<(Vec<String>, bool)> {
    fn ident_char(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }
    /// Expands a path that may end in a `{...}` group; `s` starts right after the root.
    fn expand(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) -> usize {
        let mut segs = prefix.to_vec();
        let mut i = 0;
        let b = s.as_bytes();
        loop {
            let start = i;
            while i < s.len() && ident_char(s[i..].chars().next().unwrap()) {
                i += s[i..].chars().next().unwrap().len_utf8();
            }
            if i > start {
                segs.push(s[start..i].to_string());
            } else if s[i..].starts_with('*') {
                segs.push("*".to_string());
                out.push(segs);
                return i + 1;
            }
            if s[i..].starts_with("::{") {
                i += 3;
                loop {
                    while i < s.len() && (b[i] as char).is_whitespace() {
                        i += 1;
                    }
                    if i >= s.len() || b[i] == b'}' {
                        return i + 1;
                    }
                    i += expand(&segs, &s[i..], out);
                    while i < s.len() && b[i] != b',' && b[i] != b'}' {
                        i += 1;
                    }
                    if i < s.len() && b[i] == b',' {
                        i += 1;
                    }
                }
            } else if s[i..].starts_with("::") {
                i += 2;
            } else {
                out.push(segs);
                return i;
            }
        }
    }
    let base: Vec<String> = module.split("::").map(str::to_owned).collect();
    let mut found = Vec::new();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let prev = code[..at].chars().next_back();
        let boundary = !prev.is_some_and(|c| ident_char(c) || c == '$' || c == ':');
        let (root, skip) = if boundary && rest.starts_with("crate::") {
            (vec!["crate".to_string()], 7)
        } else if boundary && rest.starts_with("super::") {
            let mut up = base.clone();
            let mut s = 0;
            while rest[s..].starts_with("super::") {
                up.pop();
                s += 7;
            }
            (up, s)
        } else {
            at += rest.chars().next().unwrap().len_utf8();
            continue;
        };
        let line_start = code[..at].rfind('\n').map_or(0, |i| i + 1);
        let statement = code[line_start..at].trim_start();
        let reexport = statement.starts_with("pub use") || statement.starts_with("pub(crate) use");
        let mut paths = Vec::new();
        let used = expand(&root, &rest[skip..], &mut paths);
        found.extend(paths.into_iter().map(|p| (p, reexport)));
        at += skip + used.max(1);
    }
    found
}

#[test]
fn no_two_source_files_depend_on_each_other() {
    use std::collections::{BTreeMap, BTreeSet};
    let modules = lib_modules();
    let files: BTreeMap<String, String> = modules
        .iter()
        .map(|(m, f)| (m.clone(), f.strip_prefix(REPO).unwrap().display().to_string()))
        .collect();
    let is_facade = |m: &str| files[m].ends_with("mod.rs") || files[m].ends_with("lib.rs");
    // A facade's re-exports: (facade, name) -> the path it re-exports. Relative `pub use
    // child::X` lines are read here too.
    let mut reexports: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut code_of = BTreeMap::new();
    for (m, f) in &modules {
        let code = strip_comments(&std::fs::read_to_string(f).unwrap());
        if is_facade(m) {
            for line in code.lines() {
                let line = line.trim();
                let Some(rest) = line.strip_prefix("pub use ").or_else(|| line.strip_prefix("pub(crate) use ")) else { continue };
                if rest.starts_with("crate::") || rest.starts_with("super::") {
                    continue; // read by paths_in
                }
                let rel = rest.trim_end_matches(';');
                let paths: Vec<Vec<String>> = paths_in(&format!("crate::{rel}"), "crate").into_iter().map(|(p, _)| p).collect();
                for p in paths {
                    let mut abs: Vec<String> = m.split("::").map(str::to_owned).collect();
                    abs.extend(p.into_iter().skip(1));
                    let name = abs.last().unwrap().clone();
                    reexports.insert((m.clone(), name), abs);
                }
            }
        }
        code_of.insert(m.clone(), code);
    }
    // Resolves a path to the file module that defines what it names.
    let resolve = |path: &[String]| -> Option<String> {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let module = (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| files.contains_key(m))?;
            let depth = module.split("::").count();
            match path.get(depth) {
                Some(next) if is_facade(&module) => match reexports.get(&(module.clone(), next.clone())) {
                    Some(target) => {
                        let mut t = target.clone();
                        t.extend(path[depth + 1..].iter().cloned());
                        path = t;
                    }
                    None => return Some(module),
                },
                _ => return Some(module),
            }
        }
        None
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, code) in &code_of {
        for (path, reexport) in paths_in(code, m) {
            if path.last().is_some_and(|s| s == "*") {
                continue; // `use super::*`: in a test module, a glob of its own file
            }
            if reexport && is_facade(m) {
                continue; // a facade's re-export is not a dependency of the facade
            }
            if let Some(target) = resolve(&path) {
                if &target != m {
                    edges.entry(files[m].clone()).or_default().insert(files[&target].clone());
                }
            }
        }
    }
    assert!(edges.get("src/layer/computation.rs").is_some_and(|e| !e.is_empty()), "the parser finds no edges: {edges:?}");
    // Every cycle, by depth-first search from each file.
    let mut cycles = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    let min = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap();
                    cycle.rotate_left(min);
                    cycles.insert(cycle);
                } else if !path.contains(next) && next > start {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    let shown: Vec<String> = cycles.iter().map(|c| format!("{} -> {}", c.join(" -> "), c[0])).collect();
    assert!(shown.is_empty(), "files that depend on each other (make each arrow point one way):\n{}", shown.join("\n"));
}
