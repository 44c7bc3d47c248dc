//! The one mapping from [`CoordinatorError`] to a gRPC status (DESIGN.md, Errors and bad input).

use tonic::{Code, Status};

use crate::error::CoordinatorError;
use crate::history::LedgerError;

/// The gRPC status for an error. The message is the error's, written for a person to act on.
pub fn to_status(e: &CoordinatorError) -> Status {
    let code = match e {
        CoordinatorError::InvalidInput(_) => Code::InvalidArgument,
        CoordinatorError::PermissionDenied(_) => Code::PermissionDenied,
        CoordinatorError::PreviousMismatch { .. }
        | CoordinatorError::FinalManifest
        | CoordinatorError::FailedPrecondition(_)
        | CoordinatorError::UnknownHistory(_)
        | CoordinatorError::Recovering
        | CoordinatorError::NoManifest => Code::FailedPrecondition,
        CoordinatorError::Ledger(LedgerError::Corrupt(_)) => Code::DataLoss,
        CoordinatorError::Ledger(_) => Code::Unavailable,
        CoordinatorError::Crypto(_) | CoordinatorError::Evidence(_) => Code::Internal,
        // A concurrency conflict the caller resolves by re-reading and retrying (gRPC's Aborted).
        CoordinatorError::WriteConflict { .. } => Code::Aborted,
        // Not a refusal: the write happened (the message says so); the caller re-reads.
        CoordinatorError::CommittedThenSuperseded { .. } => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    #[test]
    fn each_kind_gets_its_code() {
        let cases = [
            (
                CoordinatorError::InvalidInput("x".into()),
                Code::InvalidArgument,
            ),
            (
                CoordinatorError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (
                CoordinatorError::PreviousMismatch {
                    expected: Hash::ZERO,
                    latest: Hash::ZERO,
                },
                Code::FailedPrecondition,
            ),
            (CoordinatorError::Recovering, Code::FailedPrecondition),
            (CoordinatorError::FinalManifest, Code::FailedPrecondition),
            (
                CoordinatorError::WriteConflict {
                    previous: Hash::ZERO,
                },
                Code::Aborted,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(to_status(&e).code(), code, "{e}");
        }
    }
}
