//! `verify_strict_all`: many Ed25519 signatures checked together, with the verdicts
//! `VerifyingKey::verify_strict` gives one by one (what `format::verify_transition` and
//! `format::verify_owner` use), at a fraction of the cost per signature (issue 11.4).
//!
//! Batch verification (ed25519-dalek's `verify_batch`) checks one random linear combination of the
//! signatures' equations, `[Σ z·s]B = Σ z·R + Σ (z·k)A`, and is weaker than `verify_strict` in three
//! ways its documentation and code show: it accepts small-order `R` and small-order (weak) keys, it
//! accepts a non-canonical encoding of `R` (it decompresses `R`, `verify_strict` compares encodings),
//! and a torsion component in a signature's equation vanishes when its `z` is a multiple of its order.
//! So a signature joins a batch only if its `R` is canonically encoded and not of small order and its
//! key is torsion-free (checked once per distinct key: a history has a handful); every other one is
//! checked alone with `verify_strict`. What remains is a torsion component of `R` itself (a mixed-order
//! `R`): only the holder of the signing key can make an equation that is right but for torsion, and
//! neither signer of a history makes one (docs/THREAT_MODEL.md, "Batch verification of the history").
//!
//! The batch here is `verify_batch`'s equation, computed with the terms of each distinct key added up
//! first and fresh random `z` (`batch_equation_holds`); the pre-checks above apply to it unchanged.
//!
//! A batch that fails is checked again signature by signature, so the verdicts (and the first
//! transition at fault that a caller names) are those of one-by-one checks.

use std::collections::HashMap;

use ed25519_dalek::{Signature, VerifyingKey};

/// Signatures per batch: a batch of n signatures by k distinct keys has n + k + 1 points, and
/// curve25519-dalek's Pippenger multiplication takes its widest window from 800 points, so 1024 costs
/// fewer CPU seconds per signature than 256 (measured at start-up: about 5 % of its CPU); a bad
/// signature costs one batch's worth of single checks to find.
const BATCH: usize = 1024;

/// One signature to check: the key, the exact message, the signature.
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    pub key: VerifyingKey,
    pub message: Vec<u8>,
    pub signature: Signature,
}

/// For each check, in order, whether `check.key.verify_strict(message, signature)` accepts it.
/// Runs on this thread; callers spread large inputs over cores.
pub fn verify_strict_all(checks: &[SignatureCheck]) -> Vec<bool> {
    let mut keys = KeyVerdicts::default();
    let mut verdicts = vec![false; checks.len()];
    let mut batch: Vec<usize> = Vec::with_capacity(BATCH);
    for (i, check) in checks.iter().enumerate() {
        if keys.batchable(&check.key) && batchable_r(&check.signature) {
            batch.push(i);
            if batch.len() == BATCH {
                verify_batch_into(checks, &batch, &mut verdicts);
                batch.clear();
            }
        } else {
            verdicts[i] = verify_one(check);
        }
    }
    verify_batch_into(checks, &batch, &mut verdicts);
    verdicts
}

fn verify_one(check: &SignatureCheck) -> bool {
    check
        .key
        .verify_strict(&check.message, &check.signature)
        .is_ok()
}

/// Checks the signatures `batch` names together; if the batch fails, each alone.
fn verify_batch_into(checks: &[SignatureCheck], batch: &[usize], verdicts: &mut [bool]) {
    if batch.is_empty() {
        return;
    }
    let all_good = batch_equation_holds(checks, batch);
    for &i in batch {
        verdicts[i] = all_good || verify_one(&checks[i]);
    }
}

