//! The core, in memory: every invariant of DESIGN.md that applies to one replica.

use concord_attestation::{EvidenceIssuer as _, PlatformTrust};
use concord_mesh_ca::{
    RecoveryKey, SeedEngine, SeedShare, ShareOwnerKeyPair, ShareSubmission, combine, decrypt_share,
    seal_submission,
};
use time::OffsetDateTime;

use super::*;
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::history::audit::{AuditOptions, audit};
use crate::history::format;
use crate::history::{LedgerError, Transition};
use crate::state::{PeerAcceptance, Prepared};
use crate::store::{Key, MemoryStore, SledStore, Store};
use crate::testing::TestDeployment;
use ed25519_dalek::SigningKey;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Sets manifest versions `1..=n` of `d` on `c` in turn; the latest transition's hash.
fn set_versions<S: Store>(c: &mut Coordinator<S>, d: &TestDeployment, n: u32) -> Hash {
    let mut latest = Hash::ZERO;
    for v in 1..=n {
        latest = c
            .set_manifest(d.set_request(d.manifest(v), latest), now())
            .unwrap()
            .hash;
    }
    latest
}

fn ready(d: &TestDeployment) -> (Coordinator<MemoryStore>, SetOutcome) {
    let mut c = Coordinator::open(MemoryStore::new()).unwrap();
    assert_eq!(c.state(), ReplicaState::Fresh);
    let out = c
        .set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now())
        .unwrap();
    assert_eq!(c.state(), ReplicaState::Ready);
    (c, out)
}

/// Each seed share owner decrypts their own share of the first manifest's answer.
fn open_shares(d: &TestDeployment, first: &SetOutcome) -> Vec<concord_mesh_ca::SeedShare> {
    first
        .seed_shares
        .iter()
        .zip(&d.share_owners)
        .map(|(enc, owner)| decrypt_share(owner, enc).unwrap())
        .collect()
}

#[test]
fn first_set_returns_shares_that_recover_the_signing_key() {
    let d = TestDeployment::new();
    let (c, out) = ready(&d);
    assert_eq!(out.seed_shares.len(), 3);
    // Each owner decrypts only their own share; any two recover the seed engine.
    let shares = open_shares(&d, &out);
    assert!(decrypt_share(&d.share_owners[1], &out.seed_shares[0]).is_err());
    let engine: SeedEngine = combine(&shares[1..3]).unwrap();
    let chain = c.chain().unwrap();
    assert_eq!(
        engine.transition_signing_key().verifying_key(),
        *chain.signing_key()
    );
    assert!(combine(&shares[..1]).is_err());
}

#[test]
fn updates_need_an_owner_signature_by_a_listed_key() {
    let d = TestDeployment::new();
    let (mut c, first) = ready(&d);
    let m2 = d.manifest(2);

    let mut unsigned = d.set_request(m2.clone(), first.hash);
    unsigned.owner = None;
    assert!(matches!(
        c.set_manifest(unsigned, now()),
        Err(CoordinatorError::PermissionDenied(_))
    ));

    let stranger = TestDeployment::new();
    let by_stranger = stranger.set_request(m2.clone(), first.hash);
    assert!(matches!(
        c.set_manifest(by_stranger, now()),
        Err(CoordinatorError::PermissionDenied(_))
    ));

    // A valid signature over another transition (a replay) is refused.
    let mut replayed = d.set_request(m2.clone(), first.hash);
    replayed.owner = d.set_request(d.manifest(3), first.hash).owner;
    assert!(matches!(
        c.set_manifest(replayed, now()),
        Err(CoordinatorError::PermissionDenied(_))
    ));

    assert_eq!(
        c.chain().unwrap().len(),
        1,
        "a refused update must not change the history"
    );
    let second = c
        .set_manifest(d.set_request(m2, first.hash), now())
        .unwrap();
    assert_eq!(second.transition.index, 1);
    assert_eq!(second.transition.previous, first.hash);
    assert_ne!(
        second.mesh_ca_pem, first.mesh_ca_pem,
        "every manifest gets a new mesh CA"
    );
    assert_eq!(
        second.root_ca_pem, first.root_ca_pem,
        "the root CA is stable"
    );
}

#[test]
fn stale_previous_is_a_failed_precondition_and_changes_nothing() {
    let d = TestDeployment::new();
    let (mut c, first) = ready(&d);
    let second = c
        .set_manifest(d.set_request(d.manifest(2), first.hash), now())
        .unwrap();
    let stale = d.set_request(d.manifest(3), first.hash);
    match c.set_manifest(stale, now()) {
        Err(CoordinatorError::PreviousMismatch { expected, latest }) => {
            assert_eq!(expected, first.hash);
            assert_eq!(latest, second.hash);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(c.chain().unwrap().latest_hash(), second.hash);
}

#[test]
fn setting_the_latest_manifest_again_is_a_no_op() {
    let d = TestDeployment::new();
    let (mut c, first) = ready(&d);
    let again = c
        .set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now())
        .unwrap();
    assert!(again.unchanged);
    assert_eq!(again.hash, first.hash);
    assert!(again.seed_shares.is_empty(), "shares are handed out once");
    assert_eq!(c.chain().unwrap().len(), 1);
}

#[test]
fn seed_share_owners_cannot_change_and_final_manifests_stay_final() {
    let d = TestDeployment::new();
    let (mut c, first) = ready(&d);
    let mut other = TestDeployment::new();
    other.owner = d.owner.clone();
    let changed_owners = other.set_request(other.manifest(2), first.hash);
    assert!(matches!(
        c.set_manifest(changed_owners, now()),
        Err(CoordinatorError::InvalidInput(_))
    ));

    let final_manifest = d.manifest_with(&["web"], &[]);
    let f = c
        .set_manifest(d.set_request(final_manifest, first.hash), now())
        .unwrap();
    let after = d.set_request(d.manifest(3), f.hash);
    assert!(matches!(
        c.set_manifest(after, now()),
        Err(CoordinatorError::FinalManifest)
    ));
}

#[test]
fn bad_input_changes_nothing() {
    let d = TestDeployment::new();
    let mut c = Coordinator::open(MemoryStore::new()).unwrap();
    let mut req = d.set_request(b"{\"policies\": {}, \"extra\": 1}".to_vec(), Hash::ZERO);
    req.policies.clear();
    assert!(matches!(
        c.set_manifest(req, now()),
        Err(CoordinatorError::InvalidInput(_))
    ));
    let mut req = d.set_request(d.manifest(1), Hash::ZERO);
    req.policies
        .push(b"a policy the manifest does not list".to_vec());
    assert!(matches!(
        c.set_manifest(req, now()),
        Err(CoordinatorError::InvalidInput(_))
    ));
    let mut req = d.set_request(d.manifest(1), Hash::ZERO);
    req.expected_previous = Hash([1; 32]);
    assert!(matches!(
        c.set_manifest(req, now()),
        Err(CoordinatorError::PreviousMismatch { .. })
    ));
    assert_eq!(c.state(), ReplicaState::Fresh);
    assert_eq!(c.store().get(&Key::Latest).unwrap(), None);
}

/// Invariant 1: nothing secret is written to the store: no seed, no salt, no derived key, no share.
#[test]
fn the_store_never_holds_a_secret() {
    let d = TestDeployment::new();
    let (mut c, first) = ready(&d);
    c.set_manifest(d.set_request(d.manifest(2), first.hash), now())
        .unwrap();
    let shares = open_shares(&d, &first);
    let engine = combine(&shares).unwrap();
    let secrets: Vec<Vec<u8>> = vec![
        engine.seed().as_bytes().to_vec(),
        engine.salt().as_bytes().to_vec(),
        engine.transition_signing_key().to_bytes().to_vec(),
        engine.root_ca_key().unwrap().to_bytes().to_vec(),
        engine.workload_secret("default/web").to_vec(),
        shares[0].value.to_vec(),
    ];
    let dump = c.store().dump();
    for secret in &secrets {
        for hay in [&dump, &hex::encode(&dump).into_bytes()] {
            assert!(
                !hay.windows(secret.len().min(hay.len()))
                    .any(|w| w == secret.as_slice()),
                "a secret is in the store"
            );
        }
    }
}

/// Invariant 3: the mesh CA key is random per manifest, not derivable from the seed.
#[test]
fn the_mesh_ca_is_not_derived_from_the_seed() {
    let d = TestDeployment::new();
    let (c, first) = ready(&d);
    let shares = open_shares(&d, &first);
    let engine = combine(&shares).unwrap();
    // Re-running the derivations from the seed yields the root CA key, never the mesh CA's.
    let root_key = p256_public_from(&engine);
    let mesh_ca_der = crate::pem::decode_certificate(&first.mesh_ca_pem).unwrap();
    let (_, mesh_cert) = x509_parser::parse_x509_certificate(&mesh_ca_der).unwrap();
    let mesh_pub = mesh_cert.public_key().subject_public_key.data.to_vec();
    assert_ne!(mesh_pub, root_key);
    // And two coordinators started from the same seed would not agree on it: generate again.
    let root = concord_mesh_ca::RootCa::create(&engine.root_ca_key().unwrap(), now()).unwrap();
    let again = concord_mesh_ca::MeshCa::generate(&root, now()).unwrap();
    assert_ne!(again.mesh_ca_der(), mesh_ca_der.as_slice());
    drop(c);
}

fn p256_public_from(engine: &SeedEngine) -> Vec<u8> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    engine
        .root_ca_key()
        .unwrap()
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

/// Invariant 2 at start-up: a store edited by the host is refused.
#[test]
fn a_tampered_store_is_refused_at_open() {
    let d = TestDeployment::new();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = {
        let mut c = Coordinator::open(SledStore::open(dir.path()).unwrap()).unwrap();
        let first = c
            .set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now())
            .unwrap();
        let second = c
            .set_manifest(d.set_request(d.manifest(2), first.hash), now())
            .unwrap();
        (first, second)
    };
    // Untampered: opens, verifies, and is recovering (the secrets were only in memory).
    {
        let c = Coordinator::open(SledStore::open(dir.path()).unwrap()).unwrap();
        assert_eq!(c.state(), ReplicaState::Recovering);
        assert_eq!(c.chain().unwrap().latest_hash(), second.hash);
        assert!(matches!(c.manifests(), Err(CoordinatorError::Recovering)));
    }
    let manifest_key = Key::Object(second.transition.manifest_hash);
    type Tamper<'a> = Box<dyn Fn(&SledStore) + 'a>;
    let tampers: Vec<(&str, Tamper)> = vec![
        (
            "a manifest byte",
            Box::new(|s: &SledStore| {
                let mut m = s.get(&manifest_key).unwrap().unwrap();
                m[10] ^= 1;
                s.tamper_put(&manifest_key, &m).unwrap();
            }),
        ),
        (
            "a signature",
            Box::new(|s: &SledStore| {
                let mut t = second.transition.clone();
                let mut sig = t.signature.to_bytes();
                sig[0] ^= 1;
                t.signature = ed25519_dalek::Signature::from_bytes(&sig);
                s.tamper_put(&Key::Transition(second.hash), &t.encode())
                    .unwrap();
            }),
        ),
        (
            "the latest transition removed (rollback)",
            Box::new(|s: &SledStore| {
                s.tamper_put(&Key::Latest, first.hash.as_bytes()).unwrap();
                s.apply(vec![crate::store::Write::Delete(Key::MeshCerts(
                    first.hash,
                ))])
                .unwrap();
            }),
        ),
        (
            "the signing key replaced",
            Box::new(|s: &SledStore| {
                let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
                s.tamper_put(&Key::SigningKey, k.as_bytes()).unwrap();
            }),
        ),
        (
            "an owner signature dropped",
            Box::new(|s: &SledStore| {
                let t = Transition {
                    owner: None,
                    ..second.transition.clone()
                };
                s.tamper_put(&Key::Transition(second.hash), &t.encode())
                    .unwrap();
            }),
        ),
        // Start-up reads every transition record in one pass and decodes them all (issue 11.4):
        // a record on the line that does not decode, or that is another transition's, is refused
        // as a lookup of it would be.
        (
            "a transition record that is not a record",
            Box::new(|s: &SledStore| {
                s.tamper_put(&Key::Transition(first.hash), b"{\"index\": 0")
                    .unwrap();
            }),
        ),
        (
            "a transition record swapped for another's",
            Box::new(|s: &SledStore| {
                s.tamper_put(&Key::Transition(first.hash), &second.transition.encode())
                    .unwrap();
            }),
        ),
        (
            "a transition record removed",
            Box::new(|s: &SledStore| {
                s.apply(vec![crate::store::Write::Delete(Key::Transition(
                    first.hash,
                ))])
                .unwrap();
            }),
        ),
    ];
    for (what, tamper) in tampers {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        {
            let s = SledStore::open(copy.path()).unwrap();
            tamper(&s);
        }
        let result = Coordinator::open(SledStore::open(copy.path()).unwrap());
        assert!(
            matches!(
                result,
                Err(CoordinatorError::Ledger(LedgerError::Corrupt(_)))
            ),
            "tampering with {what} was not refused: {:?}",
            result.map(|c| c.state())
        );
    }
}

