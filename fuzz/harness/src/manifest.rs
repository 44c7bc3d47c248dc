//! `manifest`: the coordinator's strict manifest parser, and what the replica reads of a manifest that
//! parsed (its policies, reference values, owner keys and seed share owners).

use concord_coordinator::manifest::Manifest;

pub fn run(data: &[u8]) {
    let Ok(manifest) = Manifest::parse(data) else {
        return;
    };
    let _ = manifest.coordinator_policies();
    let _ = manifest.reference_values().validate();
    let _ = manifest.is_final();
    for policy in manifest.policies().values() {
        for san in &policy.sans {
            let _ = san.as_string();
        }
    }
}
