//! `EtcdGrpc`: a client of etcd's own gRPC API (`etcdserverpb.KV/Put`) over TLS with a client
//! certificate, on the client stack the benchmark's Concord client uses (tonic, h2, rustls, one kept
//! connection). Beside it the JSON gateway client (`etcd_client`) goes through etcd's grpc-gateway,
//! which forwards each request to etcd's gRPC server over a second connection.
//!
//! Only the two messages a put needs, written out here (field numbers from etcd's `rpc.proto`),
//! rather than etcd's protobuf files and their imports.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(uint64, tag = "4")]
    raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
}

/// One kept TLS connection to a member's gRPC API.
pub struct EtcdGrpc {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdGrpc {
    /// Connects to the member at `addr` (TLS, its certificate names 127.0.0.1) with `tls`.
    pub async fn connect(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<EtcdGrpc, String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .timeout(std::time::Duration::from_secs(10));
        let connector = tower::service_fn(move |_: http::Uri| {
            let tls = tokio_rustls::TlsConnector::from(tls.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let stream = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| format!("cannot connect to etcd's gRPC API at {addr} over TLS: {e:?}"))?;
        Ok(EtcdGrpc {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// `PUT key value`, acknowledged once etcd committed it (etcd fsyncs its WAL before that).
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.grpc
            .ready()
            .await
            .map_err(|e| format!("etcd's gRPC channel is not ready: {e}"))?;
        let request = tonic::Request::new(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
        });
        let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
        let answer: tonic::Response<PutResponse> = self
            .grpc
            .unary(request, path, tonic_prost::ProstCodec::default())
            .await
            .map_err(|s| format!("etcd refused the put: {s}"))?;
        match answer.into_inner().header {
            Some(h) if h.revision > 0 => Ok(()),
            _ => Err("etcd answered the put without a revision".into()),
        }
    }
}
