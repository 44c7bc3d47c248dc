//! Observability (DESIGN.md, Ports and Observability and deployment): the plain-HTTP port 9102 with the
//! startup, liveness and readiness probes, `/health` (JSON) and `/metrics` (Prometheus text 0.0.4), and
//! the counters and latency histograms the APIs feed.
//!
//! How it fits: the replica's runtime takes a [`Sample`] of its public state every 500 ms and publishes
//! it to a [`Beacon`]; the [`HealthServer`], on a thread of its own, answers from the beacon alone
//! (`probe` decides, `metrics` renders with `exposition`). The APIs count into [`global`] metrics:
//! attestation failures (`transport`), certificates issued (`api::mesh`), RPC latency
//! ([`RpcTimingLayer`] on each tonic server).
//!
//! What it must never do: expose a secret (it sees states, counts and indexes, never key material);
//! let liveness depend on quorum or on the replica's state (only a wedged runtime or a poisoned lock
//! fail it); block the APIs or the Raft core to answer a probe.

mod beacon;
mod cpu;
mod exposition;
mod health_server;
mod histogram;
mod metrics;
mod probe;
mod rpc_timing;
mod sample;

pub use beacon::{Beacon, Phase, View};
pub use cpu::thread_cpu_time;
pub use exposition::CONTENT_TYPE;
pub use health_server::HealthServer;
pub use metrics::{COMMIT_PHASES, Counters, Metrics, global, render};
pub use probe::{Verdict, liveness, readiness, startup};
pub use rpc_timing::RpcTimingLayer;
pub use sample::{Fault, Sample, health_json, role_name, sees_quorum};
