//! The gRPC services: thin shells that decode requests, call the core (`state`) and encode answers.
//! Every error becomes a gRPC status in one place (`status`). Handlers log one line per request with
//! its outcome and never a secret.

mod in_flight;
pub mod join;
pub mod links;
mod mesh;
pub mod node;
pub(crate) mod peer;
mod peer_policy;
mod read_rounds;
mod refusals;
pub mod replica;
pub mod sealing;
mod status;
pub(crate) mod user;
pub mod write_claims;

pub use links::PeerLinks;
pub use mesh::{MeshAcceptPolicy, MeshService};
pub use node::Node;
pub use peer::PeerService;
pub use peer_policy::PeerAcceptPolicy;
pub use replica::Replica;
pub use status::to_status;
pub use user::UserService;
