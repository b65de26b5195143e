//! A connection after connection.open: its channels, and everything between the client's
//! frames and the broker core.
//!
//! The session is owned by the connection task; it never touches the socket. Frames come in
//! through [`Session::handle_frame`], queue events through [`Session::handle_event`], and both
//! write their answers into the [`Outbox`] that the connection flushes.

mod consume;
mod definitions;
mod delayed;
mod pending;
mod publish;

use std::sync::Arc;

use ferrymq_broker::auth::User;
use ferrymq_broker::client::{ClientEvent, ClientHandle};
use ferrymq_broker::queue::{QueueCmd, QueueHandle};
use ferrymq_broker::vhost::VHost;
use ferrymq_wire::{ChannelClose, ChannelCloseOk, ChannelFlowOk, ChannelOpenOk, Frame, Method};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use super::channel::{Channel, ChannelState, SettleKind};
use super::error::{code, AmqpError, AmqpResult, CloseReason};
use super::outbox::Outbox;
use super::Server;
pub use pending::{PendingPublishes, PendingSettles};

const PUBLISH_IDS: (u16, u16) = (
    ferrymq_wire::BasicPublish::CLASS_ID,
    ferrymq_wire::BasicPublish::METHOD_ID,
);

/// What the client told us it supports in connection.start-ok.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCapabilities {
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
}

pub struct Session {
    pub server: Arc<Server>,
    pub vhost: Arc<VHost>,
    pub user: User,
    pub client: Arc<ClientHandle>,
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
    pub outbox: Outbox,
    /// Looked up several times per frame; keys chosen by the client can only slow its own
    /// connection, so a fast hash without flood resistance will do.
    pub channels: FxHashMap<u16, Channel>,
    pub channel_max: u16,
    pub frame_max_bytes: u32,
    pub heartbeat_s: u16,
    pub capabilities: ClientCapabilities,
    /// Exclusive queues this connection declared: deleted when it closes.
    pub exclusive_queues: Vec<Arc<QueueHandle>>,
    /// Channels opened so far: each opening gets the next number as its epoch.
    pub channel_epochs: u64,
    /// The queues of the publish being routed, kept to reuse its allocation.
    pub route_buf: Vec<Arc<QueueHandle>>,
    /// What the last publish left to wait for (a full mailbox, a delayed exchange,
    /// deduplication writes): finished before the next frame (see `finish_publish`).
    pub(crate) unfinished: Option<publish::Unfinished>,
    /// Publishes not yet sent to their queues (see `PendingPublishes`).
    pub publishes: PendingPublishes,
    /// Acks, nacks and rejects not yet sent to their queues (see `PendingSettles`).
    pub settles: PendingSettles,
    /// A basic.publish arrived since the connection last looked (resource alarms block
    /// connections that publish, as RabbitMQ does).
    pub published: bool,
    /// Nanoseconds of pacing owed by publishes since the connection last looked: queues
    /// whose consumers fall behind ask their publishers to slow down (see the broker's
    /// `queue::pace`); the connection waits this long before reading on.
    pub pace_debt_ns: u64,
    /// Channels to close for an ack timeout: (channel, epoch, timeout in ms). Events are
    /// handled where we cannot wait on queues, so closing waits for the connection loop.
    pub timed_out: Vec<(u16, u64, u64)>,
}

/// What [`Session::handle_frame_now`] did with a frame.
pub enum Now {
    /// Handled; what a publish left to wait for is finished by [`Session::finish_publish`].
    Done,
    /// A channel error: the channel is to be closed with [`Session::close_channel_with`].
    CloseChannel(u16, CloseReason),
    /// Not a frame handled without waiting: it goes to [`Session::handle_frame`].
    Later(Frame),
}

