//! The modules form layers and every arrow points down: corpus and llm below speculative and
//! session, session below runtime, the front ends (tui, bench, simulate) above it, and the
//! commands' bodies (`cli`, which `main.rs` only parses for) on top. The speculative layer and
//! the session speak in the project's own types, never llama.cpp's (only `llm` does), and the
//! TUI reaches the engine and the documents only through the runtime. A `use` that breaks this
//! fails here.

use std::path::{Path, PathBuf};

/// Each top-level module and its layer; a module may use only modules of lower layers.
const LAYERS: &[(&str, u32)] = &[
    ("paths", 0),
    ("safe_text", 0),
    ("config", 0),
    ("llm", 1),
    ("corpus", 2),
    ("logging", 2),
    ("speculative", 3),
    ("session", 4),
    ("runtime", 5),
    ("tui", 6),
    ("server", 6),
    ("bench", 6),
    ("simulate", 6),
    ("cli", 7),
    ("fuzzing", 7),
];

/// (module, what it must not name at all) beyond the layer order.
const FORBIDDEN: &[(&str, &str)] = &[
    ("speculative", "llama_cpp_2"),
    ("session", "llama_cpp_2"),
    ("tui", "crate::llm"),
    ("tui", "crate::corpus"),
    ("tui", "crate::session"),
    ("server", "crate::llm"),
    ("server", "crate::corpus"),
    ("server", "crate::session"),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (None: lib.rs, main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let own = layer(&module).unwrap_or_else(|| panic!("{module} is in no layer: add it"));
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used == module || line[..at].ends_with("rapid_") {
                    continue;
                }
                match layer(&used) {
                    Some(l) if l < own => {}
                    _ => wrong.push(format!(
                        "{}:{}: {module} uses crate::{used}",
                        file.display(),
                        n + 1
                    )),
                }
            }
            for (m, name) in FORBIDDEN {
                if *m == module && line.contains(name) {
                    wrong.push(format!(
                        "{}:{}: {module} names {name}",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that run up or sideways:\n{}",
        wrong.join("\n")
    );
}
