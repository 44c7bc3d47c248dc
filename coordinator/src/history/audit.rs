//! The audit bundle (`concord-history-v1`, DESIGN.md) and its offline audit.
//!
//! `AuditBundle` is the exact JSON document `concord verify --out` writes as `history.json`; `audit` checks
//! it with nothing but the file and the relying party's trust settings: every hash link, signature, owner
//! authorization and manifest hash, the evidence and its binding to the latest transition and signing key,
//! and optionally that a transition seen before is an ancestor of the latest (rollback and fork detection).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use concord_attestation::{Evidence, Platform, PlatformTrust, VerifiedReport, Verifier};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::chain::{self, ChainVerifier};
use super::merkle::MerkleTree;
use super::note::{self, Checkpoint, SignedNote};
use super::{Transition, VerifiedChain, format};
use crate::hash::Hash;
use crate::pem;

pub const FORMAT: &str = "concord-history-v1";

/// `history.json`. Decoded, its transitions borrow their strings from the document where they can
/// (most of a long history's bytes are its manifests' base64: copying them was a tenth of an audit).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditBundle<'a> {
    pub format: String,
    pub signing_key: String,
    #[serde(borrow)]
    pub transitions: Vec<BundleTransition<'a>>,
    pub policies: BTreeMap<String, String>,
    pub root_ca: String,
    pub mesh_ca: String,
    pub evidence: BundleEvidence,
    /// The latest checkpoint (signed note text, PROTOCOL.md §15) and the hex Ed25519 key that signs
    /// checkpoints; together or not at all. Bound by the report data when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_key: Option<String>,
}

/// One transition of the bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleTransition<'a> {
    pub index: u64,
    #[serde(borrow)]
    pub manifest_hash: Cow<'a, str>,
    #[serde(borrow)]
    pub previous: Cow<'a, str>,
    #[serde(borrow)]
    pub hash: Cow<'a, str>,
    #[serde(borrow)]
    pub signature: Cow<'a, str>,
    pub owner_key: Option<String>,
    pub owner_signature: Option<String>,
    /// base64 of the manifest bytes.
    #[serde(borrow)]
    pub manifest: Cow<'a, str>,
}

/// The coordinator's evidence over the bundle (empty by default, until a draft is finished).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEvidence {
    pub platform: String,
    /// base64.
    pub report: String,
    /// hex.
    pub nonce: String,
    /// base64 DER, signer first (optional: an SNP verifier may fetch the VCEK instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Vec<String>>,
    /// SNP: base64 DER of AMD's CRLs sent with the evidence (absent when none was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crls: Option<Vec<String>>,
}

impl BundleEvidence {
    pub fn new(evidence: &Evidence, nonce: &[u8; 32]) -> BundleEvidence {
        BundleEvidence {
            platform: evidence.platform.as_str().to_string(),
            report: STANDARD.encode(&evidence.report),
            nonce: hex::encode(nonce),
            certificates: Some(
                evidence
                    .certificates
                    .iter()
                    .map(|c| STANDARD.encode(c))
                    .collect(),
            ),
            crls: (!evidence.crls.is_empty())
                .then(|| evidence.crls.iter().map(|c| STANDARD.encode(c)).collect()),
        }
    }
}

impl BundleTransition<'static> {
    /// Transition `t` of a bundle, with its manifest bytes.
    pub fn new(t: &Transition, manifest: &[u8]) -> BundleTransition<'static> {
        BundleTransition {
            index: t.index,
            manifest_hash: t.manifest_hash.to_hex().into(),
            previous: t.previous.to_hex().into(),
            hash: t.hash().to_hex().into(),
            signature: hex::encode(t.signature.to_bytes()).into(),
            owner_key: t.owner.as_ref().map(|o| hex::encode(o.key.as_bytes())),
            owner_signature: t
                .owner
                .as_ref()
                .map(|o| hex::encode(o.signature.to_bytes())),
            manifest: STANDARD.encode(manifest).into(),
        }
    }
}

impl AuditBundle<'static> {
    /// The bundle of a verified chain, with `manifests`: the manifest bytes of each of its
    /// transitions, in order.
    pub fn new(
        chain: &VerifiedChain,
        manifests: impl IntoIterator<Item = Vec<u8>>,
        policies: &BTreeMap<Hash, Vec<u8>>,
        root_ca_der: &[u8],
        mesh_ca_der: &[u8],
        evidence: BundleEvidence,
    ) -> AuditBundle<'static> {
        let transitions = chain
            .transitions()
            .iter()
            .zip(manifests)
            .map(|(t, m)| BundleTransition::new(t, &m))
            .collect();
        AuditBundle {
            format: FORMAT.to_string(),
            signing_key: hex::encode(chain.signing_key().as_bytes()),
            transitions,
            policies: bundle_policies(policies),
            root_ca: pem::encode_certificate(root_ca_der),
            mesh_ca: pem::encode_certificate(mesh_ca_der),
            evidence,
            checkpoint: None,
            checkpoint_key: None,
        }
    }
}

