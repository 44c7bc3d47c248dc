use super::*;
use crate::testing::TestDeployment;

fn with(f: impl FnOnce(&mut serde_json::Value)) -> Result<Manifest, ManifestError> {
    let d = TestDeployment::new();
    let mut v: serde_json::Value = serde_json::from_slice(&d.manifest(1)).unwrap();
    f(&mut v);
    Manifest::parse(&serde_json::to_vec(&v).unwrap())
}

fn err_of(f: impl FnOnce(&mut serde_json::Value)) -> String {
    with(f).unwrap_err().0
}

#[test]
fn the_fixture_manifest_parses() {
    let d = TestDeployment::new();
    let bytes = d.manifest(1);
    let m = Manifest::parse(&bytes).unwrap();
    assert_eq!(m.hash(), Hash::of(&bytes));
    assert_eq!(m.coordinator_policies(), vec![d.coordinator_policy_hash()]);
    let web = m.policy(&d.workload_policy_hash()).unwrap();
    assert_eq!(web.sans.len(), 4);
    assert!(matches!(web.sans[2], San::Ip(_)));
    assert!(matches!(web.sans[3], San::Uri(_)));
}

#[test]
fn the_design_example_shape_parses() {
    let json = r#"{
      "policies": {
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08": {
          "name": "web",
          "sans": ["web", "web.default.svc.cluster.local", "10.0.0.7", "spiffe://example.org/web"],
          "workload_secret_id": "default/web",
          "role": "coordinator"
        }
      },
      "reference_values": {
        "snp": [{
          "product": "Milan",
          "trusted_measurements": ["000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001"],
          "minimum_tcb": { "bootloader": 3, "tee": 0, "snp": 8, "microcode": 115 },
          "allow_debug": false,
          "allow_migration_agent": false,
          "allowed_chip_ids": ["00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001"]
        }],
        "simulated": [{ "root": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "trusted_measurements": ["000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001"] }]
      },
      "workload_owner_keys": ["d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"],
      "seed_share_owners": { "threshold": 2, "keys": [
        "0101010101010101010101010101010101010101010101010101010101010101",
        "0202020202020202020202020202020202020202020202020202020202020202",
        "0303030303030303030303030303030303030303030303030303030303030303"] }
    }"#;
    Manifest::parse(json.as_bytes()).unwrap();
}

#[test]
fn unknown_fields_are_named() {
    let e = err_of(|v| {
        v["colour"] = "blue".into();
    });
    assert!(e.contains("colour"), "{e}");
    let e = err_of(|v| {
        let p = v["policies"].as_object_mut().unwrap();
        let first = p.values_mut().next().unwrap();
        first["nmae"] = "typo".into();
    });
    assert!(e.contains("nmae") && e.contains("policies"), "{e}");
}

#[test]
fn invalid_values_name_their_field() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["workload_owner_keys"] = serde_json::json!(["abcd"])),
            "workload_owner_keys[0]",
        ),
        (
            Box::new(|v| v["workload_owner_keys"] = serde_json::json!([42])),
            "workload_owner_keys[0]",
        ),
        (
            Box::new(|v| v["seed_share_owners"]["threshold"] = 7.into()),
            "seed_share_owners.threshold",
        ),
        (
            Box::new(|v| v["seed_share_owners"]["threshold"] = 0.into()),
            "seed_share_owners.threshold",
        ),
        (
            Box::new(|v| v["seed_share_owners"]["keys"][1] = "zz".into()),
            "seed_share_owners.keys[1]",
        ),
        (
            Box::new(|v| {
                let k = v["seed_share_owners"]["keys"][0].clone();
                v["seed_share_owners"]["keys"][1] = k;
            }),
            "seed_share_owners.keys[1]",
        ),
        (
            Box::new(|v| {
                let p = v["policies"].as_object_mut().unwrap();
                p.insert("abc".into(), serde_json::json!({"sans": []}));
            }),
            "policies.abc",
        ),
        (
            Box::new(|v| {
                let p = v["policies"].as_object_mut().unwrap();
                p.values_mut().next().unwrap()["role"] = "admin".into();
            }),
            "role",
        ),
        (
            Box::new(|v| {
                let p = v["policies"].as_object_mut().unwrap();
                p.values_mut().next().unwrap()["sans"] = serde_json::json!(["not a name"]);
            }),
            "sans[0]",
        ),
        (
            Box::new(|v| v["reference_values"]["simulated"][0]["root"] = "00".into()),
            "reference_values",
        ),
    ];
    for (f, field) in cases {
        let e = err_of(f);
        assert!(e.contains(field), "expected the error to name {field}: {e}");
    }
}

