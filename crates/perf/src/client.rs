//! amqprs plumbing shared by the modes: connections, the topology a run declares (with
//! unique names, deleted at the end), and the publisher-confirm window.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    Channel, ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use anyhow::Context;
use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::cli::Settings;
use crate::uri::AmqpUri;
use crate::workers::Counters;

/// How long setup and teardown steps may take before the run gives up on them.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn connect(uri: &AmqpUri, name: &str) -> anyhow::Result<(Connection, Channel)> {
    let args = uri.connection_args(name);
    let conn = tokio::time::timeout(STEP_TIMEOUT, Connection::open(&args))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect to {}:{}", uri.host, uri.port))?;
    let channel = conn.open_channel(None).await.context("open channel")?;
    Ok((conn, channel))
}

/// Names unique to this run, so parallel or crashed runs never share a queue.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: Option<String>,
    pub queues: Vec<String>,
}

impl Topology {
    pub fn new(s: &Settings) -> Topology {
        let prefix = run_prefix();
        Topology {
            exchange: s.exchange_type.as_ref().map(|_| format!("{prefix}-x")),
            queues: (0..s.queues).map(|i| format!("{prefix}-q{i}")).collect(),
        }
    }

    /// The (exchange, routing key) producer `i` publishes to.
    pub fn target(&self, producer: usize) -> (String, String) {
        let queue = &self.queues[producer % self.queues.len()];
        match &self.exchange {
            Some(x) => (x.clone(), queue.clone()),
            None => (String::new(), queue.clone()),
        }
    }

    pub async fn declare(&self, ch: &Channel, s: &Settings) -> anyhow::Result<()> {
        if let (Some(x), Some(kind)) = (&self.exchange, &s.exchange_type) {
            let mut args = ExchangeDeclareArguments::new(x, kind);
            args.durable = s.persistent;
            ch.exchange_declare(args)
                .await
                .context("exchange.declare")?;
        }
        let table = queue_arguments(&s.queue_args)?;
        for q in &self.queues {
            let args = QueueDeclareArguments::new(q)
                .durable(s.persistent)
                .arguments(table.clone())
                .finish();
            ch.queue_declare(args).await.context("queue.declare")?;
            if let Some(x) = &self.exchange {
                ch.queue_bind(QueueBindArguments::new(q, x, q))
                    .await
                    .context("queue.bind")?;
            }
        }
        Ok(())
    }

    /// Messages ready in all queues (passive declares).
    pub async fn ready_messages(&self, ch: &Channel) -> anyhow::Result<u64> {
        let mut total = 0;
        for q in &self.queues {
            let args = QueueDeclareArguments::new(q).passive(true).finish();
            if let Some((_, ready, _)) = ch.queue_declare(args).await? {
                total += u64::from(ready);
            }
        }
        Ok(total)
    }

    pub async fn delete(&self, ch: &Channel) -> anyhow::Result<()> {
        for q in &self.queues {
            ch.queue_delete(QueueDeleteArguments::new(q))
                .await
                .context("queue.delete")?;
        }
        if let Some(x) = &self.exchange {
            ch.exchange_delete(ExchangeDeleteArguments::new(x))
                .await
                .context("exchange.delete")?;
        }
        Ok(())
    }
}

pub fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("ferrymq-perf-{}-{nanos:x}", std::process::id())
}

/// `x-max-length=1000` becomes a long (RabbitMQ's type for numeric arguments),
/// `x-overflow=reject-publish` a long string.
pub fn queue_arguments(pairs: &[(String, String)]) -> anyhow::Result<FieldTable> {
    let mut table = FieldTable::new();
    for (k, v) in pairs {
        let key = k
            .clone()
            .try_into()
            .with_context(|| format!("argument name {k:?}"))?;
        let value = match v.parse::<i64>() {
            Ok(n) => FieldValue::l(n),
            Err(_) => match v.as_str() {
                "true" => FieldValue::t(true),
                "false" => FieldValue::t(false),
                _ => FieldValue::S(v.clone().try_into().context("argument value")?),
            },
        };
        table.insert(key, value);
    }
    Ok(table)
}

/// Producer-side publisher-confirm window: a permit per unconfirmed message.
#[derive(Clone)]
pub struct ConfirmWindow {
    pub permits: Arc<Semaphore>,
    pub counters: Arc<Counters>,
}

impl ConfirmWindow {
    pub fn new(window: u32, counters: Arc<Counters>) -> ConfirmWindow {
        ConfirmWindow {
            permits: Arc::new(Semaphore::new(window as usize)),
            counters,
        }
    }

    pub fn callback(&self) -> ConfirmCallback {
        ConfirmCallback {
            window: self.clone(),
            highest_tag: 0,
        }
    }
}

/// Returns permits as basic.ack / basic.nack arrive (amqprs delivers them to a callback).
pub struct ConfirmCallback {
    window: ConfirmWindow,
    highest_tag: u64,
}

impl ConfirmCallback {
    /// How many messages one ack or nack settles; confirms arrive in tag order.
    fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        let n = if multiple {
            tag.saturating_sub(self.highest_tag)
        } else {
            u64::from(tag > self.highest_tag)
        };
        self.highest_tag = self.highest_tag.max(tag);
        self.window.permits.add_permits(n as usize);
        n
    }
}

#[async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        eprintln!("ferrymq-perf: broker closed a publishing channel: {close}");
        Ok(())
    }

    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }

    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let n = self.settle(ack.delivery_tag(), ack.mutiple());
        self.window
            .counters
            .confirmed
            .fetch_add(n, Ordering::Relaxed);
    }

    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let n = self.settle(nack.delivery_tag(), nack.multiple());
        self.window.counters.nacked.fetch_add(n, Ordering::Relaxed);
    }

    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_return_permits_for_single_and_multiple_acks() {
        let window = ConfirmWindow::new(0, Arc::default());
        let mut cb = window.callback();
        assert_eq!(cb.settle(1, false), 1);
        assert_eq!(cb.settle(5, true), 4);
        assert_eq!(cb.settle(5, true), 0, "a repeated ack settles nothing");
        assert_eq!(window.permits.available_permits(), 5);
    }

    #[test]
    fn numeric_queue_arguments_are_longs() {
        let t = queue_arguments(&[
            ("x-max-length".into(), "1000".into()),
            ("x-overflow".into(), "reject-publish".into()),
        ])
        .unwrap();
        let key = |k: &str| k.to_string().try_into().unwrap();
        assert_eq!(t.get(&key("x-max-length")), Some(&FieldValue::l(1000)));
        assert!(matches!(t.get(&key("x-overflow")), Some(FieldValue::S(_))));
    }
}
