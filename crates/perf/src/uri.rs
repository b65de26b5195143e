//! `amqp://user:pass@host:port/vhost` into amqprs connection arguments (RabbitMQ's URI spec,
//! minus TLS and query parameters, which a loopback load tool does not need).

use amqprs::connection::OpenConnectionArguments;
use anyhow::{bail, Context};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

impl AmqpUri {
    pub fn parse(uri: &str) -> anyhow::Result<AmqpUri> {
        let Some(rest) = uri.strip_prefix("amqp://") else {
            bail!("only amqp:// URIs are supported, got {uri:?}");
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.split('?').next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                (percent_decode(user)?, percent_decode(pass)?)
            }
            None => ("guest".to_string(), "guest".to_string()),
        };
        let (host, port) = split_host_port(hostport)?;
        // "amqp://host" and "amqp://host/" both mean the default vhost here.
        let vhost = if path.is_empty() {
            "/".to_string()
        } else {
            percent_decode(path)?
        };
        Ok(AmqpUri {
            host,
            port,
            user,
            password,
            vhost,
        })
    }

    pub fn connection_args(&self, name: &str) -> OpenConnectionArguments {
        OpenConnectionArguments::new(&self.host, self.port, &self.user, &self.password)
            .virtual_host(&self.vhost)
            .connection_name(name)
            .finish()
    }
}

fn split_host_port(hostport: &str) -> anyhow::Result<(String, u16)> {
    const AMQP_PORT: u16 = 5672;
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').context("unclosed [ in URI host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().context("bad port")?,
            None => AMQP_PORT,
        };
        return Ok((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), p.parse().context("bad port")?)),
        None if hostport.is_empty() => Ok(("localhost".to_string(), AMQP_PORT)),
        None => Ok((hostport.to_string(), AMQP_PORT)),
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).context("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).context("bad %-escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("URI component is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri_with_escaped_default_vhost() {
        let u = AmqpUri::parse("amqp://bob:s%40cret@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(
            u,
            AmqpUri {
                host: "127.0.0.1".into(),
                port: 5673,
                user: "bob".into(),
                password: "s@cret".into(),
                vhost: "/".into(),
            }
        );
    }

    #[test]
    fn defaults_fill_the_gaps() {
        let u = AmqpUri::parse("amqp://localhost").unwrap();
        assert_eq!(
            (u.port, u.user.as_str(), u.vhost.as_str()),
            (5672, "guest", "/")
        );
        let u = AmqpUri::parse("amqp://[::1]:5999/prod").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.vhost.as_str()),
            ("::1", 5999, "prod")
        );
        assert!(AmqpUri::parse("amqps://x").is_err());
    }
}