/// Start-up reads every stored transition record, not only those on the line (issue 11.4): records
/// the line never reaches (undecodable, or a well-formed transition of another history, at any
/// first byte of the name) change nothing, as when the line was walked one lookup at a time.
#[test]
fn transition_records_off_the_line_are_ignored_at_open() {
    let d = TestDeployment::new();
    let dir = tempfile::tempdir().unwrap();
    let second = {
        let mut c = Coordinator::open(SledStore::open(dir.path()).unwrap()).unwrap();
        let first = c
            .set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now())
            .unwrap();
        c.set_manifest(d.set_request(d.manifest(2), first.hash), now())
            .unwrap()
    };
    {
        let s = SledStore::open(dir.path()).unwrap();
        let stray = Transition {
            index: 7,
            previous: Hash([9; 32]),
            ..second.transition.clone()
        };
        for first_byte in [0x00, 0x7f, 0x80, 0xff] {
            let mut name = [first_byte; 32];
            s.tamper_put(&Key::Transition(Hash(name)), b"not a record")
                .unwrap();
            name[1] = 1;
            s.tamper_put(&Key::Transition(Hash(name)), &stray.encode())
                .unwrap();
        }
        s.tamper_put(&Key::Transition(stray.hash()), &stray.encode())
            .unwrap();
    }
    let c = Coordinator::open(SledStore::open(dir.path()).unwrap()).unwrap();
    assert_eq!(c.chain().unwrap().latest_hash(), second.hash);
    assert_eq!(c.chain().unwrap().len(), 2);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_audit_draft_is_made_under_the_lock_and_finished_after_it() {
    // GetHistory reads the core for the draft, releases it, and only then asks for evidence (a
    // device call): the core can be written meanwhile.
    let d = TestDeployment::new();
    let (c, first) = ready(&d);
    let core = std::sync::RwLock::new(c);
    let nonce = [7; 32];
    let draft = core.read().unwrap().audit_draft(&nonce).unwrap();
    let mut writer = core.try_write().expect("the draft holds no lock");
    writer
        .set_manifest(d.set_request(d.manifest(2), first.hash), now())
        .unwrap();
    drop(writer);
    let evidence = d
        .issuer(&d.coordinator_policy)
        .issue(&draft.report_data())
        .unwrap();
    let bundle = draft.finish(&evidence).to_json().unwrap();
    let options = AuditOptions {
        trust: PlatformTrust {
            insecure_simulated_root: Some(d.root.hash()),
        },
        expected_nonce: Some(nonce),
        since: Some(first.hash),
        now: std::time::SystemTime::now(),
    };
    // The bundle is the history as it was when drafted, and its evidence binds exactly that.
    assert_eq!(audit(&bundle, &options).unwrap().chain.len(), 1);
}

#[test]
fn the_audit_bundle_audits_clean_and_binds_the_nonce() {
    let d = TestDeployment::new();
    let (mut c, first) = ready(&d);
    c.set_manifest(d.set_request(d.manifest(2), first.hash), now())
        .unwrap();
    let issuer = d.issuer(&d.coordinator_policy);
    let nonce = [9; 32];
    let bundle = c.audit_bundle(&nonce, &issuer).unwrap().to_json().unwrap();
    let options = AuditOptions {
        trust: PlatformTrust {
            insecure_simulated_root: Some(d.root.hash()),
        },
        expected_nonce: Some(nonce),
        since: Some(first.hash),
        now: std::time::SystemTime::now(),
    };
    let report = audit(&bundle, &options).unwrap();
    assert_eq!(report.chain.len(), 2);
    // The same bundle with JSON escapes in its transitions' strings (which the decoding cannot
    // borrow from the document) audits the same; an escape of another character does not.
    let text = String::from_utf8(bundle.clone()).unwrap();
    let escape_first = |text: &str, field: &str, shift: u8| {
        let key = format!("\"{field}\": \"");
        let at = text.find(&key).unwrap() + key.len();
        let c = text.as_bytes()[at] + shift;
        format!("{}\\u{c:04x}{}", &text[..at], &text[at + 1..])
    };
    let escaped = escape_first(&escape_first(&text, "manifest", 0), "signature", 0);
    assert!(escaped.contains("\"manifest\": \"\\u00"), "{escaped:.300}");
    assert_eq!(
        audit(escaped.as_bytes(), &options)
            .unwrap()
            .chain
            .latest_hash(),
        report.chain.latest_hash()
    );
    assert!(audit(escape_first(&text, "signature", 1).as_bytes(), &options).is_err());
    // Another nonce: a replayed bundle.
    let replay = AuditOptions {
        expected_nonce: Some([8; 32]),
        ..options.clone()
    };
    assert!(audit(&bundle, &replay).is_err());
    // Without trusting the simulated root, the evidence does not verify.
    let untrusted = AuditOptions {
        trust: PlatformTrust {
            insecure_simulated_root: None,
        },
        ..options.clone()
    };
    assert!(audit(&bundle, &untrusted).is_err());
    // A transition that is not an ancestor: rollback or fork.
    let fork = AuditOptions {
        since: Some(Hash([3; 32])),
        ..options
    };
    assert!(audit(&bundle, &fork).is_err());
    // Index 0 carries the owner authorization; a bundle whose first transition lost it is refused
    // (issue 9.1: a history whose genesis nobody authorized).
    let mut json: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    assert!(json["transitions"][0]["owner_key"].is_string());
    assert!(json["transitions"][0]["owner_signature"].is_string());
    json["transitions"][0]["owner_key"] = serde_json::Value::Null;
    json["transitions"][0]["owner_signature"] = serde_json::Value::Null;
    let unsigned = serde_json::to_vec(&json).unwrap();
    let err = audit(
        &unsigned,
        &AuditOptions {
            expected_nonce: Some(nonce),
            since: None,
            ..replay
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("carries no owner authorization"),
        "{err}"
    );
}

#[test]
fn mesh_certs_are_issued_only_for_policies_of_the_manifest() {
    let d = TestDeployment::new();
    let (c, _) = ready(&d);
    let manifest = c.serving_manifest().unwrap().clone();
    let key = rcgen::KeyPair::generate().unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let report = d.verified_report(&d.workload_policy, &manifest, &spki);
    let bundle = c.issue_mesh_cert(&report, &spki, now()).unwrap();
    assert_eq!(bundle.workload, "web");
    assert_eq!(bundle.workload_secret.len(), 32);
    assert!(bundle.cert_chain_pem.matches("BEGIN CERTIFICATE").count() == 2);
}

/// A replica restarted on its store: recovering, with the shares of the first answer to hand.
fn restarted(d: &TestDeployment) -> (Coordinator<SledStore>, SetOutcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = SledStore::open(dir.path()).unwrap();
        let mut c = Coordinator::open(store.clone()).unwrap();
        let first = c
            .set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now())
            .unwrap();
        let c = Coordinator::open(store).unwrap();
        assert_eq!(c.state(), ReplicaState::Recovering);
        first
    };
    let c = Coordinator::open(SledStore::open(dir.path()).unwrap()).unwrap();
    (c, first, dir)
}

/// Owner `i`'s share (index `i + 1`) sealed by `owner` to `key`, as `concord recover` sends it.
fn sealed(owner: &ShareOwnerKeyPair, share: &SeedShare, key: &RecoveryKey) -> ShareSubmission {
    seal_submission(owner, &key.public_key(), share).unwrap()
}

#[test]
fn threshold_shares_recover_a_restarted_replica() {
    let d = TestDeployment::new();
    let (mut c, first, _dir) = restarted(&d);
    let shares = open_shares(&d, &first);
    let key = RecoveryKey::generate().unwrap();
    let owner = |i: usize| sealed(&d.share_owners[i], &shares[i], &key);

    let p = c.recover_with_submission(&key, &owner(2), now()).unwrap();
    assert_eq!((p.shares_received, p.threshold, p.ready), (1, 2, false));
    // The same share again changes nothing.
    let p = c.recover_with_submission(&key, &owner(2), now()).unwrap();
    assert_eq!(p.shares_received, 1);
    assert_eq!(c.state(), ReplicaState::Recovering);

    let p = c.recover_with_submission(&key, &owner(0), now()).unwrap();
    assert!(p.ready);
    assert_eq!(c.state(), ReplicaState::Ready);
    // Ready again: serves, and a new mesh CA (the old key is gone for good), same root CA.
    let view = c.manifests().unwrap();
    assert_eq!(view.root_ca_pem, first.root_ca_pem);
    assert_ne!(view.mesh_ca_pem, first.mesh_ca_pem);
    let next = c
        .set_manifest(d.set_request(d.manifest(2), first.hash), now())
        .unwrap();
    assert_eq!(next.transition.index, 1);
    // And a ready replica has nothing to recover.
    assert!(matches!(
        c.recover_with_submission(&key, &owner(1), now()),
        Err(CoordinatorError::FailedPrecondition(_))
    ));
}

