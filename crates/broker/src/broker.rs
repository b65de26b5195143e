//! The broker: the root of all state shared between connections (vhosts and users).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::auth::{check_login, User};
use crate::client::ClientId;
use crate::definitions::Definition;
use crate::error::{BrokerError, Result};
use crate::exchange::{Destination, ExchangeConfig};
use crate::policy::Policy;
use crate::queue::QueueConfig;
use crate::storage::{BrokerStorage, Topology};
use crate::vhost::{DestinationName, VHost};

#[derive(Debug, Default)]
pub struct Broker {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// Durable definitions and queue files; `None` keeps everything in memory (tests).
    storage: Option<Arc<BrokerStorage>>,
    users: RwLock<HashMap<String, User>>,
    next_client_id: AtomicU64,
    /// From the configuration; each vhost takes its own at creation.
    policies: RwLock<Vec<Policy>>,
}

impl Broker {
    pub fn new() -> Arc<Self> {
        Arc::new(Broker::default())
    }

    /// A broker whose durable definitions and messages live in `storage`.
    pub fn with_storage(storage: Arc<BrokerStorage>) -> Arc<Self> {
        Arc::new(Broker {
            storage: Some(storage),
            ..Broker::default()
        })
    }

    /// Re-creates the durable exchanges, queues (which recover their messages) and
    /// bindings read from the definitions log, then starts recording changes.
    pub async fn restore(&self, topology: &Topology) -> Result<()> {
        for definition in topology.definitions() {
            // One definition the broker no longer accepts (a rule tightened since it was
            // written) must not keep every other queue from coming back.
            let described = format!("{definition:?}");
            if let Err(e) = self.restore_one(definition).await {
                tracing::error!(error = %e.text, definition = %described, "a durable definition could not be restored; skipped");
            }
        }
        if let Some(storage) = &self.storage {
            storage.start_recording(topology).map_err(|e| {
                BrokerError::internal(format!("rewriting the definitions log: {e}"))
            })?;
        }
        Ok(())
    }

    async fn restore_one(&self, definition: Definition) -> Result<()> {
        match definition {
            Definition::Exchange {
                vhost,
                name,
                kind,
                auto_delete,
                internal,
                arguments,
            } => {
                let config = ExchangeConfig {
                    kind,
                    durable: true,
                    auto_delete,
                    internal,
                    arguments,
                };
                self.add_vhost(&vhost)
                    .declare_exchange(&name, config, false)?;
            }
            Definition::Queue {
                vhost,
                name,
                auto_delete,
                arguments,
            } => {
                let config = QueueConfig {
                    durable: true,
                    exclusive_owner: None,
                    auto_delete,
                    arguments,
                };
                self.add_vhost(&vhost)
                    .declare_queue(&name, config, false, 0)
                    .await?;
            }
            Definition::Binding(b) => {
                let vhost = self.add_vhost(&b.vhost);
                let source = vhost.exchange_or_404(&b.source)?;
                let destination = match &b.destination {
                    DestinationName::Queue(q) => Destination::Queue(vhost.queue_or_404(q)?),
                    DestinationName::Exchange(x) => {
                        Destination::Exchange(vhost.exchange_or_404(x)?)
                    }
                };
                vhost.bind(&source, destination, b.routing_key, b.arguments)?;
            }
            // A folded topology holds no deletions.
            Definition::ExchangeDeleted { .. }
            | Definition::QueueDeleted { .. }
            | Definition::Unbinding(_) => {}
        }
        Ok(())
    }

    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        Arc::clone(
            self.vhosts
                .write()
                .entry(name.to_string())
                .or_insert_with(|| {
                    let policies = self.policies.read();
                    let own = policies.iter().filter(|p| p.vhost == name).cloned();
                    VHost::with_policies(name, self.storage.clone(), own.collect())
                }),
        )
    }

    /// The policies of every vhost; set before vhosts are added (policies apply when a
    /// queue or exchange is declared, so a vhost takes them at its creation).
    pub fn set_policies(&self, policies: Vec<Policy>) {
        *self.policies.write() = policies;
    }

    pub fn add_user(&self, user: User) {
        self.users.write().insert(user.name.clone(), user);
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn vhost_names(&self) -> Vec<String> {
        self.vhosts.read().keys().cloned().collect()
    }

    pub fn new_client_id(&self) -> ClientId {
        self.next_client_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Checks a username and password (SASL PLAIN or AMQPLAIN) from `peer`.
    pub fn authenticate(
        &self,
        username: &str,
        password: &[u8],
        peer: IpAddr,
        mechanism: &str,
    ) -> Result<User> {
        let users = self.users.read();
        check_login(users.get(username), password, peer, mechanism)
    }

    /// connection.open: the vhost must exist and the user may open it (530 otherwise).
    pub fn open_vhost(&self, user: &User, name: &str) -> Result<Arc<VHost>> {
        let Some(vhost) = self.vhost(name) else {
            return Err(BrokerError::not_allowed(format!("vhost {name} not found")));
        };
        if !user.may_open(name) {
            return Err(BrokerError::not_allowed(format!(
                "access to vhost '{name}' refused for user '{}'",
                user.name
            )));
        }
        Ok(vhost)
    }
}
