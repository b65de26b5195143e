//! A consumer as its queue sees it: where deliveries go and how much credit is left; and
//! which consumer a queue picks for the next delivery.
//!
//! Selection follows RabbitMQ (`rabbit_queue_consumers`): consumers are kept ordered by
//! `x-priority`, highest first, in registration order within a priority. A delivery goes to
//! the first priority level with a consumer that has credit, round-robin inside the level, so
//! lower priorities only get messages while every higher consumer is blocked (prefetch,
//! channel prefetch or a full client window).
//!
//! With `x-single-active-consumer`, `consumers[0]` is the active consumer and the only one
//! served, even while it has no credit; the others wait, ordered as above. When it goes, the
//! new first one (highest priority, earliest registered) takes over, as a classic queue of
//! RabbitMQ picks its next active consumer.

use ferrymq_wire::ShortStr;

use super::command::ConsumerSpec;
use super::consumer_timeout::{AckDeadlines, AckTimeout};
use crate::client::ClientId;

/// Below this prefetch a consumer is refilled at once: a quarter of it would be a batch
/// of one or two.
pub const REFILL_PREFETCH_MIN: u32 = 8;

#[derive(Debug)]
pub struct Consumer {
    /// Queue-local id, so unacked messages can find their consumer after renames of nothing:
    /// tags are only unique per channel.
    pub key: u64,
    pub spec: ConsumerSpec,
    /// Deliveries to this consumer not yet acked, rejected or requeued.
    pub unacked: u32,
    /// `x-priority`: higher is served first.
    pub priority: i64,
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

    /// Whether it acks with a prefetch of at least [`REFILL_PREFETCH_MIN`] and holds more
    /// than three quarters of it unacked: topping it up can wait for a batch (see the
    /// queue's `holds_for_refill`).
    pub fn holds_most_of_its_prefetch(&self) -> bool {
        let limit = self.spec.prefetch_count;
        !self.spec.no_ack
            && limit >= REFILL_PREFETCH_MIN
            && self.unacked > 0
            && limit.saturating_sub(self.unacked) < limit / 4
    }

    /// Where this consumer's deliveries report an ack timeout, if they have one.
    pub fn ack_timeout(&self) -> Option<AckTimeout> {
        let spec = &self.spec;
        spec.ack_timeout.map(|after| AckTimeout {
            client: std::sync::Arc::clone(&spec.client),
            channel: spec.channel,
            epoch: spec.epoch,
            after,
        })
    }

    /// Undoes a `try_reserve` whose delivery did not happen.
    pub fn give_back_credit(&mut self) {
        if !self.spec.no_ack {
            self.spec.channel_credit.release(1);
        }
    }
}

/// A queue's consumer-feature state besides its consumer list.
#[derive(Debug, Default)]
pub struct ConsumerRules {
    /// `x-single-active-consumer = true`: only `consumers[0]` is served.
    pub single_active: bool,
    /// Ack deadlines of deliveries made with a timeout.
    pub deadlines: AckDeadlines,
}

/// Where a new consumer of `priority` goes: after every consumer of at least its priority
/// (registration order within a level). With a single active consumer, never before the
/// active one at index 0, which stays active until it leaves.
pub fn insert_position(consumers: &[Consumer], priority: i64, single_active: bool) -> usize {
    let skip = usize::from(single_active && !consumers.is_empty());
    skip + consumers[skip..].partition_point(|c| c.priority >= priority)
}

