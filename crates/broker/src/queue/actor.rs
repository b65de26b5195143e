//! The queue task: the single owner of a queue's messages, unacked deliveries and consumers.
//!
//! It drains its mailbox in batches (up to [`MAILBOX_BATCH_COMMANDS_MAX`] commands), applies
//! them, then dispatches once, so a burst of publishes costs one dispatch pass rather than
//! one per message.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::backlog::{Backlog, Entry, PagedEntry};
use super::command::{ConfirmTicket, ConsumerSpec, GetOk, QueueCmd, QueueCounts, SettleAction};
use super::consumer::Consumer;
use super::dedup::QueueDedup;
use super::persist::{Persistence, QueueStorage, Restored};
use super::QueueHandle;
use crate::client::{ClientEvent, ClientId, Delivery};
use crate::error::{BrokerError, Result};
use crate::message::Message;
use crate::vhost::VHost;

/// Commands taken from the mailbox per wake-up before dispatching.
const MAILBOX_BATCH_COMMANDS_MAX: usize = 256;

/// A delivery that is out with a client and not yet settled.
#[derive(Debug)]
struct Unacked {
    entry: Entry,
    client: ClientId,
    channel: u16,
    /// `None` for basic.get deliveries.
    consumer: Option<u64>,
}

struct QueueState {
    handle: Arc<QueueHandle>,
    vhost: Weak<VHost>,
    backlog: Backlog,
    unacked: HashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    /// Round-robin position in `consumers`.
    cursor: usize,
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
}

pub(super) async fn run(
    handle: Arc<QueueHandle>,
    vhost: Weak<VHost>,
    mut rx: mpsc::Receiver<QueueCmd>,
    storage: Option<QueueStorage>,
) {
    let dedup = QueueDedup::new(&handle.arguments);
    let mut state = QueueState {
        handle,
        vhost,
        backlog: Backlog::default(),
        unacked: HashMap::new(),
        consumers: Vec::new(),
        cursor: 0,
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
        let received = match state.next_deadline() {
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
        if received.is_none() || state.next_deadline().is_some_and(|d| d <= Instant::now()) {
            state.on_deadline(Instant::now());
        }
        for cmd in batch.drain(..) {
            if state.deleted {
                cmd.settle_undeliverable();
            } else {
                state.handle_cmd(cmd);
            }
        }
        if !state.deleted {
            state.dispatch();
        }
        if let Some(persist) = state.persist.as_mut() {
            persist.commit();
        }
    }
    // Whatever is still queued was sent to a queue that no longer exists.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        cmd.settle_undeliverable();
    }
}

impl QueueState {
    /// The earliest moment some timed work is due; the task sleeps no later than this.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// Does the timed work due at `now`.
    fn on_deadline(&mut self, _now: Instant) {}