impl Session {
    /// Handles, without building a future, the frames a busy connection mostly gets: a
    /// publish with its content frames, and acks, nacks and rejects. Handing every frame
    /// to an `async fn` costs a copy of a future of several KiB per frame (the largest
    /// method handler sets its size). Everything else comes back as [`Now::Later`].
    pub fn handle_frame_now(&mut self, frame: Frame) -> AmqpResult<Now> {
        let (id, ids) = match &frame {
            Frame::Method {
                channel,
                method:
                    method @ (Method::BasicPublish(_)
                    | Method::BasicAck(_)
                    | Method::BasicNack(_)
                    | Method::BasicReject(_)),
            } => (*channel, (method.class_id(), method.method_id())),
            Frame::Header { channel, .. } | Frame::Body { channel, .. } => (*channel, (0, 0)),
            _ => return Ok(Now::Later(frame)),
        };
        let is_method = matches!(frame, Frame::Method { .. });
        // Only acks may overtake acks gathered earlier (see `handle_frame`).
        let is_settle = is_method && ids != PUBLISH_IDS;
        let open = self
            .channels
            .get(&id)
            .filter(|c| c.state != ChannelState::Closing && !(is_method && c.publish.is_some()));
        if open.is_none() || (!is_settle && !self.settles.is_empty()) {
            return Ok(Now::Later(frame));
        }
        let result = match frame {
            Frame::Method { method, .. } => match method {
                Method::BasicPublish(m) => self.basic_publish(id, m),
                Method::BasicAck(m) => {
                    self.settle(id, m.delivery_tag, m.multiple, SettleKind::Ack, ids)
                }
                Method::BasicReject(m) => {
                    self.settle(id, m.delivery_tag, false, requeue_kind(m.requeue), ids)
                }
                Method::BasicNack(m) => {
                    self.settle(id, m.delivery_tag, m.multiple, requeue_kind(m.requeue), ids)
                }
                other => {
                    return Ok(Now::Later(Frame::Method {
                        channel: id,
                        method: other,
                    }))
                }
            },
            Frame::Header { header, .. } => self.content_header(id, header),
            Frame::Body { payload, .. } => self.content_body(id, payload),
            other => return Ok(Now::Later(other)),
        };
        match result {
            Ok(()) => Ok(Now::Done),
            Err(AmqpError::Channel(reason)) => Ok(Now::CloseChannel(id, reason)),
            Err(e) => Err(with_method(e, ids)),
        }
    }

    /// Handles one frame on a non-zero channel. Channel errors are handled here (the
    /// channel is closed); a connection error is returned.
    pub async fn handle_frame(&mut self, frame: Frame) -> AmqpResult {
        // Acks wait to be sent in a batch; anything else first lets them reach the queues,
        // so a get, a consume or a close sees every ack the client sent before it.
        if !matches!(
            frame,
            Frame::Method {
                method: Method::BasicAck(_) | Method::BasicNack(_) | Method::BasicReject(_),
                ..
            }
        ) {
            self.flush_pending().await;
        }
        let frame = match self.handle_frame_now(frame)? {
            Now::Done => {
                self.finish_publish().await;
                return Ok(());
            }
            Now::CloseChannel(id, reason) => {
                self.close_channel_with(id, reason).await;
                return Ok(());
            }
            Now::Later(frame) => frame,
        };
        let (id, method_ids) = match &frame {
            Frame::Method { channel, method } => {
                (*channel, (method.class_id(), method.method_id()))
            }
            Frame::Header { channel, .. } | Frame::Body { channel, .. } => (*channel, (0, 0)),
            Frame::Heartbeat { .. } => return Ok(()),
        };
        let Some(channel) = self.channels.get(&id) else {
            return self
                .open_channel(id, frame)
                .map_err(|e| with_method(e, method_ids));
        };
        if channel.state == ChannelState::Closing {
            return self.while_closing(id, frame);
        }
        // Content frames on an open channel were taken by `handle_frame_now`.
        let Frame::Method { method, .. } = frame else {
            return Ok(());
        };
        match self.dispatch(id, method).await {
            Err(AmqpError::Channel(reason)) => {
                self.close_channel_with(id, reason).await;
                Ok(())
            }
            other => other.map_err(|e| with_method(e, method_ids)),
        }
    }

