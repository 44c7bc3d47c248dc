use serde_json::{Value, json};

use super::*;
use crate::manifest::Manifest;
use crate::testing::TestDeployment;
use concord_mesh_ca::{Salt, Seed, SeedEngine};

struct Fixture {
    d: TestDeployment,
    seed: u8,
    latest: u32,
    min: u32,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            d: TestDeployment::new(),
            seed: 7,
            latest: 1,
            min: 1,
        }
    }

    fn material(&self) -> Material {
        Ok(TransitMaterial {
            manifest: Manifest::parse(&self.d.transit_manifest(self.latest, self.min)).unwrap(),
            engine: SeedEngine::new(Seed::from_bytes([self.seed; 32]), Salt::from_bytes([1; 32])),
        })
    }

    fn web(&self) -> Hash {
        self.d.workload_policy_hash()
    }

    fn call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let r = handle(
            method,
            path,
            &serde_json::to_vec(&body).unwrap(),
            &self.web(),
            || self.material(),
        );
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }
}

fn b64(s: &[u8]) -> String {
    STANDARD.encode(s)
}

#[test]
fn encrypt_then_decrypt_round_trips_in_vaults_shapes() {
    let f = Fixture::new();
    let (s, r) = f.call(
        "POST",
        "/v1/transit/encrypt/orders",
        json!({"plaintext": b64(b"hi")}),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["data"]["key_version"], 1);
    assert_eq!(r["lease_id"], "");
    let ct = r["data"]["ciphertext"].as_str().unwrap().to_string();
    assert!(ct.starts_with("vault:v1:"));
    let (s, r) = f.call(
        "PUT",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": ct}),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["data"]["plaintext"], b64(b"hi"));
}

#[test]
fn only_the_deployments_seed_decrypts() {
    let mut f = Fixture::new();
    let (_, r) = f.call(
        "POST",
        "/v1/transit/encrypt/orders",
        json!({"plaintext": b64(b"x")}),
    );
    let ct = r["data"]["ciphertext"].clone();
    f.seed = 8;
    let (s, r) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": ct}),
    );
    assert_eq!(
        (s, r["errors"][0].as_str()),
        (400, Some("cipher: message authentication failed"))
    );
    f.seed = 7;
    let (s, _) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": ct}),
    );
    assert_eq!(s, 200);
}

#[test]
fn batches_answer_per_item_and_fail_the_request_if_one_fails() {
    let f = Fixture::new();
    let (s, r) = f.call(
        "POST",
        "/v1/transit/encrypt/orders",
        json!({"batch_input": [{"plaintext": b64(b"a"), "reference": "r1"}, {"plaintext": b64(b"b")}]}),
    );
    assert_eq!(s, 200, "{r}");
    let results = r["data"]["batch_results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["reference"], "r1");
    let batch: Vec<Value> = results
        .iter()
        .map(|x| json!({"ciphertext": x["ciphertext"]}))
        .chain([json!({"ciphertext": "vault:v1:AAAA"})])
        .collect();
    let (s, r) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"batch_input": batch}),
    );
    assert_eq!(s, 400, "{r}");
    let results = r["data"]["batch_results"].as_array().unwrap();
    assert_eq!(results[0]["plaintext"], b64(b"a"));
    assert_eq!(results[1]["plaintext"], b64(b"b"));
    assert_eq!(results[2]["error"], "invalid ciphertext: too short");
}

#[test]
fn associated_data_is_bound() {
    let f = Fixture::new();
    let (_, r) = f.call(
        "POST",
        "/v1/transit/encrypt/orders",
        json!({"plaintext": b64(b"a"), "associated_data": b64(b"row 7")}),
    );
    let ct = r["data"]["ciphertext"].clone();
    let (s, _) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": ct, "associated_data": b64(b"row 7")}),
    );
    assert_eq!(s, 200);
    let (s, r) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": ct, "associated_data": b64(b"row 8")}),
    );
    assert_eq!(
        (s, r["errors"][0].as_str()),
        (400, Some("cipher: message authentication failed"))
    );
}

#[test]
fn rotation_rewrap_and_min_decryption_version() {
    let mut f = Fixture::new();
    let (_, r) = f.call(
        "POST",
        "/v1/transit/encrypt/orders",
        json!({"plaintext": b64(b"old")}),
    );
    let v1 = r["data"]["ciphertext"].as_str().unwrap().to_string();
    f.latest = 2;
    let (s, r) = f.call(
        "POST",
        "/v1/transit/rewrap/orders",
        json!({"ciphertext": v1}),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["data"]["key_version"], 2);
    let v2 = r["data"]["ciphertext"].as_str().unwrap().to_string();
    assert!(v2.starts_with("vault:v2:"));
    let (_, r) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": v2}),
    );
    assert_eq!(r["data"]["plaintext"], b64(b"old"));
    // Version 1 still decrypts until min_decryption_version passes it.
    let (s, _) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": v1}),
    );
    assert_eq!(s, 200);
    f.min = 2;
    let (s, r) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": v1}),
    );
    assert_eq!(
        (s, r["errors"][0].as_str()),
        (
            400,
            Some("ciphertext or signature version is disallowed by policy (too old)")
        )
    );
    let (s, r) = f.call("GET", "/v1/transit/keys/orders", json!({}));
    assert_eq!(s, 200);
    assert_eq!(r["data"]["latest_version"], 2);
    assert_eq!(r["data"]["min_decryption_version"], 2);
    assert_eq!(r["data"]["type"], "aes256-gcm96");
    assert_eq!(r["data"]["keys"], json!({"2": 0}));
    // A ciphertext of a version above the latest is refused.
    let v3 = v2.replace("vault:v2:", "vault:v3:");
    let (s, _) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": v3}),
    );
    assert_eq!(s, 400);
}

