//! The state of one AMQP channel, owned by its connection's task.
//!
//! Pure bookkeeping, no I/O: assembling content frames into a message, the deliveries the
//! client has not settled yet (by delivery tag), publisher-confirm sequence numbers, and the
//! transaction buffer. The session (`session/`) drives it and talks to the broker core.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferrymq_broker::client::ChannelCredit;
use ferrymq_broker::exchange::Exchange;
use ferrymq_broker::queue::QueueHandle;
use ferrymq_broker::Message;
use ferrymq_wire::{BasicPublish, Properties, ShortStr};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::error::{code, AmqpError, AmqpResult};

/// A publish whose content frames are still arriving.
pub struct PendingPublish {
    pub method: BasicPublish,
    pub properties: Option<Properties>,
    pub body_size: u64,
    /// Body frames so far; a single frame is kept as is (no copy), several are joined.
    pub parts: Vec<Bytes>,
    pub received: u64,
}

impl PendingPublish {
    pub fn is_complete(&self) -> bool {
        self.properties.is_some() && self.received == self.body_size
    }

    /// The whole body: the one frame's buffer, or one copy joining several.
    pub fn take_body(&mut self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.pop().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.received as usize);
                for part in self.parts.drain(..) {
                    joined.extend_from_slice(&part);
                }
                joined.freeze()
            }
        }
    }
}

/// A delivery the client still has to ack, reject or nack.
pub struct Unacked {
    pub delivery_tag: u64,
    pub queue: Arc<QueueHandle>,
    pub msg_id: u64,
    /// From a consumer (holds channel prefetch credit), not from basic.get.
    pub from_consumer: bool,
    /// Settled inside the open transaction: applied at tx.commit, forgotten at rollback.
    /// Until then the delivery stays here (so a closing channel still requeues it) but
    /// counts as settled for later acks, as RabbitMQ collects acks when they arrive.
    pub in_tx: Option<SettleKind>,
}

/// Publisher confirms: which sequence numbers still wait for their queues.
#[derive(Default)]
pub struct Confirms {
    pub next_seq: u64,
    /// seq → (queues still to confirm, whether any refused)
    pending: BTreeMap<u64, (u32, bool)>,
    /// Settled since the last flush, in any order: (seq, ack)
    settled: Vec<(u64, bool)>,
}

impl Confirms {
    /// Takes the next sequence number for a publish that reached `queues` queues.
    pub fn register(&mut self, queues: u32) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        if queues == 0 {
            self.settled.push((seq, true));
        } else {
            self.pending.insert(seq, (queues, false));
        }
        seq
    }

    /// A queue confirmed (or refused) `seq`.
    pub fn queue_settled(&mut self, seq: u64, ack: bool) {
        let Some((remaining, refused)) = self.pending.get_mut(&seq) else {
            return;
        };
        *remaining -= 1;
        *refused |= !ack;
        if *remaining == 0 {
            let refused = *refused;
            self.pending.remove(&seq);
            self.settled.push((seq, !refused));
        }
    }

    /// Turns what was settled into basic.ack / basic.nack frames: consecutive acks below
    /// every pending sequence number collapse into one `multiple` ack.
    /// Returns (delivery_tag, multiple, ack) triples.
    pub fn drain(&mut self) -> Vec<(u64, bool, bool)> {
        if self.settled.is_empty() {
            return Vec::new();
        }
        self.settled.sort_unstable();
        let lowest_pending = self.pending.keys().next().copied().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut run_end: Option<u64> = None;
        for (seq, ack) in self.settled.drain(..) {
            if ack && seq < lowest_pending {
                run_end = Some(seq);
                continue;
            }
            if let Some(end) = run_end.take() {
                out.push((end, true, true));
            }
            out.push((seq, false, ack));
        }
        if let Some(end) = run_end {
            out.push((end, true, true));
        }
        out
    }

    pub fn has_settled(&self) -> bool {
        !self.settled.is_empty()
    }
}

/// The queues the channel's last publish was routed to, by exchange and routing key.
/// Publishers mostly send a run of messages to one exchange with one key; while the
/// vhost's topology generation stays the same, each of them reuses this result instead of
/// taking the exchange's lock, hashing the key and walking the bindings again. Only
/// results that depend on nothing else are kept (see `Session::route`).
#[derive(Default)]
pub struct RouteCache {
    /// Identity only, never dereferenced; a different exchange (even one declared anew at
    /// the same address) comes with a new topology generation. 0 (no exchange's address)
    /// while empty.
    exchange: usize,
    routing_key: Vec<u8>,
    generation: u64,
    queues: Vec<std::sync::Arc<ferrymq_broker::queue::QueueHandle>>,
}

