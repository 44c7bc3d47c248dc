//! Writes the seed corpus (`fuzz/corpus/TARGET/seed-*`): valid inputs made with the real code (a
//! deployment in memory with a simulated root, the real SEV-SNP vectors of `attestation/testdata/`) and
//! a few malformed ones. Run on purpose only, then commit what changed:
//!
//! ```text
//! cargo test -p concord-fuzz-harness --test seeds -- --ignored
//! ```
//!
//! Files the fuzzer found (named by their SHA-1) and crash reproducers (`crash-*`) are left alone.

use std::collections::BTreeMap;
use std::path::Path;

use concord_attestation::{Evidence, EvidenceIssuer, Platform};
use concord_coordinator::Hash;
use concord_coordinator::fuzzing::request_kind;
use concord_coordinator::raft::{AppendTransition, Command};
use concord_coordinator::state::{Coordinator, Prepared};
use concord_coordinator::store::MemoryStore;
use concord_coordinator::testing::TestDeployment;
use concord_fuzz_harness::{atls_evidence, seed_share};
use concord_mesh_ca::{ShareOwnerKeyPair, decrypt_share};
use concord_proto::v1 as pb;
use time::OffsetDateTime;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn testdata(file: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../attestation/testdata")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pem_certificates(file: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(&testdata(file))
        .map(|p| p.unwrap().contents)
        .collect()
}

/// A deployment whose first seed share owner is the key the `seed_share` target decrypts with.
fn deployment() -> TestDeployment {
    let mut d = TestDeployment::new();
    d.share_owners[0] = ShareOwnerKeyPair::from_secret_bytes(seed_share::OWNER_SECRET);
    d
}

#[test]
#[ignore = "writes fuzz/corpus; run on purpose"]
fn write_seed_corpus() {
    let d = deployment();
    let now = OffsetDateTime::now_utc();
    let mut core = Coordinator::open(MemoryStore::new()).unwrap();
    let first = core
        .set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now)
        .unwrap();
    let second = core
        .set_manifest(d.set_request(d.manifest(2), first.hash), now)
        .unwrap();

    manifests(&d);
    audit_bundles(&d, &core);
    seed_shares(&d, &first);
    snp_reports();
    atls_certificates(&d);
    requests(&d, &core, &first, &second);
    objects_files(&d, &core);
}