#[test]
fn datakeys_plaintext_and_wrapped_decrypt_to_the_key() {
    let f = Fixture::new();
    let (s, r) = f.call("POST", "/v1/transit/datakey/plaintext/orders", json!({}));
    assert_eq!(s, 200, "{r}");
    let plain = r["data"]["plaintext"].as_str().unwrap().to_string();
    assert_eq!(STANDARD.decode(&plain).unwrap().len(), 32);
    let (_, d) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": r["data"]["ciphertext"]}),
    );
    assert_eq!(d["data"]["plaintext"], plain);
    let (s, r) = f.call(
        "POST",
        "/v1/transit/datakey/wrapped/orders",
        json!({"bits": 512}),
    );
    assert_eq!(s, 200);
    assert!(r["data"].get("plaintext").is_none(), "{r}");
    let (_, d) = f.call(
        "POST",
        "/v1/transit/decrypt/orders",
        json!({"ciphertext": r["data"]["ciphertext"]}),
    );
    assert_eq!(
        STANDARD
            .decode(d["data"]["plaintext"].as_str().unwrap())
            .unwrap()
            .len(),
        64
    );
    let (s, _) = f.call(
        "POST",
        "/v1/transit/datakey/wrapped/orders",
        json!({"bits": 100}),
    );
    assert_eq!(s, 400);
}

#[test]
fn refusals_use_vaults_codes_and_error_shape() {
    let f = Fixture::new();
    let denied = |s: u16, r: &Value| {
        assert_eq!(s, 403, "{r}");
        assert!(
            r["errors"][0]
                .as_str()
                .unwrap()
                .contains("permission denied")
        );
    };
    // `ledger` exists but web may not use it.
    let (s, r) = f.call(
        "POST",
        "/v1/transit/encrypt/ledger",
        json!({"plaintext": b64(b"a")}),
    );
    denied(s, &r);
    let (s, r) = f.call("GET", "/v1/transit/keys/ledger", json!({}));
    denied(s, &r);
    // Not in the manifest.
    let (s, r) = f.call(
        "POST",
        "/v1/transit/encrypt/nope",
        json!({"plaintext": b64(b"a")}),
    );
    assert_eq!(
        (s, r["errors"][0].as_str()),
        (400, Some("encryption key not found"))
    );
    let (s, r) = f.call("GET", "/v1/transit/keys/nope", json!({}));
    assert_eq!((s, r), (404, json!({"errors": []})));
    // Unknown paths, and what Concord does not serve.
    for path in [
        "/v1/transit/sign/orders",
        "/v1/secret/data/x",
        "/v1/transit/keys/orders/rotate",
        "/nope",
    ] {
        let (s, r) = f.call("POST", path, json!({}));
        assert_eq!(s, 404, "{path}");
        assert!(
            r["errors"][0]
                .as_str()
                .unwrap()
                .contains("unsupported path"),
            "{path}: {r}"
        );
    }
    let (s, _) = f.call("DELETE", "/v1/transit/keys/orders", json!({}));
    assert_eq!(s, 405);
    // Bad input.
    for body in [
        json!({}),
        json!({"plaintext": "%%%"}),
        json!({"plaintext": b64(b"a"), "context": b64(b"c")}),
        json!({"plaintext": b64(b"a"), "nonce": b64(b"n")}),
        json!({"plaintext": b64(b"a"), "key_version": 2}),
        json!({"plaintext": 5}),
    ] {
        let (s, r) = f.call("POST", "/v1/transit/encrypt/orders", body.clone());
        assert_eq!(s, 400, "{body}: {r}");
        assert!(r["errors"][0].is_string(), "{r}");
    }
}

#[test]
fn a_replica_that_is_not_ready_answers_503_and_sealed_health() {
    let f = Fixture::new();
    let recovering = || Err(CoordinatorError::Recovering);
    let r = handle(
        "POST",
        "/v1/transit/encrypt/orders",
        b"{}",
        &f.web(),
        recovering,
    );
    assert_eq!(r.status, 503);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["errors"][0].is_string());
    let r = handle("GET", "/v1/sys/health", b"", &f.web(), recovering);
    assert_eq!(r.status, 503);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["sealed"], true);
    let (s, v) = f.call("GET", "/v1/sys/health", json!({}));
    assert_eq!((s, &v["sealed"]), (200, &json!(false)));
}

#[test]
fn no_reply_carries_key_material() {
    let f = Fixture::new();
    let engine = SeedEngine::new(Seed::from_bytes([7; 32]), Salt::from_bytes([1; 32]));
    let key = engine.transit_key("orders", 1);
    let (_, r) = f.call("GET", "/v1/transit/keys/orders", json!({}));
    let text = r.to_string();
    assert!(!text.contains(&hex::encode(key.as_ref())));
    assert!(!text.contains(&STANDARD.encode(key.as_ref())));
}
