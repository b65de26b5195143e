//! exchange.* and queue.* methods: topology changes, answered by the broker core.

use ferrymq_broker::exchange::{Destination, ExchangeConfig, ExchangeType};
use ferrymq_broker::queue::QueueConfig;
use ferrymq_wire::{
    ExchangeBind, ExchangeBindOk, ExchangeDeclare, ExchangeDeclareOk, ExchangeDelete,
    ExchangeDeleteOk, ExchangeUnbind, ExchangeUnbindOk, Method, QueueBind, QueueBindOk,
    QueueDeclare, QueueDeclareOk, QueueDelete, QueueDeleteOk, QueuePurge, QueuePurgeOk,
    QueueUnbind, QueueUnbindOk, ShortStr,
};

use super::Session;
use crate::amqp::error::{AmqpError, AmqpResult};

impl Session {
    pub(super) fn exchange_declare(&mut self, id: u16, m: ExchangeDeclare) -> AmqpResult {
        let ids = (ExchangeDeclare::CLASS_ID, ExchangeDeclare::METHOD_ID);
        let fail = |e| AmqpError::from_broker(e, ids);
        let config = if m.passive {
            // Passive declares ignore every other field (RabbitMQ).
            ExchangeConfig {
                kind: ExchangeType::Direct,
                durable: false,
                auto_delete: false,
                internal: false,
                arguments: Default::default(),
            }
        } else {
            let kind = ExchangeType::parse(&m.kind).map_err(fail)?;
            ExchangeConfig {
                kind,
                durable: m.durable,
                auto_delete: m.auto_delete,
                internal: m.internal,
                arguments: m.arguments,
            }
        };
        self.vhost
            .declare_exchange(&m.exchange, config, m.passive)
            .map_err(fail)?;
        if !m.nowait {
            self.outbox
                .method(id, &Method::ExchangeDeclareOk(ExchangeDeclareOk));
        }
        Ok(())
    }

    pub(super) fn exchange_delete(&mut self, id: u16, m: ExchangeDelete) -> AmqpResult {
        let ids = (ExchangeDelete::CLASS_ID, ExchangeDelete::METHOD_ID);
        self.vhost
            .delete_exchange(&m.exchange, m.if_unused)
            .map_err(|e| AmqpError::from_broker(e, ids))?;
        if !m.nowait {
            self.outbox
                .method(id, &Method::ExchangeDeleteOk(ExchangeDeleteOk));
        }
        Ok(())
    }

    pub(super) fn exchange_bind(&mut self, id: u16, m: ExchangeBind) -> AmqpResult {
        let ids = (ExchangeBind::CLASS_ID, ExchangeBind::METHOD_ID);
        let fail = |e| AmqpError::from_broker(e, ids);
        let destination = self.vhost.exchange_or_404(&m.destination).map_err(fail)?;
        let source = self.vhost.exchange_or_404(&m.source).map_err(fail)?;
        self.vhost
            .bind(
                &source,
                Destination::Exchange(destination),
                m.routing_key,
                m.arguments,
            )
            .map_err(fail)?;
        if !m.nowait {
            self.outbox
                .method(id, &Method::ExchangeBindOk(ExchangeBindOk));
        }
        Ok(())
    }

    pub(super) fn exchange_unbind(&mut self, id: u16, m: ExchangeUnbind) -> AmqpResult {
        let ids = (ExchangeUnbind::CLASS_ID, ExchangeUnbind::METHOD_ID);
        let fail = |e| AmqpError::from_broker(e, ids);
        let destination = self.vhost.exchange_or_404(&m.destination).map_err(fail)?;
        let source = self.vhost.exchange_or_404(&m.source).map_err(fail)?;
        self.vhost
            .unbind(
                &source,
                &Destination::Exchange(destination),
                &m.routing_key,
                &m.arguments,
            )
            .map_err(fail)?;
        if !m.nowait {
            self.outbox
                .method(id, &Method::ExchangeUnbindOk(ExchangeUnbindOk));
        }
        Ok(())
    }

    pub(super) async fn queue_declare(&mut self, id: u16, m: QueueDeclare) -> AmqpResult {
        let ids = (QueueDeclare::CLASS_ID, QueueDeclare::METHOD_ID);
        if m.passive && self.is_direct_reply_address(&m.queue) {
            // The pseudo-queue exists for passive declares, with nothing in it (RabbitMQ).
            if !m.nowait {
                let ok = QueueDeclareOk {
                    queue: m.queue,
                    message_count: 0,
                    consumer_count: 0,
                };
                self.outbox.method(id, &Method::QueueDeclareOk(ok));
            }
            return Ok(());
        }
        let config = QueueConfig {
            // RabbitMQ: an exclusive queue is never durable, whatever the flag said.
            durable: m.durable && !m.exclusive,
            exclusive_owner: m.exclusive.then_some(self.client.id),
            auto_delete: m.auto_delete,
            arguments: m.arguments,
        };
        let declared = self
            .vhost
            .declare_queue(&m.queue, config, m.passive, self.client.id)
            .await
            .map_err(|e| AmqpError::from_broker(e, ids))?;
        if declared.created && declared.queue.is_exclusive() {
            self.exclusive_queues.push(declared.queue.clone());
        }
        let name = declared.queue.name.clone();
        self.channel(id).last_queue = Some(name.clone());
        if !m.nowait {
            let ok = QueueDeclareOk {
                queue: name,
                message_count: declared.counts.messages,
                consumer_count: declared.counts.consumers,
            };
            self.outbox.method(id, &Method::QueueDeclareOk(ok));
        }
        Ok(())
    }

