//! The broker: the root of all state shared between connections (vhosts and users).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::auth::{check_login, User};
use crate::client::ClientId;
use crate::error::{BrokerError, Result};
use crate::vhost::VHost;

#[derive(Debug, Default)]
pub struct Broker {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    users: RwLock<HashMap<String, User>>,
    next_client_id: AtomicU64,
}

impl Broker {
    pub fn new() -> Arc<Self> {
        Arc::new(Broker::default())
    }

    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        Arc::clone(
            self.vhosts
                .write()
                .entry(name.to_string())
                .or_insert_with(|| VHost::new(name)),
        )
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