/// An objects file written by the store itself: the first transition's record and manifest, a
/// policy document put and then deleted; the zeros it is grown with cut off (a scan ends at the
/// file's end as at zeros). Then the same file cut in its last record, and with a byte of the
/// manifest changed (its record's checksum then fails).
fn objects_files(d: &TestDeployment, core: &Coordinator<MemoryStore>) {
    use concord_coordinator::store::objects::{ObjectFile, ObjectKey};
    let dir = std::env::temp_dir().join(format!("concord-objects-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let chain = core.chain().unwrap();
    let t = &chain.transitions()[0];
    let manifest = d.manifest(1);
    let policy = d.workload_policy.clone();
    let file = ObjectFile::open(&dir).unwrap();
    file.write(
        vec![
            (ObjectKey::Object(Hash::of(&manifest)), manifest.clone()),
            (ObjectKey::Transition(t.hash()), t.encode()),
            (ObjectKey::Object(Hash::of(&policy)), policy.clone()),
        ],
        &[],
    )
    .unwrap();
    file.write(Vec::new(), &[ObjectKey::Object(Hash::of(&policy))])
        .unwrap();
    let end = file.end() as usize;
    drop(file);
    let mut bytes = std::fs::read(dir.join(concord_coordinator::store::objects::FILE)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bytes.truncate(end);
    write("objects_file", "file", &bytes);
    write("objects_file", "torn-tail", &bytes[..bytes.len() - 20]);
    let mut damaged = bytes.clone();
    let at = damaged
        .windows(manifest.len())
        .position(|w| w == manifest.as_slice())
        .unwrap();
    damaged[at + 10] ^= 1;
    write("objects_file", "damaged", &damaged);
}

fn manifests(d: &TestDeployment) {
    let t = "manifest";
    write(t, "example", &testdata("../../docs/examples/manifest.json"));
    write(t, "simulated", &d.manifest(1));
    write(
        t,
        "sans",
        &d.manifest_with(&["*.web.svc", "fd00::1", "spiffe://a/b", "10.1.2.3"], &[]),
    );
    let vector_reference = serde_json::json!({
        "product": "Genoa",
        "trusted_measurements": [hex::encode([0x5a; 48])],
        "minimum_tcb": { "bootloader": 7, "tee": 0, "snp": 14, "microcode": 72 },
        "allowed_chip_ids": [hex::encode([0x01; 64])]
    });
    let reference: concord_attestation::SnpReference =
        serde_json::from_value(vector_reference).unwrap();
    write(t, "snp", &d.snp_manifest([0x33; 32], &reference));
    write(t, "empty-object", b"{}");
    write(t, "duplicate-key", br#"{"policies":{},"policies":{}}"#);
    let mut truncated = d.manifest(1);
    truncated.truncate(truncated.len() / 2);
    write(t, "truncated", &truncated);
}

fn audit_bundles(d: &TestDeployment, core: &Coordinator<MemoryStore>) {
    let t = "audit_bundle";
    let issuer = d.issuer(&d.coordinator_policy);
    let json = core
        .audit_bundle(&[0x11; 32], &issuer)
        .unwrap()
        .to_json()
        .unwrap();
    write(t, "two-transitions", &json);
    let bundle: concord_coordinator::history::audit::AuditBundle =
        serde_json::from_slice(&json).unwrap();
    let mut one = bundle.clone();
    one.transitions.truncate(1);
    write(t, "wrong-latest", &one.to_json());
    let mut tampered = bundle.clone();
    tampered.transitions[1].signature = hex::encode([0x55; 64]).into();
    write(t, "bad-signature", &tampered.to_json());
    let mut no_certs = bundle.clone();
    no_certs.evidence.certificates = None;
    write(t, "no-certificates", &no_certs.to_json());
    write(t, "not-json", b"concord-history-v1");
}

fn seed_shares(d: &TestDeployment, first: &concord_coordinator::state::SetOutcome) {
    let t = "seed_share";
    let enc = &first.seed_shares[0];
    let file = serde_json::json!({
        "format": "concord-seed-share-v1",
        "owner_public_key": hex::encode(enc.owner_public_key),
        "encapsulated_key": hex::encode(&enc.encapsulated_key),
        "ciphertext": hex::encode(&enc.ciphertext),
    });
    write(t, "share-file", format!("{file:#}\n").as_bytes());
    write(t, "encrypted-share", &serde_json::to_vec(enc).unwrap());
    let shares: Vec<_> = first
        .seed_shares
        .iter()
        .zip(&d.share_owners)
        .map(|(enc, owner)| decrypt_share(owner, enc).unwrap())
        .collect();
    write(t, "binary", &shares[0].to_bytes());
    let mut two = shares[0].to_bytes().to_vec();
    two.extend_from_slice(&shares[2].to_bytes());
    write(t, "binary-two-of-three", &two);
    let mut duplicate = shares[1].to_bytes().to_vec();
    duplicate.extend_from_slice(&shares[1].to_bytes());
    write(t, "binary-duplicate", &duplicate);
    let mut v2 = shares[0].to_bytes().to_vec();
    v2[15] = b'2';
    write(t, "binary-v2", &v2);
    let mut zero = shares[0].to_bytes().to_vec();
    zero[48] = 0;
    write(t, "binary-threshold-0", &zero);
}

/// Each real report followed by the DER of the key that signed it, as `snp_report` reads them.
fn snp_reports() {
    let t = "snp_report";
    let vectors: [(&str, &str, Vec<u8>); 7] = [
        (
            "virtee-milan",
            "virtee-sev-report_milan.bin",
            testdata("virtee-sev-vcek_milan.der"),
        ),
        (
            "trustee-milan",
            "trustee-test-report.bin",
            testdata("trustee-test-vcek.der"),
        ),
        (
            "trustee-genoa",
            "trustee-e2e-report.bin",
            testdata("trustee-e2e-vcek.der"),
        ),
        (
            "azure-genoa",
            "trustee-az-genoa-report.bin",
            pem_certificates("trustee-az-vcek-genoa.pem").remove(0),
        ),
        (
            "azure-milan",
            "trustee-az-hcl-report.bin",
            pem_certificates("trustee-az-vcek-chain.pem").remove(0),
        ),
        (
            "go-sev-guest-debug",
            "go-sev-guest-attestation.bin",
            testdata("go-sev-guest-vcek.der"),
        ),
        (
            "trustee-vlek",
            "trustee-test-vlek-report.bin",
            testdata("trustee-test-vlek.der"),
        ),
    ];
    for (name, report, cert) in vectors {
        let mut data = testdata(report);
        data.extend_from_slice(&cert);
        write(t, name, &data);
    }
    write(t, "report-only", &testdata("virtee-sev-report_milan.bin"));
    let mut turin = testdata("virtee-sev-report_milan.bin");
    turin.extend_from_slice(&testdata("virtee-sev-vcek_turin.der"));
    write(t, "milan-report-turin-vcek", &turin);
}

/// Fixed SNP evidence, for an aTLS certificate whose evidence is real but bound to something else.
#[derive(Debug)]
struct FixedSnp;

impl EvidenceIssuer for FixedSnp {
    fn platform(&self) -> Platform {
        Platform::Snp
    }
    fn issue(&self, _: &[u8; 64]) -> Result<Evidence, concord_attestation::AttestationError> {
        Ok(Evidence {
            platform: Platform::Snp,
            report: testdata("virtee-sev-report_milan.bin"),
            certificates: vec![testdata("virtee-sev-vcek_milan.der")],
            crls: vec![],
        })
    }
}

fn atls_certificates(d: &TestDeployment) {
    let t = "atls_evidence";
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = d.issuer(&d.coordinator_policy);
    let simulated =
        concord_attestation::fuzzing::atls_certificate(&issuer, &key, &atls_evidence::NONCE)
            .unwrap();
    write(t, "simulated", &simulated);
    let other_nonce =
        concord_attestation::fuzzing::atls_certificate(&issuer, &key, &[0x08; 32]).unwrap();
    write(t, "simulated-other-nonce", &other_nonce);
    let snp =
        concord_attestation::fuzzing::atls_certificate(&FixedSnp, &key, &atls_evidence::NONCE)
            .unwrap();
    write(t, "snp", &snp);
    write(
        t,
        "evidence-extension-value",
        &FixedSnp.issue(&[0; 64]).unwrap().to_bytes(),
    );
    let plain = rcgen::CertificateParams::new(vec!["plain".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    write(t, "no-extension", plain.der());
}

fn requests(
    d: &TestDeployment,
    core: &Coordinator<MemoryStore>,
    first: &concord_coordinator::state::SetOutcome,
    second: &concord_coordinator::state::SetOutcome,
) {
    let t = "requests";
    let put = |name: &str, kind: &str, message: &dyn Fn() -> Vec<u8>| {
        let mut data = vec![request_kind(kind).unwrap()];
        data.extend_from_slice(&message());
        write(t, name, &data);
    };
    use prost::Message as _;

    let set = pb::SetManifestRequest {
        manifest: d.manifest(1),
        policies: vec![d.coordinator_policy.clone(), d.workload_policy.clone()],
        expected_previous: vec![],
        owner_key: vec![],
        owner_signature: vec![],
    };
    put("set-manifest-first", "user.SetManifest", &|| {
        set.encode_to_vec()
    });
    let owner = d.set_request(d.manifest(2), first.hash).owner.unwrap();
    let next = pb::SetManifestRequest {
        manifest: d.manifest(2),
        policies: vec![],
        expected_previous: first.hash.as_bytes().to_vec(),
        owner_key: owner.0.to_bytes().to_vec(),
        owner_signature: owner.1.to_bytes().to_vec(),
    };
    put("set-manifest-next", "user.SetManifest", &|| {
        next.encode_to_vec()
    });
    put("get-manifests", "user.GetManifests", &|| {
        pb::GetManifestsRequest {
            allow_stale: true,
            only_latest: false,
            changed_from: Vec::new(),
        }
        .encode_to_vec()
    });
    put("get-history", "user.GetHistory", &|| {
        pb::GetHistoryRequest {
            nonce: vec![9; 32],
            allow_stale: false,
        }
        .encode_to_vec()
    });
    let share = decrypt_share(&d.share_owners[0], &first.seed_shares[0]).unwrap();
    let recovery_key = concord_mesh_ca::RecoveryKey::generate().unwrap();
    let sealed =
        concord_mesh_ca::seal_submission(&d.share_owners[0], &recovery_key.public_key(), &share)
            .unwrap();
    put("recover", "user.Recover", &|| {
        pb::RecoverRequest {
            sealed: Some(pb::SealedShare {
                owner_public_key: sealed.owner_public_key.to_vec(),
                encapsulated_key: sealed.encapsulated_key.clone(),
                ciphertext: sealed.ciphertext.clone(),
            }),
            force: true,
            ..Default::default()
        }
        .encode_to_vec()
    });
    put("get-status", "user.GetStatus", &|| vec![]);
    let members: BTreeMap<u64, String> = [(1, "10.0.0.1:7778".into()), (2, "c-2:7778".into())]
        .into_iter()
        .collect();
    let message = concord_coordinator::history::format::members_message(&Hash::ZERO, 0, &members);
    let signature = ed25519_dalek::Signer::sign(&d.owner, &message);
    put("set-members", "user.SetMembers", &|| {
        pb::SetMembersRequest {
            members: members
                .iter()
                .map(|(id, addr)| pb::Member {
                    id: *id,
                    peer_address: addr.clone(),
                })
                .collect(),
            owner_key: d.owner.verifying_key().to_bytes().to_vec(),
            owner_signature: signature.to_bytes().to_vec(),
            membership_index: 0,
        }
        .encode_to_vec()
    });
    put("new-mesh-cert", "mesh.NewMeshCert", &|| vec![]);

    let raft = |json: serde_json::Value| pb::RaftMessage {
        json: serde_json::to_vec(&json).unwrap(),
    };
    let vote = serde_json::json!({"leader_id": {"term": 3, "node_id": 2}, "committed": false});
    let log_id = serde_json::json!({"leader_id": {"term": 3, "node_id": 2}, "index": 7});
    let append = serde_json::json!({
        "vote": vote, "prev_log_id": log_id, "leader_commit": log_id,
        "entries": [{"log_id": log_id, "payload": "Blank"}]
    });
    put("append-entries", "peer.AppendEntries", &|| {
        raft(append.clone()).encode_to_vec()
    });
    put("vote", "peer.Vote", &|| {
        raft(serde_json::json!({"vote": vote, "last_log_id": log_id})).encode_to_vec()
    });
    put("install-snapshot", "peer.InstallSnapshot", &|| {
        raft(serde_json::json!({
            "vote": vote,
            "meta": {"last_log_id": log_id, "last_membership": {"log_id": null, "membership": {"configs": [[1]], "nodes": {"1": {"addr": "c-1:7778"}}}}, "snapshot_id": "s-1"},
            "offset": 0, "data": concord_coordinator::fuzzing::snapshot_of(core.store()), "done": true
        }))
        .encode_to_vec()
    });
    put("peer-recover", "peer.Recover", &|| {
        pb::PeerRecoverRequest {
            latest: second.hash.as_bytes().to_vec(),
        }
        .encode_to_vec()
    });
    let prepared = Coordinator::open(MemoryStore::new())
        .unwrap()
        .prepare_set(
            d.set_request(d.manifest(1), Hash::ZERO),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let Prepared::Append(prepared) = prepared else {
        panic!("a first manifest appends")
    };
    let command = Command::Append(AppendTransition::new(&prepared.new));
    put("forward-command", "peer.ForwardCommand", &|| {
        pb::RaftMessage {
            json: serde_json::to_vec(&command).unwrap(),
        }
        .encode_to_vec()
    });
    put("read-index", "peer.ReadIndex", &|| vec![]);
    put("peer-state", "peer.PeerState", &|| vec![]);
    put("join", "peer.Join", &|| {
        pb::JoinRequest {
            member: Some(pb::Member {
                id: 3,
                peer_address: "c-3:7778".into(),
            }),
            forwarded: true,
            nonce: vec![7; 32],
        }
        .encode_to_vec()
    });
    put("peer-recover-answer", "peer.Recover answer", &|| {
        pb::PeerRecoverResponse {
            seed: vec![1; 32],
            salt: vec![2; 32],
            mesh_ca_key: vec![3; 32],
            latest: second.hash.as_bytes().to_vec(),
        }
        .encode_to_vec()
    });
    put("snapshot-data", "peer.InstallSnapshot data", &|| {
        concord_coordinator::fuzzing::snapshot_of(core.store())
    });
    put(
        "set-manifest-answer",
        "peer.ForwardSetManifest answer",
        &|| concord_coordinator::api::node::outcome_to_pb(first).encode_to_vec(),
    );
}

/// The `snp_cert_table` seeds alone: a valid table of the kind the host writes, an empty one, and every
/// hostile table of `concord_attestation::testing::device`.
#[test]
#[ignore = "writes fuzz/corpus; run on purpose"]
fn write_cert_table_seeds() {
    use concord_attestation::vcek::{Guid, encode_cert_table};
    let t = "snp_cert_table";
    let vcek = testdata("virtee-sev-vcek_milan.der");
    write(t, "vcek-only", &encode_cert_table(&[(Guid::VCEK, &vcek)]));
    write(t, "empty", &encode_cert_table(&[]));
    for (name, table) in concord_attestation::testing::device::hostile_cert_tables() {
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        write(t, &format!("hostile-{name}"), &table);
    }
}
