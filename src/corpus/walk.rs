//! The folder walk: which files of a corpus folder are documents to index, and which entries are
//! skipped on the way and why.

use std::path::{Path, PathBuf};

use super::extract::{self, Kind};

/// A file that was not indexed, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// Every indexable file under `root` as (relative path, path, kind), sorted, and the entries
/// skipped on the way (symlinks out of the folder, loops, unreadable folders). Hidden folders
/// and files are not entered.
pub fn walk(
    root: &Path,
    text_extensions: &[String],
) -> (Vec<(String, PathBuf, Kind)>, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let rel_of = |p: &Path| {
        p.strip_prefix(root)
            .unwrap_or(p)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    };
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().map(rel_of).unwrap_or_default();
                skipped.push(Skipped {
                    path,
                    reason: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let path = entry.path();
        let Some(kind) = extract::kind_of(path, text_extensions) else {
            continue;
        };
        let rel = rel_of(path);
        let ft = entry.file_type();
        if ft.is_symlink() {
            match std::fs::canonicalize(path) {
                Ok(target) if !target.starts_with(root) => {
                    skipped.push(Skipped {
                        path: rel,
                        reason: "symlink to a file outside the folder (not followed)".into(),
                    });
                    continue;
                }
                Ok(target) if !target.is_file() => {
                    skipped.push(Skipped {
                        path: rel,
                        reason: "symlink to something other than a file (not followed)".into(),
                    });
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    skipped.push(Skipped {
                        path: rel,
                        reason: format!("broken or looping symlink: {e}"),
                    });
                    continue;
                }
            }
        } else if !ft.is_file() {
            skipped.push(Skipped {
                path: rel,
                reason: "not a regular file".into(),
            });
            continue;
        }
        files.push((rel, path.to_path_buf(), kind));
    }
    (files, skipped)
}
