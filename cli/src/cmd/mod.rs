//! One module per `concord` subcommand.

pub mod attestation;
pub mod cluster;
pub mod demo;
pub mod deployment_id;
pub mod history;
pub mod keygen;
pub mod recover;
pub mod set;
pub mod sign;
pub mod status;
pub mod verify;
pub mod witness;