    pub(super) fn queue_bind(&mut self, id: u16, m: QueueBind) -> AmqpResult {
        let ids = (QueueBind::CLASS_ID, QueueBind::METHOD_ID);
        let fail = |e| AmqpError::from_broker(e, ids);
        let (name, routing_key) = self.binding_shortcuts(id, &m.queue, m.routing_key, ids)?;
        let queue = self.vhost.queue_or_404(&name).map_err(fail)?;
        queue.check_access(self.client.id).map_err(fail)?;
        let source = self.vhost.exchange_or_404(&m.exchange).map_err(fail)?;
        self.vhost
            .bind(&source, Destination::Queue(queue), routing_key, m.arguments)
            .map_err(fail)?;
        if !m.nowait {
            self.outbox.method(id, &Method::QueueBindOk(QueueBindOk));
        }
        Ok(())
    }

    pub(super) fn queue_unbind(&mut self, id: u16, m: QueueUnbind) -> AmqpResult {
        let ids = (QueueUnbind::CLASS_ID, QueueUnbind::METHOD_ID);
        let fail = |e| AmqpError::from_broker(e, ids);
        let (name, routing_key) = self.binding_shortcuts(id, &m.queue, m.routing_key, ids)?;
        let queue = self.vhost.queue_or_404(&name).map_err(fail)?;
        queue.check_access(self.client.id).map_err(fail)?;
        let source = self.vhost.exchange_or_404(&m.exchange).map_err(fail)?;
        self.vhost
            .unbind(
                &source,
                &Destination::Queue(queue),
                &routing_key,
                &m.arguments,
            )
            .map_err(fail)?;
        self.outbox
            .method(id, &Method::QueueUnbindOk(QueueUnbindOk));
        Ok(())
    }

    /// Expands the "" shortcuts of queue.bind and queue.unbind alike: "" names the channel's
    /// last declared queue, and with both the queue and the key empty the key is that queue's
    /// name (rabbit_channel:expand_shortcuts treats both methods the same way; expanding only
    /// on bind made the matching unbind miss its binding).
    fn binding_shortcuts(
        &mut self,
        id: u16,
        queue: &ShortStr,
        routing_key: ShortStr,
        ids: (u16, u16),
    ) -> AmqpResult<(ShortStr, ShortStr)> {
        let name = self.channel(id).queue_name(queue, ids)?;
        let routing_key = if queue.is_empty() && routing_key.is_empty() {
            name.clone()
        } else {
            routing_key
        };
        Ok((name, routing_key))
    }

    pub(super) async fn queue_purge(&mut self, id: u16, m: QueuePurge) -> AmqpResult {
        let ids = (QueuePurge::CLASS_ID, QueuePurge::METHOD_ID);
        let fail = |e| AmqpError::from_broker(e, ids);
        let name = self.channel(id).queue_name(&m.queue, ids)?;
        let queue = self.vhost.queue_or_404(&name).map_err(fail)?;
        queue.check_access(self.client.id).map_err(fail)?;
        let message_count = queue.purge().await.map_err(fail)?;
        if !m.nowait {
            self.outbox
                .method(id, &Method::QueuePurgeOk(QueuePurgeOk { message_count }));
        }
        Ok(())
    }

    pub(super) async fn queue_delete(&mut self, id: u16, m: QueueDelete) -> AmqpResult {
        let ids = (QueueDelete::CLASS_ID, QueueDelete::METHOD_ID);
        let name = self.channel(id).queue_name(&m.queue, ids)?;
        let message_count = self
            .vhost
            .delete_queue(&name, m.if_unused, m.if_empty, self.client.id)
            .await
            .map_err(|e| AmqpError::from_broker(e, ids))?;
        self.exclusive_queues.retain(|q| !q.is_deleted());
        if !m.nowait {
            self.outbox
                .method(id, &Method::QueueDeleteOk(QueueDeleteOk { message_count }));
        }
        Ok(())
    }

    fn is_direct_reply_address(&self, name: &str) -> bool {
        name == ferrymq_broker::direct_reply::REPLY_TO
            || self.vhost.direct_replies.is_registered(name)
    }
}
