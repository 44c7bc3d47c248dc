//! The transit API's core: Vault's paths, request and response JSON and error answers, decided as a
//! pure function of the request, the caller's attested policy and the replica's state.
//!
//! Owns routing, authorization against the manifest's `transit_keys`, and the operations (encrypt,
//! decrypt, rewrap, datakey, key metadata, health). It must never put a key, a plaintext or a data key
//! into anything but the response body, and never answer for a key the manifest does not name.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::cipher::{self, CipherError};
use crate::error::CoordinatorError;
use crate::hash::Hash;
use crate::manifest::{TransitKey, TransitOp};
use crate::state::TransitMaterial;

/// The most items of one `batch_input`.
pub const MAX_BATCH_ITEMS: usize = 4096;

/// An answer: HTTP status, JSON body, and the labels it is counted and logged under.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// `encrypt`, `decrypt`, `rewrap`, `datakey`, `keys`, `health` or `unsupported`.
    pub op: &'static str,
    /// The key name, when the manifest names it (so labels stay bounded).
    pub key: Option<String>,
}

impl Reply {
    fn json(status: u16, op: &'static str, key: Option<String>, body: &Value) -> Reply {
        Reply {
            status,
            // Serializing a `Value` cannot fail.
            body: serde_json::to_vec(body).unwrap_or_default(),
            op,
            key,
        }
    }

    /// Vault's error shape: `{"errors": [...]}`.
    fn error(status: u16, op: &'static str, key: Option<String>, message: &str) -> Reply {
        Reply::json(status, op, key, &json!({ "errors": [message] }))
    }

    /// Vault's successful shape: the data inside the response envelope.
    fn data(op: &'static str, key: Option<String>, data: Value) -> Reply {
        Reply::json(200, op, key, &envelope(data))
    }
}

fn envelope(data: Value) -> Value {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let h = hex::encode(id);
    json!({
        "request_id": format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
        "mount_type": "transit"
    })
}

/// What Vault answers for a path no handler serves.
const UNSUPPORTED_PATH: &str = "1 error occurred:\n\t* unsupported path\n\n";
/// What Vault answers for a method a path does not serve.
const UNSUPPORTED_OPERATION: &str = "1 error occurred:\n\t* unsupported operation\n\n";
/// Vault's answer to a caller its policy does not allow.
const PERMISSION_DENIED: &str = "1 error occurred:\n\t* permission denied\n\n";

/// The route of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Op(TransitOp, &'a str, DatakeyKind),
    ReadKey(&'a str),
    Unsupported,
    WrongMethod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatakeyKind {
    None,
    Plaintext,
    Wrapped,
}

fn route<'a>(method: &str, path: &'a str) -> Route<'a> {
    let write = matches!(method, "POST" | "PUT");
    let read = matches!(method, "GET" | "HEAD");
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Route::Unsupported;
    };
    if rest == "sys/health" {
        return if read {
            Route::Health
        } else {
            Route::WrongMethod
        };
    }
    let Some(rest) = rest.strip_prefix("transit/") else {
        return Route::Unsupported;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (route, is_write) = match parts.as_slice() {
        ["encrypt", name] => (Route::Op(TransitOp::Encrypt, name, DatakeyKind::None), true),
        ["decrypt", name] => (Route::Op(TransitOp::Decrypt, name, DatakeyKind::None), true),
        ["rewrap", name] => (Route::Op(TransitOp::Rewrap, name, DatakeyKind::None), true),
        ["datakey", "plaintext", name] => (
            Route::Op(TransitOp::Datakey, name, DatakeyKind::Plaintext),
            true,
        ),
        ["datakey", "wrapped", name] => (
            Route::Op(TransitOp::Datakey, name, DatakeyKind::Wrapped),
            true,
        ),
        ["keys", name] => (Route::ReadKey(name), false),
        _ => return Route::Unsupported,
    };
    let name_ok = match &route {
        Route::Op(_, n, _) | Route::ReadKey(n) => crate::manifest::transit_name_is_valid(n),
        _ => true,
    };
    if !name_ok {
        return Route::Unsupported;
    }
    match (is_write, write, read) {
        (true, true, _) | (false, _, true) => route,
        _ => Route::WrongMethod,
    }
}

