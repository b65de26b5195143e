//! Users, their passwords and which vhosts they may open.

mod password;

use std::net::IpAddr;

pub use password::PasswordHash;

use crate::error::{BrokerError, Result};

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: PasswordHash,
    pub tags: Vec<String>,
    /// Vhosts this user may open; `None` means all of them.
    pub vhosts: Option<Vec<String>>,
    /// RabbitMQ's `loopback_users`: the default guest account may only connect locally,
    /// so a broker reachable from a network is not open to the world by default.
    pub loopback_only: bool,
}

impl User {
    pub fn may_open(&self, vhost: &str) -> bool {
        self.vhosts
            .as_ref()
            .is_none_or(|list| list.iter().any(|v| v == vhost))
    }
}

/// The refusal RabbitMQ sends for a failed login (it deliberately does not say why).
pub fn login_refused(mechanism: &str) -> BrokerError {
    BrokerError::access_refused(format!(
        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
    ))
}

/// Checks a login attempt against a user record.
pub fn check_login(
    user: Option<&User>,
    password: &[u8],
    peer: IpAddr,
    mechanism: &str,
) -> Result<User> {
    let Some(user) = user else {
        return Err(login_refused(mechanism));
    };
    if !user.password.verify(password) {
        return Err(login_refused(mechanism));
    }
    if user.loopback_only && !peer.is_loopback() {
        return Err(BrokerError::access_refused(format!(
            "user '{}' can only connect via localhost",
            user.name
        )));
    }
    Ok(user.clone())
}
