//! basic.qos, consume, cancel, get, ack/nack/reject and recover, and deliveries from queues.

use std::sync::Arc;

use ferrymq_broker::client::Deliveries;
use ferrymq_broker::direct_reply::{ReplyTarget, REPLY_TO};
use ferrymq_broker::queue::{consumer_args, AckTimeout, ConsumerSpec, QueueCmd, QueueHandle};
use ferrymq_broker::Message;
use ferrymq_wire::{
    BasicCancel, BasicCancelOk, BasicConsume, BasicConsumeOk, BasicDeliver, BasicGet,
    BasicGetEmpty, BasicGetOk, BasicQos, BasicQosOk, BasicRecoverOk, Method, ShortStr,
};

use super::{dedup_queues, Session};
use crate::amqp::channel::{ChannelState, SettleKind, Unacked};
use crate::amqp::error::{code, AmqpError, AmqpResult, CloseReason};

impl Session {
    pub(super) fn basic_qos(&mut self, id: u16, m: BasicQos) -> AmqpResult {
        if m.prefetch_size != 0 {
            // RabbitMQ does not implement byte-based prefetch either.
            return Err(AmqpError::connection(
                code::NOT_IMPLEMENTED,
                format!("prefetch_size!=0 ({})", m.prefetch_size),
                (BasicQos::CLASS_ID, BasicQos::METHOD_ID),
            ));
        }
        let channel = self.channel(id);
        if m.global {
            channel.credit.set_limit(u32::from(m.prefetch_count));
            // A new channel limit applies at once (rabbit_limiter:limit_prefetch): queues
            // parked on the old, lower limit must try again.
            self.try_wake_channel_queues(id);
        } else {
            channel.consumer_prefetch = u32::from(m.prefetch_count);
        }
        self.outbox.method(id, &Method::BasicQosOk(BasicQosOk));
        Ok(())
    }

