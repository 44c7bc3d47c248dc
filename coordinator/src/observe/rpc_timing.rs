//! `RpcTimingLayer`: a tower layer for the tonic servers that times every gRPC request, from the
//! request to its response headers (for these unary RPCs: the handler's whole run), by method.
//!
//! Owns the timing and the method label. Must never let a client choose an unbounded set of labels:
//! paths no service implements (tonic answers them `Unimplemented`) share one label, and
//! [`Metrics::rpc_finished`](super::metrics::Metrics::rpc_finished) caps the rest.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use super::metrics::{UNIMPLEMENTED_METHOD, global};

/// gRPC's status code for an unknown service or method.
const GRPC_UNIMPLEMENTED: &str = "12";

/// Wraps a tonic server's routes in `RpcTiming`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTimingLayer;

impl<S> Layer<S> for RpcTimingLayer {
    type Service = RpcTiming<S>;
    fn layer(&self, inner: S) -> RpcTiming<S> {
        RpcTiming { inner }
    }
}

/// Times each request to `inner`.
#[derive(Debug, Clone)]
pub struct RpcTiming<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for RpcTiming<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let start = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let implemented = result.as_ref().is_ok_and(|r| {
                r.headers()
                    .get("grpc-status")
                    .is_none_or(|s| s != GRPC_UNIMPLEMENTED)
            });
            let label = if implemented {
                method.as_str()
            } else {
                UNIMPLEMENTED_METHOD
            };
            global().rpc_finished(label, start.elapsed());
            result
        })
    }
}

/// `/concord.v1.UserApi/GetStatus` becomes `concord.v1.UserApi/GetStatus`.
fn method_label(path: &str) -> String {
    path.strip_prefix('/').unwrap_or(path).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_is_the_path_without_its_slash() {
        assert_eq!(
            method_label("/concord.v1.MeshApi/NewMeshCert"),
            "concord.v1.MeshApi/NewMeshCert"
        );
    }
}
