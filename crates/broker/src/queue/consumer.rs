//! A consumer as its queue sees it: where deliveries go and how much credit is left.

use ferrymq_wire::ShortStr;

use super::command::ConsumerSpec;
use crate::client::ClientId;

#[derive(Debug)]
pub struct Consumer {
    /// Queue-local id, so unacked messages can find their consumer after renames of nothing:
    /// tags are only unique per channel.
    pub key: u64,
    pub spec: ConsumerSpec,
    /// Deliveries to this consumer not yet acked, rejected or requeued.
    pub unacked: u32,
}

impl Consumer {
    pub fn is_on(&self, client: ClientId, channel: u16) -> bool {
        self.spec.client.id == client && self.spec.channel == channel
    }

    pub fn is(&self, client: ClientId, channel: u16, tag: &ShortStr) -> bool {
        self.is_on(client, channel) && self.spec.tag == *tag
    }

    /// Takes credit for one delivery, or says why not by returning false. Order matters:
    /// the shared channel credit is taken last, so a refusal never leaks a unit of it.
    pub fn try_reserve(&mut self) -> bool {
        if self.spec.client.is_congested() {
            return false;
        }
        if self.spec.no_ack {
            // RabbitMQ ignores prefetch for no-ack consumers; the client window bounds them.
            return true;
        }
        let limit = self.spec.prefetch_count;
        if limit != 0 && self.unacked >= limit {
            return false;
        }
        self.spec.channel_credit.try_acquire()
    }

    /// Undoes a `try_reserve` whose delivery did not happen.
    pub fn give_back_credit(&mut self) {
        if !self.spec.no_ack {
            self.spec.channel_credit.release(1);
        }
    }
}
