//! Bad input of every kind gets a clear error, writes nothing, and the server keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use concord_proto::v1 as pb;
use concord_tests::{Env, describe, stdout_line};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_change_nothing() {
    let env = Env::new();
    let c = env.start_coordinator("c1");
    let mut user = env.user_client(&c).await;

    let set = |manifest: Vec<u8>| pb::SetManifestRequest {
        manifest,
        ..Default::default()
    };
    let cases: Vec<(&str, pb::SetManifestRequest, &str)> = vec![
        ("malformed JSON", set(b"{\"policies\": ".to_vec()), "invalid manifest"),
        ("unknown field", set(br#"{"policies": {}, "reference_values": {}, "workload_owner_keys": [], "seed_share_owners": {"threshold": 1, "keys": ["0101010101010101010101010101010101010101010101010101010101010101"]}, "surprise": 1}"#.to_vec()), "surprise"),
        ("wrong key type", set(String::from_utf8(env.d.manifest(1)).unwrap().replacen("\"workload_owner_keys\": [", "\"workload_owner_keys\": [42, ", 1).into_bytes()), "workload_owner_keys"),
        ("short previous", pb::SetManifestRequest { manifest: env.d.manifest(1), expected_previous: vec![1, 2, 3], ..Default::default() }, "expected_previous"),
        ("owner key without signature", pb::SetManifestRequest { manifest: env.d.manifest(1), owner_key: vec![1; 32], ..Default::default() }, "together"),
        ("garbage bytes", set(vec![0xff, 0x00, 0x13, 0x37]), "invalid manifest"),
    ];
    for (name, req, needle) in cases {
        let err = user.set_manifest(req).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().contains(needle), "{name}: {}", err.message());
    }
    let err = user
        .get_history(pb::GetHistoryRequest {
            nonce: vec![0; 5],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = user
        .get_history(pb::GetHistoryRequest {
            nonce: vec![0; 32],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // Nothing was written: still fresh, and the first real set works.
    let m = user
        .get_manifests(pb::GetManifestsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(m.manifests.is_empty() && m.latest.is_none());
    let ok = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(ok.status.success(), "{}", describe(&ok));

    // An update with a signature by the right key over the wrong transition (replay) is refused.
    let first = concord_tests::Hash::from_hex(&stdout_line(&ok)).unwrap();
    let mut req = env.d.set_request(env.d.manifest(2), first);
    req.owner = env.d.set_request(env.d.manifest(3), first).owner;
    let (k, s) = req.owner.unwrap();
    let err = user
        .set_manifest(pb::SetManifestRequest {
            manifest: req.manifest,
            expected_previous: first.as_bytes().to_vec(),
            owner_key: k.to_bytes().to_vec(),
            owner_signature: s.to_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let m = user
        .get_manifests(pb::GetManifestsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.manifests.len(), 1);
}

#[test]
fn garbage_on_each_port_does_not_stop_the_server() {
    let env = Env::new();
    let c = env.start_coordinator("c1");
    let payloads: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
        &[0u8; 4096],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"",
    ];
    for addr in [c.user_addr, c.mesh_addr] {
        for p in payloads {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(p);
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        }
        // A TLS client that offers no aTLS nonce is refused too.
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ]);
    }
    // Still serving: a real set goes through.
    let ok = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(ok.status.success(), "{}", describe(&ok));
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(
        log.contains("aTLS handshake failed"),
        "garbage should be logged"
    );
}

#[test]
fn bad_command_lines_and_files() {
    let env = Env::new();
    // Usage errors: 2.
    for args in [
        &["set", "--no-such-flag"][..],
        &["frobnicate"],
        &["history", "audit"],
    ] {
        assert_eq!(env.concord(args).status.code(), Some(2), "{args:?}");
    }
    // A manifest with an unknown field: refused before any connection, naming the field.
    std::fs::write(env.path("bad.json"), br#"{"policies": {}, "extra": true}"#).unwrap();
    let out = env.concord(&[
        "set",
        "-m",
        "bad.json",
        "-c",
        "127.0.0.1:1",
        "--insecure-simulated-attestation",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("extra"),
        "{}",
        describe(&out)
    );
    // An unreachable coordinator: 1, and says so.
    let out = env.concord(&[
        "verify",
        "-m",
        "manifest-v1.json",
        "-c",
        "127.0.0.1:1",
        "--insecure-simulated-attestation",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{}",
        describe(&out)
    );
    // A manifest trusting the simulated platform without the insecure flag: refused.
    let out = env.concord(&["verify", "-m", "manifest-v1.json", "-c", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn a_coordinator_the_manifest_does_not_allow_fails_verification_with_3() {
    let env = Env::new();
    // This coordinator runs a build whose policy is not the manifest's coordinator policy.
    let c = concord_cli::process::CoordinatorProcess::start(
        &env.path("rogue"),
        &env.path("rogue.log"),
        &env.flags("stranger.policy"),
    )
    .unwrap();
    let out = env.verify(&c, "manifest-v1.json", "verify", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let out = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
}