    pub(super) async fn basic_consume(&mut self, id: u16, m: BasicConsume) -> AmqpResult {
        let ids = (BasicConsume::CLASS_ID, BasicConsume::METHOD_ID);
        let fail = |e| AmqpError::from_broker(e, ids);
        if m.queue.as_str() == REPLY_TO {
            return self.consume_replies(id, m);
        }
        let channel = self.channel(id);
        let name = channel.queue_name(&m.queue, ids)?;
        let tag = if m.consumer_tag.is_empty() {
            generate_consumer_tag()
        } else {
            // Kept as long as the consumer lives: not as a slice of the read buffer.
            m.consumer_tag.detached()
        };
        if channel.consumers.contains_key(&tag) {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
                ids,
            ));
        }
        let (prefetch_count, channel_credit, epoch) = (
            channel.consumer_prefetch,
            Arc::clone(&channel.credit),
            channel.epoch,
        );
        let queue = self.vhost.queue_or_404(&name).map_err(fail)?;
        queue.check_access(self.client.id).map_err(fail)?;
        // No-ack deliveries are settled on sending: nothing to time.
        let default_ms = self.server.config.consumer_timeout_ms;
        let ack_timeout = if m.no_ack {
            None
        } else {
            consumer_args::ack_timeout(Some(&m.arguments), &queue.arguments, default_ms)
        };
        let spec = ConsumerSpec {
            tag: tag.clone(),
            client: Arc::clone(&self.client),
            channel: id,
            epoch,
            no_ack: m.no_ack,
            prefetch_count,
            channel_credit,
            exclusive: m.exclusive,
            arguments: m.arguments.detached(),
            ack_timeout,
        };
        // Registered before the queue can deliver, so no delivery finds an unknown tag.
        self.channel(id)
            .consumers
            .insert(tag.clone(), Arc::clone(&queue));
        if let Err(e) = queue.consume(spec).await {
            self.channel(id).consumers.remove(&tag);
            return Err(fail(e));
        }
        if !m.nowait {
            self.outbox.method(
                id,
                &Method::BasicConsumeOk(BasicConsumeOk { consumer_tag: tag }),
            );
        }
        Ok(())
    }

    /// basic.consume from `amq.rabbitmq.reply-to`: no queue, just an address for replies.
    fn consume_replies(&mut self, id: u16, m: BasicConsume) -> AmqpResult {
        let ids = (BasicConsume::CLASS_ID, BasicConsume::METHOD_ID);
        if !m.no_ack {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "reply consumer cannot acknowledge",
                ids,
            ));
        }
        let tag = if m.consumer_tag.is_empty() {
            generate_consumer_tag()
        } else {
            // Kept as long as the consumer lives: not as a slice of the read buffer.
            m.consumer_tag.detached()
        };
        let channel = self.channel(id);
        if channel.reply_consumer.is_some() {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "reply consumer already set",
                ids,
            ));
        }
        let epoch = channel.epoch;
        let target = ReplyTarget {
            client: Arc::clone(&self.client),
            channel: id,
            epoch,
            consumer_tag: tag.clone(),
        };
        let address = self.vhost.direct_replies.register(target);
        self.channel(id).reply_consumer = Some((tag.clone(), address));
        if !m.nowait {
            self.outbox.method(
                id,
                &Method::BasicConsumeOk(BasicConsumeOk { consumer_tag: tag }),
            );
        }
        Ok(())
    }

    /// A reply for this channel's direct reply-to consumer.
    pub(super) fn deliver_reply(
        &mut self,
        id: u16,
        epoch: u64,
        consumer_tag: ShortStr,
        message: Arc<Message>,
    ) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        let current = channel
            .reply_consumer
            .as_ref()
            .is_some_and(|(tag, _)| *tag == consumer_tag);
        if channel.epoch != epoch || channel.state != ChannelState::Open || !current {
            return;
        }
        let deliver = BasicDeliver {
            consumer_tag,
            delivery_tag: channel.next_delivery_tag(),
            redelivered: false,
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
        };
        self.outbox.method(id, &Method::BasicDeliver(deliver));
        self.outbox.content(id, &message.properties, &message.body);
    }

    pub(super) async fn basic_cancel(&mut self, id: u16, m: BasicCancel) -> AmqpResult {
        let channel = self.channel(id);
        if channel
            .reply_consumer
            .as_ref()
            .is_some_and(|(tag, _)| *tag == m.consumer_tag)
        {
            if let Some((_, address)) = channel.reply_consumer.take() {
                self.vhost.direct_replies.forget(&address);
            }
        }
        if let Some(queue) = self.channel(id).consumers.get(&m.consumer_tag).cloned() {
            queue
                .cancel(self.client.id, id, m.consumer_tag.clone())
                .await;
            // Deliveries the queue sent before it took the cancel are already in our
            // mailbox: hand them out before cancel-ok, after which none may follow.
            while let Ok(event) = self.events.try_recv() {
                self.handle_event(event);
            }
            self.channel(id).consumers.remove(&m.consumer_tag);
        }
        if !m.nowait {
            self.outbox.method(
                id,
                &Method::BasicCancelOk(BasicCancelOk {
                    consumer_tag: m.consumer_tag,
                }),
            );
        }
        Ok(())
    }

    /// A run of deliveries from a queue to one of this connection's consumers; their window
    /// is released once, after they are encoded.
    pub(super) fn deliver(&mut self, deliveries: Deliveries) {
        let (mut body_bytes, count) = (0, deliveries.messages.len());
        for delivery in &deliveries.messages {
            body_bytes += delivery.message.body_size();
        }
        let known = self.channels.get(&deliveries.channel).is_some_and(|c| {
            c.state == ChannelState::Open
                && c.epoch == deliveries.epoch
                && c.consumers
                    .get(&deliveries.consumer_tag)
                    .is_some_and(|q| Arc::ptr_eq(q, &deliveries.queue))
        });
        // Otherwise the channel closed (or was reopened) meanwhile: its queues already took
        // back everything it held, these messages included.
        if known {
            self.write_deliveries(deliveries);
        }
        if self.client.release(body_bytes, count) {
            self.wake_all_queues();
        }
    }

    fn write_deliveries(&mut self, deliveries: Deliveries) {
        let Deliveries {
            channel: id,
            consumer_tag,
            queue,
            no_ack,
            messages,
            ..
        } = deliveries;
        let channel = self.channels.get_mut(&id).expect("checked by deliver");
        for delivery in messages {
            let delivery_tag = channel.next_delivery_tag();
            if !no_ack {
                channel.unacked.push_back(Unacked {
                    delivery_tag,
                    queue: Arc::clone(&queue),
                    msg_id: delivery.msg_id,
                    from_consumer: true,
                    in_tx: None,
                });
            }
            let message = &delivery.message;
            self.outbox.deliver(
                id,
                &consumer_tag,
                delivery_tag,
                delivery.redelivered,
                message,
            );
            self.outbox.content(id, &message.properties, &message.body);
        }
    }

    /// A queue reports a delivery on this channel unacked past its timeout: the channel is
    /// closed (by [`Self::close_timed_out_channels`], which may wait on queues).
    pub(super) fn ack_timed_out(&mut self, id: u16, epoch: u64, timeout_ms: u64) {
        let open = self
            .channels
            .get(&id)
            .is_some_and(|c| c.epoch == epoch && c.state == ChannelState::Open);
        if open && !self.timed_out.iter().any(|&(channel, ..)| channel == id) {
            self.timed_out.push((id, epoch, timeout_ms));
        }
    }

    /// Closes the channels whose deliveries timed out, with RabbitMQ's 406 and text; their
    /// unacked messages go back to their queues.
    pub async fn close_timed_out_channels(&mut self) {
        for (id, epoch, timeout_ms) in std::mem::take(&mut self.timed_out) {
            // Frames handled since the event may have closed the channel, or closed it and
            // opened another with the same number.
            if self
                .channels
                .get(&id)
                .is_none_or(|c| c.epoch != epoch || c.state != ChannelState::Open)
            {
                continue;
            }
            tracing::warn!(
                channel = id,
                timeout_ms,
                "delivery acknowledgement timed out, closing channel"
            );
            let text = format!(
                "delivery acknowledgement on channel {id} timed out. Timeout value used: \
                 {timeout_ms} ms. This timeout value can be configured, see consumers doc \
                 guide to learn more"
            );
            let reason = CloseReason {
                code: code::PRECONDITION_FAILED,
                text,
                class_id: 0,
                method_id: 0,
            };
            self.close_channel_with(id, reason).await;
        }
    }

    /// The broker cancelled a consumer (its queue was deleted).
    pub(super) fn consumer_cancelled(&mut self, id: u16, epoch: u64, consumer_tag: ShortStr) {
        let Some(channel) = self.channels.get_mut(&id).filter(|c| c.epoch == epoch) else {
            return;
        };
        if channel.consumers.remove(&consumer_tag).is_none() || channel.state != ChannelState::Open
        {
            return;
        }
        if self.capabilities.consumer_cancel_notify {
            self.outbox.method(
                id,
                &Method::BasicCancel(BasicCancel {
                    consumer_tag,
                    nowait: true,
                }),
            );
        }
    }

    pub(super) async fn basic_get(&mut self, id: u16, m: BasicGet) -> AmqpResult {
        let ids = (BasicGet::CLASS_ID, BasicGet::METHOD_ID);
        let fail = |e| AmqpError::from_broker(e, ids);
        let name = self.channel(id).queue_name(&m.queue, ids)?;
        let queue = self.vhost.queue_or_404(&name).map_err(fail)?;
        queue.check_access(self.client.id).map_err(fail)?;
        // RabbitMQ times out basic.get deliveries too (the channel watches every unacked one).
        let default_ms = self.server.config.consumer_timeout_ms;
        let after = if m.no_ack {
            None
        } else {
            consumer_args::ack_timeout(None, &queue.arguments, default_ms)
        };
        let ack_timeout = after.map(|after| AckTimeout {
            client: Arc::clone(&self.client),
            channel: id,
            epoch: self.channel(id).epoch,
            after,
        });
        let got = queue.get(&self.client, id, m.no_ack, ack_timeout);
        let Some(got) = got.await.map_err(fail)? else {
            self.outbox
                .method(id, &Method::BasicGetEmpty(BasicGetEmpty::default()));
            return Ok(());
        };
        let channel = self.channel(id);
        let delivery_tag = channel.next_delivery_tag();
        if !m.no_ack {
            channel.unacked.push_back(Unacked {
                delivery_tag,
                queue,
                msg_id: got.msg_id,
                from_consumer: false,
                in_tx: None,
            });
        }
        let ok = BasicGetOk {
            delivery_tag,
            redelivered: got.redelivered,
            exchange: got.message.exchange.clone(),
            routing_key: got.message.routing_key.clone(),
            message_count: got.message_count,
        };
        self.outbox.method(id, &Method::BasicGetOk(ok));
        self.outbox
            .content(id, &got.message.properties, &got.message.body);
        Ok(())
    }

    /// basic.ack / nack / reject: in a transaction they wait for tx.commit.
    pub(super) fn settle(
        &mut self,
        id: u16,
        tag: u64,
        multiple: bool,
        kind: SettleKind,
        ids: (u16, u16),
    ) -> AmqpResult {
        let channel = self.channel(id);
        if channel.tx.is_some() {
            // Checked and collected now, as RabbitMQ does: a bad tag fails the ack, not
            // the commit, and a second ack of the same tag is unknown.
            return channel.mark_unacked(tag, multiple, kind, ids);
        }
        self.settle_now(id, tag, multiple, kind, ids)
    }

    pub(super) fn settle_now(
        &mut self,
        id: u16,
        tag: u64,
        multiple: bool,
        kind: SettleKind,
        ids: (u16, u16),
    ) -> AmqpResult {
        let taken = self.channel(id).take_unacked(tag, multiple, ids)?;
        self.send_settles(id, taken, kind);
        Ok(())
    }

    /// basic.recover(requeue=true): everything unacked goes back to its queue.
    pub(super) fn basic_recover(
        &mut self,
        id: u16,
        requeue: bool,
        reply: bool,
        ids: (u16, u16),
    ) -> AmqpResult {
        if !requeue {
            // As RabbitMQ: redelivery to the same consumer is not supported.
            return Err(AmqpError::connection(
                code::NOT_IMPLEMENTED,
                "requeue=false",
                ids,
            ));
        }
        // Deliveries acked in an open transaction are settled as far as recover goes.
        let taken: Vec<Unacked> = self.channel(id).take_unsettled();
        self.send_settles(id, taken, SettleKind::Requeue);
        if reply {
            self.outbox
                .method(id, &Method::BasicRecoverOk(BasicRecoverOk));
        }
        Ok(())
    }

    /// Channel prefetch credit came back: its consumers' queues may deliver again.
    pub(super) async fn wake_channel_queues(&mut self, id: u16) {
        let mut queues: Vec<Arc<QueueHandle>> =
            self.channel(id).consumers.values().cloned().collect();
        dedup_queues(&mut queues);
        for queue in queues {
            queue.send(QueueCmd::Wake).await;
        }
    }

    /// Like [`Self::wake_channel_queues`] without waiting for mailbox room: Wake is
    /// idempotent and a full mailbox dispatches when drained anyway.
    fn try_wake_channel_queues(&mut self, id: u16) {
        let mut queues: Vec<Arc<QueueHandle>> =
            self.channel(id).consumers.values().cloned().collect();
        dedup_queues(&mut queues);
        for queue in queues {
            let _ = queue.try_send(QueueCmd::Wake);
        }
    }

    /// The connection's delivery window reopened: every queue feeding it may deliver again.
    fn wake_all_queues(&mut self) {
        let mut queues: Vec<Arc<QueueHandle>> = self
            .channels
            .values()
            .flat_map(|c| c.consumers.values().cloned())
            .collect();
        dedup_queues(&mut queues);
        for queue in queues {
            // From event handling we cannot wait; Wake is idempotent, so a full mailbox
            // (which will dispatch anyway when drained) can safely miss one.
            let _ = queue.try_send(QueueCmd::Wake);
        }
    }
}

/// `amq.ctag-` plus 128 random bits, like RabbitMQ's server-generated tags.
fn generate_consumer_tag() -> ShortStr {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    ShortStr::from(format!(
        "amq.ctag-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}