/// The batch equation of ed25519-dalek's `verify_batch` over the signatures `batch` names,
/// `[Σ z·s]B = Σ z·R + Σ (z·k)A`, with the terms of each distinct key `A` added up first:
/// `Σ_A (Σ_{i: A_i = A} z_i·k_i)A` is the same group element as `Σ_i (z_i·k_i)A_i`, so the verdict is
/// that of `verify_batch` with the same `z`, but the multiscalar multiplication has one point per
/// signature and one per distinct key (a history has a handful) instead of two per signature: about
/// half the work (issue 11.4: start-up time).
///
/// Each `z` is a fresh 128-bit random scalar (the process's CSPRNG), as in the batch verification
/// of Bernstein et al.; ed25519-dalek derives its `z` from the batch's inputs instead, which lets a
/// signer predict them. A non-canonical `s` or an `R` that is no point fails the batch (then each
/// signature gets `verify_strict`'s verdict alone), as `verify_batch` fails on them.
fn batch_equation_holds(checks: &[SignatureCheck], batch: &[usize]) -> bool {
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
    use rand::Rng;
    use sha2::{Digest, Sha512};

    let mut rng = rand::thread_rng();
    let mut basepoint = Scalar::ZERO;
    let mut r_scalars = Vec::with_capacity(batch.len());
    let mut r_points = Vec::with_capacity(batch.len());
    // Per distinct key: its point and the sum of its signatures' z·k.
    let mut key_at: HashMap<[u8; 32], usize> = HashMap::new();
    let mut key_scalars: Vec<Scalar> = Vec::new();
    let mut key_points: Vec<EdwardsPoint> = Vec::new();
    for &i in batch {
        let check = &checks[i];
        let Some(s) =
            Option::<Scalar>::from(Scalar::from_canonical_bytes(*check.signature.s_bytes()))
        else {
            return false;
        };
        let Some(r) = CompressedEdwardsY(*check.signature.r_bytes()).decompress() else {
            return false;
        };
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(check.signature.r_bytes())
                .chain_update(check.key.as_bytes())
                .chain_update(&check.message)
                .finalize()
                .into(),
        );
        let z = Scalar::from(rng.r#gen::<u128>());
        basepoint += z * s;
        r_scalars.push(z);
        r_points.push(r);
        let at = *key_at.entry(check.key.to_bytes()).or_insert_with(|| {
            key_scalars.push(Scalar::ZERO);
            key_points.push(check.key.to_edwards());
            key_points.len() - 1
        });
        key_scalars[at] += z * k;
    }
    // -[Σ z·s]B + Σ z·R + Σ_A (Σ z·k)A = 0
    EdwardsPoint::vartime_multiscalar_mul(
        std::iter::once(-basepoint)
            .chain(r_scalars)
            .chain(key_scalars),
        std::iter::once(ED25519_BASEPOINT_POINT)
            .chain(r_points)
            .chain(key_points),
    )
    .is_identity()
}

/// Whether a signature's `R` may join a batch: canonically encoded (`verify_strict` compares the
/// encoding it computes, always canonical, with these bytes) and not of small order (which
/// `verify_strict` refuses). From the bytes alone: decompressing or re-encoding a point costs a field
/// exponentiation, as much as a fifth of a verification, and the batch decompresses `R` anyway (an `R`
/// that is no point fails the batch, and then its own check).
fn batchable_r(signature: &Signature) -> bool {
    let r = signature.r_bytes();
    let mut y = *r;
    y[31] &= 0x7f;
    // y >= p = 2^255 - 19: the bytes ed ff .. ff 7f and above.
    let non_canonical_y = y[0] >= 0xed && y[1..31].iter().all(|&b| b == 0xff) && y[31] == 0x7f;
    // The small-order points, whichever sign bit: also every encoding with x = 0 (y = 1 or -1) and
    // the sign bit set, which re-encodes without it.
    !non_canonical_y && !small_order_ys().contains(&y)
}

/// The y coordinates (encoded, sign bit clear) of the eight points of small order.
fn small_order_ys() -> &'static [[u8; 32]] {
    static YS: std::sync::OnceLock<Vec<[u8; 32]>> = std::sync::OnceLock::new();
    YS.get_or_init(|| {
        curve25519_dalek::constants::EIGHT_TORSION
            .iter()
            .map(|p| {
                let mut y = p.compress().to_bytes();
                y[31] &= 0x7f;
                y
            })
            .collect()
    })
}

