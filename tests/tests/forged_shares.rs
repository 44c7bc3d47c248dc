//! Forged seed shares against user recovery, with the real binaries (issue 9.6): the deployment id and
//! the threshold are public, so anyone who can reach the user API can build a well-formed share for any
//! index. A forgery must neither displace a real owner's share nor block recovery, even in a loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::net::IpAddr;

use concord_mesh_ca::{
    EncryptedShare, Salt, SeedShare, ShareOwnerKeyPair, decrypt_share, seal_submission,
};
use concord_proto::v1 as pb;
use concord_tests::{Env, describe, stdout_line};
use zeroize::Zeroizing;

/// A well-formed share for `index` of the deployment whose first transition is `deployment`, made by
/// someone who holds no share: random salt and value.
fn forged_share(deployment: [u8; 32], index: u8) -> SeedShare {
    SeedShare {
        deployment,
        threshold: 2,
        index,
        salt: Salt::from_bytes(rand::random()),
        value: Zeroizing::new(rand::random()),
    }
}

/// Full outage, an attacker keeps submitting a forged share for the first owner's index in a loop, and
/// the real owners (the first among them) still recover the replica with `concord recover`.
/// Before shares were authenticated, the first owner was refused ("a different share with index 1
/// was already submitted") for as long as the loop ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t96_a_forged_share_loop_cannot_block_user_recovery() {
    let env = Arc::new(Env::new());
    let mut c = env.start_coordinator("c1");
    let first = env.set(&c, "manifest-v1.json", &["--owner-key", "owner.pem"]);
    assert!(first.status.success(), "{}", describe(&first));
    let first = stdout_line(&first);
    let deployment: [u8; 32] = hex::decode(&first).unwrap().try_into().unwrap();
    c.kill();
    let c = Arc::new(env.start_coordinator("c1"));

    // The attacker, on another host (127.0.0.2), cycles through every forgery it can make: a
    // plaintext share (what the Recover RPC took before shares were authenticated), a share sealed
    // by its own key, and one sealed by its own key but naming the first owner's.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let throttled = Arc::new(AtomicUsize::new(0));
    let throttled_once = tokio::sync::oneshot::channel::<()>();
    let attacker = {
        let (env, c, stop) = (env.clone(), c.clone(), stop.clone());
        let (attempts, accepted, throttled) =
            (attempts.clone(), accepted.clone(), throttled.clone());
        let mut announce = Some(throttled_once.0);
        let forger = ShareOwnerKeyPair::generate().unwrap();
        let victim = env.d.share_owners[0].public_key();
        tokio::spawn(async move {
            let mut client = env.user_client_from(&c, IpAddr::from([127, 0, 0, 2])).await;
            let recovery_key: [u8; 32] = client
                .get_recovery_key(pb::GetRecoveryKeyRequest {})
                .await
                .unwrap()
                .into_inner()
                .recovery_key
                .try_into()
                .unwrap();
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let share = forged_share(deployment, 1);
                let sealed = seal_submission(&forger, &recovery_key, &share).unwrap();
                let mut sealed = pb::SealedShare {
                    owner_public_key: sealed.owner_public_key.to_vec(),
                    encapsulated_key: sealed.encapsulated_key,
                    ciphertext: sealed.ciphertext,
                };
                let request = match round % 3 {
                    0 => pb::RecoverRequest {
                        legacy_plaintext_share: share.to_bytes().to_vec(),
                        ..Default::default()
                    },
                    1 => pb::RecoverRequest {
                        sealed: Some(sealed),
                        ..Default::default()
                    },
                    _ => {
                        sealed.owner_public_key = victim.to_vec();
                        pb::RecoverRequest {
                            sealed: Some(sealed),
                            ..Default::default()
                        }
                    }
                };
                round += 1;
                match client.recover(request).await {
                    Ok(_) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        throttled.fetch_add(1, Ordering::Relaxed);
                        // Its address used up its budget: the owners go now, with the loop running.
                        if let Some(tx) = announce.take() {
                            let _ = tx.send(());
                        }
                    }
                    Err(_) => {}
                }
                attempts.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Forgeries arrived before any real share (so a first-come rule would keep one), until the
    // attacker's address was throttled.
    tokio::time::timeout(Duration::from_secs(60), throttled_once.1)
        .await
        .expect("the attacker's address is throttled within 60 s")
        .expect("the attacker announces it");

    // A real owner's share sent the way an older `concord` did (plaintext): refused, with the fix.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("shares/seed-share-0.json")).unwrap())
            .unwrap();
    let field = |name: &str| hex::decode(file[name].as_str().unwrap()).unwrap();
    let encrypted = EncryptedShare {
        owner_public_key: field("owner_public_key").try_into().unwrap(),
        encapsulated_key: field("encapsulated_key"),
        ciphertext: field("ciphertext"),
    };
    let real = decrypt_share(&env.d.share_owners[0], &encrypted).unwrap();
    let legacy = env
        .user_client_from(&c, IpAddr::from([127, 0, 0, 3]))
        .await
        .recover(pb::RecoverRequest {
            legacy_plaintext_share: real.to_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(legacy.code(), tonic::Code::InvalidArgument, "{legacy:?}");
    assert!(
        legacy.message().contains("older than the coordinator"),
        "{legacy:?}"
    );

    let started = Instant::now();
    for owner in [0, 1] {
        let (env, c, latest) = (env.clone(), c.clone(), first.clone());
        let out = tokio::task::spawn_blocking(move || {
            env.recover(&c, owner, &["--expect-latest", &latest])
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "owner {owner} was refused while a forged share loop runs: {}",
            describe(&out)
        );
    }
    stop.store(true, Ordering::Relaxed);
    attacker.await.unwrap();
    let attempts = attempts.load(Ordering::Relaxed);
    assert!(attempts > 10, "the attacker's loop ran {attempts} times");
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        0,
        "a forged share was accepted"
    );
    // The attacker's address used up its budget of refusals and was then turned away cheaply.
    assert!(
        throttled.load(Ordering::Relaxed) > 0,
        "{attempts} refused submissions from one address were never throttled"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "recovery took {:?}",
        started.elapsed()
    );

    // Ready, with the history from before the outage.
    let v = env.verify(&c, "manifest-v1.json", "verify", &["--since", &first]);
    assert!(v.status.success(), "{}", describe(&v));
}
