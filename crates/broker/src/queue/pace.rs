//! Publisher pacing: load leveling for a queue whose consumers fall behind its publishers.
//!
//! A queue whose consumers are busy consuming but fall behind would otherwise take every
//! publish at full speed and write the excess to disk only to read it back moments later:
//! work for nothing, and the backlog's latency grows with it. Instead, once such a queue
//! holds more than a quarter of its memory window, it asks its publishers to go slower than
//! its consumers, by as much as brings the backlog back to that mark (see
//! [`PaceMeter::pace_ns`]): it publishes a delay per message (`pace_ns`) that a publishing
//! connection adds up and waits out before it reads more from its socket.
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
/// How soon a backlog above its target should be back at it: publishers go slower than the
/// consumers by the excess divided by this.
pub const PACE_DRAIN_TIME: Duration = Duration::from_millis(100);
/// However deep the backlog, publishers keep at least this share of the consumers' rate.
const PACE_PUBLISH_SHARE_MIN_DIVISOR: u64 = 4;

#[derive(Debug)]
pub struct PaceMeter {
    since: Instant,
    delivered: u64,
    /// The consumers' rate over the last whole interval, in messages per second.
    rate_per_s: u64,
}

impl Default for PaceMeter {
    fn default() -> Self {
        PaceMeter {
            since: Instant::now(),
            delivered: 0,
            rate_per_s: 0,
        }
    }
}

impl PaceMeter {
    pub fn delivered(&mut self) {
        self.delivered += 1;
    }

    /// The delay per published message to ask for (0: none), given the ready messages of a
    /// queue with consumers and the depth it should stay under. Called whenever the queue
    /// has handled a batch: the consumers' rate is measured once per [`PACE_INTERVAL`], but
    /// the depth is looked at every time, so pacing starts as soon as the backlog passes
    /// its target (a publisher's socket buffers can hold tens of thousands of messages,
    /// which an unpaced connection reads in far less than an interval).
    ///
    /// Proportional: at the target, publishers keep the consumers' rate; above it, they go
    /// slower by what drains the excess within [`PACE_DRAIN_TIME`] (but never below a
    /// quarter of the consumers' rate). Holding publishers to the consumers' rate alone
    /// would keep the backlog wherever it happened to be, and each overshoot would add up
    /// until it reached the window and paged.
    pub fn pace_ns(&mut self, now: Instant, ready: usize, target: usize) -> u32 {
        let elapsed = now.duration_since(self.since);
        if elapsed >= PACE_INTERVAL {
            self.rate_per_s = self.delivered * 1_000_000_000 / elapsed.as_nanos().max(1) as u64;
            self.since = now;
            self.delivered = 0;
        }
        let rate = self.rate_per_s;
        if rate < PACE_RATE_MIN_PER_S || ready <= target {
            return 0;
        }
        let excess = (ready - target) as u64;
        let drain_per_s = excess * 1_000_000_000 / PACE_DRAIN_TIME.as_nanos() as u64;
        let publish_rate = rate
            .saturating_sub(drain_per_s)
            .max(rate / PACE_PUBLISH_SHARE_MIN_DIVISOR);
        u32::try_from(1_000_000_000 / publish_rate).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A meter that saw consumers take 2,500 messages in one interval (100k/s, 10 µs
    /// apart), asked at the end of it and once more within the next.
    fn after_one_interval(ready: usize) -> u32 {
        let start = Instant::now();
        let mut meter = PaceMeter {
            since: start,
            ..PaceMeter::default()
        };
        for _ in 0..2_500 {
            meter.delivered();
        }
        // No rate measured yet: not paced, however deep.
        assert_eq!(
            meter.pace_ns(start + Duration::from_millis(10), ready, 4_096),
            0
        );
        let pace = meter.pace_ns(start + PACE_INTERVAL, ready, 4_096);
        // Within the next interval the rate stands; the depth is looked at again.
        let later = start + PACE_INTERVAL + Duration::from_millis(1);
        assert_eq!(meter.pace_ns(later, ready, 4_096), pace);
        assert_eq!(meter.pace_ns(later, 0, 4_096), 0);
        pace
    }

    #[test]
    fn paces_harder_the_further_the_backlog_is_above_its_target() {
        // At or under the target: not paced.
        assert_eq!(after_one_interval(0), 0);
        assert_eq!(after_one_interval(4_096), 0);
        // 1,000 over: drained in 100 ms at 10k/s, so publishers get 90k/s.
        assert_eq!(after_one_interval(5_096), 11_111);
        // 5,000 over: 50k/s to drain, publishers get half the consumers' rate.
        assert_eq!(after_one_interval(9_096), 20_000);
        // Far over: never below a quarter of the consumers' rate.
        assert_eq!(after_one_interval(1_000_000), 40_000);
    }

    #[test]
    fn stalled_consumers_do_not_pace() {
        let start = Instant::now();
        let mut meter = PaceMeter {
            since: start,
            ..PaceMeter::default()
        };
        meter.delivered();
        assert_eq!(meter.pace_ns(start + PACE_INTERVAL, 1_000_000, 4_096), 0);
    }
}