/// The next consumer to deliver to, taking its credit: the single active consumer only, or
/// round-robin (from `cursor`) inside the highest priority level that has a consumer with
/// credit. Returns its index and moves `cursor` past it.
pub fn next_with_credit(
    consumers: &mut [Consumer],
    cursor: &mut usize,
    single_active: bool,
) -> Option<usize> {
    if single_active {
        // RabbitMQ does not pass over a busy active consumer: messages wait for it.
        return consumers.first_mut()?.try_reserve().then_some(0);
    }
    let mut start = 0;
    while start < consumers.len() {
        let priority = consumers[start].priority;
        let end = start + consumers[start..].partition_point(|c| c.priority == priority);
        let len = end - start;
        // The cursor only means something inside the level it was left in.
        let first = if (start..end).contains(cursor) {
            *cursor - start
        } else {
            0
        };
        for step in 0..len {
            let index = start + (first + step) % len;
            if consumers[index].try_reserve() {
                *cursor = index + 1;
                return Some(index);
            }
        }
        start = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferrymq_wire::FieldTable;

    use super::*;
    use crate::client::{ChannelCredit, ClientHandle};

    /// A consumer with `priority` and per-consumer prefetch `prefetch` (0 = unlimited).
    fn consumer(key: u64, priority: i64, prefetch: u32) -> Consumer {
        let (client, _events) = ClientHandle::new(key, usize::MAX);
        Consumer {
            key,
            spec: ConsumerSpec {
                tag: ShortStr::from(format!("c{key}")),
                client,
                channel: 1,
                epoch: 1,
                no_ack: false,
                prefetch_count: prefetch,
                channel_credit: Arc::new(ChannelCredit::default()),
                exclusive: false,
                arguments: FieldTable::new(),
                ack_timeout: None,
            },
            unacked: 0,
            priority,
        }
    }

    #[test]
    fn only_an_acking_consumer_with_most_of_a_real_prefetch_out_can_wait_for_a_batch() {
        let with = |prefetch: u32, unacked: u32, no_ack: bool| {
            let mut c = consumer(1, 0, prefetch);
            c.unacked = unacked;
            c.spec.no_ack = no_ack;
            c.holds_most_of_its_prefetch()
        };
        // Prefetch 1000: waits while fewer than 250 are free.
        assert!(with(1000, 1000, false));
        assert!(with(1000, 751, false));
        assert!(!with(1000, 750, false));
        assert!(!with(1000, 0, false));
        // No prefetch, a tiny one, or no acks: always served at once.
        assert!(!with(0, 5000, false));
        assert!(!with(
            REFILL_PREFETCH_MIN - 1,
            REFILL_PREFETCH_MIN - 1,
            false
        ));
        assert!(with(REFILL_PREFETCH_MIN, REFILL_PREFETCH_MIN, false));
        assert!(!with(1000, 1000, true));
    }

    /// Registers consumers (key, priority, prefetch) in order, as `add_consumer` does.
    fn registered(specs: &[(u64, i64, u32)], single_active: bool) -> Vec<Consumer> {
        let mut consumers = Vec::new();
        for &(key, priority, prefetch) in specs {
            let at = insert_position(&consumers, priority, single_active);
            consumers.insert(at, consumer(key, priority, prefetch));
        }
        consumers
    }

    /// Which consumer keys `n` deliveries go to (each delivery counts against prefetch).
    fn serve(consumers: &mut [Consumer], single_active: bool, n: usize) -> Vec<Option<u64>> {
        let mut cursor = 0;
        (0..n)
            .map(|_| {
                let index = next_with_credit(consumers, &mut cursor, single_active)?;
                consumers[index].unacked += 1;
                Some(consumers[index].key)
            })
            .collect()
    }

    #[test]
    fn consumers_are_ordered_by_priority_then_registration() {
        let consumers = registered(
            &[(0, 0, 0), (1, 5, 0), (2, -1, 0), (3, 5, 0), (4, 0, 0)],
            false,
        );
        let keys: Vec<u64> = consumers.iter().map(|c| c.key).collect();
        assert_eq!(keys, [1, 3, 0, 4, 2]);
    }

    #[test]
    fn the_highest_level_with_credit_is_served_round_robin_before_lower_ones() {
        let mut consumers = registered(&[(0, 0, 0), (1, 5, 2), (2, 5, 1)], false);
        let served = serve(&mut consumers, false, 5);
        // 1 and 2 alternate until both are at their prefetch, then 0 takes the rest.
        assert_eq!(served, [Some(1), Some(2), Some(1), Some(0), Some(0)]);
    }

    #[test]
    fn nobody_is_served_when_every_consumer_is_at_its_limit() {
        let mut consumers = registered(&[(0, 1, 1), (1, 0, 1)], false);
        assert_eq!(serve(&mut consumers, false, 3), [Some(0), Some(1), None]);
    }

    #[test]
    fn a_single_active_consumer_keeps_its_place_and_is_the_only_one_served() {
        // A later consumer of higher priority waits behind the active one...
        let mut consumers = registered(&[(0, 0, 1), (1, 0, 0), (2, 9, 0)], true);
        let keys: Vec<u64> = consumers.iter().map(|c| c.key).collect();
        assert_eq!(keys, [0, 2, 1]);
        // ...and nobody else is served while the active one is at its prefetch.
        assert_eq!(serve(&mut consumers, true, 2), [Some(0), None]);
        // When it leaves, the highest-priority waiting consumer is first, hence active.
        consumers.remove(0);
        assert_eq!(serve(&mut consumers, true, 1), [Some(2)]);
    }
}
