//! A stand-in for a secure processor's cost, for benchmarks: an issuer that takes a fixed time per
//! report and admits one call at a time, as `/dev/sev-guest` does.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::error::AttestationError;
use crate::evidence::{Evidence, Platform};
use crate::issuer::EvidenceIssuer;

/// `inner`, one call at a time, each taking at least `delay`.
#[derive(Debug)]
pub struct ThrottledIssuer {
    inner: Arc<dyn EvidenceIssuer>,
    delay: Duration,
    one_at_a_time: Mutex<()>,
}

impl ThrottledIssuer {
    pub fn new(inner: Arc<dyn EvidenceIssuer>, delay: Duration) -> ThrottledIssuer {
        ThrottledIssuer {
            inner,
            delay,
            one_at_a_time: Mutex::new(()),
        }
    }
}

impl EvidenceIssuer for ThrottledIssuer {
    fn platform(&self) -> Platform {
        self.inner.platform()
    }

    fn issue(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestationError> {
        // The guard protects no data: a panic elsewhere leaves nothing to repair.
        let _one = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::thread::sleep(self.delay);
        self.inner.issue(report_data)
    }
}
