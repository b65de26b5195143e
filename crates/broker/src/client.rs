//! A connected client as the core sees it: where queues send deliveries, confirms and
//! cancellations, and the credit that keeps those sends bounded.
//!
//! Queues never wait on a client. Instead each client has a window of delivery bytes that
//! queues may have in flight towards it (sent but not yet encoded onto its socket). A queue
//! whose consumer's client is over the window parks that consumer; the client sends
//! [`crate::queue::QueueCmd::Wake`] to its queues when the window drains below the limit.
//! Together with prefetch this bounds the memory a slow consumer can pin.
//!
//! ```text
//!   queue task ──ClientEvent──▶ unbounded mailbox ──▶ connection task ──▶ socket
//!        │   in_flight_bytes += len          in_flight_bytes -= len (after encoding)
//!        └── parks consumer if in_flight_bytes >= window; woken by QueueCmd::Wake
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use ferrymq_wire::ShortStr;
use smallvec::SmallVec;
use tokio::sync::mpsc;

use crate::message::Message;
use crate::queue::QueueHandle;

pub type ClientId = u64;

/// What a delivery in flight costs besides its body: the event, the shared message header
/// and the frames it becomes. Charged so that a window of tiny messages cannot hold
/// millions of them (16 MiB of 16-byte bodies would otherwise be a million deliveries).
pub const DELIVERY_OVERHEAD_BYTES: usize = 256;

/// The bytes a delivery takes from its client's window.
fn window_charge(body_size: usize) -> usize {
    body_size + DELIVERY_OVERHEAD_BYTES
}

/// Deliveries a queue hands one consumer in one event, at most: one mailbox operation (and
/// wake-up) for a run of deliveries instead of one each, while a run still adds little to
/// the connection's outbox beyond its high watermark.
pub const DELIVERY_BATCH_MAX: usize = 64;

/// Events queues send to a client (a protocol connection).
#[derive(Debug)]
pub enum ClientEvent {
    /// Deliveries from one queue's dispatch to one consumer, in order.
    Deliver(Deliveries),
    /// The publish with this sequence number on this channel is safely enqueued (ack) or
    /// was refused by a queue (nack).
    Confirm {
        channel: u16,
        epoch: u64,
        seq: u64,
        ack: bool,
    },
    /// A reply for this channel's direct reply-to consumer (see [`crate::direct_reply`]):
    /// delivered without acks, not from any queue.
    DirectReply {
        channel: u16,
        epoch: u64,
        consumer_tag: ShortStr,
        message: Arc<Message>,
    },
    /// The queue this consumer was on went away (deleted): RabbitMQ sends basic.cancel.
    ConsumerCancelled {
        channel: u16,
        epoch: u64,
        consumer_tag: ShortStr,
    },
    /// A delivery on this channel stayed unacked past its timeout (`consumer_timeout`):
    /// the channel is closed with 406, which requeues what it holds, as RabbitMQ does.
    AckTimedOut {
        channel: u16,
        epoch: u64,
        timeout_ms: u64,
    },
}

/// A run of messages from one queue to one consumer (1 to [`DELIVERY_BATCH_MAX`]): what
/// the consumer is and where it lives is said once per run, not once per message.
#[derive(Debug)]
pub struct Deliveries {
    pub channel: u16,
    /// Which opening of that channel number (see [`ConsumerSpec::epoch`](crate::queue::ConsumerSpec)).
    pub epoch: u64,
    pub consumer_tag: ShortStr,
    pub queue: Arc<QueueHandle>,
    /// Settled on delivery (no-ack consumer): nothing to ack, nothing to requeue.
    pub no_ack: bool,
    /// A lone delivery (a consumer keeping pace) allocates nothing.
    pub messages: SmallVec<[Delivery; 1]>,
}

/// One message on its way to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The queue's id for this message, echoed back on ack/nack/reject.
    pub msg_id: u64,
    pub redelivered: bool,
    pub message: Arc<Message>,
}

/// The sending side of a client, shared by every queue that has one of its consumers.
#[derive(Debug)]
pub struct ClientHandle {
    pub id: ClientId,
    tx: mpsc::UnboundedSender<ClientEvent>,
    in_flight_bytes: AtomicUsize,
    in_flight_window_bytes: usize,
    /// Whether the client wants basic.cancel when its queue is deleted.
    pub consumer_cancel_notify: AtomicBool,
}

impl ClientHandle {
    pub fn new(
        id: ClientId,
        in_flight_window_bytes: usize,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<ClientEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = ClientHandle {
            id,
            tx,
            in_flight_bytes: AtomicUsize::new(0),
            in_flight_window_bytes,
            consumer_cancel_notify: AtomicBool::new(true),
        };
        (Arc::new(handle), rx)
    }

    /// True when queues should hold further deliveries for this client.
    pub fn is_congested(&self) -> bool {
        self.in_flight_bytes.load(Ordering::Acquire) >= self.in_flight_window_bytes
    }

    /// Charges a delivery to the window as it is decided, so that [`Self::is_congested`]
    /// counts it before [`Self::send_deliveries`] hands it over with others.
    pub fn charge(&self, body_size: usize) {
        self.in_flight_bytes
            .fetch_add(window_charge(body_size), Ordering::AcqRel);
    }

    /// Sends deliveries already charged with [`Self::charge`]. A send to a closed client is
    /// dropped: its channels requeue everything they held when closing.
    pub fn send_deliveries(&self, deliveries: Deliveries) {
        let _ = self.tx.send(ClientEvent::Deliver(deliveries));
    }

    /// Called by the client once deliveries are encoded: `count` of them with `body_bytes`
    /// of bodies in all. Returns true when this release took the window from full to open,
    /// so the caller must wake the queues feeding it.
    pub fn release(&self, body_bytes: usize, count: usize) -> bool {
        let size = body_bytes + count * DELIVERY_OVERHEAD_BYTES;
        let before = self.in_flight_bytes.fetch_sub(size, Ordering::AcqRel);
        before >= self.in_flight_window_bytes && before - size < self.in_flight_window_bytes
    }

    pub fn send(&self, event: ClientEvent) {
        let _ = self.tx.send(event);
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The channel-wide prefetch of `basic.qos(global = true)`, shared by every queue with a
/// consumer on that channel. `limit == 0` means unlimited.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    limit: AtomicU32,
    used: AtomicU32,
}

impl ChannelCredit {
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    /// Takes one unit of credit if the channel has any left.
    pub fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        if limit == 0 {
            self.used.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < limit).then_some(used + 1)
            })
            .is_ok()
    }

    /// Returns `n` units (acked, rejected or requeued deliveries). Returns true when the
    /// channel was at its limit before, so queues parked on it must be woken.
    pub fn release(&self, n: u32) -> bool {
        if n == 0 {
            return false;
        }
        let before = self.used.fetch_sub(n, Ordering::AcqRel);
        let limit = self.limit.load(Ordering::Acquire);
        limit != 0 && before >= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_credit_stops_at_limit_and_reports_reopening() {
        let credit = ChannelCredit::default();
        credit.set_limit(2);
        assert!(credit.try_acquire());
        assert!(credit.try_acquire());
        assert!(!credit.try_acquire());
        assert!(credit.release(1));
        assert!(credit.try_acquire());
        assert!(!credit.release(0));
    }

    #[test]
    fn unlimited_channel_credit_never_refuses() {
        let credit = ChannelCredit::default();
        for _ in 0..10_000 {
            assert!(credit.try_acquire());
        }
        assert!(!credit.release(10_000));
    }
}
