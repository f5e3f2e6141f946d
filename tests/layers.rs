//! The layers of `src/` (docs/architecture.md): a module imports only from its own layer and
//! the layers below it, so that a change to a lower layer never needs to know who calls it.

use std::fs;
use std::path::{Path, PathBuf};

/// Top to bottom. `main.rs` sits above them all.
const LAYERS: [&str; 7] = ["commands", "lifecycle", "postgres", "pgdata", "render", "config", "pid1"];

/// Every `crate::<layer>` a source text names outside comments, with its line number.
fn named_layers(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '{').collect();
            found.push((n + 1, name));
        }
    }
    found
}

/// The violations in one file of layer `own`: upward imports, grouped `crate::{...}` imports
/// (they would hide which layers they reach), and names that are not a layer.
fn violations(own: &str, file: &str, text: &str) -> Vec<String> {
    let rank = |layer: &str| LAYERS.iter().position(|l| *l == layer);
    let Some(own_rank) = rank(own) else {
        return vec![format!("{file}: {own:?} is not a layer; put the module in one of {LAYERS:?}")];
    };
    named_layers(text)
        .into_iter()
        .filter_map(|(line, name)| match rank(&name) {
            _ if name.starts_with('{') => {
                Some(format!("{file}:{line}: `crate::{{...}}` hides the layers it reaches; one `use` per layer"))
            }
            None => Some(format!("{file}:{line}: crate::{name} is not a layer")),
            Some(target) if target < own_rank => {
                Some(format!("{file}:{line}: {own} imports crate::{name}, a layer above it"))
            }
            Some(_) => None,
        })
        .collect()
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("src/ is readable").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_its_own_layer_and_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for path in &files {
        let relative = path.strip_prefix(&src).expect("under src/");
        if relative == Path::new("main.rs") {
            continue;
        }
        let own = relative.components().next().expect("a path").as_os_str().to_string_lossy().into_owned();
        let own = own.strip_suffix(".rs").unwrap_or(&own).to_string();
        let text = fs::read_to_string(path).expect("a source file is UTF-8");
        problems.extend(violations(&own, &format!("src/{}", relative.display()), &text));
    }
    assert!(files.len() > 40, "found only {} source files under {}", files.len(), src.display());
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
}

#[test]
fn the_check_finds_an_upward_import_and_ignores_comments() {
    let text = "use crate::render::quote_json;\n// see crate::commands::run\nlet x = crate::lifecycle::start::plan;\n";
    let found = violations("postgres", "src/postgres/x.rs", text);
    assert_eq!(found, vec!["src/postgres/x.rs:3: postgres imports crate::lifecycle, a layer above it".to_string()]);
    assert_eq!(violations("pid1", "f", "use crate::{config, pid1};").len(), 1);
    assert_eq!(violations("render", "f", "use crate::health::X;").len(), 1);
    assert_eq!(violations("misc", "f", "").len(), 1);
}
