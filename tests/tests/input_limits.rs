//! Files given to `concord` and `concord-initializer` are read with a size cap and must be regular
//! files (issue 9.13): `/dev/zero` (through a symlink), a FIFO nobody writes to, or an oversized file
//! get a clear error at once instead of exhausting memory or hanging the command.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use concord_cli::process::sibling_binary;
use concord_tests::{Env, describe};

/// Generous on a loaded machine; a hang or a read of /dev/zero never finishes at all.
const QUICKLY: Duration = Duration::from_secs(10);

/// Runs `program ARGS` in the deployment directory; kills it and fails if it is not done in time.
fn run_quickly(env: &Env, program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(sibling_binary(program))
        .args(args)
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > QUICKLY {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{program} {args:?} still ran after {QUICKLY:?} (killed): {}",
                describe(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn refused_with(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(what),
        "expected {what:?}: {}",
        describe(out)
    );
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(ok.success(), "mkfifo {}", path.display());
}

#[test]
fn t913_dev_zero_and_fifos_as_inputs_fail_fast_and_clearly() {
    let env = Env::new();
    std::os::unix::fs::symlink("/dev/zero", env.path("zero.json")).unwrap();
    mkfifo(&env.path("fifo.json"));
    let unreachable = "127.0.0.1:1";

    for input in ["zero.json", "fifo.json"] {
        let kind = if input == "zero.json" {
            "a device"
        } else {
            "a FIFO"
        };
        let expected = format!("{input} is not a regular file ({kind})");
        // --manifest of set and verify.
        for cmd in ["set", "verify"] {
            let out = run_quickly(
                &env,
                "concord",
                &[
                    cmd,
                    "-m",
                    input,
                    "-c",
                    unreachable,
                    "--insecure-simulated-attestation",
                ],
            );
            refused_with(&out, &expected);
        }
        // --share and --key of recover.
        let out = run_quickly(
            &env,
            "concord",
            &[
                "recover",
                "--share",
                input,
                "--key",
                "share-owner-0.key",
                "-m",
                "manifest-v1.json",
                "-c",
                unreachable,
                "--insecure-simulated-attestation",
                "--accept-unverified-latest",
            ],
        );
        refused_with(&out, &expected);
        std::fs::create_dir_all(env.path("shares")).unwrap();
        std::fs::write(
            env.path("shares/any.json"),
            format!(
                r#"{{"format":"concord-seed-share-v1","owner_public_key":"{}","encapsulated_key":"00","ciphertext":"00"}}"#,
                "00".repeat(32)
            ),
        )
        .unwrap();
        let out = run_quickly(
            &env,
            "concord",
            &[
                "recover",
                "--share",
                "shares/any.json",
                "--key",
                input,
                "-m",
                "manifest-v1.json",
                "-c",
                unreachable,
                "--insecure-simulated-attestation",
                "--accept-unverified-latest",
            ],
        );
        refused_with(&out, &expected);
        // An audit bundle, an owner key.
        let out = run_quickly(&env, "concord", &["history", "audit", input]);
        refused_with(&out, &expected);
        let out = run_quickly(
            &env,
            "concord",
            &[
                "set",
                "-m",
                "manifest-v2.json",
                "--owner-key",
                input,
                "-c",
                unreachable,
                "--insecure-simulated-attestation",
            ],
        );
        refused_with(&out, &expected);
        // The initializer's --manifest.
        let mut args = vec![
            "--coordinator".to_string(),
            unreachable.to_string(),
            "--root".to_string(),
            env.path("workload").display().to_string(),
            "--manifest".to_string(),
            input.to_string(),
            "--timeout".to_string(),
            "1".to_string(),
        ];
        args.extend(env.flags("web.policy").args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_quickly(&env, "concord-initializer", &args);
        assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&expected),
            "{}",
            describe(&out)
        );
        // The initializer's (and coordinator's) --simulated-policy.
        let mut flags = env.flags("web.policy");
        flags.policy = env.path(input);
        let mut args = vec![
            "--coordinator".to_string(),
            unreachable.to_string(),
            "--root".to_string(),
            env.path("workload").display().to_string(),
            "--manifest".to_string(),
            "manifest-v1.json".to_string(),
            "--timeout".to_string(),
            "1".to_string(),
        ];
        args.extend(flags.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_quickly(&env, "concord-initializer", &args);
        assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not a regular file"),
            "{}",
            describe(&out)
        );
    }
}

#[test]
fn t913_an_oversized_file_is_refused_before_it_is_read() {
    let env = Env::new();
    // Sparse: 5 MiB of size, no disk.
    let big = std::fs::File::create(env.path("big.json")).unwrap();
    big.set_len(5 << 20).unwrap();
    let out = run_quickly(
        &env,
        "concord",
        &[
            "set",
            "-m",
            "big.json",
            "-c",
            "127.0.0.1:1",
            "--insecure-simulated-attestation",
        ],
    );
    refused_with(
        &out,
        "big.json is 5242880 bytes, more than the 4194304 this command accepts",
    );
    let out = run_quickly(
        &env,
        "concord",
        &[
            "recover",
            "--share",
            "big.json",
            "--key",
            "share-owner-0.key",
            "-m",
            "manifest-v1.json",
            "-c",
            "127.0.0.1:1",
            "--insecure-simulated-attestation",
            "--accept-unverified-latest",
        ],
    );
    refused_with(&out, "big.json is 5242880 bytes, more than the 65536");
}
