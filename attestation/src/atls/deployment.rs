//! The deployment an aTLS party serves, as its certificate names it and its evidence binds it
//! (binding v2, docs/PROTOCOL.md §8): what lets a workload, a client or a replica tell a genuine
//! coordinator of its own deployment from a genuine coordinator the host started for itself.
//!
//! This module owns the id's wire form and the relying side's rule ([`DeploymentPin`]). It does not
//! know how an id is computed from a manifest (the coordinator crate does) and never trusts an id that
//! the evidence does not bind: [`super::peer`] computes the report data from the id in the certificate,
//! so an id that was not in the report data fails `ReportDataMismatch` before any pin is checked.

use std::fmt;

use crate::error::{AttestationError, RejectReason};

/// OID of the certificate extension that carries the 32-byte deployment id (raw bytes).
///
/// PROVISIONAL, like [`super::EVIDENCE_OID`]: the next arc of the same development number.
pub const DEPLOYMENT_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 58270, 1, 2];

/// The label before the deployment id in the report data (binding v2).
pub const DEPLOYMENT_LABEL: &[u8] = b"concord/v1/deployment";

/// Which deployment a party serves: SHA-256 over the first manifest's seed share owners and workload
/// owner keys (docs/PROTOCOL.md, "Deployment id"), or all zero bytes for a coordinator that has no
/// history and was given no id ("unpinned").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DeploymentId(pub [u8; 32]);

impl DeploymentId {
    /// A coordinator before its first manifest, started without `--deployment-id`; a workload that
    /// does not say which deployment it belongs to.
    pub const UNPINNED: DeploymentId = DeploymentId([0; 32]);

    /// Whether this is [`DeploymentId::UNPINNED`].
    pub fn is_unpinned(&self) -> bool {
        *self == Self::UNPINNED
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<DeploymentId, String> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut id)
            .map_err(|e| format!("a deployment id is 64 hex characters (32 bytes): {e}"))?;
        Ok(DeploymentId(id))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unpinned() {
            f.write_str("unpinned (no deployment yet)")
        } else {
            f.write_str(&hex::encode(self.0))
        }
    }
}

impl fmt::Debug for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeploymentId({})", hex::encode(self.0))
    }
}

/// Where a party's certificates get the deployment id they name, at each handshake: fixed for a
/// workload or a client, the replica's current state for a coordinator (it changes once, from
/// unpinned to the first manifest's id).
pub trait DeploymentSource: Send + Sync + fmt::Debug {
    /// The id the next certificate names (and its evidence binds).
    fn deployment(&self) -> DeploymentId;
}

impl DeploymentSource for DeploymentId {
    fn deployment(&self) -> DeploymentId {
        *self
    }
}

/// What a relying side accepts as the peer's (bound) deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentPin {
    /// Any deployment: for a side whose decision does not depend on it (the mesh API judging a
    /// workload by its policy hash), or a tool that inspects.
    Any,
    /// Exactly this deployment: a workload, a data owner, a share owner.
    Exactly(DeploymentId),
    /// This deployment, or a coordinator that has none yet (unpinned): `concord set` of a first
    /// manifest, and replicas of one cluster, where a replica with an empty disk may be unpinned.
    ThisOrUnpinned(DeploymentId),
}

impl DeploymentPin {
    /// Accepts or rejects the deployment a peer's evidence binds.
    pub fn check(&self, bound: &DeploymentId) -> Result<(), AttestationError> {
        let expected = match self {
            DeploymentPin::Any => return Ok(()),
            DeploymentPin::Exactly(id) if bound == id => return Ok(()),
            DeploymentPin::ThisOrUnpinned(id) if bound == id || bound.is_unpinned() => {
                return Ok(());
            }
            DeploymentPin::Exactly(id) | DeploymentPin::ThisOrUnpinned(id) => *id,
        };
        Err(RejectReason::WrongDeployment {
            expected,
            found: *bound,
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_accept_what_they_say() {
        let a = DeploymentId([1; 32]);
        let b = DeploymentId([2; 32]);
        let u = DeploymentId::UNPINNED;
        assert!(DeploymentPin::Any.check(&a).is_ok());
        assert!(DeploymentPin::Any.check(&u).is_ok());
        assert!(DeploymentPin::Exactly(a).check(&a).is_ok());
        assert!(DeploymentPin::Exactly(a).check(&u).is_err(), "unpinned");
        let err = DeploymentPin::Exactly(a).check(&b).unwrap_err();
        assert_eq!(
            err.reject_reason().map(RejectReason::metric_label),
            Some("wrong_deployment")
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&hex::encode(a.0)) && msg.contains(&hex::encode(b.0)),
            "{msg}"
        );
        assert!(DeploymentPin::ThisOrUnpinned(a).check(&a).is_ok());
        assert!(DeploymentPin::ThisOrUnpinned(a).check(&u).is_ok());
        assert!(DeploymentPin::ThisOrUnpinned(a).check(&b).is_err());
    }

    #[test]
    fn ids_parse_and_print() {
        let a = DeploymentId([0xab; 32]);
        assert_eq!(DeploymentId::from_hex(&a.to_string()).unwrap(), a);
        assert_eq!(DeploymentId::from_hex(&"AB".repeat(32)).unwrap(), a);
        assert!(DeploymentId::from_hex("abc").is_err());
        assert!(DeploymentId::UNPINNED.to_string().contains("unpinned"));
    }
}