    fn open_channel(&mut self, id: u16, frame: Frame) -> AmqpResult {
        let Frame::Method {
            method: Method::ChannelOpen(_),
            ..
        } = frame
        else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {id}"),
                (0, 0),
            ));
        };
        if id > self.channel_max {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!(
                    "channel {id} is above the negotiated channel_max ({})",
                    self.channel_max
                ),
                (20, 10),
            ));
        }
        self.channel_epochs += 1;
        self.channels
            .insert(id, Channel::new(id, self.channel_epochs));
        self.outbox
            .method(id, &Method::ChannelOpenOk(ChannelOpenOk::default()));
        Ok(())
    }

    /// After we sent channel.close only close-ok (or the client's own close) matters.
    fn while_closing(&mut self, id: u16, frame: Frame) -> AmqpResult {
        match frame {
            Frame::Method {
                method: Method::ChannelCloseOk(_),
                ..
            } => {
                self.channels.remove(&id);
            }
            Frame::Method {
                method: Method::ChannelClose(_),
                ..
            } => {
                self.outbox
                    .method(id, &Method::ChannelCloseOk(ChannelCloseOk));
                self.channels.remove(&id);
            }
            _ => {}
        }
        Ok(())
    }

    /// A method on an open channel, other than those `handle_frame_now` takes.
    async fn dispatch(&mut self, id: u16, method: Method) -> AmqpResult {
        if self.channels[&id].publish.is_some() {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("expected content header for class 60, got non content header frame instead (channel {id})"),
                // RabbitMQ names the publish whose content was interrupted.
                PUBLISH_IDS,
            ));
        }
        self.method(id, method).await
    }

    async fn method(&mut self, id: u16, method: Method) -> AmqpResult {
        let ids = (method.class_id(), method.method_id());
        match method {
            Method::ChannelClose(_) => {
                self.release_channel(id).await;
                self.channels.remove(&id);
                self.outbox
                    .method(id, &Method::ChannelCloseOk(ChannelCloseOk));
                Ok(())
            }
            Method::ChannelCloseOk(_) => Ok(()),
            Method::ChannelFlow(flow) => {
                if !flow.active {
                    // RabbitMQ does not support pausing deliveries with channel.flow either.
                    return Err(AmqpError::connection(
                        code::NOT_IMPLEMENTED,
                        "active=false",
                        ids,
                    ));
                }
                self.outbox
                    .method(id, &Method::ChannelFlowOk(ChannelFlowOk { active: true }));
                Ok(())
            }
            Method::ChannelOpen(_) => Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("second 'channel.open' seen on channel {id}"),
                ids,
            )),
            Method::AccessRequest(_) => {
                self.outbox
                    .method(id, &Method::AccessRequestOk(Default::default()));
                Ok(())
            }
            Method::ExchangeDeclare(m) => self.exchange_declare(id, m),
            Method::ExchangeDelete(m) => self.exchange_delete(id, m),
            Method::ExchangeBind(m) => self.exchange_bind(id, m),
            Method::ExchangeUnbind(m) => self.exchange_unbind(id, m),
            Method::QueueDeclare(m) => self.queue_declare(id, m).await,
            Method::QueueBind(m) => self.queue_bind(id, m),
            Method::QueueUnbind(m) => self.queue_unbind(id, m),
            Method::QueuePurge(m) => self.queue_purge(id, m).await,
            Method::QueueDelete(m) => self.queue_delete(id, m).await,
            Method::BasicQos(m) => self.basic_qos(id, m),
            Method::BasicConsume(m) => self.basic_consume(id, m).await,
            Method::BasicCancel(m) => self.basic_cancel(id, m).await,
            Method::BasicGet(m) => self.basic_get(id, m).await,
            Method::BasicRecover(m) => self.basic_recover(id, m.requeue, true, ids),
            Method::BasicRecoverAsync(m) => self.basic_recover(id, m.requeue, false, ids),
            Method::ConfirmSelect(m) => self.confirm_select(id, m.nowait, ids),
            Method::TxSelect(_) => self.tx_select(id, ids),
            Method::TxCommit(_) => self.tx_commit(id, ids).await,
            Method::TxRollback(_) => self.tx_rollback(id, ids),
            other => Err(AmqpError::connection(
                code::COMMAND_INVALID,
                format!(
                    "method {} is not valid from a client on a channel",
                    other.name()
                ),
                ids,
            )),
        }
    }

    /// Sends channel.close for a channel error and forgets the channel's state; frames
    /// until close-ok are ignored.
    pub async fn close_channel_with(&mut self, id: u16, reason: CloseReason) {
        tracing::debug!(channel = id, code = reason.code, text = %reason.text, "closing channel");
        self.release_channel(id).await;
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.state = ChannelState::Closing;
        }
        let close = ChannelClose {
            reply_code: reason.code,
            reply_text: reason.reply_text().into(),
            class_id: reason.class_id,
            method_id: reason.method_id,
        };
        self.outbox.method(id, &Method::ChannelClose(close));
    }

    /// Gives back everything a closing channel holds: its consumers are cancelled and its
    /// unacked messages requeued, by the queues themselves (one ChannelClosed each).
    /// The caller removes the channel entry or marks it Closing.
    async fn release_channel(&mut self, id: u16) {
        // Acks first: the queues must not requeue what the client already acked.
        self.flush_pending().await;
        let client = self.client.id;
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        if let Some((_, address)) = channel.reply_consumer.take() {
            self.vhost.direct_replies.forget(&address);
        }
        let mut queues: Vec<Arc<QueueHandle>> = channel.consumers.drain().map(|(_, q)| q).collect();
        queues.extend(channel.unacked.drain(..).map(|u| u.queue));
        channel.publish = None;
        channel.confirms = None;
        channel.tx = None;
        dedup_queues(&mut queues);
        for queue in queues {
            // Awaited in order, not spawned: a ChannelClosed overtaken by a consume on a
            // reopened channel with the same number would cancel the new consumer.
            queue
                .send(QueueCmd::ChannelClosed {
                    client,
                    channel: id,
                })
                .await;
        }
    }

    /// Releases every channel and deletes this connection's exclusive queues.
    pub async fn close_all(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.release_channel(id).await;
        }
        self.channels.clear();
        for queue in self.exclusive_queues.drain(..) {
            let _ = queue.delete(false, false).await;
        }
    }

    pub fn channel(&mut self, id: u16) -> &mut Channel {
        self.channels
            .get_mut(&id)
            .expect("dispatch only reaches open channels")
    }

    /// Handles one event from a queue.
    pub fn handle_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Deliver(deliveries) => self.deliver(deliveries),
            ClientEvent::Confirm {
                channel,
                epoch,
                seq,
                ack,
            } => {
                if let Some(confirms) = self
                    .channels
                    .get_mut(&channel)
                    .filter(|c| c.epoch == epoch)
                    .and_then(|c| c.confirms.as_mut())
                {
                    confirms.queue_settled(seq, ack);
                }
            }
            ClientEvent::DirectReply {
                channel,
                epoch,
                consumer_tag,
                message,
            } => self.deliver_reply(channel, epoch, consumer_tag, message),
            ClientEvent::ConsumerCancelled {
                channel,
                epoch,
                consumer_tag,
            } => self.consumer_cancelled(channel, epoch, consumer_tag),
            ClientEvent::AckTimedOut {
                channel,
                epoch,
                timeout_ms,
            } => self.ack_timed_out(channel, epoch, timeout_ms),
        }
    }

    /// Sends the confirms that events settled since the last call, batched per channel.
    pub fn flush_confirms(&mut self) {
        for channel in self.channels.values_mut() {
            let Some(confirms) = channel.confirms.as_mut() else {
                continue;
            };
            if !confirms.has_settled() {
                continue;
            }
            for (delivery_tag, multiple, ack) in confirms.drain() {
                let method = if ack {
                    Method::BasicAck(ferrymq_wire::BasicAck {
                        delivery_tag,
                        multiple,
                    })
                } else {
                    Method::BasicNack(ferrymq_wire::BasicNack {
                        delivery_tag,
                        multiple,
                        requeue: false,
                    })
                };
                self.outbox.method(channel.id, &method);
            }
        }
    }
}

fn requeue_kind(requeue: bool) -> SettleKind {
    if requeue {
        SettleKind::Requeue
    } else {
        SettleKind::Discard
    }
}

fn with_method(error: AmqpError, ids: (u16, u16)) -> AmqpError {
    match error {
        AmqpError::Connection(mut r) if r.class_id == 0 && r.method_id == 0 => {
            (r.class_id, r.method_id) = ids;
            AmqpError::Connection(r)
        }
        other => other,
    }
}

pub(crate) fn dedup_queues(queues: &mut Vec<Arc<QueueHandle>>) {
    queues.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
    queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
}
