//! The issued certificates checked by an independent TLS stack: `openssl verify` on the chains, and an
//! mTLS connection between two workloads with `openssl s_server` and `s_client`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concord_tests::{Env, describe, have};

fn openssl(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(env.dir.path())
        .output()
        .unwrap()
}

#[test]
fn issued_chains_verify_and_two_workloads_speak_mtls() {
    if !have("openssl") {
        assert!(std::env::var("CI").is_err(), "CI must have openssl");
        eprintln!("skipped: openssl is not installed");
        return;
    }
    let env = Env::new();
    let c = env.start_coordinator("c1");
    assert!(
        env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"])
            .status
            .success()
    );
    for w in ["a", "b"] {
        let out = env.initializer(&c, "web.policy", w, "manifest-v1.json", 30);
        assert!(out.status.success(), "{}", describe(&out));
    }
    // Split the leaf from the chain for the checks that want it alone.
    let chain = std::fs::read_to_string(env.path("a/tls-config/certChain.pem")).unwrap();
    let end =
        chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    std::fs::write(env.path("a-leaf.pem"), &chain[..end]).unwrap();

    for args in [
        vec![
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            "a/tls-config/coordinator-root-ca.pem",
            "-untrusted",
            "a/tls-config/certChain.pem",
            "a-leaf.pem",
        ],
        vec![
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            "a/tls-config/mesh-ca.pem",
            "a-leaf.pem",
        ],
    ] {
        let out = openssl(&env, &args);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OK"),
            "{args:?}: {}",
            describe(&out)
        );
    }
    // The attested claims ride in the leaf, readable by OpenSSL: platform, measurement, policy hash.
    let text = openssl(&env, &["x509", "-in", "a-leaf.pem", "-noout", "-text"]);
    let text = String::from_utf8_lossy(&text.stdout).replace([' ', '\n', ':'], "");
    // (OpenSSL dumps unknown extensions as text; their contents are checked byte for byte with
    // another parser in mesh-ca's claims tests.)
    for needed in [
        "1.3.6.1.4.1.58270.2.1",
        "1.3.6.1.4.1.58270.2.2",
        "1.3.6.1.4.1.58270.2.3",
        "1.3.6.1.4.1.58270.2.4",
        "1.3.6.1.4.1.58270.2.5.8",
        "simulated",
        "MMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMM",
    ] {
        assert!(
            text.contains(needed),
            "the leaf does not show {needed}: {text}"
        );
    }
    // The root does not vouch for a leaf without the intermediate, and a stranger's CA vouches for nothing.
    let out = openssl(
        &env,
        &[
            "verify",
            "-CAfile",
            "a/tls-config/coordinator-root-ca.pem",
            "a-leaf.pem",
        ],
    );
    assert!(!out.status.success());
    std::fs::write(
        env.path("other-ca.pem"),
        concord_coordinator::pem::encode_certificate(env.d.root.cert_der()),
    )
    .unwrap();
    let out = openssl(&env, &["verify", "-CAfile", "other-ca.pem", "a-leaf.pem"]);
    assert!(!out.status.success());

    // mTLS: b serves, a connects; each requires the other's certificate to chain to the mesh CA.
    let port = concord_cli::process::free_addr()
        .unwrap()
        .port()
        .to_string();
    let s_server = || {
        Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &port,
                "-naccept",
                "1",
                "-www",
                "-tls1_3",
                "-cert",
                "b/tls-config/certChain.pem",
                "-key",
                "b/tls-config/key.pem",
                "-CAfile",
                "b/tls-config/mesh-ca.pem",
                "-Verify",
                "1",
                "-verify_return_error",
            ])
            .current_dir(env.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut server = s_server();
    let start = Instant::now();
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "s_server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // s_server -naccept 1 may count the readiness probe above; start a fresh one if it exited.
    std::thread::sleep(Duration::from_millis(100));
    if let Ok(Some(_)) = server.try_wait() {
        server = s_server();
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-tls1_3",
            "-cert",
            "a/tls-config/certChain.pem",
            "-key",
            "a/tls-config/key.pem",
            "-CAfile",
            "a/tls-config/mesh-ca.pem",
            "-verify_return_error",
            "-verify_hostname",
            "web",
            "-ign_eof",
        ])
        .current_dir(env.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    let out = client.wait_with_output().unwrap();
    let _ = server.kill();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "{}",
        describe(&out)
    );
    assert!(
        text.contains("HTTP/1.0 200 ok"),
        "the server did not accept the client certificate: {}",
        describe(&out)
    );
}
