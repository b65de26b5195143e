//! basic.publish with its content frames, publisher confirms and transactions.
//!
//! A publish is routed when its last body frame arrives: the exchange's routing index gives
//! the queues, the message (one `Arc`, body not copied) goes into each queue's mailbox, and
//! under confirms each queue reports back through the client's event channel.

use std::sync::Arc;

use bytes::Bytes;
use ferrymq_broker::dedup::{DedupOutcome, DedupProbe};
use ferrymq_broker::direct_reply::{REPLY_TO, REPLY_TO_PREFIX};
use ferrymq_broker::exchange::Exchange;
use ferrymq_broker::message::header_strings;
use ferrymq_broker::queue::{ConfirmTicket, QueueCmd, QueueHandle, SettleAction};
use ferrymq_broker::Message;
use ferrymq_wire::{
    BasicPublish, BasicReturn, ConfirmSelectOk, ContentHeader, Method, Properties, ShortStr,
    TxCommitOk, TxRollbackOk, TxSelectOk,
};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use super::Session;
use crate::amqp::channel::{Confirms, PendingPublish, SettleKind, Transaction};
use crate::amqp::error::{code, AmqpError, AmqpResult};

const PUBLISH: (u16, u16) = (BasicPublish::CLASS_ID, BasicPublish::METHOD_ID);
/// Class id of basic, the only class with content.
const CLASS_BASIC: u16 = 60;

impl Session {
    pub(super) fn basic_publish(&mut self, id: u16, m: BasicPublish) -> AmqpResult {
        if m.immediate {
            // RabbitMQ removed `immediate` in 3.0 and closes the connection for it.
            return Err(AmqpError::connection(
                code::NOT_IMPLEMENTED,
                "immediate=true",
                PUBLISH,
            ));
        }
        let pending = PendingPublish {
            method: m,
            properties: None,
            body_size: 0,
            parts: Vec::new(),
            received: 0,
        };
        self.channel(id).publish = Some(pending);
        Ok(())
    }