    fn handle_cmd(&mut self, cmd: QueueCmd) {
        match cmd {
            QueueCmd::Publish { message, confirm } => self.publish(message, confirm),
            QueueCmd::Consume { consumer, reply } => {
                let _ = reply.send(self.add_consumer(consumer));
            }
            QueueCmd::Cancel {
                client,
                channel,
                consumer_tag,
                reply,
            } => {
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
                reply,
            } => {
                let _ = reply.send(self.get(client, channel, no_ack));
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
            delivered,
            message,
        } = restored;
        self.next_msg_id = id + 1;
        match message {
            Some(message) => self.backlog.push(Entry {
                id,
                message: Arc::new(message),
                redelivered: delivered,
                position: Some(position),
                delivery_noted: delivered,
            }),
            None => self.backlog.push_paged(PagedEntry {
                id,
                position,
                redelivered: delivered,
                delivery_noted: delivered,
                body_size,
                encoded_len,
            }),
        }
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
        self.next_msg_id += 1;
        let durable_queue = self
            .storage
            .as_ref()
            .is_some_and(|s| s.durable_dir.is_some());
        let keeps = durable_queue && message.persistent;
        let page_out = self.backlog.paged_len() > 0 || self.backlog.in_memory() >= self.window;
        let written = match self.log_for(keeps || page_out) {
            Some(persist) if keeps || page_out => persist.append(id, &message),
            _ => None,
        };
        let position = written.map(|(position, _)| position);
        match written {
            Some((position, encoded_len)) if page_out => self.backlog.push_paged(PagedEntry {
                id,
                position,
                redelivered: false,
                delivery_noted: false,
                body_size: message.body_size() as u32,
                encoded_len,
            }),
            _ => self.backlog.push(Entry {
                id,
                message,
                redelivered: false,
                position,
                delivery_noted: false,
            }),
        }
        let Some(ticket) = confirm else { return };
        match (keeps, position, self.persist.as_mut()) {
            // Confirmed means on disk: after this batch's fdatasync.
            (true, Some(_), Some(persist)) => persist.confirm_after_sync(ticket),
            (true, _, _) => ticket.settle(false),
            (false, _, _) => ticket.settle(true),
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

    /// The next ready message, loading the window back from disk when memory ran dry.
    fn next_ready(&mut self) -> Option<Entry> {
        loop {
            if let Some(entry) = self.backlog.pop() {
                return Some(entry);
            }
            if self.backlog.paged_len() == 0 {
                return None;
            }
            self.refill();
        }
    }

    /// Reads paged messages back into memory, oldest first, up to the window.
    fn refill(&mut self) {
        let Some(persist) = self.persist.as_mut() else {
            return;
        };
        while self.backlog.in_memory() < self.window {
            let Some(paged) = self.backlog.front_paged() else {
                break;
            };
            match persist.read(paged.position) {
                Some((message, encoded_len)) => {
                    self.backlog
                        .advance_paged(encoded_len, message.body_size() as u32);
                    self.backlog.push(Entry {
                        id: paged.id,
                        message: Arc::new(message),
                        redelivered: paged.redelivered,
                        position: Some(paged.position),
                        delivery_noted: paged.delivery_noted,
                    });
                }
                // Unreadable (logged): without its length the rest of the run cannot be
                // found either; drop it rather than block the queue forever.
                None => {
                    if let Some(run) = self.backlog.drop_paged_run() {
                        self.dedup.release_range(run.first_id, run.count);
                        tracing::error!(messages = run.count, queue = %self.handle.name, "dropped unreadable paged messages");
                    }
                }
            }
        }
    }

    /// Drops every ready message (purge); returns how many there were.
    fn drop_ready(&mut self) -> usize {
        let (entries, runs) = self.backlog.take_all();
        let count = entries.len() + runs.iter().map(|r| r.count as usize).sum::<usize>();
        for entry in &entries {
            self.forget_on_disk(entry);
        }
        for run in &runs {
            self.dedup.release_range(run.first_id, run.count);
        }
        if let Some(persist) = self.persist.as_mut() {
            for run in runs {
                let position = ferrymq_store::Position {
                    segment: run.segment,
                    offset: run.offset,
                };
                persist.ack_run(position, run.count);
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

    /// Before a message goes out: a no-ack delivery is done with; otherwise note on disk
    /// that it was delivered, so that after a restart it comes back as redelivered.
    fn note_delivery(&mut self, entry: &mut Entry, settled: bool) {
        if settled {
            self.forget_on_disk(entry);
        } else if !entry.delivery_noted && entry.message.persistent {
            if let (Some(position), Some(persist)) = (entry.position, self.persist.as_mut()) {
                persist.mark_delivered(position);
                entry.delivery_noted = true;
            }
        }
    }

    fn counts(&self) -> QueueCounts {
        QueueCounts {
            messages: self.backlog.len() as u32,
            consumers: self.consumers.len() as u32,
        }
    }

    fn add_consumer(&mut self, spec: ConsumerSpec) -> Result<()> {
        if self.consumers.iter().any(|c| c.spec.exclusive)
            || (spec.exclusive && !self.consumers.is_empty())
        {
            return Err(BrokerError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.handle.name, self.handle.vhost
            )));
        }
        let key = self.next_consumer_key;
        self.next_consumer_key += 1;
        self.consumers.push(Consumer {
            key,
            spec,
            unacked: 0,
        });
        self.had_consumers = true;
        Ok(())
    }

    fn after_consumers_left(&mut self) {
        if self.cursor >= self.consumers.len() {
            self.cursor = 0;
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
            if action == SettleAction::Requeue {
                self.backlog.requeue(held.entry);
            } else {
                self.forget_on_disk(&held.entry);
            }
        }
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

    fn get(&mut self, client: ClientId, channel: u16, no_ack: bool) -> Option<GetOk> {
        let mut entry = self.next_ready()?;
        self.note_delivery(&mut entry, no_ack);
        let ok = GetOk {
            msg_id: entry.id,
            redelivered: entry.redelivered,
            message: Arc::clone(&entry.message),
            message_count: self.backlog.len() as u32,
        };
        if !no_ack {
            self.unacked.insert(
                entry.id,
                Unacked {
                    entry,
                    client,
                    channel,
                    consumer: None,
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
        self.backlog.take_all();
        self.unacked.clear();
        self.dedup.clear();
        // The whole log goes, so nothing needs acking first.
        if let Some(persist) = self.persist.take() {
            persist.destroy();
        }
    }

    /// Hands ready messages to consumers round-robin while any consumer has credit.
    fn dispatch(&mut self) {
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
            let consumer = &mut self.consumers[index];
            let spec = &consumer.spec;
            spec.client.deliver(Delivery {
                channel: spec.channel,
                epoch: spec.epoch,
                consumer_tag: spec.tag.clone(),
                queue: Arc::clone(&self.handle),
                msg_id: entry.id,
                redelivered: entry.redelivered,
                no_ack: spec.no_ack,
                message: Arc::clone(&entry.message),
            });
            if !spec.no_ack {
                consumer.unacked += 1;
                let held = Unacked {
                    entry,
                    client: spec.client.id,
                    channel: spec.channel,
                    consumer: Some(consumer.key),
                };
                self.unacked.insert(held.entry.id, held);
            }
        }
    }

    fn next_consumer_with_credit(&mut self) -> Option<usize> {
        let count = self.consumers.len();
        for _ in 0..count {
            let index = self.cursor % count;
            self.cursor = (index + 1) % count;
            if self.consumers[index].try_reserve() {
                return Some(index);
            }
        }
        None
    }
}