#[test]
fn missing_required_fields_and_garbage_are_errors() {
    assert!(
        err_of(|v| {
            v.as_object_mut().unwrap().remove("seed_share_owners");
        })
        .contains("seed_share_owners")
    );
    for garbage in [
        &b""[..],
        b"{",
        b"[]",
        b"null",
        b"\xff\xfe",
        b"{\"policies\": 1}",
    ] {
        assert!(Manifest::parse(garbage).is_err());
    }
}

#[test]
fn a_policy_listed_twice_is_an_error() {
    let h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let d = TestDeployment::new();
    let text = String::from_utf8(d.manifest(1)).unwrap();
    let dup = text.replacen(
        "\"policies\": {",
        &format!("\"policies\": {{ \"{h}\": {{\"sans\": []}}, \"{h}\": {{\"sans\": []}},"),
        1,
    );
    let e = Manifest::parse(dup.as_bytes()).unwrap_err().0;
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn empty_owner_keys_make_the_manifest_final() {
    let d = TestDeployment::new();
    let m = Manifest::parse(&d.manifest_with(&["web"], &[])).unwrap();
    assert!(m.is_final());
}

/// docs/examples/manifest.json is the documented example: it must stay a manifest this parser accepts.
#[test]
fn the_documented_example_parses() {
    let bytes = include_bytes!("../../../docs/examples/manifest.json");
    let m = Manifest::parse(bytes).unwrap();
    assert!(!m.coordinator_policies().is_empty());
}

#[test]
fn the_deployment_id_is_the_documented_encoding() {
    // Golden vectors (docs/PROTOCOL.md, "Deployment id"), computed with Python's hashlib.
    let owners = SeedShareOwners {
        threshold: 2,
        keys: vec![[3; 32], [1; 32]],
    };
    assert_eq!(
        hex::encode(deployment_id(&owners, [[0x22; 32]].into_iter(), &Hash::of(b"{}")).0),
        "85b3b5f78234a9dc535140577b002114a2203c8812cf8d2ffa17fe04c2d9a10b"
    );
    let alone = SeedShareOwners {
        threshold: 1,
        keys: vec![[1; 32]],
    };
    assert_eq!(
        hex::encode(deployment_id(&alone, std::iter::empty(), &Hash::of(b"{}")).0),
        "7eb052c20c851b763af80dcd8417b76e4372a6e57c78d55c81dd8a68e0ae61a5"
    );
    // With owner keys the manifest hash is not part of the encoding.
    assert_eq!(
        deployment_id(&owners, [[0x22; 32]].into_iter(), &Hash::of(b"other")),
        deployment_id(&owners, [[0x22; 32]].into_iter(), &Hash::of(b"{}")),
    );
}

#[test]
fn the_deployment_id_names_share_owners_threshold_and_owner_keys_not_order_or_policies() {
    let d = TestDeployment::new();
    let base = Manifest::parse(&d.manifest(1)).unwrap().deployment_id();
    // Changes to this deployment's manifest (`with` makes a new deployment each time).
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&d.manifest(1)).unwrap();
        f(&mut v);
        Manifest::parse(&serde_json::to_vec(&v).unwrap())
    };
    assert!(!base.is_unpinned());
    // A later version of the same deployment (other SANs) has the same id.
    assert_eq!(
        Manifest::parse(&d.manifest(2)).unwrap().deployment_id(),
        base
    );
    // Order does not matter.
    let reordered = with(&|v| {
        let keys = v["seed_share_owners"]["keys"].as_array_mut().unwrap();
        keys.reverse();
    })
    .unwrap();
    assert_eq!(reordered.deployment_id(), base);
    // Policies do not enter it (the coordinator's own policy hash cannot: it contains the id).
    let more_policies = with(&|v| {
        v["policies"][Hash::of(b"another").to_hex()] = serde_json::json!({"sans": ["x"]});
    })
    .unwrap();
    assert_eq!(more_policies.deployment_id(), base);
    // Each party does.
    let other_threshold = with(&|v| v["seed_share_owners"]["threshold"] = 3.into()).unwrap();
    assert_ne!(other_threshold.deployment_id(), base);
    let other_share_owner = with(&|v| {
        v["seed_share_owners"]["keys"][0] = hex::encode([9u8; 32]).into();
    })
    .unwrap();
    assert_ne!(other_share_owner.deployment_id(), base);
    let other_owner = TestDeployment::new().owner.verifying_key().to_bytes();
    let more_owners = with(&|v| {
        v["workload_owner_keys"]
            .as_array_mut()
            .unwrap()
            .push(hex::encode(other_owner).into());
    })
    .unwrap();
    assert_ne!(more_owners.deployment_id(), base);
    let no_owners = with(&|v| v["workload_owner_keys"] = serde_json::json!([])).unwrap();
    assert_ne!(no_owners.deployment_id(), base);
}