    pub(super) fn content_header(&mut self, id: u16, header: ContentHeader) -> AmqpResult {
        let size_max = self.server.config.message_size_max_bytes;
        let channel = self.channel(id);
        let Some(pending) = channel.publish.as_mut().filter(|p| p.properties.is_none()) else {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("unexpected content header frame on channel {id}"),
                (0, 0),
            ));
        };
        if header.class_id != CLASS_BASIC {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!(
                    "content header for class {} after basic.publish",
                    header.class_id
                ),
                PUBLISH,
            ));
        }
        if header.body_size > size_max {
            channel.publish = None;
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "message size {} is larger than configured max size {size_max}",
                    header.body_size
                ),
                PUBLISH,
            ));
        }
        pending.body_size = header.body_size;
        pending.properties = Some(header.properties);
        if pending.is_complete() {
            return self.complete_publish(id);
        }
        Ok(())
    }

    pub(super) fn content_body(&mut self, id: u16, payload: Bytes) -> AmqpResult {
        let channel = self.channel(id);
        let Some(pending) = channel.publish.as_mut().filter(|p| p.properties.is_some()) else {
            // After a publish the frame is its missing header: name the publish (RabbitMQ).
            let ids = if channel.publish.is_some() {
                PUBLISH
            } else {
                (0, 0)
            };
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("unexpected content body frame on channel {id}"),
                ids,
            ));
        };
        pending.received += payload.len() as u64;
        if pending.received > pending.body_size {
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!(
                    "content body of {} bytes is longer than the {} declared",
                    pending.received, pending.body_size
                ),
                PUBLISH,
            ));
        }
        if !payload.is_empty() {
            pending.parts.push(payload);
        }
        if pending.is_complete() {
            return self.complete_publish(id);
        }
        Ok(())
    }

    /// Routes a publish whose content is complete. What has to wait (see [`Unfinished`]) is
    /// left for [`Session::finish_publish`], which runs before the next frame.
    fn complete_publish(&mut self, id: u16) -> AmqpResult {
        // Checked by the connection after this frame: under an alarm it blocks now, with
        // the message whole.
        self.published = true;
        let channel = self.channel(id);
        let Some(mut pending) = channel.publish.take() else {
            return Ok(());
        };
        let body = pending.take_body();
        let properties = pending.properties.take().unwrap_or_else(Properties::empty);
        let method = pending.method;
        self.check_user_id(&properties)?;
        check_expiration(&properties)?;
        let properties = self.rewrite_reply_to(id, properties)?;
        let exchange = match self.channel(id).last_exchange.as_ref() {
            // Deleted (and maybe declared anew) since: look it up again.
            Some(last) if last.name == method.exchange && !last.is_deleted() => Arc::clone(last),
            _ => {
                let found = self
                    .vhost
                    .exchange_or_404(&method.exchange)
                    .map_err(|e| AmqpError::from_broker(e, PUBLISH))?;
                self.channel(id).last_exchange = Some(Arc::clone(&found));
                found
            }
        };
        if exchange.config.internal {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    exchange.name,
                    self.vhost.name()
                ),
                PUBLISH,
            ));
        }
        let message = Message::new(
            method.exchange.clone(),
            method.routing_key.clone(),
            properties,
            body,
        );
        let channel = self.channel(id);
        if let Some(tx) = channel.tx.as_mut() {
            tx.publishes.push((exchange, method, message));
            return Ok(());
        }
        self.route_and_enqueue(id, &exchange, &method, message, None);
        Ok(())
    }

    /// A request's `reply_to = amq.rabbitmq.reply-to` becomes the address of this channel's
    /// reply consumer; without one RabbitMQ refuses the publish.
    fn rewrite_reply_to(&mut self, id: u16, properties: Properties) -> AmqpResult<Properties> {
        if properties.is_empty() || properties.reply_to().as_deref() != Some(REPLY_TO) {
            return Ok(properties);
        }
        let Some((_, address)) = self.channel(id).reply_consumer.clone() else {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "fast reply consumer does not exist",
                PUBLISH,
            ));
        };
        let mut decoded = properties.decode()?;
        decoded.reply_to = Some(address);
        Ok(decoded.encode())
    }

    /// RabbitMQ refuses a user_id property that is not the authenticated user's name.
    fn check_user_id(&self, properties: &Properties) -> AmqpResult {
        match properties.user_id() {
            Some(user_id) if user_id.as_str() != self.user.name => Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    user_id, self.user.name
                ),
                PUBLISH,
            )),
            _ => Ok(()),
        }
    }

    /// Routes a message and enqueues it wherever a mailbox has room; the rest goes into
    /// `self.unfinished`.
    fn route_and_enqueue(
        &mut self,
        id: u16,
        exchange: &Arc<Exchange>,
        method: &BasicPublish,
        message: Message,
        mut waiters: Option<&mut Vec<oneshot::Receiver<bool>>>,
    ) {
        // An x-delayed-message exchange takes a message with an x-delay and routes it later.
        let Some(message) =
            self.hold_if_delayed(id, exchange, method, message, waiters.as_deref_mut())
        else {
            return;
        };
        let (message, mut queues, dedup) = self.route(id, exchange, message);
        let message = Arc::new(message);
        // A reply to a direct reply-to address goes straight to the requester's channel.
        let replied = exchange.is_default()
            && message.routing_key.starts_with(REPLY_TO_PREFIX)
            && self
                .vhost
                .direct_replies
                .deliver(&message.routing_key, Arc::clone(&message));
        let channel = self.channel(id);
        let epoch = channel.epoch;
        let confirm_seq = channel
            .confirms
            .as_mut()
            .map(|c| c.register(confirm_parts(&queues, &dedup)));
        // A duplicate dropped by a deduplication exchange was handled, not unroutable.
        if queues.is_empty() && !replied && method.mandatory && !dedup.duplicate {
            self.return_no_route(id, method, &message);
        }
        let client = &self.client;
        let ticket = |waiters: Option<&mut Vec<oneshot::Receiver<bool>>>| {
            confirm_ticket(client, id, epoch, confirm_seq, waiters)
        };
        if !dedup.writes.is_empty() {
            // Deduplication cache entries go to disk after the message: one confirm for all.
            let confirm = ticket(waiters.as_deref_mut());
            self.leave_unfinished(Unfinished::Dedup {
                dedup,
                queues,
                message,
                confirm,
            });
            return;
        }
        // Gathered per queue and sent when the read is handled (see `pending`); a batch
        // that fills up goes at once, or waits in `unfinished` if its mailbox is full.
        let mut full = Vec::new();
        // The slowest queue sets the pace: each of them takes the message at once.
        let pace_ns = queues.iter().map(|q| q.pace_ns()).max().unwrap_or(0);
        self.pace_debt_ns += u64::from(pace_ns);
        for queue in queues.drain(..) {
            let confirm = ticket(waiters.as_deref_mut());
            let Some((queue, cmd)) = self.publishes.add(&queue, Arc::clone(&message), confirm)
            else {
                continue;
            };
            if let Err(TrySendError::Full(cmd) | TrySendError::Closed(cmd)) = queue.try_send(cmd) {
                full.push((queue, cmd));
            }
        }
        if !full.is_empty() {
            self.leave_unfinished(Unfinished::Sends(full));
        }
        self.route_buf = queues;
    }

    pub(super) fn leave_unfinished(&mut self, work: Unfinished) {
        debug_assert!(
            self.unfinished.is_none(),
            "the last publish was not finished"
        );
        self.unfinished = Some(work);
    }

    /// Does what the last publish left to wait for. Called before the next frame is
    /// handled, so a queue receives one connection's publishes in order.
    pub async fn finish_publish(&mut self) {
        // What waits here must reach its queues after the publishes gathered before it.
        self.flush_publishes().await;
        match self.unfinished.take() {
            None => {}
            Some(Unfinished::Sends(sends)) => {
                for (queue, cmd) in sends {
                    queue.send(cmd).await;
                }
            }
            Some(Unfinished::Dedup {
                dedup,
                mut queues,
                message,
                confirm,
            }) => {
                dedup
                    .enqueue_then_record(&mut queues, &message, confirm)
                    .await;
            }
            Some(Unfinished::Held {
                exchange,
                message,
                delay_ms,
                confirm,
            }) => match exchange.delayed() {
                Some(scheduler) => scheduler.hold(message, delay_ms, confirm).await,
                // Never: the scheduler is set when the exchange is declared.
                None => {
                    if let Some(ticket) = confirm {
                        ticket.settle(false);
                    }
                }
            },
        }
    }

    /// Routes with the routing key plus any CC/BCC header keys; BCC is removed from the
    /// message before it is stored (RabbitMQ's sender-selected distribution).
    fn route(
        &mut self,
        id: u16,
        exchange: &Arc<Exchange>,
        mut message: Message,
    ) -> (Message, Vec<Arc<QueueHandle>>, DedupOutcome) {
        // Reused from publish to publish: routing must not allocate per message.
        let mut queues = std::mem::take(&mut self.route_buf);
        queues.clear();
        let by_headers = exchange.kind() == ferrymq_broker::exchange::ExchangeType::Headers;
        let headers = if by_headers || !message.properties.is_empty() {
            message.properties.headers()
        } else {
            None
        };
        // Without headers (no CC/BCC, nothing for a headers exchange to match) the result
        // is a function of the exchange, the key and the topology: the channel's cache may
        // hold it. Read the generation first, so that a change made while routing misses.
        let cacheable = headers.is_none() && !by_headers;
        let generation = self.vhost.topology_generation();
        if cacheable {
            let cache = &self.channel(id).route_cache;
            if let Some(hit) = cache.get(exchange, message.routing_key.as_bytes(), generation) {
                queues.extend(hit.iter().cloned());
                return (message, queues, DedupOutcome::default());
            }
        }
        let extra = headers
            .as_ref()
            .map(|h| (header_strings(h.get("CC")), header_strings(h.get("BCC"))));
        let mut dedup = DedupProbe::new(&message);
        {
            // On the stack: the routing key plus a few CC/BCC keys need no allocation.
            let mut keys: smallvec::SmallVec<[&str; 4]> =
                smallvec::smallvec![message.routing_key.as_str()];
            if let Some((cc, bcc)) = &extra {
                keys.extend(cc.iter().map(String::as_str));
                keys.extend(bcc.iter().map(String::as_str));
            }
            let pure = self
                .vhost
                .route(exchange, &keys, headers.as_ref(), &mut queues, &mut dedup);
            if cacheable && pure {
                let key = message.routing_key.as_bytes();
                self.channel(id)
                    .route_cache
                    .set(exchange, key, generation, &queues);
            }
        }
        let dedup = dedup.outcome;
        if extra.as_ref().is_some_and(|(_, bcc)| !bcc.is_empty()) {
            message = without_bcc(message);
        }
        (message, queues, dedup)
    }

    pub(super) fn confirm_select(&mut self, id: u16, nowait: bool, ids: (u16, u16)) -> AmqpResult {
        let channel = self.channel(id);
        if channel.tx.is_some() {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "cannot switch from tx to confirm mode",
                ids,
            ));
        }
        if channel.confirms.is_none() {
            channel.confirms = Some(Confirms::default());
        }
        if !nowait {
            self.outbox
                .method(id, &Method::ConfirmSelectOk(ConfirmSelectOk));
        }
        Ok(())
    }

    pub(super) fn tx_select(&mut self, id: u16, ids: (u16, u16)) -> AmqpResult {
        let channel = self.channel(id);
        if channel.confirms.is_some() {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "cannot switch from confirm to tx mode",
                ids,
            ));
        }
        if channel.tx.is_none() {
            channel.tx = Some(Transaction::default());
        }
        self.outbox.method(id, &Method::TxSelectOk(TxSelectOk));
        Ok(())
    }

    pub(super) async fn tx_commit(&mut self, id: u16, ids: (u16, u16)) -> AmqpResult {
        let Some(tx) = self.channel(id).tx.as_mut() else {
            return Err(not_transactional(ids));
        };
        let Transaction { publishes } = std::mem::take(tx);
        let mut waiters = Vec::new();
        for (exchange, method, message) in publishes {
            self.route_and_enqueue(id, &exchange, &method, message, Some(&mut waiters));
            self.finish_publish().await;
        }
        // commit-ok means the persistent publishes are on disk, as after a confirm.
        for waiter in waiters {
            let _ = waiter.await;
        }
        for (kind, taken) in self.channel(id).take_marked() {
            self.send_settles(id, taken, kind);
        }
        self.outbox.method(id, &Method::TxCommitOk(TxCommitOk));
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self, id: u16, ids: (u16, u16)) -> AmqpResult {
        let Some(tx) = self.channel(id).tx.as_mut() else {
            return Err(not_transactional(ids));
        };
        *tx = Transaction::default();
        self.channel(id).unmark_all();
        self.outbox.method(id, &Method::TxRollbackOk(TxRollbackOk));
        Ok(())
    }

    /// Sends settle commands, grouped per queue, for deliveries removed from a channel.
    pub(super) fn send_settles(
        &mut self,
        id: u16,
        taken: impl IntoIterator<Item = crate::amqp::channel::Unacked>,
        kind: SettleKind,
    ) {
        let action = match kind {
            SettleKind::Ack => SettleAction::Ack,
            SettleKind::Requeue => SettleAction::Requeue,
            SettleKind::Discard => SettleAction::Discard,
        };
        let mut credit_returned = 0u32;
        for unacked in taken {
            credit_returned += u32::from(unacked.from_consumer);
            self.settles.add(unacked.queue, id, action, unacked.msg_id);
        }
        if self.channel(id).credit.release(credit_returned) {
            self.settles.wake(id);
        }
    }

    /// Sends what the frames handled so far gathered for the queues (see `pending`):
    /// publishes first, in the order the client sent them, then settles.
    pub async fn flush_pending(&mut self) {
        self.flush_publishes().await;
        self.flush_settles().await;
    }

    async fn flush_publishes(&mut self) {
        for (queue, cmd) in self.publishes.drain() {
            queue.send(cmd).await;
        }
    }

    /// Sends the settles gathered since the last flush: one command per queue, channel and
    /// outcome however many acks the client sent in one read, then the wake-ups.
    async fn flush_settles(&mut self) {
        if self.settles.is_empty() {
            return;
        }
        let client = self.client.id;
        let (settles, wakes) = self.settles.take();
        for (queue, channel, action, msg_ids) in settles {
            queue
                .send(QueueCmd::Settle {
                    client,
                    channel,
                    msg_ids,
                    action,
                })
                .await;
        }
        for channel in wakes {
            if self.channels.contains_key(&channel) {
                self.wake_channel_queues(channel).await;
            }
        }
    }
}

