//! The vendored openraft (vendor/README.md): the patch took out upstream's placeholders that panic
//! (`todo!`, `unimplemented!`) from its non-test code. This fails when an update or a patch brings one
//! back, so that it is looked at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn vendored_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/openraft/src")
}

/// Source files outside tests, each cut before an inline `#[cfg(test)] mod`.
fn non_test_sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "tests" && name != "testing" {
                non_test_sources(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            let text = std::fs::read_to_string(&path).unwrap();
            let cut = text.find("#[cfg(test)]\nmod ").unwrap_or(text.len());
            let relative = path.strip_prefix(vendored_src()).unwrap();
            out.push((relative.display().to_string(), text[..cut].to_string()));
        }
    }
}

#[test]
fn the_vendored_openraft_has_no_panicking_placeholders() {
    let mut sources = Vec::new();
    non_test_sources(&vendored_src(), &mut sources);
    assert!(sources.len() > 100, "the vendored sources are there");
    let placeholders: BTreeMap<&str, usize> = sources
        .iter()
        .map(|(path, text)| {
            let n = text.matches("todo!(").count() + text.matches("unimplemented!(").count();
            (path.as_str(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        placeholders,
        BTreeMap::new(),
        "a placeholder came back: replace it in vendor/openraft.patch, or say in vendor/README.md why \
         it cannot be reached"
    );
    let workspace =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .unwrap();
    let openraft = workspace
        .lines()
        .find(|l| l.starts_with("openraft = "))
        .unwrap();
    assert!(
        !openraft.contains("generic-snapshot-data"),
        "that feature's snapshot path is not what Concord uses or tests: {openraft}"
    );
}