impl RouteCache {
    /// The queues cached for this publish, if the cache holds it.
    pub fn get(
        &self,
        exchange: &std::sync::Arc<ferrymq_broker::exchange::Exchange>,
        routing_key: &[u8],
        generation: u64,
    ) -> Option<&[std::sync::Arc<ferrymq_broker::queue::QueueHandle>]> {
        (self.generation == generation
            && self.exchange == std::sync::Arc::as_ptr(exchange) as usize
            && self.routing_key == routing_key)
            .then_some(self.queues.as_slice())
    }

    /// Keeps a routing result, reusing the cache's buffers.
    pub fn set(
        &mut self,
        exchange: &std::sync::Arc<ferrymq_broker::exchange::Exchange>,
        routing_key: &[u8],
        generation: u64,
        queues: &[std::sync::Arc<ferrymq_broker::queue::QueueHandle>],
    ) {
        self.exchange = std::sync::Arc::as_ptr(exchange) as usize;
        self.routing_key.clear();
        self.routing_key.extend_from_slice(routing_key);
        self.generation = generation;
        self.queues.clear();
        self.queues.extend(queues.iter().cloned());
    }
}

/// What a transaction holds until tx.commit. Its acks, nacks and rejects are marks on the
/// channel's unacked deliveries ([`Unacked::in_tx`]).
#[derive(Default)]
pub struct Transaction {
    pub publishes: Vec<(Arc<Exchange>, BasicPublish, Message)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleKind {
    Ack,
    Requeue,
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    Open,
    /// We sent channel.close and wait for close-ok; everything else is ignored.
    Closing,
}

pub struct Channel {
    pub id: u16,
    /// Unique per opening on this connection: queues echo it in events, so an event for a
    /// closed channel is recognised even after its number is reused.
    pub epoch: u64,
    pub state: ChannelState,
    pub publish: Option<PendingPublish>,
    next_delivery_tag: u64,
    pub unacked: VecDeque<Unacked>,
    /// consumer tag → its queue (looked up per delivery; see `Session::channels` on the hash)
    pub consumers: FxHashMap<ShortStr, Arc<QueueHandle>>,
    /// basic.qos(global=false): prefetch for consumers started from now on.
    pub consumer_prefetch: u32,
    /// basic.qos(global=true): shared by every consumer of the channel.
    pub credit: Arc<ChannelCredit>,
    pub confirms: Option<Confirms>,
    pub tx: Option<Transaction>,
    /// For the "" queue name shortcut of queue.bind, basic.consume, …
    pub last_queue: Option<ShortStr>,
    /// The exchange the last publish went to: publishers mostly use one, and this spares
    /// each publish a lookup under the vhost's lock.
    pub last_exchange: Option<std::sync::Arc<ferrymq_broker::exchange::Exchange>>,
    /// Where the last routed publish went (see [`RouteCache`]).
    pub route_cache: RouteCache,
    /// The direct reply-to consumer: (consumer tag, the reply_to address handed out for it).
    pub reply_consumer: Option<(ShortStr, ShortStr)>,
}

impl Channel {
    pub fn new(id: u16, epoch: u64) -> Self {
        Channel {
            id,
            epoch,
            state: ChannelState::Open,
            publish: None,
            next_delivery_tag: 0,
            unacked: VecDeque::new(),
            consumers: FxHashMap::default(),
            consumer_prefetch: 0,
            credit: Arc::new(ChannelCredit::default()),
            confirms: None,
            tx: None,
            last_queue: None,
            last_exchange: None,
            route_cache: RouteCache::default(),
            reply_consumer: None,
        }
    }

    /// Delivery tags start at 1 and strictly increase per channel.
    pub fn next_delivery_tag(&mut self) -> u64 {
        self.next_delivery_tag += 1;
        self.next_delivery_tag
    }

    /// Removes the deliveries an ack/nack/reject names: `multiple` takes every tag up to
    /// and including `tag` (0 = all). The named tag itself must be outstanding, with or
    /// without `multiple`: RabbitMQ's `collect_acks` walks the unacked queue until it finds
    /// exactly that tag and fails with 406 "unknown delivery tag" when it does not, even if
    /// lower tags are outstanding (a multiple ack repeating an acked tag is a client bug).
    pub fn take_unacked(
        &mut self,
        tag: u64,
        multiple: bool,
        method: (u16, u16),
    ) -> AmqpResult<SmallVec<[Unacked; 1]>> {
        debug_assert!(
            self.unacked.iter().all(|u| u.in_tx.is_none()),
            "settled at once only outside transactions"
        );
        if multiple && tag == 0 {
            return Ok(self.unacked.drain(..).collect());
        }
        let at = self.find_unsettled(tag, method)?;
        if multiple {
            return Ok(self.unacked.drain(..=at).collect());
        }
        // One delivery (an ack per message is the common case): no allocation.
        Ok(self.unacked.remove(at).into_iter().collect())
    }

