//! The binaries the benchmark starts, built by the benchmark itself so that they are the code it
//! was built from, with its profile.

use std::path::Path;
use std::process::Command;

/// Builds the binaries the benchmark starts, with this benchmark's profile and target directory
/// (`target/release/` for `cargo bench`), where `concord_cli::process::sibling_binary` looks.
/// Returns the profile's name.
pub fn build_binaries() -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    // target/PROFILE-DIR/deps/cluster-HASH
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("this executable is not in a cargo target directory")?;
    let target_dir = profile_dir
        .parent()
        .ok_or("this executable is not in a cargo target directory")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(name) => name.to_string(),
        None => return Err("this executable is not in a cargo target directory".into()),
    };
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Err("run the benchmark through cargo: `cargo bench -p concord-tests --bench cluster`, which builds the binaries it starts".into());
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    eprintln!("building concord-coordinator and concord ({profile} profile)");
    let mut build = Command::new(cargo);
    // What cargo set for running this benchmark, not for building: build scripts that watch one of
    // these (ring watches CARGO_MANIFEST_DIR) would otherwise be rebuilt, with all that depends on them.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_") || RUN_ONLY_VARS.contains(&key.as_ref()) {
            build.env_remove(key.as_ref());
        }
    }
    let status = build
        // The whole workspace, as `cargo test --workspace` builds it: the same features as this
        // benchmark's build, so no dependency is built twice.
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--bins",
            "--profile",
            &profile,
        ])
        .arg("--manifest-path")
        .arg(&workspace)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the binaries failed ({status})"));
    }
    Ok(profile)
}

/// Variables cargo sets for the benchmark's process (besides `CARGO_PKG_*`).
const RUN_ONLY_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];
