//! The queue task: the single owner of a queue's messages, unacked deliveries and consumers.
//!
//! It drains its mailbox in batches (up to [`MAILBOX_BATCH_COMMANDS_MAX`] commands), applies
//! them, then dispatches once, so a burst of publishes costs one dispatch pass rather than
//! one per message.
//!
//! Expiry: a message's expiry (the earlier of the queue's `x-message-ttl` and its own
//! `expiration`) is fixed when it is enqueued and stored with it. With a queue TTL alone,
//! expiries grow with ids, so each priority level's head is always the next to expire; a
//! message with its own shorter `expiration` can expire before the head, so it is also
//! kept in an index by expiry and removed from the middle on time (RabbitMQ only expires
//! at the head).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ferrymq_store::{Position, ReadAhead};
use ferrymq_wire::FieldValue;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::arguments::{Overflow, QueueArgs};
use super::backlog::{Entry, PagedEntry, Removed};
use super::command::{ConfirmTicket, ConsumerSpec, GetOk, QueueCmd, QueueCounts, SettleAction};
use super::consumer::{self, Consumer, ConsumerRules};
use super::consumer_args;
use super::consumer_timeout::{AckDeadlines, AckTimeout};
use super::dead_letter::{self, DeadLetterTarget, Reason};
use super::dedup::QueueDedup;
use super::pace::PaceMeter;
use super::persist::{Persistence, QueueStorage, Restored};
use super::priority::Levels;
use super::QueueHandle;
use crate::client::{
    ClientEvent, ClientHandle, ClientId, Deliveries, Delivery, DELIVERY_BATCH_MAX,
};
use crate::error::{BrokerError, Result};
use crate::message::{unix_ms as now_ms, Message};
use crate::vhost::VHost;

/// Commands taken from the mailbox per wake-up before dispatching.
const MAILBOX_BATCH_COMMANDS_MAX: usize = 256;

/// How long deliveries may wait for consumers that hold most of their prefetch to free a
/// quarter of it (see `holds_for_refill`).
const REFILL_HOLD: Duration = Duration::from_millis(1);

/// The capacity a run of deliveries is given when it outgrows its inline delivery.
const RUN_SPILL_CAPACITY: usize = 16;

/// Messages enqueued before the task dispatches, within one wake-up: publish batches can
/// carry many messages per command, and consumers should get them before the memory
/// window fills and later ones are paged out.
const DISPATCH_EVERY_MESSAGES: usize = 1024;

/// A delivery that is out with a client and not yet settled.
#[derive(Debug)]
struct Unacked {
    entry: Entry,
    client: ClientId,
    channel: u16,
    /// `None` for basic.get deliveries.
    consumer: Option<u64>,
    /// When the delivery times out unacked (see `consumer_timeout`).
    deadline: Option<Instant>,
}

/// A message whose own `expiration` may run out before it reaches the head.
#[derive(Debug, Clone, Copy)]
struct Expiring {
    level: u8,
    /// Where it is on disk, to dead-letter it while paged.
    position: Option<Position>,
    body_size: u32,
}

struct QueueState {
    handle: Arc<QueueHandle>,
    vhost: Weak<VHost>,
    args: QueueArgs,
    dead_letter: Option<DeadLetterTarget>,
    /// Ready messages, one FIFO backlog per priority level.
    backlog: Levels,
    /// Messages with their own expiration, by (expiry unix ms, id). Entries of messages
    /// that left meanwhile are found absent when due and skipped.
    expiring: BTreeMap<(u64, u64), Expiring>,
    /// Dead letters of the current batch, routed when it ends.
    dead_letters: Vec<Message>,
    /// When the queue was last used (x-expires): consumed from, fetched from, declared.
    last_used: Instant,
    /// Keyed by our own message ids, so a fast hash without flood resistance will do.
    unacked: FxHashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    /// Round-robin position in `consumers`.
    cursor: usize,
    /// Single active consumer and ack deadlines.
    rules: ConsumerRules,
    next_msg_id: u64,
    next_consumer_key: u64,
    /// Auto-delete queues go away when their last consumer leaves, but only once they
    /// have had one (RabbitMQ semantics).
    had_consumers: bool,
    deleted: bool,
    /// The on-disk log of a durable queue.
    persist: Option<Persistence>,
    /// How this queue may use the disk (`None`: memory only).
    storage: Option<QueueStorage>,
    /// Ready messages kept in memory; more stay on disk.
    window: usize,
    /// Keys of the messages in the queue (`x-message-deduplication`).
    dedup: QueueDedup,
    /// The consumers' recent pace, for publisher pacing.
    pace: PaceMeter,
    /// While every consumer holds most of its prefetch, deliveries wait until this moment
    /// at the latest (see `holds_for_refill`).
    refill_hold_until: Option<Instant>,
}

