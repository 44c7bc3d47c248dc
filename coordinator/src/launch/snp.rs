//! `--platform snp`: the SEV-SNP issuer on `/dev/sev-guest`, with the VCEK sources the flags name,
//! and the coordinator's own reference values for its peers before any manifest.
//!
//! Owns checking the SNP flags, building the issuer, and the launch-time self-check: the replica
//! takes one report of its own, learns its measurement and policy hash (HOST_DATA) from it, and
//! verifies that evidence against its own reference values exactly as a peer would. It must never
//! start a replica whose own evidence fails that check, and never accept, before a manifest, a
//! measurement or policy other than this replica's own.

use std::path::Path;
use std::time::SystemTime;

use concord_attestation::sev_guest::SEV_GUEST_DEVICE;
use concord_attestation::snp::SnpRevocation;
use concord_attestation::vcek::{
    CrlSource, KdsClient, KdsConfig, OfflineDir, VcekCache, VcekResolver, candidate_products,
};
use concord_attestation::{
    Evidence, Measurement, MinimumTcb, PlatformTrust, ReferenceValues, RejectReason, Report,
    SevGuestIssuer, SnpReference, Tcb, Verifier,
};
use rand::RngCore as _;

use super::{KDS_OFF, LaunchError, LaunchedPlatform, PlatformArgs};
use crate::hash::Hash;

/// How long the launch waits for the VCEK: longer than the KDS client's attempts for two products.
const LAUNCH_VCEK_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The SNP flags, checked without touching the device or the files.
pub(super) fn check(args: &PlatformArgs) -> Result<(), String> {
    kds_client(args).map(|_| ())
}

/// The KDS client `--kds-url` asks for, or none for `off`.
fn kds_client(args: &PlatformArgs) -> Result<Option<KdsClient>, String> {
    if args.kds_url == KDS_OFF {
        return Ok(None);
    }
    KdsClient::new(KdsConfig::new(args.kds_url.clone()))
        .map(Some)
        .map_err(|e| format!("--kds-url: {e}; or `off` to never ask AMD's KDS"))
}

/// The issuer on `/dev/sev-guest`, finding VCEKs where the flags say, with one piece of evidence of
/// its own for fresh report data: the device works and the VCEK was found (and is now remembered),
/// or the error says what is missing.
pub(super) fn issuer(
    args: &PlatformArgs,
) -> Result<(SevGuestIssuer, Evidence, [u8; 64]), LaunchError> {
    let unavailable = |e: String| LaunchError::Unavailable(e);
    let kds = kds_client(args).map_err(LaunchError::Usage)?;
    let cache = args.vcek_cache_dir.clone().map(VcekCache::new);
    let offline = args.vcek_dir.clone().map(OfflineDir::new);
    // AMD's CRL for this chip's product and key kind, sent with every piece of evidence.
    let crls = CrlSource::new(kds.clone(), cache.clone(), offline.clone());
    let resolver = VcekResolver::new(kds, cache, offline);
    let issuer = SevGuestIssuer::open(Path::new(SEV_GUEST_DEVICE), resolver)
        .map_err(|e| unavailable(e.to_string()))?
        .with_crls(crls);
    let mut report_data = [0u8; 64];
    rand::rngs::OsRng
        .try_fill_bytes(&mut report_data)
        .map_err(|e| unavailable(format!("the OS random generator failed: {e}")))?;
    // At launch nothing else waits on this thread: wait for the VCEK lookup, which later
    // handshakes never do (they fail at once while it runs).
    let evidence = issuer
        .issue_waiting(&report_data, LAUNCH_VCEK_WAIT)
        .map_err(|e| unavailable(e.to_string()))?;
    Ok((issuer, evidence, report_data))
}

/// A coordinator replica on SEV-SNP: the issuer, and its own evidence checked against its own
/// reference values (`reference_file`, else the ones derived from the report).
pub(super) fn launch(
    args: &PlatformArgs,
    reference_file: Option<&Path>,
) -> Result<LaunchedPlatform, LaunchError> {
    // The file first: a usage error should not wait for the device or the network.
    let given = reference_file.map(read_reference).transpose()?;
    let (issuer, evidence, report_data) = issuer(args)?;
    let report =
        Report::parse(&evidence.report).map_err(|e| LaunchError::Unavailable(e.to_string()))?;
    let own_reference = own_snp_reference(&report, given).map_err(LaunchError::Usage)?;
    self_check(
        &evidence,
        &own_reference,
        &report_data,
        reference_file,
        SystemTime::now(),
        args.snp_revocation(),
    )?;

    let policy_hash = Hash(*report.host_data());
    tracing::info!(
        measurement = %hex::encode(report.measurement()),
        policy_hash = %policy_hash.to_hex(),
        "SEV-SNP: this replica's measurement and policy hash (HOST_DATA); the manifest must list the \
         policy hash with \"role\": \"coordinator\" and the measurement in reference_values.snp"
    );
    if policy_hash == Hash::ZERO {
        tracing::warn!(
            "SEV-SNP: HOST_DATA is zero: the runtime did not bind a policy to this VM, so the \
             policy hash names no policy document"
        );
    }
    Ok(LaunchedPlatform {
        issuer: std::sync::Arc::new(issuer),
        trust: PlatformTrust::default(),
        policy_hash,
        own_reference,
        snp_revocation: args.snp_revocation(),
    })
}

