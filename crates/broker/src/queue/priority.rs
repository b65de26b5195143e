//! Priority levels: a queue declared with `x-max-priority` keeps one backlog per level and
//! delivers from the highest level that has a message, FIFO within a level.
//!
//! A queue without priorities has a single level, so the common case pays one bounds
//! check. A message's level is its `priority` property capped at the queue's maximum
//! (RabbitMQ treats larger values as the maximum and a missing one as 0).

use super::backlog::Backlog;

#[derive(Debug)]
pub struct Levels {
    /// Index = priority level.
    levels: Vec<Backlog>,
}

impl Levels {
    /// `max_priority` 0 means a plain queue (one level).
    pub fn new(max_priority: u8) -> Levels {
        Levels {
            levels: (0..=max_priority).map(|_| Backlog::default()).collect(),
        }
    }

    /// The level a message with priority property `priority` is filed under.
    pub fn level_for(&self, priority: u8) -> u8 {
        priority.min((self.levels.len() - 1) as u8)
    }

    pub fn level(&mut self, level: u8) -> &mut Backlog {
        &mut self.levels[level as usize]
    }

    pub fn count(&self) -> usize {
        self.levels.len()
    }

    /// The highest level holding a ready message: where delivery takes from.
    pub fn highest(&self) -> Option<u8> {
        self.levels
            .iter()
            .rposition(|b| !b.is_empty())
            .map(|l| l as u8)
    }

    /// The lowest level holding a ready message: what overflow drops first.
    pub fn lowest(&self) -> Option<u8> {
        self.levels
            .iter()
            .position(|b| !b.is_empty())
            .map(|l| l as u8)
    }

    pub fn len(&self) -> usize {
        self.levels.iter().map(Backlog::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(Backlog::is_empty)
    }

    pub fn in_memory(&self) -> usize {
        self.levels.iter().map(Backlog::in_memory).sum()
    }

    pub fn bytes(&self) -> usize {
        self.levels.iter().map(Backlog::bytes).sum()
    }
}
