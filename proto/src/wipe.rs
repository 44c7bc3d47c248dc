//! `WipingCodec`: prost's codec, plus one duty: once a message that carries a secret has been encoded
//! for the wire, its secret fields are wiped (zeroized) before the message is dropped.
//!
//! Generated message types hold `Vec<u8>`, which frees its memory without clearing it, and tonic drops
//! every message it encodes. The secrets that travel in Concord's messages are the seed and the mesh CA
//! key of a peer `Recover` answer, a workload secret of a `NewMeshCert` answer, and the plaintext share
//! an older `concord recover` sent. This module owns the list of those fields ([`wipe_secrets`]); a new
//! secret field must be added there. It cannot reach the copies tonic, h2 and rustls make of the encoded
//! bytes; the receiving side wipes what it decoded itself (`concord-coordinator`'s `secrets_from_pb`).

use std::any::Any;
use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder};
use zeroize::Zeroize as _;

use crate::v1;

/// Wipes the secret fields of `message` if it is a type that has any. Every other type is untouched.
pub fn wipe_secrets(message: &mut dyn Any) {
    if let Some(m) = message.downcast_mut::<v1::PeerRecoverResponse>() {
        m.seed.zeroize();
        m.mesh_ca_key.zeroize();
    } else if let Some(m) = message.downcast_mut::<v1::NewMeshCertResponse>() {
        m.workload_secret.zeroize();
    } else if let Some(m) = message.downcast_mut::<v1::RecoverRequest>() {
        m.legacy_plaintext_share.zeroize();
    }
}

/// The codec of every generated service: prost's, wiping secret fields after encoding.
#[derive(Debug, Clone)]
pub struct WipingCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for WipingCodec<T, U> {
    fn default() -> Self {
        WipingCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for WipingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WipingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        WipingEncoder { _pd: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}

/// Encodes with prost, then wipes the message's secret fields.
#[derive(Debug, Clone)]
pub struct WipingEncoder<T> {
    _pd: PhantomData<T>,
}

impl<T: Message + 'static> Encoder for WipingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, mut item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // tonic reserves room for the whole message before it asks to encode it.
        let encoded = item
            .encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode a message: {e}")));
        wipe_secrets(&mut item);
        encoded
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_fields_are_wiped_and_others_kept() {
        let mut peer = v1::PeerRecoverResponse {
            seed: vec![7; 32],
            salt: vec![8; 32],
            mesh_ca_key: vec![9; 32],
            latest: vec![1; 32],
        };
        wipe_secrets(&mut peer);
        assert!(peer.seed.is_empty() && peer.mesh_ca_key.is_empty());
        assert_eq!((peer.salt, peer.latest), (vec![8; 32], vec![1; 32]));

        let mut cert = v1::NewMeshCertResponse {
            workload_secret: vec![5; 32],
            mesh_ca: "pem".into(),
            ..Default::default()
        };
        wipe_secrets(&mut cert);
        assert!(cert.workload_secret.is_empty());
        assert_eq!(cert.mesh_ca, "pem");

        let mut legacy = v1::RecoverRequest {
            legacy_plaintext_share: vec![3; 114],
            ..Default::default()
        };
        wipe_secrets(&mut legacy);
        assert!(legacy.legacy_plaintext_share.is_empty());
    }

    /// Every generated service uses this codec: a service added later cannot skip it.
    #[test]
    fn every_service_uses_the_wiping_codec() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/concord.v1.rs"));
        assert!(generated.contains("crate::wipe::WipingCodec::default()"));
        assert!(!generated.contains("tonic_prost::ProstCodec::default()"));
    }
}