/// The part of a publish that has to wait, left by the synchronous publish path (which
/// handles most frames without building a future) for [`Session::finish_publish`].
pub(crate) enum Unfinished {
    /// Queues whose mailbox was full, with the publish command each still needs.
    Sends(Vec<(Arc<QueueHandle>, QueueCmd)>),
    /// Deduplication cache entries to write once the queues confirm the message.
    Dedup {
        dedup: DedupOutcome,
        queues: Vec<Arc<QueueHandle>>,
        message: Arc<Message>,
        confirm: Option<ConfirmTicket>,
    },
    /// A message for a delayed exchange's scheduler.
    Held {
        exchange: Arc<Exchange>,
        message: Message,
        delay_ms: u64,
        confirm: Option<ConfirmTicket>,
    },
}

/// How many confirmations a publish waits for: one per queue, or a single one when
/// deduplication cache entries must follow the message to disk.
fn confirm_parts(queues: &[Arc<QueueHandle>], dedup: &DedupOutcome) -> u32 {
    if dedup.writes.is_empty() {
        queues.len() as u32
    } else {
        1
    }
}

impl Session {
    /// basic.return 312 NO_ROUTE with the message, for a mandatory publish.
    pub(super) fn return_no_route(&mut self, id: u16, method: &BasicPublish, message: &Message) {
        let returned = BasicReturn {
            reply_code: code::NO_ROUTE,
            reply_text: ShortStr::from_static("NO_ROUTE"),
            exchange: method.exchange.clone(),
            routing_key: method.routing_key.clone(),
        };
        self.outbox.method(id, &Method::BasicReturn(returned));
        self.outbox.content(id, &message.properties, &message.body);
    }
}

