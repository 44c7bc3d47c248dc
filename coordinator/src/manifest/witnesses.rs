//! The manifest's optional `witnesses` section (MANIFEST.md, "witnesses"): the transparency-log
//! witnesses whose cosignatures the coordinators collect on every transition, and how many a client
//! requires on a checkpoint (docs/PROTOCOL.md §15).

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use crate::history::note::valid_key_name;

/// The most witnesses a manifest may list (each costs a request per transition).
pub const MAX_WITNESSES: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WitnessesDoc {
    threshold: usize,
    list: Vec<WitnessDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WitnessDoc {
    name: String,
    key: String,
    address: String,
}

/// The checked section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witnesses {
    /// How many distinct listed witnesses must cosign a checkpoint for a client to accept it.
    pub threshold: usize,
    pub list: Vec<WitnessEntry>,
}

/// One witness: its key name, cosignature key and `host:port` (plain HTTP, C2SP tlog-witness; the
/// address is trusted for availability only, the key for everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessEntry {
    pub name: String,
    pub key: VerifyingKey,
    pub address: String,
}

pub(super) fn check(doc: WitnessesDoc) -> Result<Witnesses, (String, String)> {
    if doc.list.len() > MAX_WITNESSES {
        return Err((
            "witnesses.list".into(),
            format!("{} witnesses, at most {MAX_WITNESSES}", doc.list.len()),
        ));
    }
    if doc.threshold > doc.list.len() {
        return Err((
            "witnesses.threshold".into(),
            format!(
                "{} is more than the {} witnesses listed",
                doc.threshold,
                doc.list.len()
            ),
        ));
    }
    let mut list: Vec<WitnessEntry> = Vec::new();
    for (i, w) in doc.list.into_iter().enumerate() {
        let field = format!("witnesses.list[{i}]");
        if !valid_key_name(&w.name) || w.name.len() > 256 {
            return Err((
                format!("{field}.name"),
                "a key name is 1 to 256 characters, without spaces or `+`".into(),
            ));
        }
        let key = hex::decode(&w.key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| {
                (
                    format!("{field}.key"),
                    "not a hex Ed25519 public key (64 hex characters)".to_string(),
                )
            })?;
        if w.address.is_empty() || w.address.len() > 256 || w.address.contains(char::is_whitespace)
        {
            return Err((format!("{field}.address"), "expected host:port".into()));
        }
        if list.iter().any(|x| x.name == w.name || x.key == key) {
            return Err((field, "a witness name or key is listed twice".into()));
        }
        list.push(WitnessEntry {
            name: w.name,
            key,
            address: w.address,
        });
    }
    Ok(Witnesses {
        threshold: doc.threshold,
        list,
    })
}
