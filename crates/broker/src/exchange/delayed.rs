//! The `x-delayed-message` exchange (RabbitMQ's rabbitmq-delayed-message-exchange plugin).
//!
//! Declared with an `x-delayed-type` argument naming how it routes (direct, fanout, topic,
//! headers). A message published to it with a positive integer `x-delay` header (ms, at
//! most 2^32-1) is held and routed at its due time through the exchange's bindings, then
//! exchange-to-exchange bindings and alternate exchanges, like any publish. Other messages
//! are routed at once.
//!
//! One tokio task per delayed exchange owns the held messages: a min-heap of
//! [`Due`](super::delayed_store::Due) entries (16 bytes each) and the log of records on disk.
//! Publishers reach it through a bounded mailbox; it sleeps until the earliest due time.
//!
//! ```text
//!  session ──Held (bounded mailbox, awaits room)──▶ scheduler ──append, fdatasync──▶ confirm
//!  scheduler at due time: read record ─▶ vhost.route ─▶ QueueHandle::publish (awaits room)
//!            queues settle their tickets ─▶ the record is acked (after they hold it)
//! ```
//!
//! The scheduler waits only for queue mailboxes and queues never wait for it, so no cycle
//! of waits can form. A record is acked only once every queue it reached has confirmed it
//! (on disk for persistent messages in durable queues), so a crash in between routes it
//! again rather than losing it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ferrymq_store::{Record, RecordKind, Syncer};
use ferrymq_wire::{FieldTable, FieldValue, Properties, ShortStr};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::delayed_store::{lock_dir, DelayStore, Due, Opened};
use super::{Exchange, ExchangeConfig, ExchangeType};
use crate::error::{BrokerError, Result};
use crate::message::{header_strings, unix_ms, Message};
use crate::queue::{ConfirmTicket, QueueHandle};
use crate::vhost::VHost;

pub const EXCHANGE_TYPE: &str = "x-delayed-message";
pub const DELAYED_TYPE_ARGUMENT: &str = "x-delayed-type";
pub const DELAY_HEADER: &str = "x-delay";
/// The longest delay held (the plugin's limit, Erlang's largest timer); a longer one is
/// routed at once, as the plugin does.
pub const DELAY_MAX_MS: u64 = 4_294_967_295;
/// Held messages waiting in the mailbox before publishers must wait.
const MAILBOX_MESSAGES_MAX: usize = 4096;
/// Messages taken from the mailbox per write + fdatasync request.
const APPEND_BATCH_MAX: usize = 256;
/// Messages routed per wake-up before the mailbox is served again.
const FIRE_BATCH_MAX: usize = 1024;
/// Routed batches whose queues have not all confirmed yet; past this the scheduler routes
/// nothing more until one settles (bounds the confirmations it tracks).
const BATCHES_IN_FLIGHT_MAX: usize = 16;

/// The routing behaviour of an exchange: its own type, or for a delayed exchange its
/// `x-delayed-type` (direct when unreadable, which a declare has already refused).
pub fn routing_kind(config: &ExchangeConfig) -> ExchangeType {
    if config.kind != ExchangeType::Delayed {
        return config.kind;
    }
    match delayed_type_name(&config.arguments).map(ExchangeType::parse) {
        Some(Ok(kind)) if kind != ExchangeType::Delayed => kind,
        _ => ExchangeType::Direct,
    }
}

