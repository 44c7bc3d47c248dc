//! The history: the hash-linked, signed line of manifest transitions (DESIGN.md, History and audit bundle).
//!
//! `format` holds the normative byte strings; `transition` the record; `chain` verifies a whole line of
//! transitions (used at start-up and by the offline audit alike), its signatures checked together by `batch`;
//! `feed` hands the transitions the state machine verified to the core; `ledger` reads and writes the history in a
//! [`crate::store::Store`], hash-checking everything it reads; `members` checks an owner's authorization
//! of a membership change; `audit` is the bundle for third parties.

pub mod audit;
mod batch;
pub(crate) mod chain;
pub mod feed;
pub mod format;
mod ledger;
mod members;
pub mod merkle;
pub mod note;
mod transition;
mod unique_keys;
mod verified;

pub use batch::{SignatureCheck, verify_strict_all};
pub use chain::{
    ChainError, CheckedNext, GENESIS_UNAUTHORIZED, VerifiedChain, VerifiedSignatures, verify_chain,
};
pub use ledger::{Ledger, LedgerError, LoadedHistory, MeshCerts, NewTransition};
pub use members::{MembersAuthorization, MembersRefusal};
pub(crate) use transition::verifying_key;
pub use transition::{OwnerAuthorization, Transition};
pub use unique_keys::check_unique_keys;