/// The replica as the transit API sees it: ready with its keys, or why not.
pub type Material = Result<TransitMaterial, CoordinatorError>;

/// Answers one request. `caller` is the policy hash the client's mesh certificate carries; `material`
/// is asked only once the request is known to need it.
pub fn handle(
    method: &str,
    path: &str,
    body: &[u8],
    caller: &Hash,
    material: impl FnOnce() -> Material,
) -> Reply {
    match route(method, path) {
        Route::Unsupported => Reply::error(404, "unsupported", None, UNSUPPORTED_PATH),
        Route::WrongMethod => Reply::error(405, "unsupported", None, UNSUPPORTED_OPERATION),
        Route::Health => health(material().is_ok()),
        Route::ReadKey(name) => match material() {
            Err(e) => not_ready(&e, "keys"),
            Ok(m) => read_key(&m, name, caller),
        },
        Route::Op(op, name, kind) => match material() {
            Err(e) => not_ready(&e, op.as_str()),
            Ok(m) => operate(&m, op, kind, name, caller, body),
        },
    }
}

fn not_ready(e: &CoordinatorError, op: &'static str) -> Reply {
    Reply::error(
        503,
        op,
        None,
        &format!(
            "Vault is sealed: this coordinator is not ready ({e}); retry on another replica or later"
        ),
    )
}

/// `GET /v1/sys/health`: Vault's fields; 200 when ready, 503 (sealed) when not.
fn health(ready: bool) -> Reply {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body = json!({
        "initialized": true,
        "sealed": !ready,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": now,
        "version": concat!("concord-", env!("CARGO_PKG_VERSION")),
        "enterprise": false,
        "cluster_name": "concord",
    });
    Reply::json(if ready { 200 } else { 503 }, "health", None, &body)
}

/// The key a request names, if the manifest has it; Vault's answer otherwise.
fn key<'m>(m: &'m TransitMaterial, name: &str, op: &'static str) -> Result<&'m TransitKey, Reply> {
    m.manifest
        .transit_keys()
        .get(name)
        .ok_or_else(|| Reply::error(400, op, None, "encryption key not found"))
}

/// `GET /v1/transit/keys/:name`: allowed to a workload that may use the key for anything.
fn read_key(m: &TransitMaterial, name: &str, caller: &Hash) -> Reply {
    let Some(k) = m.manifest.transit_keys().get(name) else {
        // Vault answers a missing key's metadata with 404 and no message.
        return Reply::json(404, "keys", None, &json!({ "errors": [] }));
    };
    let label = Some(name.to_string());
    if !TransitOp::ALL.iter().any(|op| k.allows(*op, caller)) {
        return Reply::error(403, "keys", label, PERMISSION_DENIED);
    }
    // Vault lists the versions that can still decrypt; their creation times are not known here (a
    // version exists from the manifest that raised `latest_version` to it): 0.
    let versions: BTreeMap<String, u64> = (k.min_decryption_version..=k.latest_version)
        .map(|v| (v.to_string(), 0))
        .collect();
    Reply::data(
        "keys",
        label,
        json!({
            "name": name,
            "type": "aes256-gcm96",
            "keys": versions,
            "latest_version": k.latest_version,
            "min_decryption_version": k.min_decryption_version,
            "min_encryption_version": 0,
            "min_available_version": 0,
            "deletion_allowed": false,
            "derived": false,
            "exportable": false,
            "allow_plaintext_backup": false,
            "supports_encryption": true,
            "supports_decryption": true,
            "supports_derivation": false,
            "supports_signing": false,
            "imported_key": false,
            "auto_rotate_period": 0,
        }),
    )
}

/// One request's fields, as Vault names them; the single form and each `batch_input` item alike.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Item {
    plaintext: Option<String>,
    ciphertext: Option<String>,
    context: Option<String>,
    associated_data: Option<String>,
    nonce: Option<String>,
    key_version: Option<u32>,
    reference: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Request {
    #[serde(flatten)]
    single: Item,
    batch_input: Option<Vec<Item>>,
    bits: Option<u32>,
    convergent_encryption: Option<bool>,
    partial_failure_response_code: Option<u16>,
}

