//! End-to-end latency: the producer writes its wall clock into the first 8 bytes of the body,
//! the consumer subtracts it from its own. Both run in this process, so the clocks agree.
//!
//! ```text
//!   body: ┌──────────────────────────┬──────────────── … ─┐
//!         │ send time, ns since epoch │ zero padding        │
//!         │ u64 little-endian         │ (size - 8 bytes)    │
//!         └──────────────────────────┴──────────────── … ─┘
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

pub const TIMESTAMP_BYTES: usize = 8;

/// Longest latency the histogram tracks: anything slower is clamped, not dropped.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Stamps `body` with the current time; bodies shorter than 8 bytes carry no timestamp.
pub fn stamp(body: &mut [u8], now_ns: u64) {
    if let Some(head) = body.get_mut(..TIMESTAMP_BYTES) {
        head.copy_from_slice(&now_ns.to_le_bytes());
    }
}

pub fn read_stamp(body: &[u8]) -> Option<u64> {
    let head = body.get(..TIMESTAMP_BYTES)?;
    Some(u64::from_le_bytes(head.try_into().ok()?))
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One consumer's latencies in nanoseconds; merged across consumers at the end.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            hist: Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid bounds"),
        }
    }
}

impl LatencyHistogram {
    /// Records the latency of a message stamped at `sent_ns` and received at `received_ns`;
    /// a receive "before" the send (clock step) counts as the smallest latency.
    pub fn record(&mut self, sent_ns: u64, received_ns: u64) {
        let ns = received_ns.saturating_sub(sent_ns).clamp(1, LATENCY_MAX_NS);
        self.hist.saturating_record(ns);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides, so adding cannot fail.
        self.hist.add(&other.hist).expect("same histogram bounds");
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.hist.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Percentiles {
            count: self.hist.len(),
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_short_bodies_carry_none() {
        let mut body = vec![0u8; 16];
        stamp(&mut body, 0x0102_0304_0506_0708);
        assert_eq!(read_stamp(&body), Some(0x0102_0304_0506_0708));
        let mut short = vec![0u8; 4];
        stamp(&mut short, 42);
        assert_eq!(short, vec![0u8; 4]);
        assert_eq!(read_stamp(&short), None);
    }

    #[test]
    fn percentiles_follow_the_recorded_distribution() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.percentiles(), None);
        // 1000 samples: 1 µs .. 1000 µs.
        for i in 1..=1000u64 {
            h.record(0, i * 1000);
        }
        let p = h.percentiles().unwrap();
        assert_eq!(p.count, 1000);
        assert!((p.p50_us - 500.0).abs() <= 1.0, "p50 {}", p.p50_us);
        assert!((p.p99_us - 990.0).abs() <= 1.0, "p99 {}", p.p99_us);
        assert!((p.p999_us - 999.0).abs() <= 1.0, "p99.9 {}", p.p999_us);
        assert!((p.max_us - 1000.0).abs() <= 1.0, "max {}", p.max_us);
    }

    #[test]
    fn merge_adds_counts_and_clock_steps_do_not_panic() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        a.record(0, 10_000);
        b.record(50_000, 10); // received "before" sent
        b.record(0, u64::MAX); // beyond the tracked range
        a.merge(&b);
        let p = a.percentiles().unwrap();
        assert_eq!(p.count, 3);
        assert!(p.max_us >= 59_000_000.0);
    }
}