/// Reads `--snp-reference`: one entry of `reference_values.snp`, parsed as strictly as the manifest.
fn read_reference(path: &Path) -> Result<SnpReference, LaunchError> {
    let usage =
        |what: String| LaunchError::Usage(format!("--snp-reference {}: {what}", path.display()));
    // One reference values entry, at most 256 KiB (README.md, "Input limits").
    let bytes = crate::input_file::read_input_file(path, 256 << 10).map_err(usage)?;
    let entry: SnpReference = serde_json::from_slice(&bytes).map_err(|e| {
        usage(format!(
            "{e}; expected one entry of a manifest's reference_values.snp (docs/MANIFEST.md)"
        ))
    })?;
    ReferenceValues {
        snp: vec![entry.clone()],
        simulated: vec![],
        tdx: vec![],
    }
    .validate()
    .map_err(usage)?;
    Ok(entry)
}

/// The reference values other replicas must meet before any manifest exists: exactly this
/// replica's measurement, under `given`'s product, minimum TCB and switches (which must list that
/// measurement); without `given`, for each product the report can come from, its own reported TCB
/// as the minimum, debug and migration agent off, any chip.
pub fn own_snp_reference(
    report: &Report,
    given: Option<SnpReference>,
) -> Result<ReferenceValues, String> {
    let own = Measurement(*report.measurement());
    let entries = match given {
        Some(entry) => {
            if !entry.trusted_measurements.contains(&own) {
                return Err(format!(
                    "--snp-reference: this replica's measurement {own} is not among its \
                     trusted_measurements; add it, or start the build the file is for"
                ));
            }
            vec![SnpReference {
                trusted_measurements: vec![own],
                ..entry
            }]
        }
        None => candidate_products(report)
            .map_err(|e| format!("this replica's own report: {e}"))?
            .into_iter()
            .map(|product| derived_entry(report, product, own))
            .collect(),
    };
    Ok(ReferenceValues {
        snp: entries,
        simulated: vec![],
        tdx: vec![],
    })
}

fn derived_entry(
    report: &Report,
    product: concord_attestation::Product,
    own: Measurement,
) -> SnpReference {
    let tcb = Tcb::decode(report.reported_tcb(), product);
    SnpReference {
        product,
        trusted_measurements: vec![own],
        minimum_tcb: MinimumTcb::from(tcb),
        allow_debug: false,
        allow_migration_agent: false,
        allowed_chip_ids: None,
    }
}