#[test]
fn wrong_foreign_or_too_few_shares_change_nothing() {
    let d = TestDeployment::new();
    let (mut c, first, _dir) = restarted(&d);
    let shares = open_shares(&d, &first);
    let key = RecoveryKey::generate().unwrap();

    // A share of another deployment, sealed by its (unlisted) owner.
    let other = TestDeployment::new();
    let (_, other_first) = ready(&other);
    let foreign = open_shares(&other, &other_first);
    let err = c
        .recover_with_submission(
            &key,
            &sealed(&other.share_owners[0], &foreign[0], &key),
            now(),
        )
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err}"
    );
    assert!(err.to_string().contains("another deployment"), "{err}");
    // Another deployment's share sealed by a listed owner (one key in two deployments): named too.
    let err = c
        .recover_with_submission(&key, &sealed(&d.share_owners[0], &foreign[0], &key), now())
        .unwrap_err();
    assert!(err.to_string().contains("another deployment"), "{err}");

    // A wrong value from a listed owner (a damaged share file): the combined seed is refused.
    let mut damaged = shares[1].clone();
    damaged.value[0] ^= 1;
    c.recover_with_submission(&key, &sealed(&d.share_owners[0], &shares[0], &key), now())
        .unwrap();
    let err = c
        .recover_with_submission(&key, &sealed(&d.share_owners[1], &damaged, &key), now())
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err}"
    );
    assert_eq!(c.state(), ReplicaState::Recovering);
    assert!(matches!(c.manifests(), Err(CoordinatorError::Recovering)));

    // After the failure the shares were discarded: one good share is not enough any more.
    let p = c
        .recover_with_submission(&key, &sealed(&d.share_owners[1], &shares[1], &key), now())
        .unwrap();
    assert_eq!((p.shares_received, p.ready), (1, false));
    // A fresh replica has nothing to recover.
    let mut fresh = Coordinator::open(MemoryStore::new()).unwrap();
    assert!(matches!(
        fresh.recover_with_submission(&key, &sealed(&d.share_owners[0], &shares[0], &key), now()),
        Err(CoordinatorError::FailedPrecondition(_))
    ));
}

/// Issue 9.6: a forged share for an index (the deployment id and threshold are public) is refused
/// before it is kept, however it is sealed, so it can neither displace nor poison the real one.
#[test]
fn t96_forged_shares_never_displace_or_poison_an_owners_share() {
    let d = TestDeployment::new();
    let (mut c, first, _dir) = restarted(&d);
    let shares = open_shares(&d, &first);
    let key = RecoveryKey::generate().unwrap();
    let forger = ShareOwnerKeyPair::generate().unwrap();
    let mut forged = shares[0].clone();
    forged.value[3] ^= 0x5a;

    // Sealed by the forger's own key: not an owner.
    let err = c
        .recover_with_submission(&key, &sealed(&forger, &forged, &key), now())
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err}"
    );
    // Sealed by the forger but naming owner 0's key: does not open.
    let mut claimed = sealed(&forger, &forged, &key);
    claimed.owner_public_key = d.share_owners[0].public_key();
    let err = c
        .recover_with_submission(&key, &claimed, now())
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err}"
    );
    // Owner 1 sending owner 0's index: refused.
    let err = c
        .recover_with_submission(&key, &sealed(&d.share_owners[1], &forged, &key), now())
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err}"
    );
    // A real owner's submission sealed to another process's key: refused.
    let other_key = RecoveryKey::generate().unwrap();
    assert!(
        c.recover_with_submission(
            &key,
            &sealed(&d.share_owners[0], &shares[0], &other_key),
            now()
        )
        .is_err()
    );
    // None of it was kept: the two real owners recover at once.
    let p = c
        .recover_with_submission(&key, &sealed(&d.share_owners[0], &shares[0], &key), now())
        .unwrap();
    assert_eq!((p.shares_received, p.ready), (1, false));
    // Interleaved forgeries between the real shares change nothing either.
    assert!(c.recover_with_submission(&key, &claimed, now()).is_err());
    let p = c
        .recover_with_submission(&key, &sealed(&d.share_owners[2], &shares[2], &key), now())
        .unwrap();
    assert!(p.ready);
    assert_eq!(c.state(), ReplicaState::Ready);
}

/// An owner that sent a damaged share replaces it with its own good one; nothing is combined early.
#[test]
fn an_owner_replaces_its_own_pending_share() {
    let d = TestDeployment::new();
    let (mut c, first, _dir) = restarted(&d);
    let shares = open_shares(&d, &first);
    let key = RecoveryKey::generate().unwrap();
    let mut damaged = shares[0].clone();
    damaged.value[7] ^= 1;
    c.recover_with_submission(&key, &sealed(&d.share_owners[0], &damaged, &key), now())
        .unwrap();
    let p = c
        .recover_with_submission(&key, &sealed(&d.share_owners[0], &shares[0], &key), now())
        .unwrap();
    assert_eq!((p.shares_received, p.ready), (1, false));
    let p = c
        .recover_with_submission(&key, &sealed(&d.share_owners[1], &shares[1], &key), now())
        .unwrap();
    assert!(p.ready);
}

/// Two replicas of one history: `a` ready (it set the manifests), `b` opened on a copy of `a`'s store,
/// so recovering.
fn ready_and_recovering(
    d: &TestDeployment,
) -> (
    Coordinator<SledStore>,
    Coordinator<SledStore>,
    Vec<tempfile::TempDir>,
) {
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = Coordinator::open(SledStore::open(dir_a.path()).unwrap()).unwrap();
    let first = a
        .set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now())
        .unwrap();
    a.set_manifest(d.set_request(d.manifest(2), first.hash), now())
        .unwrap();
    // b gets a copy of a's store, as Raft will have replicated it (every write was flushed).
    let dir_b = tempfile::tempdir().unwrap();
    copy_dir(dir_a.path(), dir_b.path());
    let b = Coordinator::open(SledStore::open(dir_b.path()).unwrap()).unwrap();
    assert_eq!(b.state(), ReplicaState::Recovering);
    (a, b, vec![dir_a, dir_b])
}

fn coordinator_report(
    d: &TestDeployment,
    c: &Coordinator<SledStore>,
    policy: &[u8],
) -> concord_attestation::VerifiedReport {
    let manifest = c.chain().unwrap().latest_manifest().clone();
    d.verified_report(policy, &manifest, b"peer key")
}

#[test]
fn peer_recovery_adopts_the_secrets_of_a_ready_peer() {
    let d = TestDeployment::new();
    let (a, mut b, _dirs) = ready_and_recovering(&d);
    // Before a manifest exists, peers accept only their own identity; after, the manifest's.
    assert!(matches!(
        Coordinator::open(MemoryStore::new())
            .unwrap()
            .peer_acceptance(),
        PeerAcceptance::OwnIdentity
    ));
    match b.peer_acceptance() {
        PeerAcceptance::Manifest { policies, .. } => {
            assert_eq!(policies, vec![d.coordinator_policy_hash()])
        }
        other => panic!("{other:?}"),
    }
    let secrets = a
        .secrets_for_peer(&coordinator_report(&d, &a, &d.coordinator_policy))
        .unwrap();
    b.adopt_from_peer(secrets).unwrap();
    assert_eq!(b.state(), ReplicaState::Ready);
    // b serves the same mesh CA as a, without a new one: workloads see one CA per manifest.
    assert_eq!(
        b.manifests().unwrap().mesh_ca_pem,
        a.manifests().unwrap().mesh_ca_pem
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let manifest = b.serving_manifest().unwrap().clone();
    let report = d.verified_report(&d.workload_policy, &manifest, &spki);
    let from_a = a.issue_mesh_cert(&report, &spki, now()).unwrap();
    let from_b = b.issue_mesh_cert(&report, &spki, now()).unwrap();
    assert_eq!(from_a.workload_secret, from_b.workload_secret);
    assert_eq!(from_a.mesh_ca_pem, from_b.mesh_ca_pem);
}

/// Invariant 1(b): no secret leaves for a caller whose policy lacks the coordinator role.
#[test]
fn peer_recovery_refuses_callers_and_secrets_that_do_not_match() {
    let d = TestDeployment::new();
    let (a, mut b, _dirs) = ready_and_recovering(&d);
    let workload = coordinator_report(&d, &a, &d.workload_policy);
    let err = a.secrets_for_peer(&workload).unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err}"
    );
    assert!(matches!(
        b.secrets_for_peer(&coordinator_report(&d, &b, &d.coordinator_policy)),
        Err(CoordinatorError::Recovering)
    ));

    // Secrets of another deployment: the seed does not derive this history's signing key.
    let other = TestDeployment::new();
    let (oa, _ob, _odirs) = ready_and_recovering(&other);
    let mut foreign = oa
        .secrets_for_peer(&coordinator_report(&other, &oa, &other.coordinator_policy))
        .unwrap();
    foreign.latest = b.chain().unwrap().latest_hash();
    let err = b.adopt_from_peer(foreign).unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err}"
    );
    assert_eq!(b.state(), ReplicaState::Recovering);

    // The right seed but a mesh CA key that is not the recorded one.
    let good = || {
        a.secrets_for_peer(&coordinator_report(&d, &a, &d.coordinator_policy))
            .unwrap()
    };
    let mut wrong_mesh = good();
    wrong_mesh.mesh_ca_key = zeroize::Zeroizing::new(
        p256::SecretKey::random(&mut rand::rngs::OsRng)
            .to_bytes()
            .into(),
    );
    assert!(b.adopt_from_peer(wrong_mesh).is_err());
    // Secrets for another latest transition: this replica must catch up first.
    let mut behind = good();
    behind.latest = Hash([7; 32]);
    assert!(matches!(
        b.adopt_from_peer(behind),
        Err(CoordinatorError::FailedPrecondition(_))
    ));
    assert_eq!(b.state(), ReplicaState::Recovering);
    b.adopt_from_peer(good()).unwrap();
    assert!(matches!(
        b.adopt_from_peer(good()),
        Err(CoordinatorError::FailedPrecondition(_))
    ));
}

/// Each manifest update certifies a mesh CA key of its own, whether its mesh CA was made ahead on the
/// background threads or by the prepare itself, and a mesh CA made ahead is used for one update only.
#[test]
fn each_update_gets_its_own_mesh_ca_key_made_ahead_or_not() {
    let d = TestDeployment::new();
    let (c, first_outcome) = ready(&d);
    // Invariant 3 on this path too: no key is the seed's (the root CA key is the P-256 key it gives).
    let seed_key = p256_public_from(&combine(&open_shares(&d, &first_outcome)).unwrap());
    let from_seed = |key: &p256::PublicKey| {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        key.to_encoded_point(false).as_bytes() == seed_key.as_slice()
    };
    let latest = c.chain().unwrap().latest_hash();
    let public_of_prepared = || {
        let Prepared::Append(p) = c
            .prepare_set(d.set_request(d.manifest(2), latest), now())
            .unwrap()
        else {
            panic!("expected a transition")
        };
        let scalar = p.mesh_ca().key_for_attested_peer();
        p256::SecretKey::from_bytes(scalar.as_slice().into())
            .unwrap()
            .public_key()
    };
    let spare = || c.ahead.made().map(|(key, _)| key);
    let wait_for_spare = || c.ahead.wait_until_made().0;
    assert!(spare().is_none(), "nothing is made before the first update");
    let first = public_of_prepared();
    let ahead = wait_for_spare();
    assert_ne!(ahead, first);
    let second = public_of_prepared();
    assert_eq!(second, ahead, "the key made ahead was used");
    let next_ahead = wait_for_spare();
    assert_ne!(next_ahead, second, "and never again");
    let third = public_of_prepared();
    assert_eq!(third, next_ahead);
    assert_ne!(third, first);
    assert!(![first, second, third].iter().any(from_seed));
}