#[test]
fn a_first_manifest_without_owner_keys_binds_its_policies_into_the_deployment_id() {
    // Nobody can authorize such a first manifest, so the host must not be able to keep the id while
    // changing the policies (issue 9.1).
    let d = TestDeployment::new();
    let final_with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&d.manifest(1)).unwrap();
        v["workload_owner_keys"] = serde_json::json!([]);
        f(&mut v);
        Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
    };
    let base = final_with(&|_| {});
    assert_eq!(final_with(&|_| {}).deployment_id(), base.deployment_id());
    let hosts_policy = final_with(&|v| {
        v["policies"][Hash::of(b"host").to_hex()] =
            serde_json::json!({"sans": ["x"], "workload_secret_id": "victim"});
    });
    assert_ne!(hosts_policy.deployment_id(), base.deployment_id());
}

#[test]
fn owner_keys_are_capped_and_checked_for_duplicates_in_linear_time() {
    let key = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes(),
    );
    let e = err_of(|m| {
        m["workload_owner_keys"] = serde_json::json!(vec![key.clone(); super::MAX_OWNER_KEYS + 1]);
    });
    assert!(
        e.contains("257 keys, more than the 256 Concord accepts"),
        "{e}"
    );
    let e = err_of(|m| m["workload_owner_keys"] = serde_json::json!([key, key]));
    assert!(
        e.contains("workload_owner_keys[1]") && e.contains("listed twice"),
        "{e}"
    );
}

#[test]
fn transit_keys_parse_with_defaults_and_authorize_per_operation() {
    let d = TestDeployment::new();
    let m = Manifest::parse(&d.transit_manifest(3, 2)).unwrap();
    let orders = &m.transit_keys()["orders"];
    assert_eq!(
        (orders.latest_version, orders.min_decryption_version),
        (3, 2)
    );
    let web = d.workload_policy_hash();
    assert!(TransitOp::ALL.iter().all(|op| orders.allows(*op, &web)));
    let ledger = &m.transit_keys()["ledger"];
    assert_eq!(
        (ledger.latest_version, ledger.min_decryption_version),
        (1, 1)
    );
    assert!(!ledger.allows(TransitOp::Encrypt, &web));
    assert!(ledger.allows(TransitOp::Encrypt, &d.coordinator_policy_hash()));
    assert!(!ledger.allows(TransitOp::Datakey, &d.coordinator_policy_hash()));
    // Without the section: no keys.
    assert!(
        Manifest::parse(&d.manifest(1))
            .unwrap()
            .transit_keys()
            .is_empty()
    );
}

#[test]
fn bad_transit_keys_are_refused_naming_the_field() {
    let web = TestDeployment::new().workload_policy_hash().to_hex();
    let cases = [
        (serde_json::json!({"a/b": {}}), "transit_keys.a/b"),
        (serde_json::json!({"..": {}}), "transit_keys.."),
        (
            serde_json::json!({"k": {"latest_version": 0}}),
            "transit_keys.k.latest_version",
        ),
        (
            serde_json::json!({"k": {"latest_version": 2000}}),
            "transit_keys.k.latest_version",
        ),
        (
            serde_json::json!({"k": {"latest_version": 2, "min_decryption_version": 3}}),
            "transit_keys.k.min_decryption_version",
        ),
        (
            serde_json::json!({"k": {"allow": {"encrypt": ["00".repeat(32)]}}}),
            "transit_keys.k.allow.encrypt[0]",
        ),
        (
            serde_json::json!({"k": {"allow": {"decrypt": [web, web]}}}),
            "transit_keys.k.allow.decrypt[1]",
        ),
        (serde_json::json!({"k": {"allow": {"sign": []}}}), "sign"),
        (serde_json::json!({"k": {"derived": true}}), "derived"),
    ];
    for (keys, field) in cases {
        let e = err_of(|v| v["transit_keys"] = keys.clone());
        assert!(e.contains(field), "{keys}: {e}");
    }
}
