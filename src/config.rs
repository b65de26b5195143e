//! Configuration: command-line flags win over `FERRYMQ_*` environment variables, which win
//! over the TOML file (`--config`), which wins over the defaults below.
//!
//! Every scalar setting exists in all three places under the same name (`frame_max_bytes`,
//! `--frame-max-bytes`, `FERRYMQ_FRAME_MAX_BYTES`); users, vhosts and policies are file-only,
//! with RabbitMQ's `default_user` / `default_pass` / `default_vhost` as flags too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;

/// Declares the scalar settings once: the CLI struct (flag + env), the file struct and the
/// merge, so a setting cannot exist in one place and be forgotten in another.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident ($env:literal) : $ty:ty = $default:expr ),* $(,)?) => {
        /// ferrymq: an AMQP 0-9-1 message broker compatible with RabbitMQ clients.
        #[derive(Debug, Parser, Default)]
        #[command(version, about, long_about = None)]
        pub struct Cli {
            /// TOML configuration file.
            #[arg(long, env = "FERRYMQ_CONFIG")]
            pub config: Option<PathBuf>,
            $( $(#[doc = $doc])* #[arg(long, env = $env, value_name = stringify!($ty))]
               pub $name: Option<$ty>, )*
        }

        #[derive(Debug, Deserialize, Default)]
        #[serde(default, deny_unknown_fields)]
        struct FileConfig {
            $( $name: Option<$ty>, )*
            users: Vec<UserConfig>,
            vhosts: Vec<String>,
            policies: Vec<PolicyConfig>,
        }

        /// The effective configuration.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            pub users: Vec<UserConfig>,
            pub vhosts: Vec<String>,
            pub policies: Vec<PolicyConfig>,
        }

        impl Config {
            fn merge(cli: Cli, file: FileConfig) -> Config {
                Config {
                    $( $name: cli.$name.or(file.$name).unwrap_or_else(|| $default), )*
                    users: file.users,
                    vhosts: file.vhosts,
                    policies: file.policies,
                }
            }
        }
    };
}

settings! {
    /// Address the AMQP listener binds to.
    amqp_listen ("FERRYMQ_AMQP_LISTEN"): SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5672)),
    /// Directory for the broker's data; created on first start.
    data_dir ("FERRYMQ_DATA_DIR"): PathBuf = PathBuf::from("./data"),
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive); RUST_LOG also works.
    log_level ("FERRYMQ_LOG_LEVEL"): String = "info".to_string(),
    /// Largest frame the broker accepts and offers in connection.tune (RabbitMQ: 131072).
    frame_max_bytes ("FERRYMQ_FRAME_MAX_BYTES"): u32 = 131_072,
    /// Most channels per connection offered in connection.tune (RabbitMQ: 2047).
    channel_max ("FERRYMQ_CHANNEL_MAX"): u16 = 2047,
    /// Heartbeat interval offered in connection.tune; 0 disables (RabbitMQ: 60).
    heartbeat_s ("FERRYMQ_HEARTBEAT_S"): u16 = 60,
    /// Largest message body accepted; larger publishes get 406 (RabbitMQ: 128 MiB).
    message_size_max_bytes ("FERRYMQ_MESSAGE_SIZE_MAX_BYTES"): u64 = 128 * 1024 * 1024,
    /// Open connections at most; further ones are refused at accept.
    connections_max ("FERRYMQ_CONNECTIONS_MAX"): u32 = 65_536,
    /// Time a client has to complete the AMQP handshake (RabbitMQ: 10 s).
    handshake_timeout_ms ("FERRYMQ_HANDSHAKE_TIMEOUT_MS"): u64 = 10_000,
    /// Delivery bytes queues may have in flight to one connection before they wait for it.
    client_window_bytes ("FERRYMQ_CLIENT_WINDOW_BYTES"): u64 = 16 * 1024 * 1024,
    /// How long shutdown waits for connections to close.
    shutdown_timeout_ms ("FERRYMQ_SHUTDOWN_TIMEOUT_MS"): u64 = 5_000,
    /// Size at which a queue's segment file is closed and a new one started.
    segment_size_bytes ("FERRYMQ_SEGMENT_SIZE_BYTES"): u64 = 32 * 1024 * 1024,
    /// Ready messages a queue keeps in memory; beyond them messages wait on disk (paging).
    queue_window_messages ("FERRYMQ_QUEUE_WINDOW_MESSAGES"): usize = 16_384,
    /// Resident memory at which publishers are blocked; 0 = 40% of physical memory (RabbitMQ's default).
    memory_high_watermark_bytes ("FERRYMQ_MEMORY_HIGH_WATERMARK_BYTES"): u64 = 0,
    /// Free disk below which publishers are blocked; 0 = three segments.
    disk_free_limit_bytes ("FERRYMQ_DISK_FREE_LIMIT_BYTES"): u64 = 0,
    /// Time a delivery may stay unacked before its channel is closed (406), in ms; 0 = no limit.
    /// Queues (`x-consumer-timeout`) and consumers (same argument) override it.
    consumer_timeout_ms ("FERRYMQ_CONSUMER_TIMEOUT_MS"): u64 = 0,
    /// Threads running connections and queues; 0 = one per CPU core (RabbitMQ's `+S`).
    worker_threads ("FERRYMQ_WORKER_THREADS"): usize = 0,
    /// Vhost created at start when the file declares none.
    default_vhost ("FERRYMQ_DEFAULT_VHOST"): String = "/".to_string(),
    /// User created at start when the file declares none (only from loopback if "guest").
    default_user ("FERRYMQ_DEFAULT_USER"): String = "guest".to_string(),
    /// Password of the default user.
    default_pass ("FERRYMQ_DEFAULT_PASS"): String = "guest".to_string(),
}

