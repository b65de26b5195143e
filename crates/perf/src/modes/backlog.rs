//! A fixed backlog (S5): publish N messages with no consumer, wait until the broker holds them
//! all, sample its RSS, then (with drain) consume them and time it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqprs::channel::Channel;

use crate::client::{connect, Topology};
use crate::modes::throughput::{
    join_consumers, join_producers, spawn_consumers, spawn_producers, teardown,
    wait_consumers_ready,
};
use crate::modes::{base_report, Run};
use crate::procfs::Sample;
use crate::report::Report;
use crate::workers::{Control, Counters};

const POLL: Duration = Duration::from_millis(20);
/// A backlog that stops growing for this long is complete even if short of N (e.g. with
/// `x-max-length`).
const SETTLED_AFTER: Duration = Duration::from_secs(2);

pub async fn run(r: &Run, messages: u64, drain: bool) -> anyhow::Result<Report> {
    let s = &r.settings;
    let topology = Arc::new(Topology::new(s));
    let (admin_conn, admin) = connect(&r.uri, "perf-admin").await?;
    topology.declare(&admin, s).await?;
    let ctl = Control::new();
    let c = &ctl.counters;

    let sample0 = r.sample();
    let t0 = Instant::now();
    let mut producers = spawn_producers(r, &topology, &ctl, Some(messages));
    // Producers stop by themselves at their share; the run's deadline bounds this wait.
    while !producers.is_empty() {
        if let Some(Err(e) | Ok(Err(e))) = producers
            .join_next()
            .await
            .map(|r| r.map_err(anyhow::Error::from))
        {
            eprintln!("ferrymq-perf: producer failed: {e:#}");
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let backlog = wait_backlog(&topology, &admin, messages).await?;
    let publish_s = t0.elapsed().as_secs_f64();
    let sample1 = r.sample();

    let mut report = base_report(r, "backlog");
    report.published = Counters::get(&c.published);
    report.confirmed = Counters::get(&c.confirmed);
    report.publish_rate = Some(backlog as f64 / publish_s);
    report.backlog_rss_bytes = sample1.map(|s| s.rss_bytes);
    report.publish_cpu_us_per_msg = cpu_us_per_msg(sample0, sample1, backlog);
    report.window_s = publish_s;

    if drain {
        let mut consumers = spawn_consumers(r, &topology, &ctl);
        let t1 = Instant::now();
        wait_consumers_ready(c, s.consumers).await?;
        ctl.measuring.store(true, Ordering::Relaxed);
        while Counters::get(&c.consumed) < backlog {
            tokio::time::sleep(POLL / 4).await;
        }
        let drain_s = t1.elapsed().as_secs_f64();
        let sample2 = r.sample();
        let _ = ctl.stop_consumers.send(true);
        let (_, errors) = join_consumers(&mut consumers).await;
        c.errors.fetch_add(errors, Ordering::Relaxed);
        report.consumed = Counters::get(&c.consumed);
        report.consume_rate = Some(report.consumed as f64 / drain_s);
        report.window_s = drain_s;
        report.set_broker_window(sample1, sample2, report.consumed);
    } else {
        report.broker_rss_bytes = sample1.map(|s| s.rss_bytes);
    }
    let mut errors = join_producers(&mut producers).await;
    errors += teardown(&topology, admin_conn, admin).await;
    report.errors = errors + Counters::get(&c.errors) + Counters::get(&c.nacked);
    Ok(report)
}

/// Polls the queues until they hold `expected` messages or stop growing; returns the count.
async fn wait_backlog(topology: &Topology, ch: &Channel, expected: u64) -> anyhow::Result<u64> {
    let mut last = (0, Instant::now());
    loop {
        let ready = topology.ready_messages(ch).await?;
        if ready >= expected {
            return Ok(ready);
        }
        if ready != last.0 {
            last = (ready, Instant::now());
        } else if last.1.elapsed() > SETTLED_AFTER {
            eprintln!("ferrymq-perf: backlog settled at {ready} of {expected} messages");
            return Ok(ready);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn cpu_us_per_msg(start: Option<Sample>, end: Option<Sample>, msgs: u64) -> Option<f64> {
    let (start, end) = (start?, end?);
    (msgs > 0).then(|| (end.cpu_s - start.cpu_s).max(0.0) * 1e6 / msgs as f64)
}