pub(super) async fn run(
    handle: Arc<QueueHandle>,
    vhost: Weak<VHost>,
    mut rx: mpsc::Receiver<QueueCmd>,
    storage: Option<QueueStorage>,
) {
    let args = QueueArgs::parse(&handle.arguments);
    let dedup = QueueDedup::new(&handle.arguments);
    let mut state = QueueState {
        handle,
        vhost,
        dead_letter: args
            .dead_letter_exchange
            .clone()
            .map(|exchange| DeadLetterTarget {
                exchange,
                routing_key: args.dead_letter_routing_key.clone(),
            }),
        backlog: Levels::new(args.max_priority),
        args,
        expiring: BTreeMap::new(),
        dead_letters: Vec::new(),
        last_used: Instant::now(),
        unacked: FxHashMap::default(),
        consumers: Vec::new(),
        cursor: 0,
        rules: ConsumerRules::default(),
        next_msg_id: 0,
        next_consumer_key: 0,
        had_consumers: false,
        deleted: false,
        persist: None,
        window: storage
            .as_ref()
            .map_or(usize::MAX, |s| s.window_messages.max(1)),
        storage,
        dedup,
        pace: PaceMeter::default(),
        refill_hold_until: None,
    };
    // A durable queue that never stored a message has no files yet: creating them at declare
    // time would cost every declare a mkdir and a file for nothing.
    if let Some(dir) = state.storage.as_ref().and_then(|s| s.durable_dir.clone()) {
        if dir.exists() {
            state.recover(&dir);
        }
    }
    // Grown by recv_many as bursts need it: an idle queue should not hold 256 slots.
    let mut batch = Vec::new();
    while !state.deleted {
        // Timed work (expiries, consumer timeouts) wakes the task even when nobody writes.
        let deadline = state.next_deadline();
        let received = match deadline {
            Some(deadline) => {
                tokio::select! {
                    n = rx.recv_many(&mut batch, MAILBOX_BATCH_COMMANDS_MAX) => Some(n),
                    () = tokio::time::sleep_until(deadline) => None,
                }
            }
            None => Some(rx.recv_many(&mut batch, MAILBOX_BATCH_COMMANDS_MAX).await),
        };
        if received == Some(0) {
            break;
        }
        if received.is_none() || deadline.is_some_and(|d| d <= Instant::now()) {
            state.on_deadline(Instant::now());
        }
        let mut enqueued = 0;
        for cmd in batch.drain(..) {
            if state.deleted {
                cmd.settle_undeliverable();
                continue;
            }
            enqueued += cmd.publish_count();
            state.handle_cmd(cmd);
            if enqueued >= DISPATCH_EVERY_MESSAGES && !state.deleted {
                state.dispatch();
                enqueued = 0;
            }
        }
        if !state.deleted {
            state.dispatch();
            state.update_pace();
        }
        if let Some(persist) = state.persist.as_mut() {
            persist.commit();
        }
        dead_letter::forward(state.vhost.clone(), std::mem::take(&mut state.dead_letters));
    }
    // Whatever is still queued was sent to a queue that no longer exists.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        cmd.settle_undeliverable();
    }
}

impl QueueState {
    /// The earliest moment some timed work is due; the task sleeps no later than this.
    fn next_deadline(&mut self) -> Option<Instant> {
        let mut due_ms = self.expiring.keys().next().map(|&(at, _)| at);
        for level in 0..self.backlog.count() as u8 {
            // A level whose memory part ran dry has its next expiry on disk: with a queue
            // TTL that is the next to expire there, so read it in to know when.
            let backlog = self.backlog.level(level);
            if self.args.message_ttl_ms.is_some()
                && backlog.peek().is_none()
                && backlog.paged_len() > 0
            {
                self.refill(level);
            }
            let head = self.backlog.level(level).peek().map(|e| e.expires_at_ms);
            if let Some(at) = head.filter(|&at| at != 0) {
                due_ms = Some(due_ms.map_or(at, |d| d.min(at)));
            }
        }
        // Expired means past its expiry millisecond, hence the +1.
        let mut deadline = due_ms
            .map(|at| Instant::now() + Duration::from_millis((at + 1).saturating_sub(now_ms())));
        if let (Some(expires), true) = (self.args.expires_ms, self.consumers.is_empty()) {
            let unused = self.last_used + Duration::from_millis(expires);
            deadline = Some(deadline.map_or(unused, |d| d.min(unused)));
        }
        let acks = self.rules.deadlines.next_due();
        deadline
            .into_iter()
            .chain(acks)
            .chain(self.refill_hold_until)
            .min()
    }

