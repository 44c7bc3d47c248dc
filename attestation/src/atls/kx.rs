//! X25519 for rustls's key exchange, computed by AWS-LC.
//!
//! The aTLS provider is ring's ([`super::provider`]) with this one key-exchange group swapped in.
//! On this project's 2-core machine AWS-LC does the server's side of one exchange (an ephemeral key,
//! its public value, the shared secret) about 1.7 times as fast as ring (17,184 against 10,112 per
//! CPU second in one run of the cluster benchmark's floor rows, which measure both each run), and
//! every aTLS handshake makes one on each side: about 5 % of a replica's CPU per NewMeshCert
//! (issue 11.1). AWS-LC is already in the tree for the evidence's P-384 signatures; the group is
//! the same X25519 on the wire, so peers on ring's provider interoperate.

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, PublicKey, UnparsedPublicKey, X25519};
use rustls::crypto::{ActiveKeyExchange, GetRandomFailed, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};

/// The X25519 group, AWS-LC's arithmetic.
pub(crate) static X25519_AWS_LC: &dyn SupportedKxGroup = &AwsLcX25519;

/// The length of an X25519 public value (RFC 7748).
const PUBLIC_LEN: usize = 32;

#[derive(Debug)]
struct AwsLcX25519;

impl SupportedKxGroup for AwsLcX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| GetRandomFailed)?;
        let public = private.compute_public_key().map_err(|_| GetRandomFailed)?;
        Ok(Box::new(Exchange { private, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// One side's half of an exchange in progress.
struct Exchange {
    private: EphemeralPrivateKey,
    public: PublicKey,
}

impl ActiveKeyExchange for Exchange {
    /// Fails for a share that is not 32 bytes, and for one of small order, whose shared secret
    /// is all zeros (AWS-LC refuses it, RFC 7748 §6.1).
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        if peer.len() != PUBLIC_LEN {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        agreement::agree_ephemeral(
            self.private,
            UnparsedPublicKey::new(&X25519, peer),
            Error::from(PeerMisbehaved::InvalidKeyShare),
            |secret| Ok(SharedSecret::from(secret)),
        )
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_x25519() -> &'static dyn SupportedKxGroup {
        rustls::crypto::ring::kx_group::X25519
    }

    #[test]
    fn agrees_with_rings_x25519_either_way() {
        for (a, b) in [
            (X25519_AWS_LC, ring_x25519()),
            (ring_x25519(), X25519_AWS_LC),
            (X25519_AWS_LC, X25519_AWS_LC),
        ] {
            let (one, other) = (a.start().unwrap(), b.start().unwrap());
            let (one_public, other_public) = (one.pub_key().to_vec(), other.pub_key().to_vec());
            assert_eq!(one_public.len(), PUBLIC_LEN);
            assert_ne!(one_public, other_public);
            let left = one.complete(&other_public).unwrap();
            let right = other.complete(&one_public).unwrap();
            assert_eq!(left.secret_bytes(), right.secret_bytes());
            assert_eq!(left.secret_bytes().len(), 32);
        }
    }

    #[test]
    fn refuses_shares_of_the_wrong_length_and_of_small_order() {
        for share in [&[][..], &[9u8; 31][..], &[9u8; 33][..]] {
            let result = X25519_AWS_LC.start().unwrap().complete(share);
            assert_eq!(result.err(), Some(PeerMisbehaved::InvalidKeyShare.into()));
        }
        // Points of small order (RFC 7748 §6.1; the curve's order-1, -2, -4 and -8 points): the
        // shared secret would be all zeros, whatever the private key.
        let mut one = [0u8; 32];
        one[0] = 1;
        let order_8 =
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap();
        for share in [&[0u8; 32][..], &one[..], &order_8[..]] {
            let result = X25519_AWS_LC.start().unwrap().complete(share);
            assert_eq!(result.err(), Some(PeerMisbehaved::InvalidKeyShare.into()));
        }
    }

    #[test]
    fn is_the_providers_x25519() {
        let provider = super::super::provider();
        assert_eq!(provider.kx_groups[0].name(), NamedGroup::X25519);
        assert_eq!(
            format!("{:?}", provider.kx_groups[0]),
            format!("{X25519_AWS_LC:?}")
        );
        // ring's other groups stay, in ring's order.
        let ring = rustls::crypto::ring::default_provider();
        let names = |p: &rustls::crypto::CryptoProvider| {
            p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
        };
        assert_eq!(names(&provider), names(&ring));
    }
}