/// Whether each distinct key may join a batch: torsion-free (so not of small order either, which
/// `verify_strict` refuses). A scalar multiplication per key, so remembered: per call, and across
/// calls and threads (start-up makes one call per core and batch of transitions) for up to
/// [`KeyVerdicts::REMEMBERED`] keys. The memo holds only what the check computed for the same bytes.
#[derive(Default)]
struct KeyVerdicts(HashMap<[u8; 32], bool>);

impl KeyVerdicts {
    /// Distinct keys remembered across calls.
    const REMEMBERED: usize = 256;

    fn batchable(&mut self, key: &VerifyingKey) -> bool {
        use std::sync::{Mutex, OnceLock};
        static KNOWN: OnceLock<Mutex<HashMap<[u8; 32], bool>>> = OnceLock::new();
        let bytes = key.to_bytes();
        if let Some(&known) = self.0.get(&bytes) {
            return known;
        }
        let known = KNOWN.get_or_init(Mutex::default);
        // A poisoned memo (a panic elsewhere while it was held) is only a cache: check without it.
        let remembered = known.lock().ok().and_then(|k| k.get(&bytes).copied());
        let verdict = remembered.unwrap_or_else(|| {
            let point = key.to_edwards();
            let verdict = !point.is_small_order() && point.is_torsion_free();
            if let Ok(mut known) = known.lock()
                && known.len() < Self::REMEMBERED
            {
                known.insert(bytes, verdict);
            }
            verdict
        });
        self.0.insert(bytes, verdict);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::scalar::Scalar;
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::{Digest, Sha512};

    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn good(signer: &SigningKey, n: usize) -> Vec<SignatureCheck> {
        (0..n)
            .map(|i| {
                let message = format!("transition {i}").into_bytes();
                SignatureCheck {
                    key: signer.verifying_key(),
                    signature: signer.sign(&message),
                    message,
                }
            })
            .collect()
    }

    /// The verdicts `verify_strict` gives one by one: what `verify_strict_all` must equal.
    fn one_by_one(checks: &[SignatureCheck]) -> Vec<bool> {
        checks.iter().map(verify_one).collect()
    }

    #[test]
    fn good_signatures_pass_in_batches_and_alone() {
        let mut checks = good(&key(1), 150);
        checks.extend(good(&key(2), 70));
        assert!(verify_strict_all(&checks).iter().all(|&ok| ok));
        assert!(verify_strict_all(&checks[..1]).iter().all(|&ok| ok));
        assert!(verify_strict_all(&[]).is_empty());
    }

    #[test]
    fn a_bad_signature_in_a_batch_is_named_and_the_others_pass() {
        let mut checks = good(&key(1), 200);
        // Another message's signature, a flipped bit of `s`, a wrong key.
        checks[3].signature = checks[4].signature;
        let mut bytes = checks[100].signature.to_bytes();
        bytes[40] ^= 1;
        checks[100].signature = Signature::from_bytes(&bytes);
        checks[150].key = key(9).verifying_key();
        let verdicts = verify_strict_all(&checks);
        let bad: Vec<usize> = (0..checks.len()).filter(|&i| !verdicts[i]).collect();
        assert_eq!(bad, vec![3, 100, 150]);
        assert_eq!(verdicts, one_by_one(&checks));
    }

    /// The batch adds up the terms of each distinct key: signatures by many keys, mixed in one
    /// batch, pass; two signatures presented under each other's keys (each wrong, so their key
    /// terms are off in opposite ways) are refused, and so are the others of no batch they sit in.
    #[test]
    fn keys_added_up_in_a_batch_neither_cancel_nor_mix() {
        let mut checks: Vec<SignatureCheck> =
            (1..=40).flat_map(|seed| good(&key(seed), 7)).collect();
        assert!(verify_strict_all(&checks).iter().all(|&ok| ok));
        let (a, b) = (key(50), key(51));
        let message = b"concord/v1/transition same message".to_vec();
        let swapped = [
            SignatureCheck {
                key: b.verifying_key(),
                signature: a.sign(&message),
                message: message.clone(),
            },
            SignatureCheck {
                key: a.verifying_key(),
                signature: b.sign(&message),
                message,
            },
        ];
        checks.insert(3, swapped[0].clone());
        checks.insert(200, swapped[1].clone());
        let verdicts = verify_strict_all(&checks);
        assert!(!verdicts[3] && !verdicts[200]);
        assert_eq!(verdicts, one_by_one(&checks));
        assert_eq!(verdicts.iter().filter(|&&ok| !ok).count(), 2);
    }

    /// The batch equation itself (not only the verdicts, which the one-by-one fallback would make
    /// right even if every batch failed): it holds for good signatures by many keys, so the fast path
    /// is taken, and fails as soon as one signature is another key's.
    #[test]
    fn the_batch_equation_holds_for_good_signatures_by_many_keys_only() {
        let mut checks: Vec<SignatureCheck> =
            (1..=5).flat_map(|seed| good(&key(seed), 30)).collect();
        let all: Vec<usize> = (0..checks.len()).collect();
        assert!(batch_equation_holds(&checks, &all));
        assert!(batch_equation_holds(&checks, &all[..1]));
        checks[77].key = key(9).verifying_key();
        assert!(!batch_equation_holds(&checks, &all));
    }

    /// What plain batch verification accepts and `verify_strict` refuses: a weak (small-order) key
    /// with a small-order `R`, canonically and non-canonically encoded. ed25519-dalek's
    /// `verify_batch` accepts both; `verify_strict_all` must not.
    #[test]
    fn small_order_and_non_canonical_points_are_refused_as_verify_strict_refuses_them() {
        let identity = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        // y = p + 1: the identity again, encoded non-canonically.
        let non_canonical = {
            let mut b = [0xffu8; 32];
            b[0] = 0xee;
            b[31] = 0x7f;
            b
        };
        let weak_key = VerifyingKey::from_bytes(&identity).expect("the identity decodes");
        for r in [identity, non_canonical] {
            // [0]B = R + [k]A holds for any k when R and A are the identity: s = 0.
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&r);
            let signature = Signature::from_bytes(&sig);
            let message = b"concord/v1/transition forged".to_vec();
            let forged = SignatureCheck {
                key: weak_key,
                message: message.clone(),
                signature,
            };
            assert!(
                ed25519_dalek::verify_batch(&[&message], &[signature], &[weak_key]).is_ok(),
                "the premise: plain batch verification accepts this"
            );
            assert!(!verify_one(&forged));
            let mut checks = good(&key(1), 70);
            checks.insert(5, forged);
            let verdicts = verify_strict_all(&checks);
            assert!(!verdicts[5]);
            assert_eq!(verdicts, one_by_one(&checks));
        }
    }

