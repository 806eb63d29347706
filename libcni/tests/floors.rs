//! libcni stands in floors: a module uses only modules on floors below its own. The floors
//! are the list under "libcni's floors" in docs/DESIGN.md; this test reads that list and
//! every `crate::` path in libcni's sources (comments and unit tests aside), and fails on
//! a module that reaches up or sideways, or one the list does not place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The floors as docs/DESIGN.md lists them, top first: module → height (0 at the bottom).
fn floors() -> HashMap<String, usize> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DESIGN.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("libcni's floors"))
        .expect("docs/DESIGN.md has a section \"libcni's floors\"");
    let block = section
        .split("```")
        .nth(1)
        .expect("the section holds the floors in a ``` block");
    let rows: Vec<Vec<String>> = block
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|r| !r.is_empty())
        .collect();
    let mut floor = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        for m in row {
            assert!(
                floor.insert(m.clone(), rows.len() - 1 - i).is_none(),
                "{m} is on two floors"
            );
        }
    }
    floor
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (None: the crate root and binaries).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// The modules a file's code names through `crate::` (also inside `use crate::{a, b::{c}}`
/// groups over several lines).
fn used_modules(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let names = match rest.strip_prefix('{') {
            Some(group) => top_level_items(group),
            None => vec![rest],
        };
        for n in names {
            let n = n.trim();
            let end = n
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(n.len());
            if end > 0 {
                out.push(n[..end].to_string());
            }
        }
    }
    out
}

/// The comma-separated items of a `{…}` group (`group` starts after its `{`).
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut from) = (Vec::new(), 0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[from..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    items
}

#[test]
fn no_module_uses_one_on_its_own_floor_or_above() {
    let floor = floors();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut wrong = Vec::new();
    for l in lib.lines().filter(|l| l.starts_with("pub mod ")) {
        let m = l["pub mod ".len()..].trim_end_matches(';');
        if !floor.contains_key(m) {
            wrong.push(format!("{m} is on no floor of docs/DESIGN.md"));
        }
    }
    let mut files = Vec::new();
    sources(&src, &mut files);
    for file in files {
        let Some(m) = module_of(&src, &file) else {
            continue;
        };
        let code = std::fs::read_to_string(&file).unwrap();
        // A file's unit tests (its `#[cfg(test)]` part, at its end) may use test support
        // (`arbitrary`) from any floor.
        let code = code.split("#[cfg(test)]").next().unwrap_or("");
        for used in used_modules(code) {
            let (Some(&mine), Some(&theirs)) = (floor.get(&m), floor.get(&used)) else {
                wrong.push(format!("{}: {m} or {used} is on no floor", file.display()));
                continue;
            };
            if used != m && theirs >= mine {
                wrong.push(format!(
                    "{}: {m} (floor {mine}) uses {used} (floor {theirs})",
                    file.display()
                ));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn crate_paths_are_read_in_groups_and_comments_are_not() {
    let code = "use crate::spec::{a, b};\nuse crate::{\n    net::{c, d},\n    files::x,\n};\n// crate::attachment\nlet y = crate::exec::run(); // crate::skel\n";
    assert_eq!(used_modules(code), ["spec", "net", "files", "exec"]);
}