impl AuditBundle<'_> {
    /// Pretty JSON, as written to `history.json`.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, integers and maps of strings always serializes.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// What the relying party brings to an audit.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Which platforms and roots the auditor trusts (the simulated one only when asked for, loudly).
    pub trust: PlatformTrust,
    /// The nonce the auditor sent, when it fetched the bundle itself.
    pub expected_nonce: Option<[u8; 32]>,
    /// A transition seen earlier that must be an ancestor of (or equal to) the latest.
    pub since: Option<Hash>,
    /// The time of check for certificate validity.
    pub now: SystemTime,
}

/// A clean audit.
#[derive(Debug, Clone)]
pub struct AuditReport {
    pub chain: VerifiedChain,
    /// The bundle's checkpoint, verified: signed by the evidence-bound key, naming this deployment, of
    /// the whole history's size and Merkle root.
    pub checkpoint: Option<VerifiedCheckpoint>,
    pub report: VerifiedReport,
    pub root_ca_der: Vec<u8>,
    pub mesh_ca_der: Vec<u8>,
}

fn bundle_policies(policies: &BTreeMap<Hash, Vec<u8>>) -> BTreeMap<String, String> {
    policies
        .iter()
        .map(|(h, doc)| (h.to_hex(), STANDARD.encode(doc)))
        .collect()
}

/// The bundle of a verified chain written as it is serialized, one transition at a time: the same
/// JSON as [`AuditBundle::to_json`], without the whole history in memory. `manifest(i)` gives the
/// manifest bytes of transition `i` when its turn comes (a replica reads them from its store).
pub struct BundleWriter<'a, F> {
    pub chain: &'a VerifiedChain,
    pub manifest: std::cell::RefCell<F>,
    pub policies: &'a BTreeMap<Hash, Vec<u8>>,
    pub root_ca_der: &'a [u8],
    pub mesh_ca_der: &'a [u8],
    pub evidence: &'a BundleEvidence,
    /// [`AuditBundle::checkpoint`] and [`AuditBundle::checkpoint_key`].
    pub checkpoint: Option<(&'a str, &'a str)>,
}

impl<F: FnMut(usize) -> Result<Vec<u8>, String>> BundleWriter<'_, F> {
    /// Writes the pretty JSON of the bundle, and a newline, to `out`. Fails if `manifest` or `out`
    /// fails; what was written by then is a prefix of the bundle.
    pub fn write_json(&self, mut out: impl std::io::Write) -> Result<(), String> {
        serde_json::to_writer_pretty(&mut out, self).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(|e| e.to_string())
    }
}

impl<F: FnMut(usize) -> Result<Vec<u8>, String>> Serialize for BundleWriter<'_, F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // The fields of `AuditBundle`, in its order.
        let fields = if self.checkpoint.is_some() { 9 } else { 7 };
        let mut st = s.serialize_struct("AuditBundle", fields)?;
        st.serialize_field("format", FORMAT)?;
        st.serialize_field(
            "signing_key",
            &hex::encode(self.chain.signing_key().as_bytes()),
        )?;
        st.serialize_field("transitions", &LazyTransitions(self))?;
        st.serialize_field("policies", &bundle_policies(self.policies))?;
        st.serialize_field("root_ca", &pem::encode_certificate(self.root_ca_der))?;
        st.serialize_field("mesh_ca", &pem::encode_certificate(self.mesh_ca_der))?;
        st.serialize_field("evidence", self.evidence)?;
        if let Some((note, key)) = self.checkpoint {
            st.serialize_field("checkpoint", note)?;
            st.serialize_field("checkpoint_key", key)?;
        }
        st.end()
    }
}

struct LazyTransitions<'w, 'a, F>(&'w BundleWriter<'a, F>);

impl<F: FnMut(usize) -> Result<Vec<u8>, String>> Serialize for LazyTransitions<'_, '_, F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let transitions = self.0.chain.transitions();
        let mut seq = s.serialize_seq(Some(transitions.len()))?;
        let mut manifest = self.0.manifest.borrow_mut();
        for (i, t) in transitions.iter().enumerate() {
            let bytes = (*manifest)(i).map_err(S::Error::custom)?;
            seq.serialize_element(&BundleTransition::new(t, &bytes))?;
        }
        seq.end()
    }
}

