//! Test fixtures shared by every test of the workspace: a deployment with a simulated root, policies,
//! owner keys and seed share owner keys, and manifests built from them. Not for production use.

use concord_attestation::{SimulatedIssuer, SimulatedRoot};
use concord_mesh_ca::ShareOwnerKeyPair;
use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;

use crate::hash::Hash;
use crate::history::format;
use crate::state::SetRequest;

/// Everything a test deployment needs.
pub struct TestDeployment {
    pub root: SimulatedRoot,
    pub measurement: [u8; 48],
    pub coordinator_policy: Vec<u8>,
    pub workload_policy: Vec<u8>,
    pub owner: SigningKey,
    pub share_owners: Vec<ShareOwnerKeyPair>,
    pub threshold: u8,
}

impl TestDeployment {
    /// A fresh deployment: new simulated root, one owner key, 2-of-3 seed share owners.
    pub fn new() -> TestDeployment {
        TestDeployment {
            root: SimulatedRoot::generate().expect("simulated root"),
            measurement: [0x4d; 48],
            coordinator_policy: b"coordinator policy v1".to_vec(),
            workload_policy: b"web workload policy v1".to_vec(),
            owner: SigningKey::generate(&mut OsRng),
            share_owners: (0..3)
                .map(|_| ShareOwnerKeyPair::generate().expect("share owner key"))
                .collect(),
            threshold: 2,
        }
    }

    pub fn coordinator_policy_hash(&self) -> Hash {
        Hash::of(&self.coordinator_policy)
    }

    pub fn workload_policy_hash(&self) -> Hash {
        Hash::of(&self.workload_policy)
    }

    /// A manifest: the coordinator policy, the `web` workload with `sans`, simulated reference values,
    /// the given owner keys and this deployment's seed share owners.
    pub fn manifest_with(&self, sans: &[&str], owner_keys: &[[u8; 32]]) -> Vec<u8> {
        let json = serde_json::json!({
            "policies": {
                self.coordinator_policy_hash().to_hex(): {
                    "name": "coordinator", "sans": ["coordinator"], "role": "coordinator"
                },
                self.workload_policy_hash().to_hex(): {
                    "name": "web", "sans": sans, "workload_secret_id": "default/web"
                }
            },
            "reference_values": {
                "simulated": [{
                    "root": hex::encode(self.root.hash()),
                    "trusted_measurements": [hex::encode(self.measurement)]
                }],
                // For replicas on simulated TDX evidence (`--platform simulated-tdx`): the same
                // measurement as MRTD.
                "tdx": [{ "trusted_mrtd": [hex::encode(self.measurement)] }]
            },
            "workload_owner_keys": owner_keys.iter().map(hex::encode).collect::<Vec<_>>(),
            "seed_share_owners": {
                "threshold": self.threshold,
                "keys": self.share_owners.iter().map(|k| hex::encode(k.public_key())).collect::<Vec<_>>()
            }
        });
        serde_json::to_vec_pretty(&json).expect("json")
    }

    /// A manifest for SEV-SNP: `coordinator_policy` (a real report's HOST_DATA) with the coordinator
    /// role, the `web` workload, `reference` as the only SNP entry, no simulated entry.
    pub fn snp_manifest(
        &self,
        coordinator_policy: [u8; 32],
        reference: &concord_attestation::SnpReference,
    ) -> Vec<u8> {
        let json = serde_json::json!({
            "policies": {
                hex::encode(coordinator_policy): {
                    "name": "coordinator", "sans": ["coordinator"], "role": "coordinator"
                },
                self.workload_policy_hash().to_hex(): {
                    "name": "web", "sans": ["web"], "workload_secret_id": "default/web"
                }
            },
            "reference_values": { "snp": [reference] },
            "workload_owner_keys": [hex::encode(self.owner.verifying_key().to_bytes())],
            "seed_share_owners": {
                "threshold": self.threshold,
                "keys": self.share_owners.iter().map(|k| hex::encode(k.public_key())).collect::<Vec<_>>()
            }
        });
        serde_json::to_vec_pretty(&json).expect("json")
    }