    /// The transactional twin of [`Self::take_unacked`]: marks the deliveries named, with
    /// the same rules, for tx.commit. Deliveries marked already count as settled.
    pub fn mark_unacked(
        &mut self,
        tag: u64,
        multiple: bool,
        kind: SettleKind,
        method: (u16, u16),
    ) -> AmqpResult {
        let end = if multiple && tag == 0 {
            self.unacked.len()
        } else {
            self.find_unsettled(tag, method)? + 1
        };
        let first = if multiple { 0 } else { end - 1 };
        for unacked in self.unacked.range_mut(first..end) {
            unacked.in_tx.get_or_insert(kind);
        }
        Ok(())
    }

    /// tx.commit: removes the marked deliveries, grouped by what was decided, in tag order.
    pub fn take_marked(&mut self) -> Vec<(SettleKind, Vec<Unacked>)> {
        let mut groups: Vec<(SettleKind, Vec<Unacked>)> = Vec::new();
        let (marked, kept): (VecDeque<Unacked>, VecDeque<Unacked>) =
            self.unacked.drain(..).partition(|u| u.in_tx.is_some());
        self.unacked = kept;
        for unacked in marked {
            let kind = unacked.in_tx.expect("partitioned on in_tx");
            match groups.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, list)) => list.push(unacked),
                None => groups.push((kind, vec![unacked])),
            }
        }
        groups
    }

    /// tx.rollback: the transaction's acks are forgotten; the deliveries stay unacked.
    pub fn unmark_all(&mut self) {
        for unacked in &mut self.unacked {
            unacked.in_tx = None;
        }
    }

    /// Removes the deliveries not settled in the open transaction (basic.recover).
    pub fn take_unsettled(&mut self) -> Vec<Unacked> {
        let (unsettled, marked): (VecDeque<Unacked>, VecDeque<Unacked>) =
            self.unacked.drain(..).partition(|u| u.in_tx.is_none());
        self.unacked = marked;
        unsettled.into()
    }

    /// Where `tag` is among the outstanding deliveries; 406 when it is not there or was
    /// settled in the open transaction already.
    fn find_unsettled(&self, tag: u64, method: (u16, u16)) -> AmqpResult<usize> {
        // Most clients ack in delivery order: the oldest delivery is the one acked.
        let found = match self.unacked.front() {
            Some(oldest) if oldest.delivery_tag == tag => Ok(0),
            _ => self.unacked.binary_search_by_key(&tag, |u| u.delivery_tag),
        };
        match found {
            Ok(at) if self.unacked[at].in_tx.is_none() => Ok(at),
            _ => Err(unknown_tag(tag, method)),
        }
    }

    /// Resolves the "" queue name to the channel's last declared queue.
    pub fn queue_name(&self, name: &ShortStr, method: (u16, u16)) -> AmqpResult<ShortStr> {
        if !name.is_empty() {
            return Ok(name.clone());
        }
        self.last_queue.clone().ok_or_else(|| {
            AmqpError::channel(code::NOT_FOUND, "no previously declared queue", method)
        })
    }
}

fn unknown_tag(tag: u64, method: (u16, u16)) -> AmqpError {
    AmqpError::channel(
        code::PRECONDITION_FAILED,
        format!("unknown delivery tag {tag}"),
        method,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_collapse_consecutive_acks_into_multiple() {
        let mut confirms = Confirms::default();
        let a = confirms.register(1);
        let b = confirms.register(1);
        let c = confirms.register(1);
        confirms.queue_settled(b, true);
        confirms.queue_settled(a, true);
        assert_eq!(confirms.drain(), vec![(b, true, true)]);
        confirms.queue_settled(c, false);
        assert_eq!(confirms.drain(), vec![(c, false, false)]);
    }

    #[test]
    fn confirms_wait_for_every_queue_and_keep_order_around_pending() {
        let mut confirms = Confirms::default();
        let a = confirms.register(2);
        let b = confirms.register(1);
        confirms.queue_settled(b, true);
        confirms.queue_settled(a, true);
        // a still waits for one queue, so b must be acked alone.
        assert_eq!(confirms.drain(), vec![(b, false, true)]);
        confirms.queue_settled(a, true);
        assert_eq!(confirms.drain(), vec![(a, true, true)]);
    }

    #[test]
    fn unroutable_publish_is_confirmed_at_once() {
        let mut confirms = Confirms::default();
        let seq = confirms.register(0);
        assert_eq!(confirms.drain(), vec![(seq, true, true)]);
    }
}