    /// Publishes the pace publishers should keep (see `pace`): with consumers consuming,
    /// enough slower than them to bring the backlog back under a quarter of the memory
    /// window.
    fn update_pace(&mut self) {
        // A queue without consumers is not paced: it absorbs the burst.
        let ready = if self.consumers.is_empty() {
            0
        } else {
            self.backlog.len()
        };
        let pace_ns = self.pace.pace_ns(Instant::now(), ready, self.window / 4);
        // Publishers read it per message: store only changes.
        if pace_ns != self.handle.pace_ns() {
            self.handle.set_pace_ns(pace_ns);
        }
    }

    /// Does the timed work due at `now`.
    fn on_deadline(&mut self, now: Instant) {
        self.expire_due(now_ms());
        self.rules
            .deadlines
            .expire(now, |id| self.unacked.get(&id)?.deadline);
        if let (Some(expires), true) = (self.args.expires_ms, self.consumers.is_empty()) {
            if now >= self.last_used + Duration::from_millis(expires) {
                // x-expires: unused for that long, the queue deletes itself.
                self.terminate();
            }
        }
    }

    /// Removes (and dead-letters) every ready message whose expiry has passed: those in
    /// the index wherever they are, then each level's expired heads.
    fn expire_due(&mut self, now_ms: u64) {
        while let Some((&(at, id), &expiring)) = self.expiring.first_key_value() {
            if at >= now_ms {
                break;
            }
            self.expiring.remove(&(at, id));
            let level = self.backlog.level(expiring.level);
            match level.remove(id, expiring.body_size) {
                Removed::Memory(entry) => self.discard(entry, Reason::Expired),
                Removed::Paged => {
                    self.dedup.release(id);
                    self.discard_paged(expiring.position);
                }
                Removed::Absent => {}
            }
        }
        for level in 0..self.backlog.count() as u8 {
            loop {
                let head = self.backlog.level(level).peek().map(|e| e.expires_at_ms);
                match head {
                    Some(at) if at != 0 && at < now_ms => {
                        if let Some(entry) = self.backlog.level(level).pop() {
                            self.discard(entry, Reason::Expired);
                        }
                    }
                    // Only paged messages left here: their expiries are on disk. With a
                    // queue TTL the oldest is the next to expire, so load it to look.
                    None if self.args.message_ttl_ms.is_some()
                        && self.backlog.level(level).paged_len() > 0 =>
                    {
                        if !self.refill(level) {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
    }

    /// A paged message left before reaching memory: read it to dead-letter it, then ack it.
    fn discard_paged(&mut self, position: Option<Position>) {
        let (Some(position), Some(persist)) = (position, self.persist.as_mut()) else {
            return;
        };
        let read = self
            .dead_letter
            .is_some()
            .then(|| persist.read(position))
            .flatten();
        persist.ack(position);
        if let Some((message, _, _)) = read {
            self.dead_letter(&message, Reason::Expired);
        }
    }

    fn handle_cmd(&mut self, cmd: QueueCmd) {
        match cmd {
            QueueCmd::Publish { message, confirm } => self.publish(message, confirm),
            QueueCmd::PublishMany(publishes) => {
                for (message, confirm) in publishes {
                    self.publish(message, confirm);
                }
            }
            QueueCmd::Consume { consumer, reply } => {
                self.last_used = Instant::now();
                let _ = reply.send(self.add_consumer(*consumer));
            }
            QueueCmd::Cancel {
                client,
                channel,
                consumer_tag,
                reply,
            } => {
                // Its unacked deliveries stay with the channel (they may still be acked),
                // as with RabbitMQ; a closing channel requeues them.
                let before = self.consumers.len();
                self.consumers
                    .retain(|c| !c.is(client, channel, &consumer_tag));
                let _ = reply.send(self.consumers.len() != before);
                self.after_consumers_left();
            }
            QueueCmd::Settle {
                client,
                channel,
                msg_ids,
                action,
            } => self.settle(client, channel, &msg_ids, action),
            QueueCmd::ChannelClosed { client, channel } => {
                self.consumers.retain(|c| !c.is_on(client, channel));
                self.requeue_held_by(client, channel);
                self.after_consumers_left();
            }
            QueueCmd::Get {
                client,
                channel,
                no_ack,
                ack_timeout,
                reply,
            } => {
                let _ = reply.send(self.get(client, channel, no_ack, ack_timeout));
            }
            QueueCmd::Purge { reply } => {
                let _ = reply.send(self.drop_ready() as u32);
            }
            QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let _ = reply.send(self.delete(if_unused, if_empty));
            }
            QueueCmd::Counts { reply } => {
                // Asked by queue.declare: a redeclare counts as use (x-expires).
                self.last_used = Instant::now();
                let _ = reply.send(self.counts());
            }
            QueueCmd::Wake => {}
        }
    }

    /// Opens the log of a durable queue and puts its messages back, in order: the oldest
    /// (up to the window) in memory, the rest as paged entries.
    fn recover(&mut self, dir: &std::path::Path) {
        let Some(storage) = self.storage.as_ref() else {
            return;
        };
        match Persistence::open_durable(storage, dir) {
            Ok((mut persist, messages)) => {
                for restored in messages {
                    self.dedup.recover(&restored, &mut persist);
                    self.restore(restored);
                }
                self.persist = Some(persist);
            }
            Err(e) => {
                // Serving from memory beats not serving; the operator sees why.
                tracing::error!(error = %e, dir = %dir.display(), queue = %self.handle.name, "queue log unusable, running in memory");
            }
        }
    }

    fn restore(&mut self, restored: Restored) {
        let Restored {
            id,
            position,
            body_size,
            encoded_len,
            deliveries,
            priority,
            expiry_ms,
            message,
        } = restored;
        self.next_msg_id = id + 1;
        let level = self.backlog.level_for(priority);
        let redelivered = deliveries > 0;
        // With a queue TTL, heads expire in order; otherwise every expiry is a message's
        // own and must be indexed to be met on time (paged ones included).
        if expiry_ms != 0 && self.args.message_ttl_ms.is_none() {
            self.expiring.insert(
                (expiry_ms, id),
                Expiring {
                    level,
                    position: Some(position),
                    body_size,
                },
            );
        }
        match message {
            Some(message) => self.backlog.level(level).push(Entry {
                id,
                message: Arc::new(message),
                redelivered,
                position: Some(position),
                delivery_noted: redelivered,
                expires_at_ms: expiry_ms,
                deliveries,
            }),
            None => self.backlog.level(level).push_paged(PagedEntry {
                id,
                position,
                redelivered,
                delivery_noted: redelivered,
                deliveries,
                body_size,
                encoded_len,
            }),
        }
    }

    /// When a message enqueued now expires (unix ms, 0 = never), and whether that comes
    /// from its own `expiration` rather than the queue's TTL.
    fn expiry_of(&self, message: &Message, now_ms: u64) -> (u64, bool) {
        let queue = self
            .args
            .message_ttl_ms
            .map(|ttl| now_ms.saturating_add(ttl));
        let own = message.expiration_ms.map(|ttl| now_ms.saturating_add(ttl));
        match (queue, own) {
            (_, Some(own)) if queue.is_none_or(|q| own < q) => (own, true),
            (Some(q), _) => (q, false),
            (None, _) => (0, false),
        }
    }

    /// Whether one more message of `body_size` bytes would pass a length limit.
    fn would_overflow(&self, body_size: usize) -> bool {
        self.args
            .max_length
            .is_some_and(|max| self.backlog.len() as u64 >= max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| (self.backlog.bytes() + body_size) as u64 > max)
    }

    fn over_limit(&self) -> bool {
        self.args
            .max_length
            .is_some_and(|max| self.backlog.len() as u64 > max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| self.backlog.bytes() as u64 > max)
    }

    fn publish(&mut self, message: Arc<Message>, confirm: Option<ConfirmTicket>) {
        let id = self.next_msg_id;
        if let Some(ack) = self.dedup.admit(id, &message) {
            // A duplicate is confirmed as if enqueued (the plugin); a refusal is a nack.
            if let Some(ticket) = confirm {
                ticket.settle(ack);
            }
            return;
        }
        if self.args.has_length_limit()
            && self.args.overflow != Overflow::DropHead
            && self.would_overflow(message.body_size())
        {
            // reject-publish(-dlx): the newest message is refused, nacked under confirms;
            // it never entered, so its dedup key is free again.
            self.dedup.release(id);
            if self.args.overflow == Overflow::RejectPublishDlx {
                self.dead_letter(&message, Reason::Maxlen);
            }
            if let Some(ticket) = confirm {
                ticket.settle(false);
            }
            return;
        }
        self.next_msg_id += 1;
        // Reading the clock only for messages that can expire keeps it off the hot path.
        let (expires_at_ms, own_expiry) =
            if self.args.message_ttl_ms.is_some() || message.expiration_ms.is_some() {
                self.expiry_of(&message, now_ms())
            } else {
                (0, false)
            };
        let level = self.backlog.level_for(message.priority);
        let durable_queue = self
            .storage
            .as_ref()
            .is_some_and(|s| s.durable_dir.is_some());
        let keeps = durable_queue && message.persistent;
        let page_out =
            self.backlog.level(level).paged_len() > 0 || self.backlog.in_memory() >= self.window;
        let written = match self.log_for(keeps || page_out) {
            Some(persist) if keeps || page_out => {
                persist.append(id, &message, level, expires_at_ms)
            }
            _ => None,
        };
        let position = written.map(|(position, _)| position);
        if own_expiry {
            self.expiring.insert(
                (expires_at_ms, id),
                Expiring {
                    level,
                    position,
                    body_size: message.body_size() as u32,
                },
            );
        }
        match written {
            Some((position, encoded_len)) if page_out => {
                self.backlog.level(level).push_paged(PagedEntry {
                    id,
                    position,
                    redelivered: false,
                    delivery_noted: false,
                    deliveries: 0,
                    body_size: message.body_size() as u32,
                    encoded_len,
                })
            }
            _ => self.backlog.level(level).push(Entry {
                id,
                message,
                redelivered: false,
                position,
                delivery_noted: false,
                expires_at_ms,
                deliveries: 0,
            }),
        }
        if let Some(ticket) = confirm {
            match (keeps, position, self.persist.as_mut()) {
                // Confirmed means on disk: after this batch's fdatasync.
                (true, Some(_), Some(persist)) => persist.confirm_after_sync(ticket),
                (true, _, _) => ticket.settle(false),
                (false, _, _) => ticket.settle(true),
            }
        }
        // drop-head: the oldest messages make room (dead-lettered as maxlen).
        while self.over_limit() {
            let Some(entry) = self.take_oldest() else {
                break;
            };
            self.discard(entry, Reason::Maxlen);
        }
    }

    /// The queue's log, opening a paging log for a non-durable queue when `needed`.
    fn log_for(&mut self, needed: bool) -> Option<&mut Persistence> {
        if self.persist.is_none() && needed {
            let storage = self.storage.as_ref()?;
            let opened = match &storage.durable_dir {
                // A new durable queue's first write: there is nothing to recover.
                Some(dir) => Persistence::open_durable(storage, dir).map(|(persist, _)| persist),
                None => Persistence::open_paging(storage, &storage.paging_dir),
            };
            match opened {
                Ok(persist) => self.persist = Some(persist),
                Err(e) => {
                    tracing::error!(error = %e, queue = %self.handle.name, "cannot write the queue's log, keeping messages in memory");
                    self.window = usize::MAX;
                }
            }
        }
        self.persist.as_mut()
    }

    /// The next message to deliver (highest priority first), loading from disk when
    /// memory ran dry and dead-lettering expired ones on the way.
    fn next_ready(&mut self) -> Option<Entry> {
        let mut now = None;
        loop {
            let level = self.backlog.highest()?;
            let entry = self.take_from(level)?;
            if entry.expires_at_ms != 0 && entry.expires_at_ms < *now.get_or_insert_with(now_ms) {
                self.discard(entry, Reason::Expired);
                continue;
            }
            return Some(entry);
        }
    }

    /// The oldest message of the lowest priority: what a length limit drops first.
    fn take_oldest(&mut self) -> Option<Entry> {
        let level = self.backlog.lowest()?;
        self.take_from(level)
    }

    /// The head of one level, read back from disk if it is paged.
    fn take_from(&mut self, level: u8) -> Option<Entry> {
        loop {
            if let Some(entry) = self.backlog.level(level).pop() {
                return Some(entry);
            }
            if self.backlog.level(level).paged_len() == 0 || !self.refill(level) {
                return None;
            }
        }
    }

    /// Reads a level's paged messages back into memory, oldest first: at least one, then
    /// up to the window. Returns whether anything changed.
    fn refill(&mut self, level: u8) -> bool {
        let Some(persist) = self.persist.as_mut() else {
            return false;
        };
        let mut progressed = false;
        // Paged messages lie in file order: one read fetches a window of them.
        let mut ahead = ReadAhead::default();
        loop {
            if progressed && self.backlog.in_memory() >= self.window {
                break;
            }
            let backlog = self.backlog.level(level);
            let Some(paged) = backlog.front_paged() else {
                break;
            };
            progressed = true;
            if backlog.front_paged_removed() {
                // Expired while paged (acked then): step over its record.
                match persist.record_len(paged.position, &mut ahead) {
                    Some(len) => backlog.skip_paged(len),
                    None => {
                        if let Some(run) = drop_unreadable(backlog, &self.handle.name) {
                            self.dedup.release_range(run.first_id, run.count);
                        }
                    }
                }
                continue;
            }
            match persist.read_ahead(paged.position, &mut ahead) {
                Some((message, encoded_len, expires_at_ms)) => {
                    backlog.advance_paged(encoded_len, message.body_size() as u32);
                    backlog.push(Entry {
                        id: paged.id,
                        message: Arc::new(message),
                        redelivered: paged.redelivered,
                        position: Some(paged.position),
                        delivery_noted: paged.delivery_noted,
                        expires_at_ms,
                        deliveries: paged.deliveries,
                    });
                }
                None => {
                    if let Some(run) = drop_unreadable(backlog, &self.handle.name) {
                        self.dedup.release_range(run.first_id, run.count);
                    }
                }
            }
        }
        progressed
    }

    /// Drops every ready message (purge); returns how many there were.
    fn drop_ready(&mut self) -> usize {
        let mut count = 0;
        for level in 0..self.backlog.count() as u8 {
            let (entries, runs, removed) = self.backlog.level(level).take_all();
            count += entries.len();
            for entry in &entries {
                self.forget_on_disk(entry);
            }
            let Some(persist) = self.persist.as_mut() else {
                continue;
            };
            for run in runs {
                self.dedup.release_range(run.first_id, run.count);
                let position = Position {
                    segment: run.segment,
                    offset: run.offset,
                };
                let left = (run.first_id..run.first_id + run.count)
                    .filter(|id| removed.contains(id))
                    .count();
                count += run.count as usize - left;
                persist.ack_run(position, run.count, |index| {
                    removed.contains(&(run.first_id + index))
                });
            }
        }
        count
    }

    /// The message is done with: its record no longer needs to survive a restart.
    fn forget_on_disk(&mut self, entry: &Entry) {
        self.dedup.release(entry.id);
        if let (Some(position), Some(persist)) = (entry.position, self.persist.as_mut()) {
            persist.ack(position);
        }
    }

    /// Removes a message for good for `reason`, dead-lettering it when the queue has a
    /// dead-letter exchange.
    fn discard(&mut self, entry: Entry, reason: Reason) {
        self.forget_on_disk(&entry);
        self.dead_letter(&entry.message, reason);
    }

    fn dead_letter(&mut self, message: &Message, reason: Reason) {
        if let Some(target) = &self.dead_letter {
            let now_secs = now_ms() / 1000;
            self.dead_letters.push(dead_letter::dead_lettered(
                message,
                reason,
                &self.handle.name,
                target,
                now_secs,
            ));
        }
    }

    /// Before a message goes out: a no-ack delivery is done with; otherwise note on disk
    /// that it was delivered, so that after a restart it comes back as redelivered (and,
    /// under a delivery limit, note every delivery: they are counted after a restart).
    fn note_delivery(&mut self, entry: &mut Entry, settled: bool) {
        if settled {
            self.forget_on_disk(entry);
        } else if (!entry.delivery_noted || self.args.delivery_limit.is_some())
            && entry.message.persistent
        {
            if let (Some(position), Some(persist)) = (entry.position, self.persist.as_mut()) {
                persist.mark_delivered(position);
                entry.delivery_noted = true;
            }
        }
    }

    /// The message as this delivery carries it: under a delivery limit, a redelivery has
    /// an `x-delivery-count` header with the returns so far (as RabbitMQ's quorum queues).
    fn outgoing(&self, entry: &Entry) -> Arc<Message> {
        if self.args.delivery_limit.is_none() || entry.deliveries == 0 {
            return Arc::clone(&entry.message);
        }
        let message = &entry.message;
        let mut properties = message.properties.decode().unwrap_or_default();
        properties
            .headers
            .get_or_insert_with(Default::default)
            .insert(
                "x-delivery-count",
                FieldValue::I64(i64::from(entry.deliveries)),
            );
        Arc::new(Message::new(
            message.exchange.clone(),
            message.routing_key.clone(),
            properties.encode(),
            message.body.clone(),
        ))
    }

    fn counts(&self) -> QueueCounts {
        QueueCounts {
            messages: self.backlog.len() as u32,
            consumers: self.consumers.len() as u32,
        }
    }

    fn add_consumer(&mut self, spec: ConsumerSpec) -> Result<()> {
        let (name, vhost) = (&self.handle.name, &self.handle.vhost);
        // Arguments are checked before exclusivity, as RabbitMQ checks them in the channel.
        let priority = consumer_args::priority(&spec.arguments, name, vhost)?;
        // Declared arguments only: RabbitMQ refuses to let a policy switch SAC on or off.
        // They never change, so reading them here is reading them once.
        self.rules.single_active =
            consumer_args::single_active_consumer(&self.handle.config.arguments);
        // An exclusive consumer on a single-active-consumer queue is refused even alone.
        if self.consumers.iter().any(|c| c.spec.exclusive)
            || (spec.exclusive && (self.rules.single_active || !self.consumers.is_empty()))
        {
            return Err(BrokerError::access_refused(format!(
                "queue '{name}' in vhost '{vhost}' in exclusive use"
            )));
        }
        let key = self.next_consumer_key;
        self.next_consumer_key += 1;
        let at = consumer::insert_position(&self.consumers, priority, self.rules.single_active);
        self.consumers.insert(
            at,
            Consumer {
                key,
                spec,
                unacked: 0,
                priority,
            },
        );
        self.had_consumers = true;
        Ok(())
    }

    fn after_consumers_left(&mut self) {
        if self.cursor >= self.consumers.len() {
            self.cursor = 0;
        }
        if self.consumers.is_empty() {
            // x-expires counts unused time from the last consumer's departure.
            self.last_used = Instant::now();
        }
        if self.handle.config.auto_delete && self.had_consumers && self.consumers.is_empty() {
            self.terminate();
        }
    }

    fn settle(&mut self, client: ClientId, channel: u16, msg_ids: &[u64], action: SettleAction) {
        for msg_id in msg_ids {
            let Some(held) = self.unacked.remove(msg_id) else {
                continue;
            };
            if held.client != client || held.channel != channel {
                // Not this channel's to settle; a protocol layer bug, not a client's.
                debug_assert!(
                    false,
                    "settle from a channel that does not hold the message"
                );
                self.unacked.insert(*msg_id, held);
                continue;
            }
            self.release_consumer_credit(held.consumer);
            match action {
                SettleAction::Requeue => self.requeue(held.entry),
                SettleAction::Discard => self.discard(held.entry, Reason::Rejected),
                SettleAction::Ack => self.forget_on_disk(&held.entry),
            }
        }
    }

    /// Puts a returned message back in its place, unless it has used up its delivery limit.
    fn requeue(&mut self, mut entry: Entry) {
        entry.deliveries = entry.deliveries.saturating_add(1);
        if self
            .args
            .delivery_limit
            .is_some_and(|limit| u64::from(entry.deliveries) > limit)
        {
            self.discard(entry, Reason::DeliveryLimit);
            return;
        }
        let level = self.backlog.level_for(entry.message.priority);
        if entry.expires_at_ms != 0 {
            // Its index entry may have been dropped while it was out, and requeued entries
            // wait in id order, not expiry order. (Bounded by prefetch: they were out.)
            self.expiring.insert(
                (entry.expires_at_ms, entry.id),
                Expiring {
                    level,
                    position: entry.position,
                    body_size: entry.message.body_size() as u32,
                },
            );
        }
        self.backlog.level(level).requeue(entry);
    }

    fn release_consumer_credit(&mut self, consumer: Option<u64>) {
        if let Some(key) = consumer {
            if let Some(c) = self.consumers.iter_mut().find(|c| c.key == key) {
                c.unacked -= 1;
            }
        }
    }

    /// Requeues, in their original positions, all messages the channel holds unacked.
    fn requeue_held_by(&mut self, client: ClientId, channel: u16) {
        let ids: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, held)| held.client == client && held.channel == channel)
            .map(|(&id, _)| id)
            .collect();
        self.settle(client, channel, &ids, SettleAction::Requeue);
    }

    fn get(
        &mut self,
        client: ClientId,
        channel: u16,
        no_ack: bool,
        ack_timeout: Option<AckTimeout>,
    ) -> Option<GetOk> {
        self.last_used = Instant::now();
        let mut entry = self.next_ready()?;
        self.note_delivery(&mut entry, no_ack);
        let ok = GetOk {
            msg_id: entry.id,
            redelivered: entry.redelivered,
            message: self.outgoing(&entry),
            message_count: self.backlog.len() as u32,
        };
        if !no_ack {
            let deadline = track_ack(
                &mut self.rules.deadlines,
                &self.unacked,
                entry.id,
                ack_timeout,
            );
            self.unacked.insert(
                entry.id,
                Unacked {
                    entry,
                    client,
                    channel,
                    consumer: None,
                    deadline,
                },
            );
        }
        Some(ok)
    }

    fn delete(&mut self, if_unused: bool, if_empty: bool) -> Result<u32> {
        let (name, vhost) = (&self.handle.name, &self.handle.vhost);
        if if_unused && !self.consumers.is_empty() {
            return Err(BrokerError::precondition_failed(format!(
                "queue '{name}' in vhost '{vhost}' in use"
            )));
        }
        if if_empty && !self.backlog.is_empty() {
            return Err(BrokerError::precondition_failed(format!(
                "queue '{name}' in vhost '{vhost}' is not empty"
            )));
        }
        let count = self.backlog.len() as u32;
        self.terminate();
        Ok(count)
    }

    /// Removes the queue from its vhost and tells its consumers; the task then ends.
    fn terminate(&mut self) {
        self.deleted = true;
        self.handle.mark_deleted();
        if let Some(vhost) = self.vhost.upgrade() {
            vhost.forget_queue(&self.handle);
        }
        for consumer in self.consumers.drain(..) {
            let ConsumerSpec {
                client,
                channel,
                epoch,
                tag,
                ..
            } = consumer.spec;
            client.send(ClientEvent::ConsumerCancelled {
                channel,
                epoch,
                consumer_tag: tag,
            });
        }
        self.backlog = Levels::new(0);
        self.expiring.clear();
        self.unacked.clear();
        self.dedup.clear();
        // The whole log goes, so nothing needs acking first.
        if let Some(persist) = self.persist.take() {
            persist.destroy();
        }
    }

    /// Hands ready messages to consumers round-robin while any consumer has credit.
    fn dispatch(&mut self) {
        if self.holds_for_refill() {
            return;
        }
        // Deliveries to one consumer go out together (see `DELIVERY_BATCH_MAX`); a run is
        // sent when the next delivery is for another consumer, when full, and at the end.
        let mut run: Option<(u64, Arc<ClientHandle>, Deliveries)> = None;
        while !self.backlog.is_empty() && !self.consumers.is_empty() {
            let Some(index) = self.next_consumer_with_credit() else {
                break;
            };
            let Some(mut entry) = self.next_ready() else {
                // Only unreadable paged messages were left: give the credit back.
                self.consumers[index].give_back_credit();
                break;
            };
            let no_ack = self.consumers[index].spec.no_ack;
            self.note_delivery(&mut entry, no_ack);
            let message = self.outgoing(&entry);
            let consumer = &mut self.consumers[index];
            let spec = &consumer.spec;
            self.pace.delivered();
            let run_ends = run.as_ref().is_some_and(|(key, _, deliveries)| {
                *key != consumer.key || deliveries.messages.len() >= DELIVERY_BATCH_MAX
            });
            if let Some((_, client, deliveries)) = run.take_if(|_| run_ends) {
                client.send_deliveries(deliveries);
            }
            let (_, _, deliveries) = run.get_or_insert_with(|| {
                let deliveries = Deliveries {
                    channel: spec.channel,
                    epoch: spec.epoch,
                    consumer_tag: spec.tag.clone(),
                    queue: Arc::clone(&self.handle),
                    no_ack: spec.no_ack,
                    messages: SmallVec::new(),
                };
                (consumer.key, Arc::clone(&spec.client), deliveries)
            });
            spec.client.charge(message.body_size());
            if deliveries.messages.len() == 1 {
                // Outgrowing its inline delivery, a run is likely to go on: room for
                // several at once, rather than growing from two by doubling.
                deliveries.messages.reserve_exact(RUN_SPILL_CAPACITY - 1);
            }
            deliveries.messages.push(Delivery {
                msg_id: entry.id,
                redelivered: entry.redelivered,
                message,
            });
            if !spec.no_ack {
                consumer.unacked += 1;
                let timeout = consumer.ack_timeout();
                let deadline =
                    track_ack(&mut self.rules.deadlines, &self.unacked, entry.id, timeout);
                let held = Unacked {
                    entry,
                    client: spec.client.id,
                    channel: spec.channel,
                    consumer: Some(consumer.key),
                    deadline,
                };
                self.unacked.insert(held.entry.id, held);
            }
        }
        if let Some((_, client, deliveries)) = run {
            client.send_deliveries(deliveries);
        }
    }

    /// Whether deliveries wait for now: consumers are topped up in batches.
    ///
    /// A consumer that acks each message frees one unit of prefetch per ack; refilled at
    /// once, each ack costs a dispatch, a mailbox operation and a wake-up of its connection
    /// for one delivery. While every consumer still holds at least three quarters of its
    /// prefetch unacked (so it has work in hand), deliveries wait until a quarter is free,
    /// and go out as one run. The wait is bounded by [`REFILL_HOLD`]: a consumer that holds
    /// messages until more arrive is served after it, never stuck.
    fn holds_for_refill(&mut self) -> bool {
        let busy = !self.consumers.is_empty()
            && self
                .consumers
                .iter()
                .all(Consumer::holds_most_of_its_prefetch);
        if !busy {
            self.refill_hold_until = None;
            return false;
        }
        let now = Instant::now();
        match self.refill_hold_until {
            None => {
                self.refill_hold_until = Some(now + REFILL_HOLD);
                true
            }
            Some(until) if now < until => true,
            Some(_) => {
                self.refill_hold_until = None;
                false
            }
        }
    }

    /// Priorities, round-robin and single active consumer: see `consumer.rs`.
    fn next_consumer_with_credit(&mut self) -> Option<usize> {
        consumer::next_with_credit(
            &mut self.consumers,
            &mut self.cursor,
            self.rules.single_active,
        )
    }
}

/// Starts the ack clock of a delivery that has a timeout; its deadline goes in `Unacked`.
fn track_ack(
    deadlines: &mut AckDeadlines,
    unacked: &FxHashMap<u64, Unacked>,
    msg_id: u64,
    timeout: Option<AckTimeout>,
) -> Option<Instant> {
    let live = unacked.len();
    Some(deadlines.track(msg_id, timeout?, live, |id| unacked.get(&id)?.deadline))
}

/// Unreadable records (logged): without a length the rest of the run cannot be found
/// either; drop it rather than block the queue forever.
fn drop_unreadable(
    backlog: &mut super::backlog::Backlog,
    queue: &str,
) -> Option<super::backlog::PagedRun> {
    let run = backlog.drop_paged_run()?;
    tracing::error!(messages = run.count, queue = %queue, "dropped unreadable paged messages");
    Some(run)
}
