//! The JSON document of a manifest and its conversion to the checked [`Manifest`].

use std::collections::BTreeMap;
use std::fmt;

use concord_attestation::ReferenceValues;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{
    MAX_OWNER_KEYS, MAX_POLICIES, Manifest, ManifestError, Policy, Role, San, SeedShareOwners,
};
use crate::hash::Hash;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestDoc {
    #[serde(deserialize_with = "unique_map")]
    policies: BTreeMap<String, PolicyDoc>,
    reference_values: ReferenceValues,
    workload_owner_keys: Vec<String>,
    seed_share_owners: SeedShareOwnersDoc,
    #[serde(default)]
    witnesses: Option<super::witnesses::WitnessesDoc>,
    /// The transit API's keys (`manifest/transit.rs`).
    #[serde(default, deserialize_with = "unique_map")]
    transit_keys: BTreeMap<String, super::transit::TransitKeyDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    #[serde(default)]
    name: Option<String>,
    sans: Vec<String>,
    #[serde(default)]
    workload_secret_id: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedShareOwnersDoc {
    threshold: u8,
    keys: Vec<String>,
}

/// A map that refuses a key given twice: JSON allows it, but two meanings for one policy hash is a trap.
/// It holds at most [`MAX_POLICIES`] entries; past that it only counts the rest, to say how many there were.
fn unique_map<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of policies keyed by their hash")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = map.next_key::<String>()? {
                if out.len() == MAX_POLICIES {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    let mut n = MAX_POLICIES + 1;
                    while map
                        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                        .is_some()
                    {
                        n += 1;
                    }
                    return Err(serde::de::Error::custom(too_many_policies(n)));
                }
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "policy {k} is listed twice"
                    )));
                }
                let v = map.next_value::<V>()?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique(std::marker::PhantomData))
}

fn too_many_policies(n: usize) -> String {
    format!(
        "the manifest has {n} policies, more than the {MAX_POLICIES} Concord accepts; \
         split the workloads across deployments"
    )
}

/// Parses `bytes`, whose SHA-256 is `hash`.
pub(super) fn parse(bytes: &[u8], hash: Hash) -> Result<Manifest, ManifestError> {
    // Without the path first: tracking it costs about as much as the parse, and a history of 10,000
    // manifests is parsed at every start (issue 11.4). Only a document that fails is read again, with
    // the path, for the message; the same `Deserialize` decides both times.
    if let Ok(doc) = serde_json::from_slice::<ManifestDoc>(bytes) {
        return checked(bytes, hash, doc);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let doc: ManifestDoc = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ManifestError(format!("{inner}"))
        } else {
            ManifestError(format!("at `{path}`: {inner}"))
        }
    })?;
    checked(bytes, hash, doc)
}

/// The manifest `doc` (read from `bytes`) once every rule the types do not express holds.
fn checked(bytes: &[u8], manifest_hash: Hash, doc: ManifestDoc) -> Result<Manifest, ManifestError> {
    let err = |field: String, msg: String| ManifestError(format!("at `{field}`: {msg}"));

    let mut policies = BTreeMap::new();
    for (key, p) in doc.policies {
        // Made only for an error: a replica parses every manifest of its history at start.
        let field = || format!("policies.{key}");
        let hash = Hash::from_hex(&key).map_err(|m| err(field(), m))?;
        // What `Hash::to_hex` writes, without making it: 64 lowercase hex digits.
        if key.len() != 64 || !key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err(
                field(),
                "policy hashes are written in lowercase hex".into(),
            ));
        }
        let sans = p
            .sans
            .iter()
            .enumerate()
            .map(|(i, s)| San::parse(s).map_err(|m| err(format!("{}.sans[{i}]", field()), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let role = match p.role.as_deref() {
            None => None,
            Some("coordinator") => Some(Role::Coordinator),
            Some(other) => {
                return Err(err(
                    format!("{}.role", field()),
                    format!("unknown role {other:?}; the only role is \"coordinator\""),
                ));
            }
        };
        if let Some(name) = &p.name {
            // The name becomes the certificate's common name, which X.509 limits to 64 characters.
            if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
                return Err(err(
                    format!("{}.name", field()),
                    "must be 1 to 64 printable characters (it becomes the certificate's common name)".into(),
                ));
            }
        }
        if let Some(id) = &p.workload_secret_id
            && id.is_empty()
        {
            return Err(err(
                format!("{}.workload_secret_id", field()),
                "must not be empty; omit it for no workload secret".into(),
            ));
        }
        let policy = Policy {
            name: p.name,
            sans,
            workload_secret_id: p.workload_secret_id,
            role,
        };
        policies.insert(hash, policy);
    }

    doc.reference_values
        .validate()
        .map_err(|m| err("reference_values".into(), m))?;

    if doc.workload_owner_keys.len() > MAX_OWNER_KEYS {
        return Err(err(
            "workload_owner_keys".into(),
            format!(
                "{} keys, more than the {MAX_OWNER_KEYS} Concord accepts",
                doc.workload_owner_keys.len()
            ),
        ));
    }
    let mut workload_owner_keys = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, k) in doc.workload_owner_keys.iter().enumerate() {
        let field = || format!("workload_owner_keys[{i}]");
        let bytes = hex32(k).map_err(|m| err(field(), m))?;
        if !seen.insert(bytes) {
            return Err(err(field(), "listed twice".into()));
        }
        let key = crate::history::verifying_key(&bytes)
            .ok_or_else(|| err(field(), "not a valid Ed25519 public key".into()))?;
        workload_owner_keys.push(key);
    }

    let owners = &doc.seed_share_owners;
    let n = owners.keys.len();
    if n == 0 || n > 255 {
        return Err(err(
            "seed_share_owners.keys".into(),
            format!("{n} keys; between 1 and 255 seed share owners are needed"),
        ));
    }
    if owners.threshold == 0 || usize::from(owners.threshold) > n {
        return Err(err(
            "seed_share_owners.threshold".into(),
            format!(
                "{} is not between 1 and the number of keys ({n})",
                owners.threshold
            ),
        ));
    }
    let mut keys = Vec::with_capacity(n);
    for (i, k) in owners.keys.iter().enumerate() {
        let field = || format!("seed_share_owners.keys[{i}]");
        let key = hex32(k).map_err(|m| err(field(), m))?;
        if key == [0; 32] {
            return Err(err(
                field(),
                "the all-zero key is not a valid X25519 key".into(),
            ));
        }
        if keys.contains(&key) {
            return Err(err(field(), "listed twice".into()));
        }
        keys.push(key);
    }

    let witnesses = doc
        .witnesses
        .map(super::witnesses::check)
        .transpose()
        .map_err(|(f, m)| err(f, m))?;
    let transit_keys = super::transit::parse(doc.transit_keys, &policies)?;

    Ok(Manifest {
        inner: std::sync::Arc::new(super::Parsed {
            witnesses,
            transit_keys,
            bytes: bytes.to_vec(),
            hash: manifest_hash,
            policies,
            reference_values: doc.reference_values,
            workload_owner_keys,
            seed_share_owners: SeedShareOwners {
                threshold: owners.threshold,
                keys,
            },
        }),
    })
}

fn hex32(s: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    if hex::decode_to_slice(s, &mut out).is_ok() {
        return Ok(out);
    }
    let bytes = hex::decode(s).map_err(|e| format!("{s:?} is not hex: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes, expected 32 (64 hex characters)", bytes.len()))
}
