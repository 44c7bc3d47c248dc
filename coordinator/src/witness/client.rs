//! The coordinator's side of C2SP tlog-witness: it asks the manifest's witnesses to cosign its latest
//! checkpoint and keeps the cosignatures it got (docs/PROTOCOL.md §15.5).
//!
//! Availability: every request is bounded ([`REQUEST_TIMEOUT`]), all witnesses are asked at once, and a
//! witness that is down or refuses only leaves its cosignature missing: writes never wait for witnesses.
//! A checkpoint is served with the cosignatures collected so far; clients decide whether enough are on
//! it (the manifest's threshold). Witnesses are trusted for nothing but their signatures: a reply that
//! is not a valid cosignature by the listed key is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use super::AddCheckpoint;
use crate::hash::Hash;
use crate::history::note::{Checkpoint, NoteSignature, SignedNote};
use crate::manifest::{WitnessEntry, Witnesses};

/// The longest one witness request (connect, send, answer) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// `POST /add-checkpoint` to `address`; the status and body.
pub async fn post_add_checkpoint(address: &str, body: String) -> Result<(u16, String), String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/add-checkpoint")
            .header(header::HOST, address)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("no HTTP response: {e}"))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        }
        .await;
        driver.abort();
        result
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

/// The cosignatures a replica holds for its latest checkpoint, and the size each witness last
/// cosigned (what the next request's `old` must be).
#[derive(Debug, Default)]
pub struct Cosignatures {
    witness_sizes: Mutex<HashMap<String, u64>>,
    latest: Mutex<Option<(u64, Hash, Vec<NoteSignature>)>>,
}

impl Cosignatures {
    /// The cosignature lines held for `cp`.
    pub fn held(&self, cp: &Checkpoint) -> Vec<NoteSignature> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        match &*latest {
            Some((size, root, sigs)) if *size == cp.size && *root == cp.root => sigs.clone(),
            _ => Vec::new(),
        }
    }

    /// Asks every listed witness that has not cosigned `note` yet, at once, each bounded; keeps and
    /// returns `note` with every valid cosignature held. `proof(old)` is the consistency proof from
    /// `old` to the checkpoint's size.
    pub async fn collect(
        &self,
        note: &SignedNote,
        cp: &Checkpoint,
        witnesses: &Witnesses,
        proof: impl Fn(u64) -> Option<Vec<Hash>> + Send + Sync + Clone + 'static,
    ) -> SignedNote {
        let mut held = self.held(cp);
        let missing: Vec<WitnessEntry> = witnesses
            .list
            .iter()
            .filter(|w| !held.iter().any(|s| s.name == w.name))
            .cloned()
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for w in missing {
            let old = self
                .witness_sizes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&w.name)
                .copied()
                .unwrap_or(0);
            let note = note.clone();
            let cp = cp.clone();
            let proof = proof.clone();
            tasks.spawn(async move {
                let got = ask(&w, &note, &cp, old, &proof).await;
                (w, got)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((w, got)) = done else { continue };
            match got {
                Ok(sig) => {
                    self.witness_sizes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(w.name.clone(), cp.size);
                    held.push(sig);
                }
                Err(e) => {
                    warn!(witness = %w.name, address = %w.address, error = %e, size = cp.size, "no cosignature")
                }
            }
        }
        {
            // A slower collection for an older checkpoint must not replace a newer one's.
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *latest {
                Some((size, root, sigs)) if *size == cp.size && *root == cp.root => {
                    for s in &held {
                        if !sigs.iter().any(|x| x.name == s.name) {
                            sigs.push(s.clone());
                        }
                    }
                    held = sigs.clone();
                }
                Some((size, _, _)) if *size > cp.size => {}
                _ => *latest = Some((cp.size, cp.root, held.clone())),
            }
        }
        let mut out = note.clone();
        for s in held {
            out.add(s);
        }
        out
    }
}

/// One witness: from `old` (what we believe it cosigned last); on 409 once more from the size it
/// names. Returns its valid cosignature.
async fn ask(
    w: &WitnessEntry,
    note: &SignedNote,
    cp: &Checkpoint,
    mut old: u64,
    proof: &(impl Fn(u64) -> Option<Vec<Hash>> + Send + Sync),
) -> Result<NoteSignature, String> {
    for _attempt in 0..2 {
        if old > cp.size {
            return Err(format!(
                "the witness cosigned a tree of {old} transitions, this replica's checkpoint has {}: \
                 this replica is behind, or its history went back",
                cp.size
            ));
        }
        let hashes = match old {
            0 => Vec::new(),
            o if o == cp.size => Vec::new(),
            o => proof(o).ok_or_else(|| format!("no consistency proof from size {o}"))?,
        };
        let (status, body) =
            post_add_checkpoint(&w.address, AddCheckpoint::encode(old, &hashes, note)).await?;
        match status {
            200 => {
                let text = format!("{}\n{body}", note.body);
                let answered = SignedNote::parse(&text).map_err(|e| format!("answer: {e}"))?;
                let sig = answered
                    .signatures
                    .into_iter()
                    .find(|s| s.name == w.name)
                    .ok_or("the answer has no signature by this witness")?;
                let check = SignedNote {
                    body: note.body.clone(),
                    signatures: vec![sig.clone()],
                };
                if check.cosignature_time(&w.name, &w.key).is_none() {
                    return Err("the answer is not a valid cosignature by the listed key".into());
                }
                info!(witness = %w.name, size = cp.size, "cosigned");
                return Ok(sig);
            }
            409 => match body.trim().parse::<u64>() {
                Ok(size) if size != old => {
                    debug!(witness = %w.name, size, "the witness's last size");
                    old = size;
                }
                _ => return Err(format!("refused (409): {}", body.trim())),
            },
            s => return Err(format!("refused ({s}): {}", body.trim())),
        }
    }
    Err("the witness's last size kept changing".into())
}