/// The leader's next update seals its mesh CA key with the encapsulations made ahead to the seal
/// keys it was given, each once; a recipient whose seal key is not among them (a restarted process)
/// gets a copy sealed at once. Every copy opens for its recipient under the transition's context,
/// and for nobody else.
#[test]
fn copies_sealed_with_encapsulations_made_ahead_open_for_their_recipients_only() {
    use concord_mesh_ca::{SealContext, SealKey, SealedKey};
    let d = TestDeployment::new();
    let (c, _) = ready(&d);
    let (b, old_c, new_c) = (
        SealKey::generate().unwrap(),
        SealKey::generate().unwrap(),
        SealKey::generate().unwrap(),
    );
    let latest = c.chain().unwrap().latest_hash();
    let prepare = |version| {
        let req = d.set_request(d.manifest(version), latest);
        let manifest = crate::state::parse_for_set(&req.manifest).unwrap();
        let keys = [b.public_key(), old_c.public_key()];
        match c.prepare_parsed(manifest, req, now(), &keys).unwrap() {
            Prepared::Append(p) => p,
            Prepared::Unchanged(_) => panic!("expected a transition"),
        }
    };
    let first = prepare(2);
    assert!(first.seals_ahead.is_empty(), "nothing was made ahead yet");
    let (_, sealed_to) = c.ahead.wait_until_made();
    assert_eq!(sealed_to, [b.public_key(), old_c.public_key()]);
    let mut p = prepare(2);
    assert_eq!(p.seals_ahead.len(), 2);
    let deployment = c.deployment_id().0;
    let to = |node, key: &SealKey| crate::state::SealRecipient {
        node,
        seal_key: key.public_key(),
    };
    let made_for_b = p
        .seals_ahead
        .iter()
        .find(|s| *s.recipient_key() == b.public_key())
        .map(|s| *s.encapsulated_key())
        .unwrap();
    let copies = p.seal_mesh_ca(deployment, &[to(2, &b), to(3, &new_c)]);
    assert!(p.seals_ahead.is_empty(), "used or dropped, never kept");
    assert_eq!(copies.len(), 2);
    let key = p.mesh_ca().key_for_attested_peer();
    let context = |recipient| SealContext {
        deployment,
        transition: *p.hash.as_bytes(),
        mesh_ca_der_sha256: SealContext::cert_hash(&p.new.mesh.mesh_ca_der),
        recipient,
    };
    let sealed = |i: usize| SealedKey {
        encapsulated_key: copies[i].encapsulated_key.clone(),
        ciphertext: copies[i].ciphertext.clone(),
    };
    assert_eq!(*b.open(&context(2), &sealed(0)).unwrap(), *key);
    assert_eq!(*new_c.open(&context(3), &sealed(1)).unwrap(), *key);
    assert!(old_c.open(&context(3), &sealed(1)).is_err());
    assert!(b.open(&context(3), &sealed(0)).is_err());
    assert!(new_c.open(&context(2), &sealed(0)).is_err());
    // b's copy was sealed with the encapsulation made ahead to b.
    assert_eq!(copies[0].encapsulated_key, made_for_b);
}

/// The replica that made a transition's mesh CA died before anyone fetched it: a replica holding the
/// seed makes a new one (random: Invariant 3) rather than stay recovering forever.
#[test]
fn a_lost_mesh_ca_is_replaced_by_a_replica_that_holds_the_seed() {
    let d = TestDeployment::new();
    let (a, mut b, _dirs) = ready_and_recovering(&d);
    let secrets = a
        .secrets_for_peer(&coordinator_report(&d, &a, &d.coordinator_policy))
        .unwrap();
    b.adopt_from_peer(secrets).unwrap();
    assert_eq!(b.state(), ReplicaState::Ready);

    // a writes transition 2 (b receives it, as through Raft), then a dies with its new mesh CA.
    let latest = a.chain().unwrap().latest_hash();
    let Prepared::Append(p) = a
        .prepare_set(d.set_request(d.manifest(3), latest), now())
        .unwrap()
    else {
        panic!("expected a transition")
    };
    crate::history::Ledger::new(b.store().clone())
        .append(&p.new)
        .unwrap();
    drop(a);
    b.refresh().unwrap();
    assert_eq!(b.state(), ReplicaState::Recovering);
    assert!(b.holds_seed());

    let rotated = b.rotate_lost_mesh_ca(now()).unwrap();
    assert_ne!(rotated.mesh, p.new.mesh, "a new, random mesh CA");
    crate::history::Ledger::new(b.store().clone())
        .replace_mesh_certs(&rotated.latest, &rotated.mesh)
        .unwrap();
    b.commit_recovery(rotated).unwrap();
    assert_eq!(b.state(), ReplicaState::Ready);
    assert_eq!(b.chain().unwrap().len(), 3);
    // A replica without the seed cannot do this.
    let fresh = Coordinator::open(MemoryStore::new()).unwrap();
    assert!(fresh.rotate_lost_mesh_ca(now()).is_err());
}

/// A replica verifies only what was appended since the history it verified (`Ledger::load_since`):
/// the result equals a full load, and a bad appended transition is refused as a full load refuses it.
#[test]
fn incremental_reload_equals_a_full_load_and_refuses_what_it_refuses() {
    use crate::history::Ledger;
    let d = TestDeployment::new();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut c = Coordinator::open(store.clone()).unwrap();
    let mut latest = set_versions(&mut c, &d, 3);
    let ledger = Ledger::new(store.clone());
    let known = ledger.load().unwrap().unwrap();
    for v in 4..=6 {
        latest = c
            .set_manifest(d.set_request(d.manifest(v), latest), now())
            .unwrap()
            .hash;
    }
    let full = ledger.load().unwrap().unwrap();
    let since = ledger.load_since(&known).unwrap().unwrap();
    assert_eq!(since.chain.len(), 6);
    assert_eq!(since.chain.latest_hash(), full.chain.latest_hash());
    assert_eq!(since.chain.transitions(), full.chain.transitions());
    assert_eq!(since.mesh, full.mesh);
    assert_eq!(since.policies, full.policies);
    // Nothing new: the same history.
    let same = ledger.load_since(&full).unwrap().unwrap();
    assert_eq!(same.chain.latest_hash(), latest);

    // An appended transition whose signature was changed is refused incrementally too.
    let mut t = full.chain.latest_transition().clone();
    let mut sig = t.signature.to_bytes();
    sig[0] ^= 1;
    t.signature = ed25519_dalek::Signature::from_bytes(&sig);
    let forged = t.hash();
    store
        .apply(vec![
            crate::store::Write::Put(Key::Transition(forged), t.encode()),
            crate::store::Write::Put(Key::Latest, forged.as_bytes().to_vec()),
        ])
        .unwrap();
    let err = ledger.load_since(&known).unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt(_)), "{err}");
    assert!(matches!(ledger.load(), Err(LedgerError::Corrupt(_))));
}

/// `verify_chain` checks long histories on every core; it must still name the first transition at
/// fault, with its reason, as a one-by-one check does.
#[test]
fn a_long_history_is_verified_in_parallel_and_faults_are_found_in_order() {
    use crate::history::chain::ChainVerifier;
    use crate::history::verify_chain;
    let d = TestDeployment::new();
    let mut c = Coordinator::open(MemoryStore::new()).unwrap();
    let latest = set_versions(&mut c, &d, 300);
    let chain = c.chain().unwrap().clone();
    let items = || -> Vec<(Transition, Vec<u8>)> {
        chain
            .transitions()
            .iter()
            .cloned()
            .zip((1..=300).map(|v| d.manifest(v)))
            .collect()
    };
    let key = *chain.signing_key();
    assert_eq!(verify_chain(key, items()).unwrap().latest_hash(), latest);

    let flip = |t: &mut Transition| {
        let mut sig = t.signature.to_bytes();
        sig[0] ^= 1;
        t.signature = ed25519_dalek::Signature::from_bytes(&sig);
    };
    let mut bad = items();
    flip(&mut bad[150].0);
    let owner = bad[200].0.owner.as_mut().unwrap();
    let mut sig = owner.signature.to_bytes();
    sig[1] ^= 1;
    owner.signature = ed25519_dalek::Signature::from_bytes(&sig);
    let err = verify_chain(key, bad.clone()).unwrap_err();
    assert_eq!(err.index, 150, "{err}");
    assert!(err.reason.contains("coordinator signature"), "{err}");
    // A broken link before the bad signature is the first fault.
    bad[100].0.previous = Hash([9; 32]);
    let err = verify_chain(key, bad).unwrap_err();
    assert_eq!(err.index, 100, "{err}");
    assert!(err.reason.contains("previous"), "{err}");
    // And an owner authorization alone.
    let mut bad = items();
    let owner = bad[280].0.owner.as_mut().unwrap();
    let mut sig = owner.signature.to_bytes();
    sig[1] ^= 1;
    owner.signature = ed25519_dalek::Signature::from_bytes(&sig);
    let err = verify_chain(key, bad.clone()).unwrap_err();
    assert_eq!(err.index, 280, "{err}");
    assert!(err.reason.contains("owner authorization"), "{err}");
    // In rounds (as a long history is: `history::chain::ROUND`), a fault in a later round is named
    // as it is in one pass, and a clean history ends the same.
    let in_rounds = |items: Vec<(Transition, Vec<u8>)>| {
        let mut verifier = ChainVerifier::new(key, items.len()).with_round(64);
        verifier.extend(items)?;
        verifier.finish()
    };
    let err = in_rounds(bad).unwrap_err();
    assert_eq!(err.index, 280, "{err}");
    assert!(err.reason.contains("owner authorization"), "{err}");
    let rounds = in_rounds(items()).unwrap();
    assert_eq!(rounds.latest_hash(), latest);
    assert_eq!(
        rounds.first_manifest().hash(),
        chain.first_manifest().hash()
    );
    assert_eq!(
        rounds.latest_manifest().hash(),
        chain.latest_manifest().hash()
    );
    assert_eq!(rounds.policy_hashes(), chain.policy_hashes());
}