/// Why a bundle does not audit. Every variant is a verification failure (exit code 3).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("the bundle is malformed: {0}")]
    Malformed(String),
    #[error("the history does not verify: {0}")]
    Chain(String),
    #[error("the coordinator evidence does not verify: {0}")]
    Evidence(String),
    #[error(
        "transition {0} is not in this history: the coordinator rolled back or forked the history since you saw it"
    )]
    Rollback(Hash),
}

/// One transition of a bundle with its manifest bytes, its hash checked against the one it states.
fn decode_transition(t: &BundleTransition) -> Result<(Transition, Vec<u8>), AuditError> {
    let malformed = |what: &str, e: String| AuditError::Malformed(format!("{what}: {e}"));
    let at = format!("transition {}", t.index);
    let hash = |s: &str, field: &str| {
        Hash::from_hex(s).map_err(|e| malformed(&format!("{at} {field}"), e))
    };
    let transition = Transition::from_parts(
        t.index,
        hash(&t.manifest_hash, "manifest_hash")?,
        hash(&t.previous, "previous")?,
        &t.signature,
        t.owner_key.as_deref(),
        t.owner_signature.as_deref(),
    )
    .map_err(|e| malformed(&at, e))?;
    if transition.hash() != hash(&t.hash, "hash")? {
        return Err(AuditError::Chain(format!(
            "{at}: hash is {}, but SHA-256(manifest_hash || previous) is {}",
            t.hash,
            transition.hash()
        )));
    }
    let manifest = STANDARD
        .decode(t.manifest.as_bytes())
        .map_err(|e| malformed(&format!("{at} manifest"), e.to_string()))?;
    Ok((transition, manifest))
}

/// Audits a bundle. See the module documentation for what is checked.
pub fn audit(bytes: &[u8], options: &AuditOptions) -> Result<AuditReport, AuditError> {
    let malformed = |what: &str, e: String| AuditError::Malformed(format!("{what}: {e}"));
    // serde_json's maps keep the last of two equal names, another parser the first: a document with
    // a duplicate is refused, with that reason, whatever its decoding says. The two passes over the
    // bytes are independent, so they run side by side (each is about a tenth of a long audit).
    let (unique, bundle) = std::thread::scope(|scope| {
        let unique = scope.spawn(|| super::check_unique_keys(bytes));
        let bundle = serde_json::from_slice::<AuditBundle>(bytes);
        let unique = unique
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (unique, bundle)
    });
    unique.map_err(|e| malformed("history.json", e))?;
    let bundle = bundle.map_err(|e| malformed("history.json", e.to_string()))?;
    if bundle.format != FORMAT {
        return Err(AuditError::Malformed(format!(
            "format is {:?}, this tool reads {FORMAT:?}",
            bundle.format
        )));
    }
    let signing_key = hex::decode(&bundle.signing_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| AuditError::Malformed("signing_key is not an Ed25519 public key".into()))?;

    // A round at a time: decoded on every core (hex, base64 and a hash per transition), then
    // verified, so that only one round's manifest bytes are held (decoding all of them first had
    // every one land on fresh pages). The first transition at fault wins, in order.
    let mut verifier = ChainVerifier::new(signing_key, bundle.transitions.len());
    for round in bundle.transitions.chunks(chain::ROUND) {
        let items = chain::par_chunks(round, |_, part| {
            part.iter().map(decode_transition).collect()
        })
        .into_iter()
        .collect::<Result<Vec<_>, AuditError>>()?;
        verifier
            .extend(items)
            .map_err(|e| AuditError::Chain(e.to_string()))?;
    }
    let chain = verifier
        .finish()
        .map_err(|e| AuditError::Chain(e.to_string()))?;

    for (key, doc) in &bundle.policies {
        let doc = STANDARD
            .decode(doc)
            .map_err(|e| malformed(&format!("policy {key}"), e.to_string()))?;
        if Hash::of(&doc).to_hex() != *key {
            return Err(AuditError::Chain(format!(
                "policy {key} does not hash to its name"
            )));
        }
    }

    // The first transition at fault, as a check manifest by manifest would name it.
    if let Some((h, i)) = chain
        .policy_hashes()
        .iter()
        .filter(|(h, _)| !bundle.policies.contains_key(&h.to_hex()))
        .min_by_key(|(h, i)| (**i, **h))
    {
        return Err(AuditError::Chain(format!(
            "transition {i}: the document of policy {h} is not in the bundle"
        )));
    }
    let root_ca_der =
        pem::decode_certificate(&bundle.root_ca).map_err(|e| malformed("root_ca", e))?;
    let mesh_ca_der =
        pem::decode_certificate(&bundle.mesh_ca).map_err(|e| malformed("mesh_ca", e))?;
    let checkpoint = check_checkpoint(&bundle, &chain)?;
    let report = check_evidence(
        &bundle.evidence,
        &chain,
        &root_ca_der,
        &mesh_ca_der,
        checkpoint.as_ref().map(|c| &c.key),
        options,
    )?;

    if let Some(since) = options.since
        && chain.position(&since).is_none()
    {
        return Err(AuditError::Rollback(since));
    }
    Ok(AuditReport {
        chain,
        checkpoint,
        report,
        root_ca_der,
        mesh_ca_der,
    })
}

