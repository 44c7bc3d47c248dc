//! The manifest's optional `transit_keys` section: the keys of the Vault-compatible transit API
//! (`crate::transit`), their versions, and which policies may use each for what.
//!
//! Owns parsing and checking the section. The keys themselves are never here: each (name, version)
//! is derived from the seed inside the replica (docs/PROTOCOL.md §4).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::ManifestError;
use crate::hash::Hash;

/// The most transit keys a manifest may name.
pub const MAX_TRANSIT_KEYS: usize = 1024;
/// The highest key version: `GET keys/:name` lists every version, so the list stays small.
pub const MAX_TRANSIT_VERSION: u32 = 1024;
/// The longest key name, in bytes.
pub const MAX_TRANSIT_NAME: usize = 128;

/// What a workload may do with a transit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransitOp {
    Encrypt,
    Decrypt,
    Rewrap,
    Datakey,
}

impl TransitOp {
    pub const ALL: [TransitOp; 4] = [
        TransitOp::Encrypt,
        TransitOp::Decrypt,
        TransitOp::Rewrap,
        TransitOp::Datakey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransitOp::Encrypt => "encrypt",
            TransitOp::Decrypt => "decrypt",
            TransitOp::Rewrap => "rewrap",
            TransitOp::Datakey => "datakey",
        }
    }
}

/// One transit key: its versions and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitKey {
    /// The version new ciphertexts use (Vault's `latest_version`); raising it is a rotation.
    pub latest_version: u32,
    /// Ciphertexts of older versions are refused (Vault's `min_decryption_version`).
    pub min_decryption_version: u32,
    /// The policy hashes allowed each operation. An operation not listed is allowed to nobody.
    pub allow: BTreeMap<TransitOp, BTreeSet<Hash>>,
}

impl TransitKey {
    /// Whether the workload with `policy` may do `op` with this key.
    pub fn allows(&self, op: TransitOp, policy: &Hash) -> bool {
        self.allow.get(&op).is_some_and(|p| p.contains(policy))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TransitKeyDoc {
    #[serde(default = "one")]
    latest_version: u32,
    #[serde(default = "one")]
    min_decryption_version: u32,
    #[serde(default)]
    allow: AllowDoc,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AllowDoc {
    #[serde(default)]
    encrypt: Vec<String>,
    #[serde(default)]
    decrypt: Vec<String>,
    #[serde(default)]
    rewrap: Vec<String>,
    #[serde(default)]
    datakey: Vec<String>,
}

fn one() -> u32 {
    1
}

/// A key name as Vault's paths carry it: 1 to 128 of `A-Z a-z 0-9 _ - .`, not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TRANSIT_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks the section against the manifest's `policies`.
pub(super) fn parse(
    doc: BTreeMap<String, TransitKeyDoc>,
    policies: &BTreeMap<Hash, super::Policy>,
) -> Result<BTreeMap<String, TransitKey>, ManifestError> {
    let err = |field: String, msg: String| ManifestError(format!("at `{field}`: {msg}"));
    if doc.len() > MAX_TRANSIT_KEYS {
        return Err(err(
            "transit_keys".into(),
            format!(
                "{} keys, more than the {MAX_TRANSIT_KEYS} Concord accepts",
                doc.len()
            ),
        ));
    }
    let mut keys = BTreeMap::new();
    for (name, k) in doc {
        let field = format!("transit_keys.{name}");
        if !valid_name(&name) {
            return Err(err(
                field,
                format!(
                    "a key name is 1 to {MAX_TRANSIT_NAME} letters, digits, `_`, `-` or `.` (it is part of a URL path)"
                ),
            ));
        }
        if k.latest_version == 0 || k.latest_version > MAX_TRANSIT_VERSION {
            return Err(err(
                format!("{field}.latest_version"),
                format!("must be between 1 and {MAX_TRANSIT_VERSION}"),
            ));
        }
        if k.min_decryption_version == 0 || k.min_decryption_version > k.latest_version {
            return Err(err(
                format!("{field}.min_decryption_version"),
                format!(
                    "must be between 1 and latest_version ({})",
                    k.latest_version
                ),
            ));
        }
        let mut allow = BTreeMap::new();
        let lists = [
            (TransitOp::Encrypt, k.allow.encrypt),
            (TransitOp::Decrypt, k.allow.decrypt),
            (TransitOp::Rewrap, k.allow.rewrap),
            (TransitOp::Datakey, k.allow.datakey),
        ];
        for (op, list) in lists {
            let mut set = BTreeSet::new();
            for (i, p) in list.iter().enumerate() {
                let at = format!("{field}.allow.{}[{i}]", op.as_str());
                let hash = Hash::from_hex(p).map_err(|m| err(at.clone(), m))?;
                if !policies.contains_key(&hash) {
                    return Err(err(
                        at,
                        format!("policy {p} is not in this manifest's `policies`"),
                    ));
                }
                if !set.insert(hash) {
                    return Err(err(at, "listed twice".into()));
                }
            }
            if !set.is_empty() {
                allow.insert(op, set);
            }
        }
        keys.insert(
            name,
            TransitKey {
                latest_version: k.latest_version,
                min_decryption_version: k.min_decryption_version,
                allow,
            },
        );
    }
    Ok(keys)
}
