//! Publishing to an `x-delayed-message` exchange: a message with a positive `x-delay` is
//! handed to the exchange's scheduler instead of being routed now (see
//! `ferrymq_broker::exchange::delayed`).

use std::sync::Arc;

use ferrymq_broker::exchange::{delayed, Exchange};
use ferrymq_broker::Message;
use ferrymq_wire::BasicPublish;
use tokio::sync::oneshot;

use super::publish::{confirm_ticket, Unfinished};
use super::Session;

impl Session {
    /// Holds `message` if `exchange` delays it (through [`Session::finish_publish`]), and
    /// returns `None`; otherwise hands it back to be routed now. The confirm (or tx.commit)
    /// waits until the message is on disk.
    /// `mandatory` gets `basic.return 312 NO_ROUTE` at once, as with the plugin: nothing
    /// is routed at publish time (the message is still delivered when due).
    pub(super) fn hold_if_delayed(
        &mut self,
        id: u16,
        exchange: &Arc<Exchange>,
        method: &BasicPublish,
        message: Message,
        waiters: Option<&mut Vec<oneshot::Receiver<bool>>>,
    ) -> Option<Message> {
        if exchange.delayed().is_none() {
            return Some(message);
        }
        let Some(delay_ms) = delayed::delay_of(&message.properties) else {
            return Some(message);
        };
        let channel = self.channel(id);
        let epoch = channel.epoch;
        let confirm_seq = channel.confirms.as_mut().map(|c| c.register(1));
        let confirm = confirm_ticket(&self.client, id, epoch, confirm_seq, waiters);
        if method.mandatory {
            // BCC stays in the held message (it routes at due time) but not in what the
            // publisher gets back, as for any returned message.
            let has_bcc = (message.properties.headers()).is_some_and(|h| h.contains_key("BCC"));
            let shown = match has_bcc {
                true => super::publish::without_bcc(message.clone()),
                false => message.clone(),
            };
            self.return_no_route(id, method, &shown);
        }
        self.leave_unfinished(Unfinished::Held {
            exchange: Arc::clone(exchange),
            message,
            delay_ms,
            confirm,
        });
        None
    }
}
