//! `requests`: every protobuf request of the user, mesh and peer APIs (and the answers a replica
//! decodes from a peer), decoded as tonic does and then checked by the handler's own validation,
//! without a network: `concord_coordinator::fuzzing::request` (the first byte picks the request kind,
//! `REQUEST_KINDS`).

pub fn run(data: &[u8]) {
    concord_coordinator::fuzzing::request(data);
}