fn check_evidence(
    e: &BundleEvidence,
    chain: &VerifiedChain,
    root_ca_der: &[u8],
    mesh_ca_der: &[u8],
    checkpoint_key: Option<&VerifyingKey>,
    options: &AuditOptions,
) -> Result<VerifiedReport, AuditError> {
    let malformed = |what: &str, e: String| AuditError::Malformed(format!("evidence {what}: {e}"));
    let nonce = hex::decode(&e.nonce).map_err(|err| malformed("nonce", err.to_string()))?;
    let nonce: [u8; 32] = nonce
        .as_slice()
        .try_into()
        .map_err(|_| malformed("nonce", "expected 32 bytes".into()))?;
    if let Some(expected) = options.expected_nonce
        && expected != nonce
    {
        return Err(AuditError::Evidence(
            "the evidence was made for another nonce than the one sent (a replayed bundle?)".into(),
        ));
    }
    let platform = match e.platform.as_str() {
        "snp" => Platform::Snp,
        "simulated" => Platform::Simulated,
        "tdx" => Platform::Tdx,
        other => return Err(malformed("platform", format!("unknown platform {other:?}"))),
    };
    let report = STANDARD
        .decode(&e.report)
        .map_err(|err| malformed("report", err.to_string()))?;
    let certificates = e
        .certificates
        .iter()
        .flatten()
        .map(|c| {
            STANDARD
                .decode(c)
                .map_err(|err| malformed("certificates", err.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let crls = e
        .crls
        .iter()
        .flatten()
        .map(|c| {
            STANDARD
                .decode(c)
                .map_err(|err| malformed("crls", err.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let evidence = Evidence {
        platform,
        report,
        certificates,
        crls,
    };
    let expected = format::audit_report_data_with_checkpoint_key(
        &nonce,
        chain.signing_key(),
        &chain.latest_hash(),
        root_ca_der,
        mesh_ca_der,
        checkpoint_key,
    );
    let manifest = chain.latest_manifest();
    let coordinators = manifest.coordinator_policies();
    if coordinators.is_empty() {
        return Err(AuditError::Evidence(
            "the latest manifest has no policy with the coordinator role, so no coordinator evidence can match it"
                .into(),
        ));
    }
    Verifier::new(options.trust.clone())
        .verify(
            &evidence,
            manifest.reference_values(),
            &expected,
            &|h| coordinators.contains(&Hash(*h)),
            options.now,
        )
        .map_err(|err| AuditError::Evidence(err.to_string()))
}

/// A checkpoint that verified against its bundle.
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    pub checkpoint: Checkpoint,
    pub note: SignedNote,
    pub key: VerifyingKey,
}

/// The bundle's checkpoint, if it has one: signed by `checkpoint_key`, naming the chain's deployment,
/// of the chain's size, with the Merkle root of its transition hashes.
fn check_checkpoint(
    bundle: &AuditBundle,
    chain: &VerifiedChain,
) -> Result<Option<VerifiedCheckpoint>, AuditError> {
    let (text, key) = match (&bundle.checkpoint, &bundle.checkpoint_key) {
        (None, None) => return Ok(None),
        (Some(t), Some(k)) => (t, k),
        _ => {
            return Err(AuditError::Malformed(
                "checkpoint and checkpoint_key come together or not at all".into(),
            ));
        }
    };
    let key = hex::decode(key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| {
            AuditError::Malformed("checkpoint_key is not an Ed25519 public key".into())
        })?;
    let note = SignedNote::parse(text).map_err(|e| AuditError::Malformed(e.to_string()))?;
    let origin = note::origin_for(chain.deployment_id().as_bytes());
    let checkpoint = note
        .verify_checkpoint(&origin, &key)
        .map_err(|e| AuditError::Chain(format!("checkpoint: {e}")))?;
    let hashes: Vec<Hash> = (0..chain.len()).filter_map(|i| chain.hash_at(i)).collect();
    let root = MerkleTree::from_leaves(&hashes).root();
    if checkpoint.size != chain.len() as u64 || checkpoint.root != root {
        return Err(AuditError::Chain(format!(
            "the checkpoint says size {} root {}, the history has {} transitions with Merkle root {root}",
            checkpoint.size,
            checkpoint.root,
            chain.len()
        )));
    }
    Ok(Some(VerifiedCheckpoint {
        checkpoint,
        note,
        key,
    }))
}