/// At start-up the signatures are checked where the records are read, before the line is walked
/// (`SignedTransition::check_all`), and the manifests are parsed a round at a time and linked
/// (`parse_round`, `link_round`; here each round is parsed before the one before it is linked, which
/// the API allows). The first transition at fault and its reason must be
/// those of a one-by-one check; verdicts reached under another key count for nothing; a round is
/// linked only where it was parsed for.
#[test]
fn signatures_checked_before_the_line_is_walked_name_the_same_faults() {
    use crate::hash::Hashed;
    use crate::history::chain::{ChainVerifier, SignedTransition, parse_round};
    let d = TestDeployment::new();
    let mut c = Coordinator::open(MemoryStore::new()).unwrap();
    let latest = set_versions(&mut c, &d, 300);
    let chain = c.chain().unwrap().clone();
    let key = *chain.signing_key();
    let transitions = || chain.transitions().to_vec();
    // In rounds of 64, each parsed before the one before it is linked.
    let load = |checked_under: &ed25519_dalek::VerifyingKey, transitions: Vec<Transition>| {
        let signed = SignedTransition::check_all(checked_under, transitions);
        let mut items: Vec<_> = signed
            .into_iter()
            .zip((1..=300).map(|v| Hashed::new(d.manifest(v))))
            .collect();
        let mut verifier = ChainVerifier::new(key, items.len());
        let mut parsed = None;
        let mut offset = 0;
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(64));
            let round = parse_round(offset, std::mem::replace(&mut items, rest));
            offset += 64;
            if let Some(before) = parsed.replace(round) {
                verifier.link_round(before)?;
            }
        }
        verifier.link_round(parsed.unwrap())?;
        verifier.finish()
    };
    let loaded = load(&key, transitions()).unwrap();
    assert_eq!(loaded.latest_hash(), latest);
    assert_eq!(loaded.policy_hashes(), chain.policy_hashes());
    assert_eq!(
        loaded.latest_manifest().hash(),
        chain.latest_manifest().hash()
    );

    let flip = |sig: &mut ed25519_dalek::Signature, byte: usize| {
        let mut bytes = sig.to_bytes();
        bytes[byte] ^= 1;
        *sig = ed25519_dalek::Signature::from_bytes(&bytes);
    };
    let mut bad = transitions();
    flip(&mut bad[150].signature, 0);
    flip(&mut bad[200].owner.as_mut().unwrap().signature, 1);
    let err = load(&key, bad.clone()).unwrap_err();
    assert_eq!(err.index, 150, "{err}");
    assert!(err.reason.contains("coordinator signature"), "{err}");
    bad[100].previous = Hash([9; 32]);
    let err = load(&key, bad).unwrap_err();
    assert_eq!(err.index, 100, "{err}");
    assert!(err.reason.contains("previous"), "{err}");
    let mut bad = transitions();
    flip(&mut bad[280].owner.as_mut().unwrap().signature, 1);
    let err = load(&key, bad).unwrap_err();
    assert_eq!(err.index, 280, "{err}");
    assert!(err.reason.contains("owner authorization"), "{err}");

    // Verdicts reached under another key are not taken: the genuine history checked under a wrong
    // key (every coordinator verdict false) still verifies, and a forged one checked under it is
    // still refused.
    let other = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
    assert_eq!(load(&other, transitions()).unwrap().latest_hash(), latest);
    let mut forged = transitions();
    flip(&mut forged[7].signature, 2);
    let err = load(&other, forged).unwrap_err();
    assert_eq!(err.index, 7, "{err}");
    assert!(err.reason.contains("coordinator signature"), "{err}");

    // A round offered anywhere but where it was parsed for is refused.
    let signed = SignedTransition::check_all(&key, transitions()[..2].to_vec());
    let items: Vec<_> = signed
        .into_iter()
        .zip([1, 2].map(|v| Hashed::new(d.manifest(v))))
        .collect();
    let mut verifier = ChainVerifier::new(key, 2);
    let err = verifier.link_round(parse_round(1, items)).unwrap_err();
    assert_eq!(err.index, 0, "{err}");
}

/// `push_checked` skips the signature checks only for the transition `check_next` verified, on the
/// chain end it verified it against: a token for another transition, or from before the chain moved,
/// gets the full check, so a forged signature never rides on another's verdict.
#[test]
fn a_checked_transition_is_appended_without_a_second_check_and_only_that_one() {
    let d = TestDeployment::new();
    let mut c = Coordinator::open(MemoryStore::new()).unwrap();
    let latest = set_versions(&mut c, &d, 3);
    let full = c.chain().unwrap().clone();
    let manifest = |v| crate::manifest::Manifest::parse(&d.manifest(v)).unwrap();
    let key = *full.signing_key();
    let [t1, t2, t3] = [0, 1, 2].map(|i| full.transitions()[i].clone());
    let shorter = crate::history::VerifiedChain::first(key, t1, manifest(1)).unwrap();
    let mut chain = shorter.clone();
    chain.push(t2.clone(), manifest(2)).unwrap();
    let forged = {
        let mut t = t3.clone();
        let mut sig = t.signature.to_bytes();
        sig[0] ^= 1;
        t.signature = ed25519_dalek::Signature::from_bytes(&sig);
        t
    };
    // The genuine third transition's token does not vouch for a forged one.
    let checked = chain.check_next(&t3, &manifest(3)).unwrap();
    let err = chain
        .clone()
        .push_checked(forged.clone(), manifest(3), &checked)
        .unwrap_err();
    assert!(err.reason.contains("coordinator signature"), "{err}");
    // Nor does a token from another chain end (for a transition with the same hash: the hash does
    // not cover the signatures).
    let stale = shorter.check_next(&t2, &manifest(2)).unwrap();
    let err = chain
        .clone()
        .push_checked(forged, manifest(3), &stale)
        .unwrap_err();
    assert!(err.reason.contains("coordinator signature"), "{err}");
    // Its own token appends it.
    chain.push_checked(t3, manifest(3), &checked).unwrap();
    assert_eq!(chain.latest_hash(), latest);
}

/// Signature verdicts reached before a transition's place is known (`VerifiedSignatures`, what the
/// early checks hand the state machine) vouch for that transition under that key only; its place and
/// its owner key are checked all the same.
#[test]
fn early_signature_verdicts_vouch_only_for_their_transition_under_their_key() {
    use crate::history::VerifiedSignatures;
    let d = TestDeployment::new();
    let mut c = Coordinator::open(MemoryStore::new()).unwrap();
    let latest = set_versions(&mut c, &d, 3);
    let full = c.chain().unwrap().clone();
    let manifest = |v| crate::manifest::Manifest::parse(&d.manifest(v)).unwrap();
    let key = *full.signing_key();
    let [t1, t2, t3] = [0, 1, 2].map(|i| full.transitions()[i].clone());
    let mut chain = crate::history::VerifiedChain::first(key, t1, manifest(1)).unwrap();
    chain.push(t2.clone(), manifest(2)).unwrap();
    let forged = {
        let mut t = t3.clone();
        let mut sig = t.signature.to_bytes();
        sig[0] ^= 1;
        t.signature = ed25519_dalek::Signature::from_bytes(&sig);
        t
    };
    assert!(VerifiedSignatures::verify(&key, &forged).is_none());
    let genuine = VerifiedSignatures::verify(&key, &t3).unwrap();
    // The genuine transition's verdicts do not vouch for a forged one.
    let err = chain
        .check_next_with(&forged, &manifest(3), Some(&genuine))
        .unwrap_err();
    assert!(err.reason.contains("coordinator signature"), "{err}");
    // Verdicts under another signing key are not taken either.
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let resigned = {
        let mut t = forged.clone();
        t.signature = crate::history::format::sign_transition(&other_key, &t.hash());
        t
    };
    let foreign = VerifiedSignatures::verify(&other_key.verifying_key(), &resigned).unwrap();
    let err = chain
        .check_next_with(&resigned, &manifest(3), Some(&foreign))
        .unwrap_err();
    assert!(err.reason.contains("coordinator signature"), "{err}");
    // Genuine verdicts do not excuse a transition from its place: the second one again is refused.
    let second = VerifiedSignatures::verify(&key, &t2).unwrap();
    let err = chain
        .check_next_with(&t2, &manifest(2), Some(&second))
        .unwrap_err();
    assert!(err.reason.contains("index"), "{err}");
    // Its own verdicts append it, without a second check.
    let checked = chain
        .check_next_with(&t3, &manifest(3), Some(&genuine))
        .unwrap();
    chain.push_checked(t3, manifest(3), &checked).unwrap();
    assert_eq!(chain.latest_hash(), latest);
}

/// A replica catches up from its state machine's verified transitions (`history::feed`) without
/// reading them back from the store, and the result equals a full load; an entry whose signature was
/// changed after its check is not taken on the check's word: the store's line is verified instead.
#[test]
fn the_core_catches_up_from_the_state_machines_verdicts_and_only_for_what_was_checked() {
    use crate::history::feed::{Verified, VerifiedFeed};
    use crate::manifest::Manifest;
    let d = TestDeployment::new();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut writer = Coordinator::open(store.clone()).unwrap();
    let mut latest = set_versions(&mut writer, &d, 3);
    let mut reader = Coordinator::open(store.clone()).unwrap();
    let mut forger = Coordinator::open(store.clone()).unwrap();
    for v in 4..=5 {
        latest = writer
            .set_manifest(d.set_request(d.manifest(v), latest), now())
            .unwrap()
            .hash;
    }
    let line = writer.chain().unwrap().clone();
    let (t4, t5) = (line.transitions()[3].clone(), line.transitions()[4].clone());
    let (m4, m5) = (
        Manifest::parse(&d.manifest(4)).unwrap(),
        Manifest::parse(&d.manifest(5)).unwrap(),
    );
    // What the state machine does on apply: check against its chain, then publish.
    let mut sm_chain = reader.chain().unwrap().clone();
    let feed = VerifiedFeed::default();
    // What a GetManifests with `changed_from` waits on: it changes with each publication.
    let mut applied = feed.subscribe();
    assert!(!applied.has_changed().unwrap());
    let mut checks = Vec::new();
    for (t, m) in [(&t4, &m4), (&t5, &m5)] {
        let checked = sm_chain.check_next(t, m).unwrap();
        sm_chain
            .push_checked(t.clone(), m.clone(), &checked)
            .unwrap();
        checks.push(checked.clone());
        feed.publish(Verified {
            transition: t.clone(),
            manifest: m.clone(),
            checked,
            policies: Vec::new(),
            bytes: 0,
        });
    }
    assert!(applied.has_changed().unwrap());
    assert_eq!(*applied.borrow_and_update(), 2);
    // The store no longer holds transition 4: only the feed can bring a replica past it.
    store
        .apply(vec![crate::store::Write::Delete(Key::Transition(
            t4.hash(),
        ))])
        .unwrap();
    let mut cut_off = Coordinator::open_verified(store.clone(), None);
    assert!(
        cut_off.refresh().is_err(),
        "the store alone no longer verifies"
    );
    assert!(reader.transitions_applied().is_none());
    reader.follow(feed);
    assert!(reader.transitions_applied().is_some());
    reader.refresh().unwrap();
    assert_eq!(reader.chain().unwrap().transitions(), line.transitions());
    assert_eq!(reader.latest_hash(), Some(line.latest_hash()));

    // Transition 5 with another signature than the one checked (its hash is the same: the hash does
    // not cover signatures), riding on the genuine one's verdict: refused, and the store's genuine
    // transition 5 is verified and taken instead.
    let mut forged = t5.clone();
    let mut sig = forged.signature.to_bytes();
    sig[0] ^= 1;
    forged.signature = ed25519_dalek::Signature::from_bytes(&sig);
    assert_eq!(forged.hash(), t5.hash());
    let feed = VerifiedFeed::default();
    for (t, m, checked) in [(t4, m4, &checks[0]), (forged, m5, &checks[1])] {
        feed.publish(Verified {
            transition: t,
            manifest: m,
            checked: checked.clone(),
            policies: Vec::new(),
            bytes: 0,
        });
    }
    forger.follow(feed);
    forger.refresh().unwrap();
    assert_eq!(forger.chain().unwrap().latest_transition(), &t5);
    assert_eq!(forger.chain().unwrap().transitions(), line.transitions());
}

