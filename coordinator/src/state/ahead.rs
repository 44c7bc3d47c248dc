//! The next manifest update's mesh CA, made ahead of need (issue 11.3): its key, its two certificates
//! and the HPKE encapsulations its key will be sealed with, made on the background threads
//! (`crate::background`, idle cores only) after each update's prepare, so that the next update's
//! prepare, which the client waits for, only takes them and encrypts.
//!
//! What is made ahead depends on nothing the next update brings: a fresh random key (never from the
//! seed: Invariant 3), certificates under this deployment's root CA, and for each replica the leader
//! sealed to last, an encapsulation to that process's seal key ([`SealAhead`]). Everything is taken
//! at most once, and only when it still fits: certified under the root CA the prepare uses, made for
//! a time at most [`MAX_AGE`] before the prepare's and not after it, and, for an encapsulation, to
//! the very seal key the copy is for. Anything else is dropped and made again by the prepare, as
//! without this. Nothing made ahead is written anywhere or leaves the process.

use std::sync::{Arc, Mutex, MutexGuard};

use concord_mesh_ca::{MeshCa, RootCa, SealAhead};
use time::OffsetDateTime;

/// How long before the prepare's time a mesh CA made ahead may have been made for. Its certificates
/// are valid from an hour before that time (`concord_mesh_ca`'s backdating), so this keeps a
/// certificate's start within 70 minutes of the transition that certifies it.
pub const MAX_AGE: time::Duration = time::Duration::minutes(10);

/// A mesh CA made ahead, with what it was made for.
struct MadeAhead {
    mesh_ca: MeshCa,
    /// The root CA certificate (DER) that certified it.
    root_ca_der: Vec<u8>,
    /// The time its certificates were made for.
    made_for: OffsetDateTime,
    seals: Vec<SealAhead>,
}

/// A mesh CA for the next update: its key and certificates, and the encapsulations made ahead for it.
pub struct NextMeshCa {
    pub mesh_ca: MeshCa,
    /// Made ahead, each to the seal key it names; used at most once (`state::sealed`).
    pub seals: Vec<SealAhead>,
}

/// The slot the background threads fill and the prepare empties. Cloning shares it.
#[derive(Clone, Default)]
pub struct Ahead {
    slot: Arc<Mutex<Option<MadeAhead>>>,
    /// Whether a job that fills the slot is queued or running: at most one is, so that updates in a
    /// burst (each finding the slot empty) do not queue one each beside the early checks.
    making: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("made", &self.lock().is_some())
            .finish()
    }
}

impl Ahead {
    fn lock(&self) -> MutexGuard<'_, Option<MadeAhead>> {
        // An Option stays valid whatever a panicking holder did.
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The mesh CA made ahead, if there is one that fits a prepare at `now` under `root`; it is
    /// taken whether it fits or not (one that does not is dropped).
    pub fn take(&self, root: &RootCa, now: OffsetDateTime) -> Option<NextMeshCa> {
        let made = self.lock().take()?;
        let age = now - made.made_for;
        let fits =
            made.root_ca_der == root.cert_der() && age >= time::Duration::ZERO && age <= MAX_AGE;
        fits.then_some(NextMeshCa {
            mesh_ca: made.mesh_ca,
            seals: made.seals,
        })
    }