fn delayed_type_name(arguments: &FieldTable) -> Option<&str> {
    match arguments.get(DELAYED_TYPE_ARGUMENT)? {
        FieldValue::LongStr(b) | FieldValue::Bytes(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// The plugin's `validate`: a missing or non-string `x-delayed-type`, or the delayed type
/// itself, is 406; a name that is no exchange type is 503, as for exchange.declare.
pub fn validate(config: &ExchangeConfig) -> Result<()> {
    if config.kind != ExchangeType::Delayed {
        return Ok(());
    }
    let Some(name) = delayed_type_name(&config.arguments) else {
        return Err(BrokerError::precondition_failed(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        ));
    };
    match ExchangeType::parse(name)? {
        ExchangeType::Delayed => Err(BrokerError::precondition_failed(
            "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
        )),
        _ => Ok(()),
    }
}

/// The delay a message asks for, if it is to be held: `x-delay` as any integer type, a
/// float or decimal (truncated) or a decimal string, in 1..=2^32-1 ms (the plugin's rules;
/// a string that is no integer means no delay here, where the plugin fails the publish).
pub fn delay_of(properties: &Properties) -> Option<u64> {
    let headers = properties.headers()?;
    let delay = header_delay(headers.get(DELAY_HEADER)?)?;
    u64::try_from(delay)
        .ok()
        .filter(|d| (1..=DELAY_MAX_MS).contains(d))
}

fn header_delay(value: &FieldValue) -> Option<i64> {
    if let Some(integer) = value.as_i64() {
        return Some(integer);
    }
    let float = match value {
        FieldValue::LongStr(text) => return std::str::from_utf8(text).ok()?.parse().ok(),
        FieldValue::F32(v) => f64::from(*v),
        FieldValue::F64(v) => *v,
        FieldValue::Decimal { scale, value } => f64::from(*value) / 10f64.powi(i32::from(*scale)),
        _ => return None,
    };
    // `as` saturates and maps NaN to 0, which is "no delay".
    float.is_finite().then_some(float.trunc() as i64)
}

/// A message on its way into the scheduler.
struct Held {
    message: Message,
    due_ms: u64,
    confirm: Option<ConfirmTicket>,
}

/// How the rest of the broker reaches an exchange's scheduler.
#[derive(Debug)]
pub struct DelayedHandle {
    tx: mpsc::Sender<Held>,
    pending: Arc<AtomicU64>,
    /// A state, not an event: the exchange object is dropped right after it is deleted,
    /// and the scheduler must still tell deletion (drop the messages) from shutdown.
    deleted: watch::Sender<bool>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("due_ms", &self.due_ms)
            .finish()
    }
}

impl DelayedHandle {
    /// Holds `message` for `delay_ms`, waiting for mailbox room. `confirm` is settled once
    /// it is stored (after the fdatasync). An exchange deleted meanwhile drops the message
    /// and acks it, as a deleted queue does.
    pub async fn hold(&self, message: Message, delay_ms: u64, confirm: Option<ConfirmTicket>) {
        let held = Held {
            message,
            due_ms: unix_ms().saturating_add(delay_ms),
            confirm,
        };
        if let Err(mpsc::error::SendError(held)) = self.tx.send(held).await {
            if let Some(ticket) = held.confirm {
                ticket.settle(true);
            }
        }
    }

    /// Messages held and not yet routed.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    pub(super) fn exchange_deleted(&self) {
        self.deleted.send_replace(true);
    }
}

/// Where a scheduler keeps its messages.
struct Location {
    dir: PathBuf,
    segment_size_bytes: u64,
    syncer: Syncer,
    restored: watch::Receiver<bool>,
}

/// Starts the scheduler of a just-created delayed exchange (recovering what its directory
/// holds). Needs a tokio runtime, like spawning a queue.
pub(crate) fn start(vhost: &Arc<VHost>, exchange: &Arc<Exchange>) {
    let (tx, rx) = mpsc::channel(MAILBOX_MESSAGES_MAX);
    let pending = Arc::new(AtomicU64::new(0));
    let (deleted, deleted_rx) = watch::channel(false);
    let handle = DelayedHandle {
        tx,
        pending: Arc::clone(&pending),
        deleted,
    };
    if exchange.delayed.set(handle).is_err() {
        return;
    }
    let location = vhost.storage().map(|s| Location {
        dir: s.delayed_dir(vhost.name(), &exchange.name),
        segment_size_bytes: s.segment_size_bytes,
        syncer: s.syncer.clone(),
        restored: s.restored(),
    });
    let scheduler = Scheduler {
        exchange: Arc::downgrade(exchange),
        vhost: Arc::downgrade(vhost),
        heap: BinaryHeap::new(),
        pending,
        next_seq: 0,
        in_flight: JoinSet::new(),
        route_buf: Vec::new(),
    };
    tokio::spawn(scheduler.run(location, rx, deleted_rx));
}

struct Scheduler {
    exchange: Weak<Exchange>,
    vhost: Weak<VHost>,
    heap: BinaryHeap<Reverse<Due>>,
    pending: Arc<AtomicU64>,
    next_seq: u64,
    /// Routed batches waiting for their queues' confirmations; each yields its entries.
    in_flight: JoinSet<Vec<Due>>,
    /// Reused from message to message: routing allocates no list per message.
    route_buf: Vec<Arc<QueueHandle>>,
}

impl Scheduler {
    async fn run(
        mut self,
        location: Option<Location>,
        mut rx: mpsc::Receiver<Held>,
        mut deleted: watch::Receiver<bool>,
    ) {
        let _dir = match &location {
            Some(location) => Some(lock_dir(&location.dir).await),
            None => None,
        };
        let mut restored = location.as_ref().map(|l| l.restored.clone());
        let Some(mut store) = self.open(location).await else {
            refuse_all(rx, deleted).await;
            return;
        };
        // Messages that fell due while the broker was down wait for their bindings and
        // queues to be restored too; publishes cannot arrive before then.
        if let Some(restored) = restored.as_mut() {
            if restored.wait_for(|done| *done).await.is_err() {
                return;
            }
        }
        // Runs until the exchange is deleted or its object dropped (shutdown, or right after
        // a deletion: the mailbox may be seen closed before the deletion flag).
        loop {
            let next_due = self.heap.peek().map(|Reverse(due)| due.due_ms);
            let may_fire = next_due.is_some() && self.in_flight.len() < BATCHES_IN_FLIGHT_MAX;
            let wake = tokio::time::Instant::now()
                + Duration::from_millis(next_due.unwrap_or(0).saturating_sub(unix_ms()));
            // Not biased: a flood of publishes must not keep due messages waiting, nor a
            // backlog of due messages keep publishers waiting.
            tokio::select! {
                // The guard `wait_for` returns must not live across the other branches' awaits.
                _ = async { deleted.wait_for(|d| *d).await.is_ok() } => break,
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    self.settled(&mut store, done.unwrap_or_default());
                }
                held = rx.recv() => match held {
                    Some(first) => self.take(&mut store, first, &mut rx),
                    None => break,
                },
                () = tokio::time::sleep_until(wake), if may_fire => {
                    if !self.fire(&mut store).await {
                        break;
                    }
                }
            }
        }
        self.pending.store(0, Ordering::Relaxed);
        let deleted = *deleted.borrow();
        if deleted {
            // exchange.delete: the held messages go with the exchange.
            self.in_flight.abort_all();
            rx.close();
            while let Ok(held) = rx.try_recv() {
                if let Some(ticket) = held.confirm {
                    ticket.settle(true);
                }
            }
            store.destroy();
        } else {
            // The broker is stopping: the messages stay for the restart.
            while let Some(done) = self.in_flight.join_next().await {
                self.settled(&mut store, done.unwrap_or_default());
            }
        }
    }

    /// Opens the store off the runtime's worker threads (recovery reads whole segments).
    async fn open(&mut self, location: Option<Location>) -> Option<DelayStore> {
        let opened = match location {
            None => DelayStore::memory(),
            Some(Location {
                dir,
                segment_size_bytes,
                syncer,
                ..
            }) => {
                let opening = tokio::task::spawn_blocking(move || {
                    let opened = DelayStore::open(&dir, segment_size_bytes, syncer);
                    (dir, opened)
                });
                match opening.await {
                    Ok((_, Ok(opened))) => opened,
                    Ok((dir, Err(e))) => {
                        tracing::error!(error = %e, dir = %dir.display(), "opening a delayed exchange's store failed; publishes to it are nacked");
                        return None;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "opening a delayed exchange's store panicked");
                        return None;
                    }
                }
            }
        };
        let Opened {
            store,
            held,
            next_seq,
        } = opened;
        self.next_seq = next_seq;
        self.pending.store(held.len() as u64, Ordering::Relaxed);
        // Heapify in place: O(n), and no second copy of a million entries.
        self.heap = BinaryHeap::from(held.into_iter().map(Reverse).collect::<Vec<_>>());
        Some(store)
    }

    /// Appends `first` and whatever else waits (up to a batch), then asks for one
    /// fdatasync that settles all their confirms.
    fn take(&mut self, store: &mut DelayStore, first: Held, rx: &mut mpsc::Receiver<Held>) {
        let mut tickets = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(held) = next.take() {
            let Held {
                message,
                due_ms,
                confirm,
            } = held;
            let record = Record {
                kind: RecordKind::Persistent,
                priority: 0,
                seq: self.next_seq,
                expiry_ms: due_ms,
                exchange: message.exchange.into_bytes(),
                routing_key: message.routing_key.into_bytes(),
                properties: message.properties.into_bytes(),
                body: message.body,
            };
            match store.append(record) {
                Ok(due) => {
                    self.next_seq += 1;
                    self.heap.push(Reverse(due));
                    self.pending.fetch_add(1, Ordering::Relaxed);
                    tickets.extend(confirm);
                }
                Err(e) => {
                    tracing::error!(error = %e, "storing a delayed message failed");
                    if let Some(ticket) = confirm {
                        ticket.settle(false);
                    }
                }
            }
            taken += 1;
            if taken < APPEND_BATCH_MAX {
                next = rx.try_recv().ok();
            }
        }
        store.commit(tickets);
    }

    /// Routes the messages that are due (up to a batch), oldest due first. `false`: the
    /// exchange or its vhost is gone (the broker is stopping), so nothing can be routed.
    async fn fire(&mut self, store: &mut DelayStore) -> bool {
        let now = unix_ms();
        let (Some(exchange), Some(vhost)) = (self.exchange.upgrade(), self.vhost.upgrade()) else {
            return false;
        };
        let mut fired = Vec::new();
        let mut confirmations = Vec::new();
        while fired.len() < FIRE_BATCH_MAX {
            match self.heap.peek() {
                Some(Reverse(due)) if due.due_ms <= now => {}
                _ => break,
            }
            let Some(Reverse(due)) = self.heap.pop() else {
                break;
            };
            self.pending.fetch_sub(1, Ordering::Relaxed);
            fired.push(due);
            match store.read(due) {
                Ok(record) => {
                    self.route(&vhost, &exchange, record, &mut confirmations)
                        .await;
                }
                // Acked anyway: a record that cannot be read would fail forever.
                Err(e) => {
                    tracing::error!(error = %e, "reading a delayed message failed; it is lost")
                }
            }
        }
        if !fired.is_empty() {
            self.in_flight.spawn(async move {
                for confirmation in confirmations {
                    // A queue gone meanwhile drops its ticket: nothing more to wait for.
                    let _ = confirmation.await;
                }
                fired
            });
        }
        true
    }

    /// Routes one held message as the plugin does: `x-delay` turned negative (so a delayed
    /// exchange further on does not hold it again), CC/BCC keys honoured, BCC removed.
    async fn route(
        &mut self,
        vhost: &Arc<VHost>,
        exchange: &Arc<Exchange>,
        record: Record,
        confirmations: &mut Vec<oneshot::Receiver<bool>>,
    ) {
        let (Ok(exchange_name), Ok(routing_key)) = (
            ShortStr::from_utf8(record.exchange),
            ShortStr::from_utf8(record.routing_key),
        ) else {
            tracing::error!("a delayed message's record has names that are not UTF-8; dropped");
            return;
        };
        let original = Properties::from_bytes(record.properties);
        let headers = original.headers();
        let extra_keys = headers
            .as_ref()
            .map(sender_selected_keys)
            .unwrap_or_default();
        let properties = released_properties(&original).unwrap_or(original);
        let message = Arc::new(Message::new(
            exchange_name,
            routing_key,
            properties,
            record.body,
        ));
        let headers = message.properties.headers();
        let mut queues = std::mem::take(&mut self.route_buf);
        queues.clear();
        // A deduplication exchange further on sees the message like any publish.
        let mut probe = crate::dedup::DedupProbe::new(&message);
        {
            let mut keys: smallvec::SmallVec<[&str; 4]> =
                smallvec::smallvec![message.routing_key.as_str()];
            keys.extend(extra_keys.iter().map(String::as_str));
            vhost.route(exchange, &keys, headers.as_ref(), &mut queues, &mut probe);
        }
        let dedup = probe.outcome;
        if !dedup.writes.is_empty() {
            // Its cache entries are written once every queue has the message: one answer.
            let (ticket, confirmation) = oneshot::channel();
            confirmations.push(confirmation);
            dedup
                .enqueue_then_record(&mut queues, &message, Some(ConfirmTicket::Waiter(ticket)))
                .await;
        }
        for queue in queues.drain(..) {
            let (ticket, confirmation) = oneshot::channel();
            confirmations.push(confirmation);
            queue
                .publish(Arc::clone(&message), Some(ConfirmTicket::Waiter(ticket)))
                .await;
        }
        self.route_buf = queues;
    }

    /// A routed batch is held by its queues: forget its records.
    fn settled(&mut self, store: &mut DelayStore, done: Vec<Due>) {
        for due in done {
            store.ack(due);
        }
        store.flush_acks();
    }
}

