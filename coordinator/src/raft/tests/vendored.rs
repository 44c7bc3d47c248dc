//! The vendored openraft (vendor/README.md): its non-test code keeps two kinds of upstream placeholder
//! that panic, and none is reachable in Concord's build. This fails when an update or a patch adds one,
//! or makes one reachable, so that it is looked at.

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
fn the_vendored_openraft_panics_only_where_concord_never_goes() {
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
        BTreeMap::from([
            // `IntoNodes::has_nodes` and `node_ids`: deprecated defaults that nothing calls.
            ("membership/into_nodes.rs", 2),
            // `RaftNetwork::install_snapshot`'s default under the `generic-snapshot-data` feature.
            ("network/network.rs", 1),
        ]),
        "a placeholder was added or removed: say in vendor/README.md why it cannot be reached"
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
        "with that feature the default install_snapshot panics: {openraft}"
    );
}