    /// The byte-level pre-check of `R` agrees with its definition on points: canonical encoding
    /// (re-encodes to itself) and not of small order; for every small-order point with either sign
    /// bit, every encoding of y >= p with either sign bit, and ordinary points.
    #[test]
    fn the_r_pre_check_on_bytes_matches_the_check_on_points() {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let mut encodings: Vec<[u8; 32]> = Vec::new();
        for p in EIGHT_TORSION {
            let b = p.compress().to_bytes();
            encodings.push(b);
            let mut flipped = b;
            flipped[31] ^= 0x80;
            encodings.push(flipped);
        }
        for low in 0xedu8..=0xff {
            for sign in [0u8, 0x80] {
                let mut b = [0xffu8; 32];
                b[0] = low;
                b[31] = 0x7f | sign;
                encodings.push(b);
            }
        }
        for i in 1..50u64 {
            encodings.push(
                (ED25519_BASEPOINT_POINT * Scalar::from(i))
                    .compress()
                    .to_bytes(),
            );
        }
        let mut decodable = 0;
        for b in encodings {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&b);
            let signature = Signature::from_bytes(&sig);
            let encoded = CompressedEdwardsY(b);
            if let Some(point) = encoded.decompress() {
                decodable += 1;
                let expected = !point.is_small_order() && point.compress() == encoded;
                assert_eq!(batchable_r(&signature), expected, "R = {}", hex::encode(b));
            }
        }
        assert!(decodable > 60, "the cases decode: {decodable}");
    }

    /// A key with a torsion component (not of small order) is checked alone, so a signature whose
    /// equation is off by torsion gets `verify_strict`'s verdict, whatever `z` the batch picks: made
    /// with the key's secret, right for the key's prime-order part and off by `[k]T`, which plain
    /// batch verification ignores when `z·k` is a multiple of 8.
    #[test]
    fn a_signature_off_by_torsion_is_refused() {
        let secret = Scalar::from_bytes_mod_order([7u8; 32]);
        let torsion = EIGHT_TORSION[1];
        // A mixed-order key: A = [a]B + T.
        let public = ED25519_BASEPOINT_POINT * secret + torsion;
        let key = VerifyingKey::from_bytes(&public.compress().to_bytes()).expect("a curve point");
        let mut accepted_by_plain_batch = 0;
        for attempt in 0u32..64 {
            let message = format!("transition {attempt}").into_bytes();
            let nonce = Scalar::from(1000u64 + u64::from(attempt));
            let r = (ED25519_BASEPOINT_POINT * nonce).compress();
            let k = Scalar::from_hash(
                Sha512::new()
                    .chain_update(r.as_bytes())
                    .chain_update(key.as_bytes())
                    .chain_update(&message),
            );
            // [s]B = R + [k]([a]B): right for the key's prime-order part, off by [k]T.
            let s = nonce + k * secret;
            let mut bytes = [0u8; 64];
            bytes[..32].copy_from_slice(r.as_bytes());
            bytes[32..].copy_from_slice(s.as_bytes());
            let signature = Signature::from_bytes(&bytes);
            let check = SignatureCheck {
                key,
                message: message.clone(),
                signature,
            };
            let plain = ed25519_dalek::verify_batch(&[&message], &[signature], &[key]).is_ok();
            let strict = verify_one(&check);
            accepted_by_plain_batch += usize::from(plain && !strict);
            assert_eq!(verify_strict_all(&[check]), vec![strict]);
        }
        assert!(
            accepted_by_plain_batch > 0,
            "the premise: plain batch verification accepts some that verify_strict refuses"
        );
    }
}