fn operate(
    m: &TransitMaterial,
    op: TransitOp,
    kind: DatakeyKind,
    name: &str,
    caller: &Hash,
    body: &[u8],
) -> Reply {
    let opname = op.as_str();
    let k = match key(m, name, opname) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let label = Some(name.to_string());
    if !k.allows(op, caller) {
        return Reply::error(403, opname, label, PERMISSION_DENIED);
    }
    let req: Request = if body.iter().all(u8::is_ascii_whitespace) {
        Request::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return Reply::error(
                    400,
                    opname,
                    label,
                    &format!("failed to parse JSON input: {e}"),
                );
            }
        }
    };
    if req.convergent_encryption == Some(true) {
        return Reply::error(
            400,
            opname,
            label,
            "convergent encryption requires derivation to be enabled, and Concord's transit keys are not derived",
        );
    }
    let ctx = KeyCtx {
        engine: &m.engine,
        name,
        key: k,
    };
    if op == TransitOp::Datakey {
        return match datakey(&ctx, kind, &req) {
            Ok(data) => Reply::data(opname, label, data),
            Err(msg) => Reply::error(400, opname, label, &msg),
        };
    }
    let one = |item: &Item| match op {
        TransitOp::Encrypt => encrypt(&ctx, item),
        TransitOp::Decrypt => decrypt(&ctx, item),
        _ => rewrap(&ctx, item),
    };
    match &req.batch_input {
        None => match one(&req.single) {
            Ok(data) => Reply::data(opname, label, data),
            Err(msg) => Reply::error(400, opname, label, &msg),
        },
        Some(items) if items.is_empty() => {
            Reply::error(400, opname, label, "missing batch input to process")
        }
        Some(items) if items.len() > MAX_BATCH_ITEMS => Reply::error(
            400,
            opname,
            label,
            &format!(
                "batch_input has {} items, more than the {MAX_BATCH_ITEMS} Concord processes in one request; split it",
                items.len()
            ),
        ),
        Some(items) => {
            let mut failed = false;
            let results: Vec<Value> = items
                .iter()
                .map(|item| {
                    let reference = item.reference.clone().unwrap_or_default();
                    match one(item) {
                        Ok(mut v) => {
                            v["reference"] = Value::String(reference);
                            v
                        }
                        Err(msg) => {
                            failed = true;
                            json!({ "error": msg, "reference": reference })
                        }
                    }
                })
                .collect();
            let mut reply = Reply::data(opname, label, json!({ "batch_results": results }));
            // As Vault: a batch with a failed item answers 400 (or the code the caller chose), with
            // every item's result.
            if failed {
                reply.status = req
                    .partial_failure_response_code
                    .filter(|c| (200..600).contains(c))
                    .unwrap_or(400);
            }
            reply
        }
    }
}

struct KeyCtx<'a> {
    engine: &'a concord_mesh_ca::SeedEngine,
    name: &'a str,
    key: &'a TransitKey,
}

impl KeyCtx<'_> {
    fn material(&self, version: u32) -> Zeroizing<[u8; 32]> {
        self.engine.transit_key(self.name, version)
    }

    /// The version to encrypt with: the latest unless the caller asks for an older one that can still
    /// decrypt.
    fn encryption_version(&self, asked: Option<u32>) -> Result<u32, String> {
        match asked {
            None | Some(0) => Ok(self.key.latest_version),
            Some(v) if v > self.key.latest_version => Err(format!(
                "requested version {v} for encryption is higher than the latest key version {}",
                self.key.latest_version
            )),
            Some(v) if v < self.key.min_decryption_version => Err(format!(
                "requested version {v} for encryption is below the key's min_decryption_version {}",
                self.key.min_decryption_version
            )),
            Some(v) => Ok(v),
        }
    }
}

