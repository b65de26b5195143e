//! The queue mailbox: every command a queue task accepts.

use std::sync::Arc;
use std::time::Duration;

use ferrymq_wire::{FieldTable, ShortStr};
use tokio::sync::oneshot;

use super::consumer_timeout::AckTimeout;
use crate::client::{ChannelCredit, ClientEvent, ClientHandle, ClientId};
use crate::error::Result;
use crate::message::Message;

/// Where to report that a published message is safely enqueued: in memory for a transient
/// message, on disk (after fdatasync) for a persistent message on a durable queue.
#[derive(Debug)]
pub enum ConfirmTicket {
    /// Publisher confirms: a basic.ack/nack for `seq` on the client's channel.
    Channel {
        client: Arc<ClientHandle>,
        channel: u16,
        epoch: u64,
        seq: u64,
    },
    /// Someone waiting in the broker itself (tx.commit waits for its publishes).
    Waiter(oneshot::Sender<bool>),
}

impl ConfirmTicket {
    pub fn settle(self, ack: bool) {
        match self {
            ConfirmTicket::Channel {
                client,
                channel,
                epoch,
                seq,
            } => client.send(ClientEvent::Confirm {
                channel,
                epoch,
                seq,
                ack,
            }),
            ConfirmTicket::Waiter(waiter) => {
                let _ = waiter.send(ack);
            }
        }
    }
}

/// What a channel decided about messages it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleAction {
    /// Done with: remove them.
    Ack,
    /// Put back at their original position, marked redelivered.
    Requeue,
    /// Rejected without requeue: removed (dead-lettered once a DLX is configured).
    Discard,
}

#[derive(Debug)]
pub struct ConsumerSpec {
    pub tag: ShortStr,
    pub client: Arc<ClientHandle>,
    pub channel: u16,
    /// Distinguishes this opening of the channel number from earlier ones on the same
    /// connection: events that outlive a channel must not reach its successor.
    pub epoch: u64,
    pub no_ack: bool,
    /// Per-consumer prefetch (basic.qos global=false at consume time); 0 = unlimited.
    pub prefetch_count: u32,
    /// The channel-wide prefetch (basic.qos global=true), shared across queues.
    pub channel_credit: Arc<ChannelCredit>,
    pub exclusive: bool,
    /// `x-priority` (read by the queue) and the rest, kept for stream offsets.
    pub arguments: FieldTable,
    /// How long a delivery may stay unacked before the channel is closed (406); resolved
    /// by the protocol layer from the consumer's and queue's `x-consumer-timeout` and the
    /// broker default. `None`: no limit.
    pub ack_timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct GetOk {
    pub msg_id: u64,
    pub redelivered: bool,
    pub message: Arc<Message>,
    /// Ready messages left after this one.
    pub message_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// Ready messages (not delivered and unacked).
    pub messages: u32,
    pub consumers: u32,
}

/// Every mailbox slot is this large, whatever it holds: keep the commands small.
const _: () = assert!(std::mem::size_of::<QueueCmd>() <= 64);

#[derive(Debug)]
pub enum QueueCmd {
    Publish {
        message: Arc<Message>,
        confirm: Option<ConfirmTicket>,
    },
    /// Several publishes from one connection's read, in order (at most
    /// [`PUBLISH_BATCH_MESSAGES_MAX`](super::PUBLISH_BATCH_MESSAGES_MAX)).
    PublishMany(Vec<(Arc<Message>, Option<ConfirmTicket>)>),
    Consume {
        /// Boxed: every slot of a queue's mailbox is as large as the largest command, and
        /// consumes are rare (a queue's mailbox is a large part of what a queue costs).
        consumer: Box<ConsumerSpec>,
        reply: oneshot::Sender<Result<()>>,
    },
    Cancel {
        client: ClientId,
        channel: u16,
        consumer_tag: ShortStr,
        reply: oneshot::Sender<bool>,
    },
    Settle {
        client: ClientId,
        channel: u16,
        msg_ids: Vec<u64>,
        action: SettleAction,
    },
    /// The channel closed: drop its consumers and requeue what it held unacked.
    ChannelClosed {
        client: ClientId,
        channel: u16,
    },
    Get {
        client: ClientId,
        channel: u16,
        no_ack: bool,
        /// Where to report that the message stayed unacked too long, if it may.
        ack_timeout: Option<AckTimeout>,
        reply: oneshot::Sender<Option<GetOk>>,
    },
    Purge {
        reply: oneshot::Sender<u32>,
    },
    Delete {
        if_unused: bool,
        if_empty: bool,
        reply: oneshot::Sender<Result<u32>>,
    },
    Counts {
        reply: oneshot::Sender<QueueCounts>,
    },
    /// Credit came back (prefetch or client window): retry parked consumers.
    Wake,
}

impl QueueCmd {
    /// Finishes a command that reached a queue that no longer exists. Confirms are acked
    /// (the message was routed; RabbitMQ does the same); requests fail by dropping `reply`.
    pub(crate) fn settle_undeliverable(self) {
        match self {
            QueueCmd::Publish {
                confirm: Some(ticket),
                ..
            } => ticket.settle(true),
            QueueCmd::PublishMany(publishes) => {
                for ticket in publishes.into_iter().filter_map(|(_, confirm)| confirm) {
                    ticket.settle(true);
                }
            }
            _ => {}
        }
    }

    /// How many messages the command enqueues.
    pub(crate) fn publish_count(&self) -> usize {
        match self {
            QueueCmd::Publish { .. } => 1,
            QueueCmd::PublishMany(publishes) => publishes.len(),
            _ => 0,
        }
    }
}
