//! Delivery acknowledgement timeouts (RabbitMQ's `consumer_timeout`).
//!
//! A delivery made with a timeout (to a consumer, or by basic.get) gets a deadline. The
//! queue keeps the deadline with the unacked message and a min-heap of deadlines here; when
//! one passes while its message is still unacked, the queue tells the client, which closes
//! the channel with 406 (the channel's unacked messages are then requeued, like on any
//! channel close). Settled deliveries are not removed from the heap (that would cost a
//! search per ack): an entry is stale when its message no longer holds that deadline, and
//! stale entries are dropped when they reach the top or when they outnumber live ones.
//!
//! Precision: the queue wakes at the earliest live deadline, but looks at deadlines at most
//! once per [`ACK_TIMEOUT_CHECK_INTERVAL_MS`], so a timeout fires between its deadline and
//! one interval later. RabbitMQ checks once a minute (`channel_tick_interval`).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{ClientEvent, ClientHandle, ClientId};

/// At most one look at due deadlines per interval: deliveries made a millisecond apart do
/// not each wake the queue.
pub const ACK_TIMEOUT_CHECK_INTERVAL_MS: u64 = 1_000;

/// Stale entries tolerated beyond one per live deadline before the heap is compacted:
/// bounds the heap to about twice the unacked deliveries however long the timeout is.
const STALE_ENTRIES_SLACK: usize = 1024;

/// Where a delivery's timeout is reported, and after how long.
#[derive(Debug, Clone)]
pub struct AckTimeout {
    pub client: Arc<ClientHandle>,
    pub channel: u16,
    pub epoch: u64,
    pub after: Duration,
}

#[derive(Debug)]
struct Pending {
    deadline: Instant,
    msg_id: u64,
    target: AckTimeout,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deadline, self.msg_id).cmp(&(other.deadline, other.msg_id))
    }
}

/// The ack deadlines of one queue's unacked deliveries.
#[derive(Debug, Default)]
pub struct AckDeadlines {
    heap: BinaryHeap<Reverse<Pending>>,
    /// When due deadlines were last looked at.
    checked_at: Option<Instant>,
}

impl AckDeadlines {
    /// Starts the clock of a delivery and returns its deadline, which the queue keeps with
    /// the unacked message. `live` is how many deliveries are unacked; `deadline_of` says
    /// which deadline a message id holds now (`None`: settled).
    pub fn track(
        &mut self,
        msg_id: u64,
        target: AckTimeout,
        live: usize,
        deadline_of: impl Fn(u64) -> Option<Instant>,
    ) -> Instant {
        if self.heap.len() >= live.saturating_mul(2) + STALE_ENTRIES_SLACK {
            self.heap
                .retain(|Reverse(p)| deadline_of(p.msg_id) == Some(p.deadline));
        }
        let deadline = Instant::now() + target.after;
        self.heap.push(Reverse(Pending {
            deadline,
            msg_id,
            target,
        }));
        deadline
    }

    /// When the queue should next look at deadlines.
    pub fn next_due(&self) -> Option<Instant> {
        let earliest = self.heap.peek()?.0.deadline;
        let interval = Duration::from_millis(ACK_TIMEOUT_CHECK_INTERVAL_MS);
        Some(match self.checked_at {
            Some(at) => earliest.max(at + interval),
            None => earliest,
        })
    }

    /// Reports every delivery whose deadline passed while unacked (one event per channel),
    /// and drops stale entries from the top so the next wake-up is for a live deadline.
    pub fn expire(&mut self, now: Instant, deadline_of: impl Fn(u64) -> Option<Instant>) {
        self.checked_at = Some(now);
        let mut told: Vec<(ClientId, u16, u64)> = Vec::new();
        while let Some(Reverse(top)) = self.heap.peek() {
            let live = deadline_of(top.msg_id) == Some(top.deadline);
            if live && top.deadline > now {
                break;
            }
            let Some(Reverse(pending)) = self.heap.pop() else {
                break;
            };
            if !live {
                continue;
            }
            let AckTimeout {
                client,
                channel,
                epoch,
                after,
            } = pending.target;
            let key = (client.id, channel, epoch);
            if told.contains(&key) {
                continue;
            }
            told.push(key);
            client.send(ClientEvent::AckTimedOut {
                channel,
                epoch,
                timeout_ms: after.as_millis() as u64,
            });
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn target(client: &Arc<ClientHandle>, after_ms: u64) -> AckTimeout {
        AckTimeout {
            client: Arc::clone(client),
            channel: 1,
            epoch: 7,
            after: Duration::from_millis(after_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_deliveries_still_unacked_at_their_deadline_are_reported_once_per_channel() {
        let (client, mut events) = ClientHandle::new(1, usize::MAX);
        let mut deadlines = AckDeadlines::default();
        let mut unacked: HashMap<u64, Instant> = HashMap::new();
        for id in 0..3 {
            let d = deadlines.track(id, target(&client, 100), unacked.len(), |i| {
                unacked.get(&i).copied()
            });
            unacked.insert(id, d);
        }
        unacked.remove(&0); // acked in time
        tokio::time::advance(Duration::from_millis(50)).await;
        deadlines.expire(Instant::now(), |i| unacked.get(&i).copied());
        assert!(events.try_recv().is_err(), "nothing is due yet");
        tokio::time::advance(Duration::from_millis(60)).await;
        deadlines.expire(Instant::now(), |i| unacked.get(&i).copied());
        match events.try_recv() {
            Ok(ClientEvent::AckTimedOut {
                channel: 1,
                epoch: 7,
                timeout_ms: 100,
            }) => {}
            other => panic!("expected one timeout event, got {other:?}"),
        }
        assert!(events.try_recv().is_err(), "one event per channel");
        assert_eq!(deadlines.next_due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn checks_are_at_most_one_interval_apart_and_stale_entries_are_compacted() {
        let (client, _events) = ClientHandle::new(1, usize::MAX);
        let mut deadlines = AckDeadlines::default();
        let first = deadlines.track(0, target(&client, 10), 0, |_| None);
        assert_eq!(deadlines.next_due(), Some(first));
        let live = |i: u64| (i == 0).then_some(first);
        deadlines.expire(Instant::now(), live);
        let interval = Duration::from_millis(ACK_TIMEOUT_CHECK_INTERVAL_MS);
        assert_eq!(deadlines.next_due(), Some(Instant::now() + interval));
        // Settled deliveries pile up as stale entries until they outnumber the live ones.
        for id in 1..=(STALE_ENTRIES_SLACK as u64 + 10) {
            deadlines.track(id, target(&client, 10_000), 1, live);
        }
        assert!(deadlines.len() <= STALE_ENTRIES_SLACK + 3);
    }
}