    /// The default manifest, owned by `self.owner`, `web` named `web` and `web.default.svc`.
    pub fn manifest(&self, version: u32) -> Vec<u8> {
        let svc = format!("web-v{version}.default.svc");
        self.manifest_with(
            &["web", &svc, "10.0.0.7", "spiffe://example.org/web"],
            &[self.owner.verifying_key().to_bytes()],
        )
    }

    /// The default manifest with a `transit_keys` section: `orders` (versions `min_decryption` to
    /// `latest`) that `web` may use for everything, and `ledger`, which only the coordinator's policy
    /// may use (so `web` is refused).
    pub fn transit_manifest(&self, latest: u32, min_decryption: u32) -> Vec<u8> {
        let mut doc: serde_json::Value =
            serde_json::from_slice(&self.manifest(1)).expect("the default manifest is JSON");
        let web = self.workload_policy_hash().to_hex();
        let coordinator = self.coordinator_policy_hash().to_hex();
        doc["transit_keys"] = serde_json::json!({
            "orders": {
                "latest_version": latest,
                "min_decryption_version": min_decryption,
                "allow": { "encrypt": [web], "decrypt": [web], "rewrap": [web], "datakey": [web] }
            },
            "ledger": { "allow": { "encrypt": [coordinator], "decrypt": [coordinator] } }
        });
        serde_json::to_vec_pretty(&doc).expect("json")
    }

    /// A SetManifest request for `manifest` after `previous`, signed by `self.owner`, except a first
    /// manifest that lists no owner key (nobody can sign it).
    pub fn set_request(&self, manifest: Vec<u8>, previous: Hash) -> SetRequest {
        let unsignable = previous == Hash::ZERO
            && crate::manifest::Manifest::parse(&manifest).is_ok_and(|m| m.is_final());
        let owner = (!unsignable).then(|| {
            let t = format::transition_hash(&Hash::of(&manifest), &previous);
            (
                self.owner.verifying_key(),
                format::sign_owner(&self.owner, &t),
            )
        });
        SetRequest {
            manifest,
            policies: vec![
                self.coordinator_policy.clone(),
                self.workload_policy.clone(),
            ],
            expected_previous: previous,
            owner,
        }
    }

    /// Evidence for `policy` bound to `spki_der` (and a fixed nonce), verified against `manifest`: what
    /// the aTLS layer hands the core for a peer running `policy`.
    pub fn verified_report(
        &self,
        policy: &[u8],
        manifest: &crate::manifest::Manifest,
        spki_der: &[u8],
    ) -> concord_attestation::VerifiedReport {
        use concord_attestation::{EvidenceIssuer, PlatformTrust, Verifier};
        let report_data = concord_attestation::atls::binding(
            spki_der,
            &[5; 32],
            &concord_attestation::DeploymentId::UNPINNED,
        );
        let evidence = self.issuer(policy).issue(&report_data).expect("evidence");
        Verifier::new(PlatformTrust {
            insecure_simulated_root: Some(self.root.hash()),
        })
        .verify(
            &evidence,
            manifest.reference_values(),
            &report_data,
            &|h| manifest.policy(&Hash(*h)).is_some(),
            std::time::SystemTime::now(),
        )
        .expect("the evidence verifies against the manifest")
    }

    /// An issuer that produces evidence for `policy` on this deployment's simulated platform.
    pub fn issuer(&self, policy: &[u8]) -> SimulatedIssuer {
        SimulatedIssuer::new(&self.root, self.measurement, *Hash::of(policy).as_bytes())
            .expect("simulated issuer")
    }

    /// An issuer that produces simulated TDX quotes for `policy` (in MRCONFIGID), the measurement
    /// as MRTD, on a fresh simulated Intel hierarchy this deployment's simulated root endorses.
    pub fn tdx_issuer(&self, policy: &[u8]) -> concord_attestation::simulated::SimulatedTdxIssuer {
        concord_attestation::simulated::SimulatedTdxIssuer::new(
            &self.root,
            self.measurement,
            *Hash::of(policy).as_bytes(),
        )
        .expect("simulated TDX issuer")
    }
}

impl Default for TestDeployment {
    fn default() -> TestDeployment {
        TestDeployment::new()
    }
}
