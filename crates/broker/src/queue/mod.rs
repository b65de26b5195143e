//! Queues: each queue is one tokio task that owns its messages and consumers.
//!
//! Everyone else holds an [`Arc<QueueHandle>`] and talks to the task through its bounded
//! mailbox ([`QueueCmd`]). Publishers await a mailbox slot, which is how a queue that falls
//! behind slows its publishers down instead of growing without bound. The task never awaits
//! anyone: it answers requests over oneshot channels and pushes deliveries to clients
//! through their credit windows (see [`crate::client`]), so no cycle of waits can form.

mod actor;
pub mod arguments;
mod backlog;
mod command;
mod consumer;
pub mod consumer_args;
mod consumer_timeout;
pub mod dead_letter;
mod dedup;
mod pace;
mod persist;
mod priority;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use ferrymq_wire::{FieldTable, ShortStr};
use tokio::sync::{mpsc, oneshot};

use crate::client::{ClientHandle, ClientId};
use crate::error::{BrokerError, Result};
use crate::message::Message;
use crate::vhost::VHost;

pub use command::{ConfirmTicket, ConsumerSpec, GetOk, QueueCmd, QueueCounts, SettleAction};
pub use consumer_timeout::AckTimeout;
pub use persist::QueueStorage;

/// Commands a queue's mailbox holds before publishers must wait.
pub const QUEUE_MAILBOX_COMMANDS_MAX: usize = 4096;

/// Messages one [`QueueCmd::PublishMany`] carries at most, so a mailbox holds at most
/// this many times [`QUEUE_MAILBOX_COMMANDS_MAX`] messages.
pub const PUBLISH_BATCH_MESSAGES_MAX: usize = 64;

/// The properties a queue is declared with; compared for equivalence on redeclare.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<ClientId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug)]
pub struct QueueHandle {
    pub name: ShortStr,
    pub vhost: Arc<str>,
    pub config: QueueConfig,
    /// The arguments in force: the declared ones merged with any matching policy. Redeclare
    /// equivalence compares `config.arguments`; behaviour follows these.
    pub arguments: FieldTable,
    tx: mpsc::Sender<QueueCmd>,
    deleted: AtomicBool,
    /// Nanoseconds a publisher should wait per message it sends here (see `pace`).
    pace_ns: AtomicU32,
}

impl QueueHandle {
    /// Creates the queue and starts its task on the current tokio runtime.
    pub(crate) fn spawn(
        name: ShortStr,
        vhost: &Arc<VHost>,
        config: QueueConfig,
        arguments: FieldTable,
    ) -> Arc<QueueHandle> {
        let (tx, rx) = mpsc::channel(QUEUE_MAILBOX_COMMANDS_MAX);
        let handle = Arc::new(QueueHandle {
            name,
            vhost: vhost.name_arc(),
            config,
            arguments,
            tx,
            deleted: AtomicBool::new(false),
            pace_ns: AtomicU32::new(0),
        });
        let weak_vhost: Weak<VHost> = Arc::downgrade(vhost);
        // Only durable queues keep a log; a broker without storage keeps all in memory.
        let storage = vhost.storage().map(|s| QueueStorage {
            durable_dir: handle
                .config
                .durable
                .then(|| s.queue_dir(vhost.name(), &handle.name)),
            paging_dir: s.new_paging_dir(),
            syncer: s.syncer.clone(),
            segment_size_bytes: s.segment_size_bytes,
            window_messages: s.window_messages,
        });
        tokio::spawn(actor::run(Arc::clone(&handle), weak_vhost, rx, storage));
        handle
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    /// How long a publisher should wait per message routed here: 0 unless the queue's
    /// consumers fall behind (see [`pace`]).
    pub fn pace_ns(&self) -> u32 {
        self.pace_ns.load(Ordering::Relaxed)
    }

    pub(crate) fn set_pace_ns(&self, pace_ns: u32) {
        self.pace_ns.store(pace_ns, Ordering::Relaxed);
    }

    pub fn is_exclusive(&self) -> bool {
        self.config.exclusive_owner.is_some()
    }

    /// Whether `client` may use this queue: an exclusive queue serves its owner only.
    pub fn check_access(&self, client: ClientId) -> Result<()> {
        match self.config.exclusive_owner {
            Some(owner) if owner != client => Err(BrokerError::resource_locked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
                 originally declared on another connection or the exclusive property value does \
                 not match that of the original declaration.",
                self.name, self.vhost
            ))),
            _ => Ok(()),
        }
    }

    /// Enqueues a message, waiting for mailbox room. A deleted queue drops the message and
    /// confirms it, as RabbitMQ does for messages routed to a queue that then goes away.
    pub async fn publish(&self, message: Arc<Message>, confirm: Option<ConfirmTicket>) {
        if let Err(mpsc::error::SendError(cmd)) =
            self.tx.send(QueueCmd::Publish { message, confirm }).await
        {
            cmd.settle_undeliverable();
        }
    }

    /// Sends a command that needs no answer (acks, wake-ups). Drops it if the queue is gone.
    pub async fn send(&self, cmd: QueueCmd) {
        if let Err(mpsc::error::SendError(cmd)) = self.tx.send(cmd).await {
            cmd.settle_undeliverable();
        }
    }

    /// Sends without waiting; fails when the mailbox is full or the queue is gone.
    pub fn try_send(&self, cmd: QueueCmd) -> Result<(), mpsc::error::TrySendError<QueueCmd>> {
        self.tx.try_send(cmd)
    }

    /// Sends a request and waits for its answer; a queue that is gone answers 404.
    pub async fn request<R>(&self, make: impl FnOnce(oneshot::Sender<R>) -> QueueCmd) -> Result<R> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(make(reply)).await.is_err() {
            return Err(BrokerError::no_queue(&self.name, &self.vhost));
        }
        answer
            .await
            .map_err(|_| BrokerError::no_queue(&self.name, &self.vhost))
    }

    pub async fn counts(&self) -> Result<QueueCounts> {
        self.request(|reply| QueueCmd::Counts { reply }).await
    }

    /// Registers a consumer; deliveries may start before this returns.
    pub async fn consume(&self, consumer: ConsumerSpec) -> Result<()> {
        let consumer = Box::new(consumer);
        self.request(|reply| QueueCmd::Consume { consumer, reply })
            .await?
    }

    /// Removes a consumer; returns whether it existed.
    pub async fn cancel(&self, client: ClientId, channel: u16, consumer_tag: ShortStr) -> bool {
        self.request(|reply| QueueCmd::Cancel {
            client,
            channel,
            consumer_tag,
            reply,
        })
        .await
        .unwrap_or(false)
    }

    /// basic.get; `ack_timeout` limits how long the message may stay unacked.
    pub async fn get(
        &self,
        client: &Arc<ClientHandle>,
        channel: u16,
        no_ack: bool,
        ack_timeout: Option<AckTimeout>,
    ) -> Result<Option<GetOk>> {
        let client = client.id;
        self.request(|reply| QueueCmd::Get {
            client,
            channel,
            no_ack,
            ack_timeout,
            reply,
        })
        .await
    }

    pub async fn purge(&self) -> Result<u32> {
        self.request(|reply| QueueCmd::Purge { reply }).await
    }

    /// Deletes the queue (subject to the if-unused / if-empty checks) and returns how many
    /// ready messages it held.
    pub async fn delete(&self, if_unused: bool, if_empty: bool) -> Result<u32> {
        self.request(|reply| QueueCmd::Delete {
            if_unused,
            if_empty,
            reply,
        })
        .await?
    }
}

impl PartialEq for QueueHandle {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
