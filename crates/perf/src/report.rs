//! The result of one run: a human table and one JSON line with the same numbers.
//! Fields a mode does not measure are absent from the JSON (not zero), so scripts can tell.

use std::fmt::Write as _;

use serde::Serialize;

use crate::latency::Percentiles;
use crate::procfs::Sample;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub uri_host: String,
    pub mode: String,
    pub producers: u32,
    pub consumers: u32,
    pub queues: u32,
    pub size: usize,
    /// Length of the measurement window (or of the timed operation) in seconds.
    pub window_s: f64,
    pub published: u64,
    pub consumed: u64,
    pub confirmed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consume_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p999_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_max_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_pid: Option<u32>,
    /// Broker utime + stime over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cpu_s: Option<f64>,
    /// Broker CPU time over the window divided by messages consumed in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Broker VmRSS at the end of the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_rss_bytes: Option<u64>,
    /// S5: broker CPU over the publish phase per message published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_cpu_us_per_msg: Option<f64>,
    /// S5: broker VmRSS with the whole backlog queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_rss_bytes: Option<u64>,
    /// S7 / S8: how many objects were created and how long it took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_s: Option<f64>,
    /// S7 / S8: broker RSS growth divided by the objects created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes_per_object: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_object: Option<f64>,
    pub errors: u64,
}

impl Report {
    pub fn set_latency(&mut self, p: Option<Percentiles>) {
        let Some(p) = p else { return };
        self.latency_p50_us = Some(p.p50_us);
        self.latency_p99_us = Some(p.p99_us);
        self.latency_p999_us = Some(p.p999_us);
        self.latency_max_us = Some(p.max_us);
    }

    /// Fills the broker CPU figure from samples at the start and end of the window.
    pub fn set_broker_window(&mut self, start: Option<Sample>, end: Option<Sample>, msgs: u64) {
        let (Some(start), Some(end)) = (start, end) else {
            return;
        };
        let cpu_s = (end.cpu_s - start.cpu_s).max(0.0);
        self.broker_cpu_s = Some(cpu_s);
        self.broker_rss_bytes = Some(end.rss_bytes);
        if msgs > 0 {
            self.broker_cpu_us_per_msg = Some(cpu_s * 1e6 / msgs as f64);
        }
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "  {k:<26} {v}");
        };
        row(
            "scenario",
            format!("{} ({}, {})", self.scenario, self.mode, self.label),
        );
        row(
            "shape",
            format!(
                "{} producers, {} consumers, {} queues, {} B",
                self.producers, self.consumers, self.queues, self.size
            ),
        );
        row("window", format!("{:.2} s", self.window_s));
        row(
            "messages",
            format!(
                "{} published, {} confirmed, {} consumed",
                self.published, self.confirmed, self.consumed
            ),
        );
        let opt = |v: Option<f64>, unit: &str| match v {
            Some(v) => format!("{v:.1} {unit}"),
            None => "-".to_string(),
        };
        row("publish rate", opt(self.publish_rate, "msg/s"));
        row("consume rate", opt(self.consume_rate, "msg/s"));
        row(
            "latency p50 / p99 / p99.9",
            match (
                self.latency_p50_us,
                self.latency_p99_us,
                self.latency_p999_us,
            ) {
                (Some(a), Some(b), Some(c)) => format!("{a:.0} / {b:.0} / {c:.0} µs"),
                _ => "-".to_string(),
            },
        );
        row(
            "broker pid",
            self.broker_pid.map_or("-".into(), |p| p.to_string()),
        );
        row("broker CPU", opt(self.broker_cpu_s, "s"));
        row("broker CPU per msg", opt(self.broker_cpu_us_per_msg, "µs"));
        row("broker RSS", mib(self.broker_rss_bytes));
        if self.backlog_rss_bytes.is_some() {
            row(
                "publish CPU per msg",
                opt(self.publish_cpu_us_per_msg, "µs"),
            );
            row("broker RSS at backlog", mib(self.backlog_rss_bytes));
        }
        if let Some(n) = self.objects {
            row(
                "objects created",
                format!("{n} in {:.2} s", self.objects_s.unwrap_or(0.0)),
            );
            row("RSS per object", opt(self.rss_bytes_per_object, "bytes"));
            row("CPU per object", opt(self.cpu_us_per_object, "µs"));
        }
        row("errors", self.errors.to_string());
        out
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_message_divides_the_window_by_consumed() {
        let mut r = Report::default();
        let s = |cpu_s, rss_bytes| Some(Sample { cpu_s, rss_bytes });
        r.set_broker_window(s(1.0, 10), s(1.5, 20), 250_000);
        assert_eq!(r.broker_cpu_us_per_msg, Some(2.0));
        assert_eq!(r.broker_rss_bytes, Some(20));
        let json = r.json_line();
        assert!(json.contains("\"broker_cpu_us_per_msg\":2.0"));
        assert!(
            !json.contains("latency_p99_us"),
            "unmeasured fields are absent"
        );
    }
}