/// What Concord does not support in an item: derived keys (`context`) and caller-chosen nonces.
fn check_unsupported(item: &Item) -> Result<(), String> {
    if item.context.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(
            "a context was provided, but Concord's transit keys are not derived keys (`derived` is false); \
             omit `context`, or bind data with `associated_data`"
                .into(),
        );
    }
    if item.nonce.as_deref().is_some_and(|n| !n.is_empty()) {
        return Err("provided nonce not allowed for this key".into());
    }
    Ok(())
}

fn b64(field: &str, value: Option<&str>) -> Result<Zeroizing<Vec<u8>>, String> {
    match value {
        None | Some("") => Ok(Zeroizing::new(Vec::new())),
        Some(v) => STANDARD
            .decode(v)
            .map(Zeroizing::new)
            .map_err(|_| format!("failed to base64-decode {field}")),
    }
}

fn encrypt(ctx: &KeyCtx<'_>, item: &Item) -> Result<Value, String> {
    check_unsupported(item)?;
    let Some(plaintext) = item.plaintext.as_deref() else {
        return Err("missing plaintext to encrypt".into());
    };
    let plaintext = b64("plaintext", Some(plaintext))?;
    let aad = b64("associated_data", item.associated_data.as_deref())?;
    let version = ctx.encryption_version(item.key_version)?;
    let ciphertext = cipher::seal(&ctx.material(version), version, &plaintext, &aad)
        .map_err(|e| e.to_string())?;
    Ok(json!({ "ciphertext": ciphertext, "key_version": version }))
}

/// Decrypts an item's ciphertext, refusing versions the manifest no longer allows.
fn open(ctx: &KeyCtx<'_>, item: &Item) -> Result<Zeroizing<Vec<u8>>, String> {
    check_unsupported(item)?;
    let Some(ciphertext) = item.ciphertext.as_deref().filter(|c| !c.is_empty()) else {
        return Err("missing ciphertext to decrypt".into());
    };
    let parsed = cipher::parse(ciphertext).map_err(|e| e.to_string())?;
    if parsed.version < ctx.key.min_decryption_version {
        return Err("ciphertext or signature version is disallowed by policy (too old)".into());
    }
    if parsed.version > ctx.key.latest_version {
        return Err(CipherError::Version.to_string());
    }
    let aad = b64("associated_data", item.associated_data.as_deref())?;
    cipher::open(&ctx.material(parsed.version), &parsed, &aad).map_err(|e| e.to_string())
}

fn decrypt(ctx: &KeyCtx<'_>, item: &Item) -> Result<Value, String> {
    let plaintext = open(ctx, item)?;
    Ok(json!({ "plaintext": STANDARD.encode(plaintext.as_slice()) }))
}

fn rewrap(ctx: &KeyCtx<'_>, item: &Item) -> Result<Value, String> {
    let plaintext = open(ctx, item)?;
    let aad = b64("associated_data", item.associated_data.as_deref())?;
    let version = ctx.encryption_version(item.key_version)?;
    let ciphertext = cipher::seal(&ctx.material(version), version, &plaintext, &aad)
        .map_err(|e| e.to_string())?;
    Ok(json!({ "ciphertext": ciphertext, "key_version": version }))
}

/// `datakey/plaintext|wrapped/:name`: a fresh random key, returned encrypted under the named key (and
/// in plaintext for `plaintext`).
fn datakey(ctx: &KeyCtx<'_>, kind: DatakeyKind, req: &Request) -> Result<Value, String> {
    check_unsupported(&req.single)?;
    let bits = req.bits.unwrap_or(256);
    if !matches!(bits, 128 | 256 | 512) {
        return Err("invalid bits given; valid values are 128, 256 and 512".into());
    }
    let mut key = Zeroizing::new(vec![0u8; bits as usize / 8]);
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|_| "failed to generate a data key: the OS random source failed".to_string())?;
    let version = ctx.key.latest_version;
    let ciphertext =
        cipher::seal(&ctx.material(version), version, &key, &[]).map_err(|e| e.to_string())?;
    let mut data = json!({ "ciphertext": ciphertext, "key_version": version });
    if kind == DatakeyKind::Plaintext {
        data["plaintext"] = Value::String(STANDARD.encode(key.as_slice()));
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