/// This replica's evidence passes its own reference values, with its own policy hash, at `now`:
/// what a peer will check. Fails with what to change.
fn self_check(
    evidence: &Evidence,
    own_reference: &ReferenceValues,
    report_data: &[u8; 64],
    reference_file: Option<&Path>,
    now: SystemTime,
    revocation: SnpRevocation,
) -> Result<(), LaunchError> {
    let report =
        Report::parse(&evidence.report).map_err(|e| LaunchError::Unavailable(e.to_string()))?;
    let own_policy = *report.host_data();
    Verifier::new(PlatformTrust::default())
        .with_snp_revocation(revocation)
        .verify(
            evidence,
            own_reference,
            report_data,
            &|h| *h == own_policy,
            now,
        )
        .map(|_| ())
        .map_err(|e| {
            if matches!(
                e.reject_reason(),
                Some(RejectReason::CrlMissing { .. } | RejectReason::CrlStale { .. })
            ) {
                return LaunchError::Unavailable(format!(
                    "this replica's own SEV-SNP evidence carries no fresh CRL of AMD: {e}; its \
                     peers would refuse it. Let it reach AMD's KDS (--kds-url), or put AMD's CRL \
                     for this product (`/vcek/v1/{{product}}/crl`, DER, named *.crl) into --vcek-dir"
                ));
            }
            let fix = match reference_file {
                Some(file) => format!("change {} (--snp-reference)", file.display()),
                None => "give --snp-reference with the product, minimum TCB and switches this \
                         replica's launch needs (allow_debug, allow_migration_agent)"
                    .to_string(),
            };
            LaunchError::Unavailable(format!(
                "this replica's own SEV-SNP evidence does not pass its own reference values: {e}; \
                 its peers would refuse it. If the evidence is right, {fix}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use concord_attestation::Product;
    use concord_attestation::testing::snp as vectors;

    use super::*;

    /// No real AMD CRL is among the vectors: these tests are about the reference values.
    const NOT_CHECKED: SnpRevocation = SnpRevocation::NotChecked;

    #[test]
    fn derived_own_reference_values_accept_exactly_the_own_launch() {
        let v = vectors::virtee_milan();
        let report = v.report();
        let own = own_snp_reference(&report, None).unwrap();
        // A version 2 report names no product: Milan and Genoa, each with the own TCB as minimum.
        let products: Vec<Product> = own.snp.iter().map(|e| e.product).collect();
        assert_eq!(products, vec![Product::Milan, Product::Genoa]);
        assert!(own.simulated.is_empty());
        let entry = &own.snp[0];
        assert_eq!(
            entry.trusted_measurements,
            vec![Measurement(*report.measurement())]
        );
        assert_eq!(
            (
                entry.minimum_tcb.bootloader,
                entry.minimum_tcb.tee,
                entry.minimum_tcb.snp
            ),
            (3, 0, 8)
        );
        assert_eq!(entry.minimum_tcb.microcode, 115);
        assert!(!entry.allow_debug && !entry.allow_migration_agent);

        self_check(
            &v.evidence(),
            &own,
            &v.report_data(),
            None,
            v.at,
            NOT_CHECKED,
        )
        .unwrap();

        // The go-sev-guest report allows debugging: derived values refuse it, and say what to do.
        let debug = vectors::go_sev_guest_debug();
        let own = own_snp_reference(&debug.report(), None).unwrap();
        let err = self_check(
            &debug.evidence(),
            &own,
            &debug.report_data(),
            None,
            debug.at,
            NOT_CHECKED,
        )
        .unwrap_err();
        let LaunchError::Unavailable(message) = &err else {
            panic!("{err:?}")
        };
        assert!(
            message.contains(&RejectReason::DebugAllowed.to_string()),
            "{message}"
        );
        assert!(message.contains("give --snp-reference"), "{message}");
        assert!(message.contains("allow_debug"), "{message}");
    }

    #[test]
    fn a_given_entry_must_list_the_own_measurement_and_is_narrowed_to_it() {
        let v = vectors::trustee_genoa_e2e();
        let report = v.report();
        let other = Measurement([7; 48]);
        let mut entry = v.reference();
        entry.trusted_measurements = vec![other];
        let err = own_snp_reference(&report, Some(entry.clone())).unwrap_err();
        assert!(
            err.contains("is not among its trusted_measurements"),
            "{err}"
        );

        entry.trusted_measurements = vec![other, Measurement(*report.measurement())];
        entry.allow_debug = true;
        let own = own_snp_reference(&report, Some(entry)).unwrap();
        assert_eq!(own.snp.len(), 1);
        assert_eq!(
            own.snp[0].trusted_measurements,
            vec![Measurement(*report.measurement())],
            "before a manifest, only this replica's own measurement"
        );
        assert!(own.snp[0].allow_debug, "the file's switches are kept");
        let file = Path::new("/etc/concord/snp-reference.json");
        self_check(
            &v.evidence(),
            &own,
            &v.report_data(),
            Some(file),
            v.at,
            NOT_CHECKED,
        )
        .unwrap();

        // Evidence the file does not accept (a TCB floor above the report's) names the file.
        let mut strict = own.clone();
        strict.snp[0].minimum_tcb.snp += 1;
        let err = self_check(
            &v.evidence(),
            &strict,
            &v.report_data(),
            Some(file),
            v.at,
            NOT_CHECKED,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("change /etc/concord/snp-reference.json"),
            "{err}"
        );
    }

    #[test]
    fn the_reference_file_is_parsed_strictly_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("own.json");
        std::fs::write(
            &path,
            br#"{"product": "Milan", "trusted_measurements": []}"#,
        )
        .unwrap();
        let err = read_reference(&path).unwrap_err();
        let LaunchError::Usage(message) = &err else {
            panic!("{err:?}")
        };
        assert!(message.contains(&path.display().to_string()), "{message}");
        let entry = serde_json::to_vec(&vectors::virtee_milan().reference()).unwrap();
        std::fs::write(&path, entry).unwrap();
        assert_eq!(
            read_reference(&path).unwrap(),
            vectors::virtee_milan().reference()
        );
        let mut unknown: serde_json::Value =
            serde_json::to_value(vectors::virtee_milan().reference()).unwrap();
        unknown["allow_everything"] = true.into();
        std::fs::write(&path, unknown.to_string()).unwrap();
        assert!(
            matches!(read_reference(&path), Err(LaunchError::Usage(m)) if m.contains("allow_everything"))
        );
    }

    #[test]
    fn kds_url_off_asks_no_kds_and_a_bad_url_is_a_usage_error() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            platform: PlatformArgs,
        }
        let flags = |extra: &[&str]| {
            let mut argv = vec!["test"];
            argv.extend_from_slice(extra);
            Flags::parse_from(argv).platform
        };
        assert_eq!(flags(&[]).kds_url, "https://kdsintf.amd.com");
        check(&flags(&[])).unwrap();
        assert!(kds_client(&flags(&["--kds-url", "off"])).unwrap().is_none());
        let err = check(&flags(&["--kds-url", "kdsintf.amd.com"])).unwrap_err();
        assert!(err.contains("--kds-url") && err.contains("`off`"), "{err}");
    }
}
