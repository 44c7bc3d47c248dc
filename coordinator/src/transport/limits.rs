//! `ListenerLimits`: every limit of an aTLS port, built in one place so a new port cannot forget one.
//!
//! A port gets its limits from [`ListenerLimits::for_api`] and uses them twice: `transport::incoming`
//! (the [`Gate`](super::gate::Gate) before the handshake, the handshake deadline, the idle timeout of
//! an established connection) and [`ListenerLimits::server`] (tonic's per-connection and per-request
//! limits). What an unauthenticated caller can cost with these defaults, on each of 1313, 7777 and
//! 7778 (docs/THREAT_MODEL.md, "What an unauthenticated caller can cost", says why):
//!
//! - connections: 1024 open, 128 per source, each handshake at most 5 s, 16 in flight per source and
//!   128 in all (the busiest source's oldest makes room); established connections close after the idle
//!   timeout, and the idlest makes room for a new one when all 1024 are taken;
//! - bytes: one ClientHello per handshake before anything is decided; after it, per connection 64
//!   streams of at most `max_message_bytes` each and 16 KiB of headers;
//! - evidence: one report per admitted handshake, at most 50/s per source and 1000/s in all;
//! - log lines: the first 5 failures or refusals per 10 s in full, then one summary (`FailureLog`).

use std::time::Duration;

use super::gate::{GateLimits, Rate};

/// The limits of one aTLS port.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenerLimits {
    /// Connections, handshakes in flight and handshakes per second, per source and in total.
    pub gate: GateLimits,
    /// A handshake not done within this is dropped (the ClientHello included).
    pub handshake_deadline: Duration,
    /// An established connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// A request not answered within this fails with `Cancelled` (tonic's `timeout`).
    pub request_timeout: Duration,
    /// HTTP/2 streams (requests) at once on one connection.
    pub max_streams_per_connection: u32,
    /// Request headers of one request, in bytes (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list_bytes: u32,
    /// A decoded request message, in bytes (per service, `max_decoding_message_size`).
    pub max_message_bytes: usize,
}

impl ListenerLimits {
    /// The limits of the port serving `api` ("user", "mesh" or "peer").
    ///
    /// The user API (1313) faces clients that need not attest and may share an address (NAT, an
    /// ingress); the mesh API (7777) faces every workload pod starting at once; the peer API (7778)
    /// faces a handful of replicas with kept connections. Every port gets the same shape.
    pub fn for_api(api: &str) -> ListenerLimits {
        let base = ListenerLimits {
            gate: GateLimits {
                max_connections: 1024,
                max_connections_per_source: 128,
                max_handshakes: 128,
                max_handshakes_per_source: 16,
                // A guard on the CPU and the evidence device, not a fairness limit: one source
                // cannot reach it alone, and the per-source limits share it.
                handshake_rate: Rate {
                    per_second: 1000.0,
                    burst: 2000.0,
                },
                handshake_rate_per_source: Rate {
                    per_second: 50.0,
                    burst: 100.0,
                },
            },
            handshake_deadline: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            max_streams_per_connection: 64,
            max_header_list_bytes: 16 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
        };
        match api {
            // Replicas keep their links open and send Raft heartbeats every 50 ms; a link idle for
            // five minutes is a replica that went away.
            "peer" => ListenerLimits {
                idle_timeout: Duration::from_secs(300),
                ..base
            },
            // Only NewMeshCert, whose request is empty.
            "mesh" => ListenerLimits {
                max_message_bytes: 64 * 1024,
                ..base
            },
            _ => base,
        }
    }

    /// A tonic server with this port's per-connection and per-request limits. Add the services with
    /// [`Self::max_message_bytes`] as their `max_decoding_message_size`.
    pub fn server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .timeout(self.request_timeout)
            .concurrency_limit_per_connection(self.max_streams_per_connection as usize)
            .max_concurrent_streams(self.max_streams_per_connection)
            .http2_max_header_list_size(self.max_header_list_bytes)
            .http2_max_pending_accept_reset_streams(Some(32))
            .http2_max_local_error_reset_streams(Some(256))
            // Idle connections are closed by the transport (`idle_timeout`); keepalive pings would
            // count as traffic and keep them open.
            .http2_keepalive_interval(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_is_bounded_and_the_deadlines_are_short() {
        for api in ["user", "mesh", "peer"] {
            let l = ListenerLimits::for_api(api);
            let g = l.gate;
            assert!(g.max_connections_per_source < g.max_connections, "{api}");
            assert!(g.max_handshakes_per_source < g.max_handshakes, "{api}");
            assert!(g.max_handshakes <= g.max_connections, "{api}");
            assert!(g.handshake_rate_per_source.per_second < g.handshake_rate.per_second);
            assert!(l.handshake_deadline <= Duration::from_secs(5), "{api}");
            assert!(l.idle_timeout <= Duration::from_secs(300), "{api}");
        }
        assert!(ListenerLimits::for_api("mesh").max_message_bytes <= 64 * 1024);
    }
}