#[test]
fn a_pinned_replica_refuses_a_first_manifest_of_another_deployment() {
    use concord_attestation::DeploymentId;
    let d = TestDeployment::new();
    let ours = crate::manifest::Manifest::parse(&d.manifest(1))
        .unwrap()
        .deployment_id();
    let mut c = Coordinator::open(MemoryStore::new()).unwrap();
    assert_eq!(c.deployment_id(), DeploymentId::UNPINNED);
    c.pin_deployment(ours).unwrap();
    assert_eq!(
        c.deployment_id(),
        ours,
        "a pinned fresh replica names its pin"
    );

    // The host's first manifest: same policies, its own share owner and owner key.
    let host = TestDeployment::new();
    let mut json: serde_json::Value = serde_json::from_slice(&d.manifest(1)).unwrap();
    let theirs: serde_json::Value = serde_json::from_slice(&host.manifest(1)).unwrap();
    json["seed_share_owners"] = theirs["seed_share_owners"].clone();
    let rogue = serde_json::to_vec(&json).unwrap();
    let err = c
        .set_manifest(d.set_request(rogue, Hash::ZERO), now())
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("pinned to deployment"), "{err}");
    assert_eq!(c.state(), ReplicaState::Fresh, "nothing was written");

    // Its own first manifest is accepted, and the replica serves that deployment.
    c.set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now())
        .unwrap();
    assert_eq!(c.deployment_id(), ours);
}

#[test]
fn a_stored_history_of_another_deployment_is_not_served_under_a_pin() {
    let d = TestDeployment::new();
    let (mut c, _) = ready(&d);
    let ours = c.deployment_id();
    assert!(!ours.is_unpinned());
    assert!(c.pin_deployment(ours).is_ok());
    let err = c
        .pin_deployment(concord_attestation::DeploymentId([7; 32]))
        .unwrap_err();
    assert!(err.to_string().contains("belongs to deployment"), "{err}");
}

#[test]
fn a_share_is_taken_only_when_the_history_is_or_extends_the_one_its_owner_knew() {
    use crate::state::KnownLatest;
    let d = TestDeployment::new();
    let (mut c, first) = ready(&d);
    let second = c
        .set_manifest(d.set_request(d.manifest(2), first.hash), now())
        .unwrap();
    let foreign = Hash([9; 32]);
    let ok = |k: KnownLatest| c.check_known_latest(&k);

    assert!(
        ok(KnownLatest::default()).is_ok(),
        "no expectation: no check"
    );
    assert!(
        ok(KnownLatest {
            exactly: Some(second.hash),
            since: None
        })
        .is_ok()
    );
    assert!(
        ok(KnownLatest {
            exactly: None,
            since: Some(first.hash)
        })
        .is_ok()
    );
    assert!(
        ok(KnownLatest {
            exactly: None,
            since: Some(second.hash)
        })
        .is_ok()
    );
    assert!(
        ok(KnownLatest {
            exactly: Some(second.hash),
            since: Some(first.hash)
        })
        .is_ok()
    );

    // Not the latest: an older one (the owner knows less) is named as such; an unknown one is a
    // rollback or a fork.
    let older = ok(KnownLatest {
        exactly: Some(first.hash),
        since: None,
    })
    .unwrap_err();
    assert!(
        matches!(older, CoordinatorError::UnknownHistory(_)),
        "{older:?}"
    );
    assert!(older.to_string().contains("NEWER"), "{older}");
    let unknown = ok(KnownLatest {
        exactly: Some(foreign),
        since: None,
    })
    .unwrap_err();
    assert!(
        unknown.to_string().contains("not in its history"),
        "{unknown}"
    );
    let not_extending = ok(KnownLatest {
        exactly: None,
        since: Some(foreign),
    })
    .unwrap_err();
    assert!(matches!(not_extending, CoordinatorError::UnknownHistory(_)));
    // The message names the replica's latest: index, hash and manifest hash.
    let text = not_extending.to_string();
    assert!(
        text.contains("#1") && text.contains(&second.hash.to_hex()),
        "{text}"
    );
}

/// Issue 9.1: the first manifest is authorized by a key it lists itself, else the host could start a
/// deployment that names the victim's (public) owners with its own policies.
#[test]
fn the_first_manifest_needs_a_signature_by_one_of_its_own_owner_keys() {
    let d = TestDeployment::new();
    let mut c = Coordinator::open(MemoryStore::new()).unwrap();
    // No signature.
    let mut unsigned = d.set_request(d.manifest(1), Hash::ZERO);
    unsigned.owner = None;
    let err = c.set_manifest(unsigned, now()).unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("must authorize it"), "{err}");
    // A valid signature by a key the manifest does not list (the host's own).
    let host = SigningKey::generate(&mut rand::rngs::OsRng);
    let t0 = format::transition_hash(&Hash::of(&d.manifest(1)), &Hash::ZERO);
    let mut stranger = d.set_request(d.manifest(1), Hash::ZERO);
    stranger.owner = Some((host.verifying_key(), format::sign_owner(&host, &t0)));
    let err = c.set_manifest(stranger, now()).unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("not listed in this first manifest"),
        "{err}"
    );
    // A listed key's signature over another transition hash.
    let mut other = d.set_request(d.manifest(1), Hash::ZERO);
    other.owner = Some((
        d.owner.verifying_key(),
        format::sign_owner(&d.owner, &Hash([5; 32])),
    ));
    let err = c.set_manifest(other, now()).unwrap_err();
    assert!(
        matches!(err, CoordinatorError::PermissionDenied(_)),
        "{err:?}"
    );
    assert_eq!(c.state(), ReplicaState::Fresh, "nothing was written");
    // A listed key: accepted, and the authorization is stored with transition 0.
    let out = c
        .set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now())
        .unwrap();
    let owner = out
        .transition
        .owner
        .expect("stored with the first transition");
    assert_eq!(owner.key, d.owner.verifying_key());
    assert_eq!(c.state(), ReplicaState::Ready);
}

#[test]
fn a_first_manifest_without_owner_keys_takes_no_signature() {
    let d = TestDeployment::new();
    let final_manifest = d.manifest_with(&["web"], &[]);
    let mut c = Coordinator::open(MemoryStore::new()).unwrap();
    let mut signed = d.set_request(final_manifest.clone(), Hash::ZERO);
    let t0 = format::transition_hash(&Hash::of(&final_manifest), &Hash::ZERO);
    signed.owner = Some((d.owner.verifying_key(), format::sign_owner(&d.owner, &t0)));
    let err = c.set_manifest(signed, now()).unwrap_err();
    assert!(matches!(err, CoordinatorError::InvalidInput(_)), "{err:?}");
    let out = c
        .set_manifest(d.set_request(final_manifest, Hash::ZERO), now())
        .unwrap();
    assert!(out.transition.owner.is_none());
}

/// The host writes a store whose first transition names the victim's owners but carries no valid
/// owner authorization (none, or by its own key): the genuine replica refuses to open it, so it never
/// becomes ready with it nor names its deployment id.
#[test]
fn a_store_whose_first_transition_no_listed_owner_authorized_is_refused_at_open() {
    let d = TestDeployment::new();
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let mut c = Coordinator::open(SledStore::open(dir.path()).unwrap()).unwrap();
        c.set_manifest(d.set_request(d.manifest(1), Hash::ZERO), now())
            .unwrap()
    };
    let host = SigningKey::generate(&mut rand::rngs::OsRng);
    let forgeries: Vec<(&str, Option<crate::history::OwnerAuthorization>)> = vec![
        ("no authorization", None),
        (
            "the host's own key",
            Some(crate::history::OwnerAuthorization {
                key: host.verifying_key(),
                signature: format::sign_owner(&host, &first.hash),
            }),
        ),
    ];
    for (what, owner) in forgeries {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        {
            let store = SledStore::open(copy.path()).unwrap();
            let mut t = first.transition.clone();
            t.owner = owner;
            store
                .tamper_put(&Key::Transition(first.hash), &t.encode())
                .unwrap();
        }
        let err = Coordinator::open(SledStore::open(copy.path()).unwrap())
            .err()
            .unwrap_or_else(|| panic!("{what}: a replica opened a history nobody authorized"));
        let text = err.to_string();
        let expected = if what == "no authorization" {
            crate::history::GENESIS_UNAUTHORIZED
        } else {
            "is not listed in the first transition's own manifest"
        };
        assert!(text.contains(expected), "{what}: {text}");
    }
    // The untouched store still opens.
    assert!(Coordinator::open(SledStore::open(dir.path()).unwrap()).is_ok());
}

/// Issue 9.11: an update nobody authorized is refused before its manifest is read, so its size or
/// shape costs the replica nothing beyond hashing the bytes.
#[test]
fn an_unauthorized_update_is_refused_before_its_manifest_is_parsed() {
    let d = TestDeployment::new();
    let (c, first) = ready(&d);
    // Not JSON at all: a parse first would answer InvalidArgument.
    let garbage = vec![b'['; 512 * 1024];
    let mut unsigned = d.set_request(garbage.clone(), first.hash);
    unsigned.owner = None;
    assert!(matches!(
        c.prepare_set(unsigned, now()),
        Err(CoordinatorError::PermissionDenied(_))
    ));
    let stale = d.set_request(garbage.clone(), Hash::of(b"not the latest"));
    assert!(matches!(
        c.prepare_set(stale, now()),
        Err(CoordinatorError::PreviousMismatch { .. })
    ));
    let stranger = TestDeployment::new().set_request(garbage.clone(), first.hash);
    assert!(matches!(
        c.prepare_set(stranger, now()),
        Err(CoordinatorError::PermissionDenied(_))
    ));
    // Authorized, the same bytes are parsed and refused for what they are.
    let signed = d.set_request(garbage, first.hash);
    assert!(matches!(
        c.prepare_set(signed, now()),
        Err(CoordinatorError::InvalidInput(_))
    ));
}

/// The caps of a SetManifest, each with a message that names it.
#[test]
fn set_manifest_caps_are_enforced_with_their_numbers() {
    let d = TestDeployment::new();
    let (c, first) = ready(&d);
    let big = vec![b' '; crate::manifest::MAX_MANIFEST_BYTES + 1];
    let e = c
        .prepare_set(d.set_request(big, first.hash), now())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("more than the 1048576 Concord accepts"),
        "{e}"
    );

    let mut docs = d.set_request(d.manifest(2), first.hash);
    docs.policies = vec![vec![0; 1 << 20]; 5];
    let e = c.prepare_set(docs, now()).unwrap_err();
    assert!(
        e.to_string()
            .contains("bytes of policy documents, more than the 4194304"),
        "{e}"
    );

    // 10,000 policies and their documents: accepted, in linear time.
    let mut doc: serde_json::Value = serde_json::from_slice(&d.manifest(2)).unwrap();
    let policies = doc["policies"].as_object_mut().unwrap();
    let mut docs = d.set_request(Vec::new(), first.hash).policies;
    for i in 0..crate::manifest::MAX_POLICIES - 2 {
        let p = format!("policy {i}").into_bytes();
        policies.insert(
            Hash::of(&p).to_hex(),
            serde_json::json!({"sans": [format!("w{i}")]}),
        );
        docs.push(p);
    }
    let m = serde_json::to_vec(&doc).unwrap();
    let mut req = d.set_request(m, first.hash);
    req.policies = docs;
    let started = std::time::Instant::now();
    assert!(matches!(
        c.prepare_set(req.clone(), now()),
        Ok(Prepared::Append(_))
    ));
    eprintln!(
        "prepared a manifest of 10,000 policies in {:?}",
        started.elapsed()
    );

    // One more policy is over the cap.
    let mut over: serde_json::Value = serde_json::from_slice(&req.manifest).unwrap();
    over["policies"].as_object_mut().unwrap().insert(
        Hash::of(b"one more").to_hex(),
        serde_json::json!({"sans": []}),
    );
    let over = d.set_request(serde_json::to_vec(&over).unwrap(), first.hash);
    let e = c.prepare_set(over, now()).unwrap_err();
    assert!(
        e.to_string()
            .contains("the manifest has 10001 policies, more than the 10000 Concord accepts"),
        "{e}"
    );
}

