//! Direct reply-to (`amq.rabbitmq.reply-to`): RPC replies go straight to the requesting
//! channel's consumer, without a reply queue, as RabbitMQ implements it.
//!
//! A client consumes (no-ack) from the pseudo-queue `amq.rabbitmq.reply-to` and publishes
//! requests with `reply_to = amq.rabbitmq.reply-to`. The broker rewrites that property to
//! `amq.rabbitmq.reply-to.<token>`, where the token is random and registered here with the
//! consumer it stands for. A reply published to the default exchange with that routing key
//! is handed to the consumer's connection directly. When the consumer goes away its token
//! is forgotten and replies to it are unroutable (returned if mandatory), as in RabbitMQ.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use ferrymq_wire::ShortStr;
use parking_lot::Mutex;

use crate::client::{ClientEvent, ClientHandle};
use crate::message::Message;

/// The pseudo-queue name clients consume from and put in `reply_to`.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Prefix of the routing keys the broker hands out (`REPLY_TO` + ".").
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The consumer a token stands for.
#[derive(Debug, Clone)]
pub struct ReplyTarget {
    pub client: Arc<ClientHandle>,
    pub channel: u16,
    pub epoch: u64,
    pub consumer_tag: ShortStr,
}

#[derive(Debug, Default)]
pub struct DirectReplies {
    targets: Mutex<HashMap<ShortStr, ReplyTarget>>,
}

impl DirectReplies {
    /// Registers a reply consumer and returns the full `reply_to` address for it.
    pub fn register(&self, target: ReplyTarget) -> ShortStr {
        let bytes: [u8; 16] = rand::random();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let address = ShortStr::from(format!("{REPLY_TO_PREFIX}{token}"));
        self.targets.lock().insert(address.clone(), target);
        address
    }

    pub fn forget(&self, address: &str) {
        self.targets.lock().remove(address);
    }

    pub fn is_registered(&self, address: &str) -> bool {
        self.targets.lock().contains_key(address)
    }

    /// Hands a reply to the consumer registered under `address`. Returns false when no
    /// such consumer exists (any more): the message is then unroutable.
    pub fn deliver(&self, address: &str, message: Arc<Message>) -> bool {
        let Some(target) = self.targets.lock().get(address).cloned() else {
            return false;
        };
        if target.client.is_closed() {
            self.forget(address);
            return false;
        }
        target.client.send(ClientEvent::DirectReply {
            channel: target.channel,
            epoch: target.epoch,
            consumer_tag: target.consumer_tag,
            message,
        });
        true
    }
}