/// Rates on this machine: `cargo test --release -p concord-coordinator --lib batch_rates -- --ignored --nocapture`.
#[cfg(test)]
mod rates {
    use std::time::Instant;

    use curve25519_dalek::edwards::CompressedEdwardsY;
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    #[test]
    #[ignore = "a measurement; prints rates"]
    fn batch_rates() {
        let signer = SigningKey::from_bytes(&[3; 32]);
        let checks: Vec<SignatureCheck> = (0..4096)
            .map(|i| {
                let message = format!("transition {i}").into_bytes();
                SignatureCheck {
                    key: signer.verifying_key(),
                    signature: signer.sign(&message),
                    message,
                }
            })
            .collect();
        let t = Instant::now();
        assert!(checks.iter().all(verify_one));
        let one = t.elapsed().as_secs_f64() / checks.len() as f64;
        let t = Instant::now();
        assert!(verify_strict_all(&checks).iter().all(|&ok| ok));
        let all = t.elapsed().as_secs_f64() / checks.len() as f64;
        let t = Instant::now();
        let free = checks
            .iter()
            .filter(|c| {
                CompressedEdwardsY(*c.signature.r_bytes())
                    .decompress()
                    .is_some_and(|r| r.is_torsion_free())
            })
            .count();
        let torsion = t.elapsed().as_secs_f64() / checks.len() as f64;
        assert_eq!(free, checks.len());
        println!(
            "verify_strict {:.1} us, verify_strict_all {:.1} us, R torsion check {:.1} us per signature",
            one * 1e6,
            all * 1e6,
            torsion * 1e6
        );
    }
}