/// Issue 11.5: `a` (the leader) seals transition 3's new mesh CA key to `b`'s seal key; `b`, which
/// holds the seed, applies the entry (a store append, as through Raft) and opens its copy. Every copy
/// that is not exactly `b`'s for this transition and this mesh CA is refused and changes nothing; a
/// replica with the seed and the disk but another process's seal key cannot open it.
/// A follower opens its sealed copy before its core loads the new transition (`api::node`'s
/// `reload_sealed`), so that it never reads as recovering in between: the copy opened ahead installs
/// after the reload; one whose delivery names other certificates than the entry recorded, or another
/// transition than the one loaded, changes nothing.
#[test]
fn a_sealed_copy_opened_ahead_is_installed_only_with_its_own_transition() {
    use crate::raft::SealedDelivery;
    use concord_mesh_ca::SealKey;

    let d = TestDeployment::new();
    let (mut a, mut b, _dirs) = ready_and_recovering(&d);
    b.adopt_from_peer(
        a.secrets_for_peer(&coordinator_report(&d, &a, &d.coordinator_policy))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(b.state(), ReplicaState::Ready);
    let (b_id, b_key) = (2, SealKey::generate().unwrap());
    let deployment = a.deployment_id().0;
    let prepare = |a: &Coordinator<SledStore>, version| {
        let latest = a.chain().unwrap().latest_hash();
        let Prepared::Append(p) = a
            .prepare_set(d.set_request(d.manifest(version), latest), now())
            .unwrap()
        else {
            panic!("expected a transition")
        };
        p
    };
    let mut p = prepare(&a, 3);
    let sealed = p.seal_mesh_ca(
        deployment,
        &[crate::state::SealRecipient {
            node: b_id,
            seal_key: b_key.public_key(),
        }],
    );
    let delivery = SealedDelivery {
        transition: p.hash,
        mesh: p.new.mesh.clone(),
        copies: sealed,
    };
    // Before the store shows the transition: nothing to open ahead of.
    assert!(
        b.sealed_opening_ahead(b_id, &b_key.public_key(), &delivery)
            .is_some(),
        "b has not loaded the transition, so the copy opens ahead"
    );
    let opened = b
        .sealed_opening_ahead(b_id, &b_key.public_key(), &delivery)
        .unwrap()
        .open(&b_key)
        .unwrap();
    // The delivery with the certificates swapped for another mesh CA's: the opening is bound to
    // the certificate it was sealed for.
    let other = prepare(&a, 4);
    let mut swapped = delivery.clone();
    swapped.mesh = other.new.mesh.clone();
    assert!(
        b.sealed_opening_ahead(b_id, &b_key.public_key(), &swapped)
            .unwrap()
            .open(&b_key)
            .is_err()
    );
    // Not this process's key: nothing to open.
    assert!(
        b.sealed_opening_ahead(b_id, &SealKey::generate().unwrap().public_key(), &delivery)
            .is_none()
    );

    crate::history::Ledger::new(b.store().clone())
        .append(&p.new)
        .unwrap();
    b.refresh().unwrap();
    assert_eq!(b.state(), ReplicaState::Recovering);
    b.install_opened(opened).unwrap();
    assert_eq!(b.state(), ReplicaState::Ready);
    assert_eq!(b.chain().unwrap().latest_hash(), p.hash);
    assert_eq!(
        b.manifests().unwrap().mesh_ca_pem,
        p.mesh_ca().mesh_ca_pem()
    );
    assert!(
        b.sealed_opening_ahead(b_id, &b_key.public_key(), &delivery)
            .is_none(),
        "loaded: nothing to open ahead"
    );

    // A copy opened ahead for a transition the reload did not bring (another write on the same
    // predecessor won): refused at the install, and the replica recovers as usual.
    crate::history::Ledger::new(a.store().clone())
        .append(&p.new)
        .unwrap();
    a.commit_set(*p).unwrap();
    let mut q = prepare(&a, 5);
    let sealed = q.seal_mesh_ca(
        deployment,
        &[crate::state::SealRecipient {
            node: b_id,
            seal_key: b_key.public_key(),
        }],
    );
    let stale = SealedDelivery {
        transition: q.hash,
        mesh: q.new.mesh.clone(),
        copies: sealed,
    };
    let opened = b
        .sealed_opening_ahead(b_id, &b_key.public_key(), &stale)
        .unwrap()
        .open(&b_key)
        .unwrap();
    let r = prepare(&a, 6);
    crate::history::Ledger::new(b.store().clone())
        .append(&r.new)
        .unwrap();
    b.refresh().unwrap();
    assert!(b.install_opened(opened).is_err());
    assert_eq!(b.state(), ReplicaState::Recovering);
}

#[test]
fn t115_a_sealed_mesh_ca_key_is_adopted_only_by_its_recipient_for_its_transition() {
    use crate::raft::SealedDelivery;
    use concord_mesh_ca::SealKey;

    let d = TestDeployment::new();
    let (mut a, mut b, dirs) = ready_and_recovering(&d);
    let secrets = || {
        a.secrets_for_peer(&coordinator_report(&d, &a, &d.coordinator_policy))
            .unwrap()
    };
    b.adopt_from_peer(secrets()).unwrap();
    // `c` holds the seed and a copy of the same disk: a seed holder, for the last check.
    let dir_c = tempfile::tempdir().unwrap();
    copy_dir(dirs[1].path(), dir_c.path());
    let mut c = Coordinator::open(SledStore::open(dir_c.path()).unwrap()).unwrap();
    c.adopt_from_peer(secrets()).unwrap();

    let (b_id, b_key, c_key) = (
        2,
        SealKey::generate().unwrap(),
        SealKey::generate().unwrap(),
    );
    let deployment = a.deployment_id().0;
    let latest = a.chain().unwrap().latest_hash();
    let Prepared::Append(mut p) = a
        .prepare_set(d.set_request(d.manifest(3), latest), now())
        .unwrap()
    else {
        panic!("expected a transition")
    };
    let to = |node, key: &SealKey| crate::state::SealRecipient {
        node,
        seal_key: key.public_key(),
    };
    let sealed = p.seal_mesh_ca(deployment, &[to(b_id, &b_key), to(3, &c_key)]);
    assert_eq!(sealed.len(), 2);
    let delivery = SealedDelivery {
        transition: p.hash,
        mesh: p.new.mesh.clone(),
        copies: sealed.clone(),
    };
    for other in [&a, &b, &c] {
        crate::history::Ledger::new(other.store().clone())
            .append(&p.new)
            .unwrap();
    }
    b.refresh().unwrap();
    c.refresh().unwrap();
    assert_eq!(b.state(), ReplicaState::Recovering);

    let refused =
        |b: &mut Coordinator<SledStore>, own, key: &SealKey, delivery: &SealedDelivery| {
            let err = b.adopt_sealed(own, key, delivery).unwrap_err();
            assert_eq!(b.state(), ReplicaState::Recovering, "{err}");
            err.to_string()
        };
    // Another node's copy (sealed to node 3), even under b's id: nothing for b.
    refused(&mut b, 3, &b_key, &delivery);
    // b's copy presented as node 3's (the recipient id is bound): refused.
    let mut renamed = delivery.clone();
    renamed.copies[0].recipient = 3;
    renamed.copies.truncate(1);
    refused(&mut b, 3, &b_key, &renamed);
    // A flipped bit anywhere in b's copy.
    for i in 0..sealed[0].ciphertext.len() {
        let mut flipped = delivery.clone();
        flipped.copies[0].ciphertext[i] ^= 0x01;
        refused(&mut b, b_id, &b_key, &flipped);
    }
    let mut flipped = delivery.clone();
    flipped.copies[0].encapsulated_key[0] ^= 0x80;
    refused(&mut b, b_id, &b_key, &flipped);
    // Sealed to another key (a restarted process of b), though addressed to b.
    let restarted = SealKey::generate().unwrap();
    refused(&mut b, b_id, &restarted, &delivery);
    let mut other_key = delivery.clone();
    other_key.copies[0].recipient_key = restarted.public_key();
    refused(&mut b, b_id, &restarted, &other_key);
    // Replayed from another transition: a copy made for transition 2's hash, or the delivery
    // claimed for another transition, or with other certificates.
    let mut replay = delivery.clone();
    replay.transition = latest;
    refused(&mut b, b_id, &b_key, &replay);
    let mut replay = delivery.clone();
    replay.copies = vec![crate::state::sealed_for_tests(
        deployment,
        latest,
        &p.new.mesh.mesh_ca_der,
        b_id,
        &b_key,
        &[5; 32],
    )];
    let err = refused(&mut b, b_id, &b_key, &replay);
    assert!(err.contains("does not open"), "{err}");
    let mut other_mesh = delivery.clone();
    other_mesh.mesh.mesh_ca_der[40] ^= 1;
    refused(&mut b, b_id, &b_key, &other_mesh);
    // A key that opens but is not the recorded mesh CA's (sealed by a leader of another history).
    let wrong = crate::state::sealed_for_tests(
        deployment,
        p.hash,
        &p.new.mesh.mesh_ca_der,
        b_id,
        &b_key,
        &p256::SecretKey::random(&mut rand::rngs::OsRng)
            .to_bytes()
            .into(),
    );
    let mut wrong_key = delivery.clone();
    wrong_key.copies = vec![wrong];
    let err = refused(&mut b, b_id, &b_key, &wrong_key);
    assert!(err.contains("not the key of the mesh CA"), "{err}");

    // A seed holder with the disk (c) and its own process key cannot open b's copy: the seal key is
    // random per process, with no path from the seed to it.
    refused(&mut c, b_id, &c_key, &delivery);
    assert_ne!(b_key.public_key(), c_key.public_key());

    // A replica that never held the seed gets nothing from its copy.
    let dir_e = tempfile::tempdir().unwrap();
    copy_dir(dirs[1].path(), dir_e.path());
    let mut e = Coordinator::open(SledStore::open(dir_e.path()).unwrap()).unwrap();
    assert!(!e.holds_seed());
    refused(&mut e, b_id, &b_key, &delivery);

    // b's own copy: ready at once, with the mesh CA the leader commits.
    b.adopt_sealed(b_id, &b_key, &delivery).unwrap();
    assert_eq!(b.state(), ReplicaState::Ready);
    let committed = a.commit_set(*p).unwrap();
    assert_eq!(b.manifests().unwrap().mesh_ca_pem, committed.mesh_ca_pem);
    // Once ready, a copy changes nothing.
    assert!(b.adopt_sealed(b_id, &b_key, &delivery).is_err());
    // c, the other recipient, opens its own.
    c.adopt_sealed(3, &c_key, &delivery).unwrap();
    assert_eq!(c.manifests().unwrap().mesh_ca_pem, committed.mesh_ca_pem);
}

/// `a`, ready, and `b`, which recovered the secrets from it: two replicas that hold the seed.
fn two_seed_holders(
    d: &TestDeployment,
) -> (
    Coordinator<SledStore>,
    Coordinator<SledStore>,
    Vec<tempfile::TempDir>,
) {
    let (a, mut b, dirs) = ready_and_recovering(d);
    b.adopt_from_peer(
        a.secrets_for_peer(&coordinator_report(d, &a, &d.coordinator_policy))
            .unwrap(),
    )
    .unwrap();
    (a, b, dirs)
}

/// A write that committed but was superseded before its leader answered (leadership moved while it
/// was in flight; the next leader committed it and a write of its own after it) is answered as
/// committed, never as a mismatch, and its leader does not adopt the superseded mesh CA; a write that
/// lost to another on the same predecessor is a mismatch. The linearizability test found the first
/// answered as "previous transition mismatch" although a get had returned it (issue 11.3).
#[test]
fn a_committed_write_superseded_before_its_answer_is_answered_as_committed() {
    use crate::raft::SealedDelivery;
    use concord_mesh_ca::SealKey;

    let d = TestDeployment::new();
    let (mut a, mut b, _dirs) = two_seed_holders(&d);
    let base = a.chain().unwrap().latest_hash();
    let prepare = |c: &Coordinator<SledStore>, version, previous| match c
        .prepare_set(d.set_request(d.manifest(version), previous), now())
        .unwrap()
    {
        Prepared::Append(p) => p,
        Prepared::Unchanged(_) => panic!("expected a transition"),
    };
    let mut mine = prepare(&a, 3, base);
    let lost = prepare(&a, 4, base);
    let append = |p: &crate::state::PreparedSet, on: [&Coordinator<SledStore>; 2]| {
        for c in on {
            crate::history::Ledger::new(c.store().clone())
                .append(&p.new)
                .unwrap();
        }
    };
    // Raft commits `mine` on both; `b`, the next leader, gets its mesh CA key sealed in the entry.
    let b_key = SealKey::generate().unwrap();
    let copies = mine.seal_mesh_ca(
        a.deployment_id().0,
        &[crate::state::SealRecipient {
            node: 2,
            seal_key: b_key.public_key(),
        }],
    );
    append(&mine, [&a, &b]);
    b.refresh().unwrap();
    b.adopt_sealed(
        2,
        &b_key,
        &SealedDelivery {
            transition: mine.hash,
            mesh: mine.new.mesh.clone(),
            copies,
        },
    )
    .unwrap();
    // `b` writes on top of it before `a` answers.
    let next = prepare(&b, 5, mine.hash);
    let next_hash = next.hash;
    append(&next, [&a, &b]);
    b.commit_set(*next).unwrap();

    let mine_hash = mine.hash;
    let answered = a.commit_set(*mine).unwrap();
    assert_eq!(answered.hash, mine_hash);
    assert!(!answered.unchanged);
    assert_eq!(a.chain().unwrap().latest_hash(), next_hash);
    // The superseded mesh CA is not adopted: `a` recovers the latest one like any follower.
    assert_eq!(a.state(), ReplicaState::Recovering);

    assert!(matches!(
        a.commit_set(*lost),
        Err(CoordinatorError::PreviousMismatch { latest, .. }) if latest == next_hash
    ));
}

/// A sealed mesh CA key is opened without the core's lock (`SealedOpening::open`, on a background
/// thread in `Node::catch_up`) and installed after: a mesh CA opened for a transition that is no
/// longer the latest when it is installed is refused and changes nothing, and one opened for the
/// latest is adopted.
#[test]
fn a_mesh_ca_opened_unlocked_is_installed_only_while_its_transition_is_the_latest() {
    use crate::raft::SealedDelivery;
    use concord_mesh_ca::SealKey;

    let d = TestDeployment::new();
    let (mut a, mut b, _dirs) = two_seed_holders(&d);
    let b_key = SealKey::generate().unwrap();
    let to_b = [crate::state::SealRecipient {
        node: 2,
        seal_key: b_key.public_key(),
    }];
    let prepare = |c: &Coordinator<SledStore>, version| {
        let latest = c.chain().unwrap().latest_hash();
        match c
            .prepare_set(d.set_request(d.manifest(version), latest), now())
            .unwrap()
        {
            Prepared::Append(p) => p,
            Prepared::Unchanged(_) => panic!("expected a transition"),
        }
    };
    let apply = |p: &crate::state::PreparedSet, on: [&Coordinator<SledStore>; 2]| {
        for c in on {
            crate::history::Ledger::new(c.store().clone())
                .append(&p.new)
                .unwrap();
        }
    };
    let deployment = a.deployment_id().0;
    let deliver = |p: &mut crate::state::PreparedSet| SealedDelivery {
        transition: p.hash,
        mesh: p.new.mesh.clone(),
        copies: p.seal_mesh_ca(deployment, &to_b),
    };

    let mut third = prepare(&a, 3);
    let third_delivery = deliver(&mut third);
    apply(&third, [&a, &b]);
    b.refresh().unwrap();
    let opened_third = b
        .sealed_opening(2, &b_key.public_key(), &third_delivery)
        .unwrap()
        .open(&b_key)
        .unwrap();
    assert_eq!(opened_third.transition(), third.hash);
    a.commit_set(*third).unwrap();

    // The history moves on while the copy is opened: the opened mesh CA is of no use any more.
    let mut fourth = prepare(&a, 4);
    let fourth_delivery = deliver(&mut fourth);
    apply(&fourth, [&a, &b]);
    b.refresh().unwrap();
    let err = b.install_opened(opened_third).unwrap_err();
    assert!(err.to_string().contains("moved on"), "{err}");
    assert_eq!(b.state(), ReplicaState::Recovering);

    // The latest transition's copy, opened the same way, is adopted.
    let opened_fourth = b
        .sealed_opening(2, &b_key.public_key(), &fourth_delivery)
        .unwrap()
        .open(&b_key)
        .unwrap();
    b.install_opened(opened_fourth).unwrap();
    assert_eq!(b.state(), ReplicaState::Ready);
    let committed = a.commit_set(*fourth).unwrap();
    assert_eq!(b.manifests().unwrap().mesh_ca_pem, committed.mesh_ca_pem);
}

#[test]
fn a_commit_is_brief_only_when_the_core_is_at_most_its_one_transition_behind() {
    let d = TestDeployment::new();
    let (mut c, first) = ready(&d);
    let h1 = first.hash;
    let unknown = Hash::of(b"a transition this core never saw");
    assert!(
        c.is_one_behind(&h1, &unknown),
        "the core's latest is the predecessor"
    );
    let h2 = set_versions_after(&mut c, &d, h1, 2);
    assert!(c.is_one_behind(&h1, &h2), "the core already took it");
    assert!(
        !c.is_one_behind(&h1, &unknown),
        "the core is past the predecessor: catching up is not this one transition"
    );
    assert!(!c.is_one_behind(&unknown, &Hash::ZERO));
    let empty = Coordinator::open(MemoryStore::new()).unwrap();
    assert!(
        !empty.is_one_behind(&Hash::ZERO, &unknown),
        "a core without history takes a whole first transition: not brief"
    );
}

/// Sets manifest version `v` after `previous`; the new transition's hash.
fn set_versions_after<S: Store>(
    c: &mut Coordinator<S>,
    d: &TestDeployment,
    previous: Hash,
    v: u32,
) -> Hash {
    c.set_manifest(d.set_request(d.manifest(v), previous), now())
        .unwrap()
        .hash
}

/// The leader's own write, seen committed by a reload before its answer (the state machine's
/// catch-up runs first): the reload adopts the mesh CA the write prepared, so the leader stays ready
/// and keeps admitting workloads; a write that lost the race on the same predecessor is never
/// adopted. Before, the leader read as recovering in between and refused every mesh handshake
/// ("not ready, retry later"): the benchmark's flood row counted 22 to 37 refused NewMeshCerts in 3 s.
#[test]
fn a_reload_before_the_answer_adopts_the_mesh_ca_the_leader_prepared() {
    let d = TestDeployment::new();
    let (mut a, _) = ready(&d);
    let base = a.chain().unwrap().latest_hash();
    let prepare = |c: &Coordinator<MemoryStore>, version| match c
        .prepare_set(d.set_request(d.manifest(version), base), now())
        .unwrap()
    {
        Prepared::Append(p) => p,
        Prepared::Unchanged(_) => panic!("expected a transition"),
    };
    let lost = prepare(&a, 3);
    let mine = prepare(&a, 4);
    // As the Raft state machine applies it: written, then published to the core's feed.
    let feed = crate::history::feed::VerifiedFeed::default();
    a.follow(feed.clone());
    a.ledger.append(&mine.new).unwrap();
    publish_applied(&a, &feed, &mine.new.transition, &d.manifest(4));

    a.refresh().unwrap();
    assert_eq!(a.chain().unwrap().latest_hash(), mine.hash);
    assert_eq!(a.state(), ReplicaState::Ready);
    assert_eq!(
        a.manifests().unwrap().mesh_ca_pem,
        mine.mesh_ca().mesh_ca_pem(),
        "the reload adopted the committed write's own mesh CA"
    );
    assert_ne!(
        a.manifests().unwrap().mesh_ca_pem,
        lost.mesh_ca().mesh_ca_pem()
    );

    // The write's answer then finds it adopted and answers as before.
    let mine_hash = mine.hash;
    let answered = a.commit_set(*mine).unwrap();
    assert_eq!(answered.hash, mine_hash);
    assert_eq!(a.state(), ReplicaState::Ready);
    assert!(matches!(
        a.commit_set(*lost),
        Err(CoordinatorError::PreviousMismatch { latest, .. }) if latest == mine_hash
    ));
    assert_eq!(a.state(), ReplicaState::Ready);
}

/// What the Raft state machine does after writing an applied transition: checks it against the
/// core's chain and publishes the verdict to the feed.
fn publish_applied(
    c: &Coordinator<MemoryStore>,
    feed: &crate::history::feed::VerifiedFeed,
    transition: &crate::history::Transition,
    manifest: &[u8],
) {
    let manifest = crate::manifest::Manifest::parse(manifest).unwrap();
    let checked = c
        .chain()
        .unwrap()
        .check_next(transition, &manifest)
        .unwrap();
    feed.publish(crate::history::feed::Verified {
        transition: transition.clone(),
        manifest,
        checked,
        policies: Vec::new(),
        bytes: 0,
    });
}

/// The host's attack on the adoption above: the leader's prepared transition written into the store
/// (its disk) but never applied by Raft (never committed). The reload verifies and loads it, but the
/// leader does not adopt the mesh CA it prepared for it: it reads as recovering, as before the
/// adoption existed, and issues nothing under a manifest that may never commit. Once Raft commits
/// it, the write's answer adopts the CA.
#[test]
fn a_transition_only_in_the_store_does_not_adopt_the_prepared_mesh_ca() {
    let d = TestDeployment::new();
    let (mut a, _) = ready(&d);
    a.follow(crate::history::feed::VerifiedFeed::default());
    let base = a.chain().unwrap().latest_hash();
    let Prepared::Append(mine) = a
        .prepare_set(d.set_request(d.manifest(4), base), now())
        .unwrap()
    else {
        panic!("expected a transition");
    };
    // The host writes it into the store; the state machine never applied it.
    a.ledger.append(&mine.new).unwrap();

    a.refresh().unwrap();
    assert_eq!(a.chain().unwrap().latest_hash(), mine.hash);
    assert_eq!(
        a.state(),
        ReplicaState::Recovering,
        "a transition only the store holds is not taken as committed"
    );

    // Raft committed it after all: the write's answer adopts the CA, as before.
    let mine_hash = mine.hash;
    assert_eq!(a.commit_set(*mine).unwrap().hash, mine_hash);
    assert_eq!(a.state(), ReplicaState::Ready);
}
