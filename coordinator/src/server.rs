//! Wiring one replica: open and verify the store, build the evidence issuer from the launch
//! configuration, and serve the user API (1313) and the mesh API (7777) over aTLS until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use concord_attestation::{AtlsAcceptor, ClientAuth, Verifier};
use concord_proto::v1::{mesh_api_server::MeshApiServer, user_api_server::UserApiServer};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::{MeshAcceptPolicy, MeshService, Replica, UserService};
use crate::launch::LaunchedPlatform;
use crate::state::Coordinator;
use crate::store::SledStore;

/// A replica's launch configuration.
#[derive(Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub user_listen: SocketAddr,
    pub mesh_listen: SocketAddr,
    pub platform: LaunchedPlatform,
}

/// Runs the replica until `shutdown` resolves. Fails at once if the stored history does not verify.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store_dir = config.data_dir.join("store");
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let store = SledStore::open(&store_dir)?;
    let coordinator = Coordinator::open(store).map_err(|e| {
        anyhow::anyhow!(
            "refusing to serve the store in {}: {e}",
            store_dir.display()
        )
    })?;
    let state = coordinator.state();
    if let Some(chain) = coordinator.chain() {
        info!(
            transitions = chain.len(),
            latest = %chain.latest_hash(),
            "loaded and verified the stored history"
        );
    }

    if config.platform.trust.insecure_simulated_root.is_some() {
        warn!(
            "INSECURE: simulated attestation: this coordinator's evidence proves nothing; never use it in production"
        );
    }
    let issuer = config.platform.issuer.clone();
    let trust = config.platform.trust.clone();
    let replica = Arc::new(Replica::new(
        coordinator,
        issuer.clone(),
        Verifier::new(trust),
    ));
    let key = Arc::new(rcgen::KeyPair::generate()?);
    let user_acceptor = Arc::new(AtlsAcceptor::new(
        issuer.clone(),
        key.clone(),
        ClientAuth::None,
    )?);
    let mesh_acceptor = Arc::new(AtlsAcceptor::new(
        issuer,
        key,
        ClientAuth::Required(Arc::new(MeshAcceptPolicy::new(replica.clone()))),
    )?);

    let user_listener = TcpListener::bind(config.user_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (user API): {e}", config.user_listen))?;
    let mesh_listener = TcpListener::bind(config.mesh_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (mesh API): {e}", config.mesh_listen))?;
    info!(
        user_api = %user_listener.local_addr()?,
        mesh_api = %mesh_listener.local_addr()?,
        state = state.as_str(),
        "coordinator serving"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let user = tonic::transport::Server::builder()
        .add_service(UserApiServer::new(UserService::new(replica.clone())))
        .serve_with_incoming_shutdown(
            crate::transport::incoming(user_listener, user_acceptor, "user"),
            stopped(stop_rx.clone()),
        );
    let mesh = tonic::transport::Server::builder()
        .add_service(MeshApiServer::new(MeshService::new(replica)))
        .serve_with_incoming_shutdown(
            crate::transport::incoming(mesh_listener, mesh_acceptor, "mesh"),
            stopped(stop_rx),
        );
    tokio::try_join!(user, mesh)?;
    info!("coordinator stopped");
    Ok(())
}
