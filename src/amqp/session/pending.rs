//! What a read batch gathers for the queues before it is sent: publishes and settles.
//!
//! A connection handles every complete frame of a read before it sends anything to a
//! queue, so a burst costs each queue one mailbox command (one wake-up of its task) per
//! read rather than one per message. Both are sent by [`Session::flush_pending`]: at the
//! end of the read, and before any frame that must see them (a get, a consume, a channel
//! close), so a queue still receives one connection's commands in the order it sent them.
//!
//! [`Session::flush_pending`]: super::Session::flush_pending

use std::sync::Arc;

use ferrymq_broker::message::Message;
use ferrymq_broker::queue::{
    ConfirmTicket, QueueCmd, QueueHandle, SettleAction, PUBLISH_BATCH_MESSAGES_MAX,
};
use smallvec::SmallVec;

/// The capacity a batch is given when it outgrows its inline message.
const BATCH_SPILL_CAPACITY: usize = 16;

/// One queue's publishes: a lone message (a quiet publisher's usual read) allocates nothing.
type Batch = SmallVec<[(Arc<Message>, Option<ConfirmTicket>); 1]>;

/// Publishes gathered while a read batch is handled, one batch per queue in arrival order.
#[derive(Default)]
pub struct PendingPublishes {
    batches: Vec<(Arc<QueueHandle>, Batch)>,
}

impl PendingPublishes {
    /// Adds a message for `queue`. A batch that reaches [`PUBLISH_BATCH_MESSAGES_MAX`] comes
    /// back as the command to send now (its queue's later messages start a new batch).
    pub fn add(
        &mut self,
        queue: &Arc<QueueHandle>,
        message: Arc<Message>,
        confirm: Option<ConfirmTicket>,
    ) -> Option<(Arc<QueueHandle>, QueueCmd)> {
        let at = match self.batches.iter().position(|(q, _)| Arc::ptr_eq(q, queue)) {
            Some(at) => at,
            None => {
                self.batches.push((Arc::clone(queue), Batch::new()));
                self.batches.len() - 1
            }
        };
        let batch = &mut self.batches[at].1;
        if batch.len() == 1 {
            // A batch that outgrows its one inline message is likely a burst: room for
            // several at once, rather than growing from two by doubling.
            batch.reserve_exact(BATCH_SPILL_CAPACITY - 1);
        }
        batch.push((message, confirm));
        if batch.len() < PUBLISH_BATCH_MESSAGES_MAX {
            return None;
        }
        let (queue, batch) = self.batches.remove(at);
        Some((queue, publish_batch(batch)))
    }

    /// The batches as commands, oldest queue first.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (Arc<QueueHandle>, QueueCmd)> + '_ {
        self.batches
            .drain(..)
            .map(|(queue, batch)| (queue, publish_batch(batch)))
    }
}

fn publish_batch(mut batch: Batch) -> QueueCmd {
    if batch.len() == 1 {
        let (message, confirm) = batch.pop().expect("one publish");
        return QueueCmd::Publish { message, confirm };
    }
    QueueCmd::PublishMany(batch.into_vec())
}

/// Settles gathered while a read batch is handled, grouped by queue, channel and outcome:
/// a client acking each message of a burst costs its queue one command, not one per ack.
#[derive(Default)]
pub struct PendingSettles {
    settles: Vec<(Arc<QueueHandle>, u16, SettleAction, Vec<u64>)>,
    /// Channels whose global prefetch reopened: their queues get a wake-up after the settles.
    wakes: Vec<u16>,
}

impl PendingSettles {
    pub fn add(
        &mut self,
        queue: Arc<QueueHandle>,
        channel: u16,
        action: SettleAction,
        msg_id: u64,
    ) {
        let same = |(q, c, a, _): &&mut (Arc<QueueHandle>, u16, SettleAction, Vec<u64>)| {
            Arc::ptr_eq(q, &queue) && *c == channel && *a == action
        };
        match self.settles.iter_mut().find(same) {
            Some((_, _, _, ids)) => ids.push(msg_id),
            None => self.settles.push((queue, channel, action, vec![msg_id])),
        }
    }

    pub fn wake(&mut self, channel: u16) {
        if !self.wakes.contains(&channel) {
            self.wakes.push(channel);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.settles.is_empty() && self.wakes.is_empty()
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn take(
        &mut self,
    ) -> (
        Vec<(Arc<QueueHandle>, u16, SettleAction, Vec<u64>)>,
        Vec<u16>,
    ) {
        (
            std::mem::take(&mut self.settles),
            std::mem::take(&mut self.wakes),
        )
    }
}