/// A scheduler whose store could not be opened nacks what it is given (rather than
/// confirm messages it cannot keep) until its exchange goes away.
async fn refuse_all(mut rx: mpsc::Receiver<Held>, mut deleted: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = async { deleted.wait_for(|d| *d).await.is_ok() } => return,
            held = rx.recv() => match held {
                Some(held) => {
                    if let Some(ticket) = held.confirm {
                        ticket.settle(false);
                    }
                }
                None => return,
            },
        }
    }
}

/// CC and BCC header keys (RabbitMQ's sender-selected distribution), routed with the key.
/// The CC and BCC keys a message is routed with besides its routing key.
fn sender_selected_keys(headers: &FieldTable) -> Vec<String> {
    [
        header_strings(headers.get("CC")),
        header_strings(headers.get("BCC")),
    ]
    .concat()
}

/// The properties a held message is delivered with: `x-delay` set to minus the delay, as
/// a signed 32-bit integer like the plugin (64-bit if it does not fit), and BCC removed.
/// `None`: nothing to change, or properties that do not decode (delivered as published).
fn released_properties(properties: &Properties) -> Option<Properties> {
    let mut decoded = properties.decode().ok()?;
    let headers = decoded.headers.as_mut()?;
    let delay = headers.get(DELAY_HEADER).and_then(header_delay)?;
    let negative = delay.saturating_neg();
    let value = i32::try_from(negative).map_or(FieldValue::I64(negative), FieldValue::I32);
    headers.insert(DELAY_HEADER, value);
    headers.remove("BCC");
    Some(decoded.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_wire::BasicProperties;

    fn with_delay(value: FieldValue) -> Properties {
        let mut headers = FieldTable::new();
        headers.insert(DELAY_HEADER, value);
        BasicProperties {
            headers: Some(headers),
            ..Default::default()
        }
        .encode()
    }

    #[test]
    fn delay_header_is_read_as_the_plugin_reads_it() {
        let cases = [
            (FieldValue::I8(5), Some(5)),
            (FieldValue::U16(500), Some(500)),
            (FieldValue::I32(1000), Some(1000)),
            (FieldValue::U32(u32::MAX), Some(DELAY_MAX_MS)),
            (FieldValue::I64(1 << 40), None),
            (FieldValue::I64(0), None),
            (FieldValue::I32(-100), None),
            (FieldValue::LongStr("250".into()), Some(250)),
            (FieldValue::LongStr("soon".into()), None),
            (FieldValue::F64(99.9), Some(99)),
            (FieldValue::F64(f64::NAN), None),
            (
                FieldValue::Decimal {
                    scale: 1,
                    value: 55,
                },
                Some(5),
            ),
            (FieldValue::Bool(true), None),
            (FieldValue::Timestamp(10), None),
        ];
        for (value, expected) in cases {
            assert_eq!(delay_of(&with_delay(value.clone())), expected, "{value:?}");
        }
        assert_eq!(delay_of(&Properties::empty()), None);
    }

    #[test]
    fn released_message_carries_the_negative_delay_and_no_bcc() {
        let mut headers = FieldTable::new();
        headers.insert(DELAY_HEADER, FieldValue::I64(1500));
        headers.insert("BCC", FieldValue::LongStr("secret".into()));
        headers.insert("CC", FieldValue::LongStr("copy".into()));
        let properties = BasicProperties {
            headers: Some(headers),
            ..Default::default()
        }
        .encode();
        let released = released_properties(&properties).unwrap();
        let headers = released.headers().unwrap();
        assert_eq!(headers.get(DELAY_HEADER), Some(&FieldValue::I32(-1500)));
        assert!(headers.get("BCC").is_none());
        assert_eq!(delay_of(&released), None, "never held twice");
        assert_eq!(
            sender_selected_keys(&properties.headers().unwrap()),
            vec!["copy".to_string(), "secret".to_string()]
        );
    }

    /// A fresh directory under the system's temp dir (the crate has no tempfile).
    fn scratch_dir(name: &str) -> PathBuf {
        let unique = format!("ferrymq-{name}-{}-{}", std::process::id(), unix_ms());
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn overdue_messages_wait_until_the_topology_is_restored() {
        use crate::exchange::Destination;
        use crate::queue::QueueConfig;
        use crate::storage::BrokerStorage;

        let data_dir = scratch_dir("restore-gate");
        let (syncer, _thread) = Syncer::start();
        let (storage, topology) = BrokerStorage::open(&data_dir, syncer, 1 << 20, 64).unwrap();
        // A message that fell due while the broker was down.
        let (mut log, _) =
            ferrymq_store::QueueLog::open(&storage.delayed_dir("/", "later"), 1 << 20).unwrap();
        log.append(&Record {
            kind: RecordKind::Persistent,
            priority: 0,
            seq: 0,
            expiry_ms: unix_ms() - 1_000,
            exchange: "later".into(),
            routing_key: "k".into(),
            properties: with_delay(FieldValue::I32(500)).into_bytes(),
            body: "overdue".into(),
        })
        .unwrap();
        log.sync().unwrap();
        drop(log);
        let storage = Arc::new(storage);
        let vhost = crate::Broker::with_storage(Arc::clone(&storage)).add_vhost("/");
        // Restoring: the exchange comes back before the queue and binding it routes to.
        let mut arguments = FieldTable::new();
        arguments.insert(DELAYED_TYPE_ARGUMENT, FieldValue::LongStr("direct".into()));
        let exchange = vhost
            .declare_exchange(&"later".into(), config(arguments), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let queue_config = QueueConfig {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::new(),
        };
        let queue = vhost
            .declare_queue(&"q".into(), queue_config, false, 0)
            .await
            .unwrap()
            .queue;
        vhost
            .bind(
                &exchange,
                Destination::Queue(Arc::clone(&queue)),
                "k".into(),
                FieldTable::new(),
            )
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            exchange.delayed_messages(),
            1,
            "held until the restore is over"
        );
        assert_eq!(queue.counts().await.unwrap().messages, 0);
        storage.start_recording(&topology).unwrap();
        let routed = async {
            while queue.counts().await.unwrap().messages == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), routed)
            .await
            .unwrap();
        assert_eq!(exchange.delayed_messages(), 0);
        let _ = std::fs::remove_dir_all(&data_dir);
    }

    fn config(arguments: FieldTable) -> ExchangeConfig {
        ExchangeConfig {
            kind: ExchangeType::Delayed,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments,
        }
    }

    #[test]
    fn delayed_type_is_required_and_must_be_a_routing_type() {
        let code = |arguments| validate(&config(arguments)).map_err(|e| (e.code, e.text));
        let mut args = FieldTable::new();
        assert_eq!(code(args.clone()).unwrap_err().0, 406);
        args.insert(DELAYED_TYPE_ARGUMENT, FieldValue::I32(1));
        assert_eq!(code(args.clone()).unwrap_err().0, 406);
        args.insert(
            DELAYED_TYPE_ARGUMENT,
            FieldValue::LongStr("x-delayed-message".into()),
        );
        assert_eq!(code(args.clone()).unwrap_err().0, 406);
        args.insert(
            DELAYED_TYPE_ARGUMENT,
            FieldValue::LongStr("nonsense".into()),
        );
        assert_eq!(code(args.clone()).unwrap_err().0, 503);
        args.insert(DELAYED_TYPE_ARGUMENT, FieldValue::LongStr("topic".into()));
        assert!(code(args.clone()).is_ok());
        assert_eq!(routing_kind(&config(args)), ExchangeType::Topic);
    }
}
