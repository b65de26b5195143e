//! Publisher pacing: load leveling for a queue whose consumers fall behind its publishers.
//!
//! A queue whose consumers are busy consuming but fall behind would otherwise take every
//! publish at full speed and write the excess to disk only to read it back moments later:
//! work for nothing, and the backlog's latency grows with it. Instead, while such a queue
//! holds more than a quarter of its memory window, it asks its publishers to slow down to the
//! pace its consumers actually keep: it publishes a delay per message (`pace_ns`) that a
//! publishing connection adds up and waits out before it reads more from its socket.
//!
//! It is a delay, never a wait for a condition: a connection that publishes to a queue and
//! also consumes from it keeps reading after the delay, so its acks always get through and
//! no cycle of waits can form. A queue without consumers, or whose consumers have stalled
//! (under [`PACE_RATE_MIN_PER_S`]), is not paced: it takes publishes at full speed and
//! pages, as a queue is there to absorb bursts.

use std::time::Duration;

use tokio::time::Instant;

/// How often the consumers' pace is measured.
/// Short, because an unpaced publisher fills a quarter of the window in about this long.
pub const PACE_INTERVAL: Duration = Duration::from_millis(25);
/// Consumers slower than this are treated as stalled: publishers are not held to them.
pub const PACE_RATE_MIN_PER_S: u64 = 1_000;

/// How deep a queue's backlog is, for pacing (a queue without consumers is `Shallow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Under a quarter of the memory window: no pacing.
    Shallow,
    /// Past a quarter of the window: publishers keep the consumers' pace.
    Deep,
    /// Past the window (paging): publishers go slower than the consumers.
    Paging,
}

#[derive(Debug)]
pub struct PaceMeter {
    since: Instant,
    delivered: u64,
}

impl Default for PaceMeter {
    fn default() -> Self {
        PaceMeter {
            since: Instant::now(),
            delivered: 0,
        }
    }
}

impl PaceMeter {
    pub fn delivered(&mut self) {
        self.delivered += 1;
    }

    /// Once per interval: the delay per published message to ask for (0: none), given
    /// how deep the backlog is with consumers attached.
    pub fn tick(&mut self, now: Instant, depth: Depth) -> Option<u32> {
        let elapsed = now.duration_since(self.since);
        if elapsed < PACE_INTERVAL {
            return None;
        }
        let rate = self.delivered * 1_000_000_000 / elapsed.as_nanos().max(1) as u64;
        self.since = now;
        self.delivered = 0;
        if rate < PACE_RATE_MIN_PER_S {
            return Some(0);
        }
        let per_message = 1_000_000_000 / rate;
        Some(match depth {
            Depth::Shallow => 0,
            Depth::Deep => per_message as u32,
            // Past the window, publishers go at 80% of the consumers' pace, so the part on
            // disk drains instead of being written and read back for as long as it lasts.
            Depth::Paging => (per_message * 5 / 4) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_consumers_rate_only_when_deep_and_consuming() {
        let start = Instant::now();
        let mut meter = PaceMeter {
            since: start,
            delivered: 0,
        };
        for _ in 0..2_500 {
            meter.delivered();
        }
        assert_eq!(
            meter.tick(start + Duration::from_millis(10), Depth::Deep),
            None
        );
        // 2,500 in 25 ms: 100k/s, 10 µs apart.
        let pace = meter.tick(start + PACE_INTERVAL, Depth::Deep).unwrap();
        assert_eq!(pace, 10_000);
        for _ in 0..2_500 {
            meter.delivered();
        }
        assert_eq!(
            meter.tick(start + PACE_INTERVAL * 2, Depth::Paging),
            Some(12_500)
        );
        for _ in 0..2_500 {
            meter.delivered();
        }
        assert_eq!(
            meter.tick(start + PACE_INTERVAL * 3, Depth::Shallow),
            Some(0)
        );
        // Stalled consumers: no pacing.
        meter.delivered();
        assert_eq!(
            meter.tick(start + PACE_INTERVAL * 4, Depth::Paging),
            Some(0)
        );
    }
}