    /// Asks the background threads to make the next mesh CA under `root` for `now`, with an
    /// encapsulation to each of `seal_keys`, unless one is made already. Returns at once; refused
    /// when the background queue is full (the next prepare then makes its own).
    pub fn refill(&self, root: Arc<RootCa>, now: OffsetDateTime, seal_keys: Vec<[u8; 32]>) {
        use std::sync::atomic::Ordering;
        if self.lock().is_some() || self.making.swap(true, Ordering::AcqRel) {
            return;
        }
        let ahead = self.clone();
        let queued = crate::background::spawn(move || {
            // Cleared however the job ends, a panic included.
            let _making = Making(ahead.making.clone());
            let started = crate::observe::thread_cpu_time();
            match make(&root, now, &seal_keys) {
                Ok(made) => drop(ahead.lock().get_or_insert(made)),
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot make the next mesh CA ahead of need; the next manifest update makes its own"
                ),
            }
            // CPU time, as the early checks count theirs: the background threads wait for idle
            // cores, and that wait is not the work's cost.
            let took = crate::observe::thread_cpu_time().saturating_sub(started);
            crate::observe::global().commit_phase("ahead", took);
        });
        if !queued {
            self.making.store(false, Ordering::Release);
        }
    }

    #[cfg(test)]
    pub fn made(&self) -> Option<(p256::PublicKey, Vec<[u8; 32]>)> {
        self.lock().as_ref().map(|m| {
            let scalar = m.mesh_ca.key_for_attested_peer();
            let key = p256::SecretKey::from_bytes(scalar.as_slice().into())
                .expect("a mesh CA key is a P-256 scalar");
            (
                key.public_key(),
                m.seals.iter().map(|s| *s.recipient_key()).collect(),
            )
        })
    }

    #[cfg(test)]
    pub fn wait_until_made(&self) -> (p256::PublicKey, Vec<[u8; 32]>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(made) = self.made() {
                return made;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no mesh CA was made ahead"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Clears [`Ahead::making`] when dropped.
struct Making(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Making {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

fn make(
    root: &RootCa,
    now: OffsetDateTime,
    seal_keys: &[[u8; 32]],
) -> Result<MadeAhead, concord_mesh_ca::MeshCaError> {
    let mesh_ca = MeshCa::generate(root, now)?;
    // A key that does not take an encapsulation is left out here, and sealing to it at the prepare
    // says why.
    let seals = seal_keys
        .iter()
        .filter_map(|k| SealAhead::encapsulate(k).ok())
        .collect();
    Ok(MadeAhead {
        mesh_ca,
        root_ca_der: root.cert_der().to_vec(),
        made_for: now,
        seals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_mesh_ca::{SealKey, SeedEngine};

    fn root(now: OffsetDateTime) -> Arc<RootCa> {
        let engine = SeedEngine::generate().unwrap();
        Arc::new(RootCa::create(&engine.root_ca_key().unwrap(), now).unwrap())
    }

    fn put(ahead: &Ahead, root: &RootCa, made_for: OffsetDateTime) {
        *ahead.lock() = Some(make(root, made_for, &[]).unwrap());
    }

    /// A mesh CA made ahead is used only by a prepare it fits (the same root CA, made for a time
    /// at most `MAX_AGE` before the prepare's and not after it), and only once; one that does not
    /// fit is dropped, so the prepare makes its own.
    #[test]
    fn a_mesh_ca_made_ahead_is_taken_once_and_only_where_it_fits() {
        let now = OffsetDateTime::now_utc();
        let (root, other_root) = (root(now), root(now));
        let ahead = Ahead::default();

        put(&ahead, &root, now - MAX_AGE);
        let next = ahead.take(&root, now).expect("made for within MAX_AGE");
        // Certified under `root`: the checks a peer makes of a mesh CA it is handed pass.
        let key = next.mesh_ca.key_for_attested_peer();
        MeshCa::from_parts(
            &key,
            next.mesh_ca.mesh_ca_der().to_vec(),
            next.mesh_ca.intermediate_der().to_vec(),
            &root,
        )
        .unwrap();
        assert!(ahead.take(&root, now).is_none(), "taken once");

        let misfits = [
            (&other_root, now, "another root CA"),
            (&root, now - MAX_AGE - time::Duration::seconds(1), "too old"),
            (
                &root,
                now + time::Duration::seconds(1),
                "made for a later time",
            ),
        ];
        for (made_under, made_for, why) in misfits {
            put(&ahead, made_under, made_for);
            assert!(ahead.take(&root, now).is_none(), "{why}");
            assert!(ahead.made().is_none(), "{why}: dropped");
        }
    }

    /// `refill` makes one on the background threads, with an encapsulation to each seal key, and
    /// leaves one that waits alone; while one is being made, another refill queues nothing.
    #[test]
    fn refill_makes_the_next_mesh_ca_and_its_encapsulations_once() {
        let now = OffsetDateTime::now_utc();
        let root = root(now);
        let keys = [
            SealKey::generate().unwrap().public_key(),
            SealKey::generate().unwrap().public_key(),
        ];
        let ahead = Ahead::default();
        ahead.refill(root.clone(), now, keys.to_vec());
        ahead.refill(root.clone(), now, Vec::new());
        let (made, sealed_to) = ahead.wait_until_made();
        assert_eq!(sealed_to, keys);
        ahead.refill(root.clone(), now, Vec::new());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(ahead.made().unwrap().0, made, "the waiting one stays");
        let next = ahead.take(&root, now).unwrap();
        assert_eq!(next.seals.len(), 2);
    }
}
