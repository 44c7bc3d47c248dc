//! A stand-in for Intel's PCS (API v4) on loopback, serving the pieces of the real collateral in
//! `src/tdx/vectors/` (the TDX vector's collateral) as Intel's PCS does: the PCK CRL (DER) with `SGX-PCK-CRL-Issuer-Chain`,
//! TCB info and QE identity as `{"tcbInfo"|"enclaveIdentity": ..., "signature": ...}` with their
//! issuer-chain headers (URL-encoded PEM), and the root CA CRL at a PCCS's path. Built on the
//! KDS stand-in ([`KdsStub`]), so it misbehaves the same ways on demand.

use super::kds::{KdsStub, RouteWithHeaders, StubMode};

/// The FMSPC of the vector's TCB info.
pub const FMSPC: &str = "B0C06F000000";
/// The CA of the vector's PCK CRL.
pub const CA: &str = "platform";

/// The real collateral document, as bytes.
pub fn collateral_bytes() -> Vec<u8> {
    include_bytes!("../tdx/vectors/tdx_quote_collateral.json").to_vec()
}

/// The real collateral document, parsed.
pub fn collateral() -> serde_json::Value {
    serde_json::from_slice(&collateral_bytes()).unwrap()
}

/// Every byte but unreserved ones as `%XX`, as PCS encodes its issuer-chain headers.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The routes of a PCCS serving the vector.
pub fn routes() -> Vec<RouteWithHeaders> {
    let c = collateral();
    let s = |field: &str| c[field].as_str().unwrap().to_string();
    let header = |name: &str, field: &str| vec![(name.to_string(), percent_encode(&s(field)))];
    let signed = |member: &str, body: &str, signature: &str| {
        format!(
            r#"{{"{member}":{},"signature":"{}"}}"#,
            s(body),
            s(signature)
        )
        .into_bytes()
    };
    vec![
        (
            format!("/sgx/certification/v4/pckcrl?ca={CA}&encoding=der"),
            hex::decode(s("pck_crl")).unwrap(),
            header("SGX-PCK-CRL-Issuer-Chain", "pck_crl_issuer_chain"),
        ),
        (
            format!("/tdx/certification/v4/tcb?fmspc={FMSPC}"),
            signed("tcbInfo", "tcb_info", "tcb_info_signature"),
            header("TCB-Info-Issuer-Chain", "tcb_info_issuer_chain"),
        ),
        (
            "/tdx/certification/v4/qe/identity".to_string(),
            signed("enclaveIdentity", "qe_identity", "qe_identity_signature"),
            header(
                "SGX-Enclave-Identity-Issuer-Chain",
                "qe_identity_issuer_chain",
            ),
        ),
        (
            "/sgx/certification/v4/rootcacrl".to_string(),
            hex::decode(s("root_ca_crl")).unwrap(),
            vec![],
        ),
    ]
}

/// A PCCS serving the vector as `mode` says.
pub fn start(mode: StubMode) -> KdsStub {
    KdsStub::start_with_headers(routes(), mode)
}