/// Where a queue reports a publish as safely enqueued: the channel's confirm sequence
/// number under publisher confirms, or a waiter of tx.commit; `None` when nobody asks.
pub(super) fn confirm_ticket(
    client: &Arc<ferrymq_broker::client::ClientHandle>,
    channel: u16,
    epoch: u64,
    confirm_seq: Option<u64>,
    waiters: Option<&mut Vec<oneshot::Receiver<bool>>>,
) -> Option<ConfirmTicket> {
    match (confirm_seq, waiters) {
        (Some(seq), _) => Some(ConfirmTicket::Channel {
            client: Arc::clone(client),
            channel,
            epoch,
            seq,
        }),
        (None, Some(waiters)) => {
            let (tx, rx) = oneshot::channel();
            waiters.push(rx);
            Some(ConfirmTicket::Waiter(tx))
        }
        (None, None) => None,
    }
}

fn not_transactional(ids: (u16, u16)) -> AmqpError {
    AmqpError::channel(
        code::PRECONDITION_FAILED,
        "channel is not transactional",
        ids,
    )
}

/// A per-message TTL must be a non-negative integer; RabbitMQ refuses the publish (406).
fn check_expiration(properties: &Properties) -> AmqpResult {
    match properties.expiration() {
        Some(value) if !properties.is_empty() => ferrymq_broker::message::parse_expiration(&value)
            .map(|_| ())
            .map_err(|text| AmqpError::channel(code::PRECONDITION_FAILED, text, PUBLISH)),
        _ => Ok(()),
    }
}

/// Re-encodes the properties without the BCC header: the only time the broker rewrites
/// properties on the publish path.
pub(super) fn without_bcc(mut message: Message) -> Message {
    if let Ok(mut props) = message.properties.decode() {
        if let Some(headers) = props.headers.as_mut() {
            headers.remove("BCC");
        }
        message.properties = props.encode();
    }
    message
}