/// A user from the `[[users]]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plain-text password, hashed at start.
    #[serde(default)]
    pub password: Option<String>,
    /// RabbitMQ's `password_hash` (base64 of salt + SHA-256), as in exported definitions.
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Vhosts the user may open; all when absent.
    #[serde(default)]
    pub vhosts: Option<Vec<String>>,
    /// Only from loopback addresses (default: true for "guest", false otherwise).
    #[serde(default)]
    pub loopback_only: Option<bool>,
}

/// A policy from a `[[policies]]` table of the config file (RabbitMQ's fields; see
/// `ferrymq_broker::policy`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    #[serde(default = "default_policy_vhost")]
    pub vhost: String,
    /// A regular expression over queue / exchange names (unanchored, as RabbitMQ).
    pub pattern: String,
    /// `queues`, `exchanges` or `all` (the default, as RabbitMQ).
    #[serde(default = "default_apply_to", rename = "apply-to", alias = "apply_to")]
    pub apply_to: String,
    #[serde(default)]
    pub priority: i64,
    /// RabbitMQ's policy keys: `max-length = 1000`, `dead-letter-exchange = "dlx"`, ...
    pub definition: toml::Table,
}

/// Policies from the environment replace the file's: a TOML array of inline tables,
/// `[{ name = "ttl", pattern = ".*", definition = { message-ttl = 60000 } }]`.
const POLICIES_ENV: &str = "FERRYMQ_POLICIES";

fn policies_from_env(text: &str) -> anyhow::Result<Vec<PolicyConfig>> {
    #[derive(Deserialize)]
    struct Wrapper {
        policies: Vec<PolicyConfig>,
    }
    let wrapper: Wrapper = toml::from_str(&format!("policies = {text}"))
        .with_context(|| format!("parsing {POLICIES_ENV}"))?;
    Ok(wrapper.policies)
}

fn default_policy_vhost() -> String {
    "/".to_string()
}

fn default_apply_to() -> String {
    "all".to_string()
}

impl PolicyConfig {
    /// The broker's policy, checked (pattern, keys and value types).
    pub fn to_policy(&self) -> anyhow::Result<ferrymq_broker::policy::Policy> {
        use ferrymq_broker::policy::{ApplyTo, Policy};
        let apply_to = ApplyTo::parse(&self.apply_to)
            .map_err(|e| anyhow::anyhow!("policy '{}': {e}", self.name))?;
        let mut definition = ferrymq_wire::FieldTable::new();
        for (key, value) in &self.definition {
            let value = field_value(value)
                .with_context(|| format!("policy '{}': key '{key}'", self.name))?;
            definition.insert(key.as_str(), value);
        }
        Policy::new(
            &self.name,
            &self.vhost,
            &self.pattern,
            apply_to,
            self.priority,
            definition,
        )
        .map_err(anyhow::Error::msg)
    }
}

/// A TOML value as the field value a client would have sent (integers as `long`).
fn field_value(value: &toml::Value) -> anyhow::Result<ferrymq_wire::FieldValue> {
    use ferrymq_wire::FieldValue;
    Ok(match value {
        toml::Value::String(s) => FieldValue::LongStr(bytes::Bytes::from(s.clone())),
        toml::Value::Integer(n) => FieldValue::I64(*n),
        toml::Value::Float(f) => FieldValue::F64(*f),
        toml::Value::Boolean(b) => FieldValue::Bool(*b),
        toml::Value::Array(items) => FieldValue::Array(
            items
                .iter()
                .map(field_value)
                .collect::<anyhow::Result<_>>()?,
        ),
        toml::Value::Table(_) | toml::Value::Datetime(_) => {
            anyhow::bail!("tables and dates are not policy values")
        }
    })
}

impl Config {
    /// Parses the command line and environment, then the file they name.
    pub fn load() -> anyhow::Result<Config> {
        Self::from_cli(Cli::parse())
    }

