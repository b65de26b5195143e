//! Starting and stopping the broker: builds the core from the configuration, binds the
//! listener, and runs until told to shut down.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ferrymq_broker::auth::{PasswordHash, User};
use ferrymq_broker::storage::BrokerStorage;
use ferrymq_broker::Broker;
use ferrymq_store::{DataDir, Syncer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::alarm::{self, SharedLimits};
use crate::amqp::{listener, Server};
use crate::config::Config;

/// A running broker.
pub struct Running {
    pub amqp_addr: SocketAddr,
    pub broker: Arc<Broker>,
    /// The alarm limits in force; change them to raise or clear alarms at run time.
    pub alarm_limits: SharedLimits,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Holds the data directory's lock until the broker is dropped.
    _data_dir: DataDir,
}

impl Running {
    /// Closes every connection with 320 CONNECTION_FORCED and waits for the listener.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Builds the broker state the configuration describes.
pub fn build_broker(
    config: &Config,
    storage: Option<Arc<BrokerStorage>>,
) -> anyhow::Result<Arc<Broker>> {
    let broker = match storage {
        Some(storage) => Broker::with_storage(storage),
        None => Broker::new(),
    };
    // Before any vhost exists: a vhost takes its policies when it is created.
    let policies = config.policies.iter().map(|p| p.to_policy());
    broker.set_policies(policies.collect::<anyhow::Result<_>>()?);
    for vhost in &config.vhosts {
        broker.add_vhost(vhost);
    }
    for user in &config.users {
        let password = match (&user.password_hash, &user.password) {
            (Some(hash), _) => PasswordHash::from_rabbitmq_hash(hash).with_context(|| {
                format!(
                    "user '{}': password_hash is not a RabbitMQ SHA-256 hash",
                    user.name
                )
            })?,
            (None, Some(plain)) => PasswordHash::from_password(plain),
            (None, None) => anyhow::bail!("user '{}' has no password", user.name),
        };
        broker.add_user(User {
            name: user.name.clone(),
            password,
            tags: user.tags.clone(),
            vhosts: user.vhosts.clone(),
            loopback_only: user.loopback_only.unwrap_or(user.name == "guest"),
        });
    }
    Ok(broker)
}

/// Binds the listener and starts serving in the background.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let data_dir = DataDir::open(&config.data_dir)
        .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    let (syncer, _sync_thread) = Syncer::start();
    let (storage, topology) = BrokerStorage::open(
        data_dir.path(),
        syncer,
        config.segment_size_bytes,
        config.queue_window_messages,
    )
    .with_context(|| format!("reading definitions in {}", config.data_dir.display()))?;
    let broker = build_broker(&config, Some(Arc::new(storage)))?;
    broker
        .restore(&topology)
        .await
        .map_err(|e| anyhow::anyhow!("restoring definitions: {e}"))?;
    let listener = TcpListener::bind(config.amqp_listen)
        .await
        .with_context(|| format!("binding AMQP listener to {}", config.amqp_listen))?;
    let amqp_addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let alarm_limits: SharedLimits = Arc::new(parking_lot::Mutex::new(config.alarm_limits()));
    let alarms = alarm::spawn_monitor(Arc::clone(&alarm_limits), config.data_dir.clone());
    let server = Server::new(Arc::clone(&broker), config, alarms);
    let task = tokio::spawn(listener::serve(listener, server, shutdown_rx));
    Ok(Running {
        amqp_addr,
        broker,
        alarm_limits,
        shutdown,
        task,
        _data_dir: data_dir,
    })
}