    pub fn from_cli(cli: Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut config = Config::merge(cli, file);
        if let Ok(text) = std::env::var(POLICIES_ENV) {
            config.policies = policies_from_env(&text)?;
        }
        if config.vhosts.is_empty() {
            config.vhosts.push(config.default_vhost.clone());
        }
        if config.users.is_empty() {
            config.users.push(UserConfig {
                name: config.default_user.clone(),
                password: Some(config.default_pass.clone()),
                password_hash: None,
                tags: vec!["administrator".to_string()],
                vhosts: None,
                loopback_only: None,
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// The alarm limits, with the automatic defaults resolved.
    pub fn alarm_limits(&self) -> crate::alarm::Limits {
        let memory = match self.memory_high_watermark_bytes {
            0 => crate::alarm::total_memory_bytes().map_or(0, |total| total / 10 * 4),
            explicit => explicit,
        };
        let disk = match self.disk_free_limit_bytes {
            0 => self.segment_size_bytes.saturating_mul(3),
            explicit => explicit,
        };
        crate::alarm::Limits {
            memory_high_watermark_bytes: memory,
            disk_free_limit_bytes: disk,
        }
    }

    /// Defaults with the listener on an ephemeral loopback port: for tests.
    pub fn for_tests() -> Config {
        let mut config = Self::from_cli(Cli::default()).expect("defaults are valid");
        config.amqp_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.frame_max_bytes == 0 || self.frame_max_bytes >= ferrymq_wire::FRAME_MIN_SIZE,
            "frame_max_bytes must be 0 (no limit) or at least {}",
            ferrymq_wire::FRAME_MIN_SIZE
        );
        for user in &self.users {
            anyhow::ensure!(
                user.password.is_some() || user.password_hash.is_some(),
                "user '{}' needs password or password_hash",
                user.name
            );
        }
        // A bad policy stops the start, rather than being half applied.
        for policy in &self.policies {
            policy.to_policy()?;
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file: FileConfig = toml::from_str("heartbeat_s = 5\nchannel_max = 10\n").unwrap();
        let cli = Cli {
            channel_max: Some(20),
            ..Cli::default()
        };
        let config = Config::merge(cli, file);
        assert_eq!(config.channel_max, 20);
        assert_eq!(config.heartbeat_s, 5);
        assert_eq!(config.frame_max_bytes, 131_072);
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("hartbeat_s = 5").is_err());
    }

    #[test]
    fn policies_come_from_the_file_with_rabbitmq_defaults() {
        let text = r#"
[[policies]]
name = "limits"
pattern = '^orders\.'
apply-to = "queues"
priority = 2
definition = { max-length = 10, dead-letter-exchange = "dlx" }

[[policies]]
name = "ae"
vhost = "prod"
pattern = ".*"
definition = { alternate-exchange = "unrouted" }
"#;
        let file: FileConfig = toml::from_str(text).unwrap();
        let config = Config::merge(Cli::default(), file);
        config.validate().unwrap();
        let limits = config.policies[0].to_policy().unwrap();
        assert_eq!(limits.vhost, "/");
        assert_eq!(limits.priority, 2);
        assert_eq!(limits.apply_to, ferrymq_broker::policy::ApplyTo::Queues);
        assert!(limits.pattern.is_match("orders.eu"));
        assert_eq!(
            limits.definition.get("max-length"),
            Some(&ferrymq_wire::FieldValue::I64(10))
        );
        let ae = config.policies[1].to_policy().unwrap();
        assert_eq!(ae.vhost, "prod");
        assert_eq!(ae.apply_to, ferrymq_broker::policy::ApplyTo::All);
    }

    #[test]
    fn policies_can_come_from_the_environment_as_a_toml_array() {
        let text = r#"[{ name = "ttl", pattern = ".*", apply-to = "queues", definition = { message-ttl = 60000 } }]"#;
        let policies = policies_from_env(text).unwrap();
        assert_eq!(policies.len(), 1);
        let policy = policies[0].to_policy().unwrap();
        assert_eq!(policy.name, "ttl");
        assert_eq!(policy.vhost, "/");
        assert!(policies_from_env("not toml").is_err());
    }

    #[test]
    fn a_bad_policy_fails_validation() {
        for text in [
            "[[policies]]\nname = \"p\"\npattern = \".*\"\ndefinition = { max-length = \"ten\" }\n",
            "[[policies]]\nname = \"p\"\npattern = \".*\"\napply-to = \"both\"\ndefinition = { max-length = 1 }\n",
            "[[policies]]\nname = \"p\"\npattern = \"(\"\ndefinition = { max-length = 1 }\n",
        ] {
            let file: FileConfig = toml::from_str(text).unwrap();
            let config = Config::merge(Cli::default(), file);
            assert!(config.validate().is_err(), "{text}");
        }
    }

    #[test]
    fn users_and_vhosts_come_from_the_file() {
        let text = "vhosts = [\"/\", \"prod\"]\n[[users]]\nname = \"app\"\npassword = \"pw\"\nvhosts = [\"prod\"]\n";
        let file: FileConfig = toml::from_str(text).unwrap();
        let config = Config::merge(Cli::default(), file);
        assert_eq!(config.vhosts, vec!["/", "prod"]);
        assert_eq!(config.users[0].name, "app");
    }
}
