//! Producers and consumers together (S1-S4, S6): warm up, then measure a fixed window.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::task::JoinSet;

use crate::cli::Settings;
use crate::client::{connect, Topology, STEP_TIMEOUT};
use crate::latency::LatencyHistogram;
use crate::modes::{base_report, Run};
use crate::report::Report;
use crate::workers::{close, Consumer, Control, Counters, Producer};

/// How long stopped workers get to finish before the run moves on without them.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(r: &Run) -> anyhow::Result<Report> {
    let s = &r.settings;
    let topology = Arc::new(Topology::new(s));
    let (admin_conn, admin) = connect(&r.uri, "perf-admin").await?;
    topology.declare(&admin, s).await?;

    let ctl = Control::new();
    let mut consumers = spawn_consumers(r, &topology, &ctl);
    wait_consumers_ready(&ctl.counters, s.consumers).await?;
    let mut producers = spawn_producers(r, &topology, &ctl, None);

    tokio::time::sleep(Duration::from_secs_f64(s.warmup_s)).await;
    let c = &ctl.counters;
    let (pub0, con0) = (Counters::get(&c.published), Counters::get(&c.consumed));
    let sample0 = r.sample();
    let t0 = Instant::now();
    ctl.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(s.duration_s)).await;
    ctl.measuring.store(false, Ordering::Relaxed);
    let window_s = t0.elapsed().as_secs_f64();
    let (pub1, con1) = (Counters::get(&c.published), Counters::get(&c.consumed));
    let sample1 = r.sample();

    ctl.stop_producers.store(true, Ordering::Relaxed);
    let mut errors = join_producers(&mut producers).await;
    let _ = ctl.stop_consumers.send(true);
    let (hist, consumer_errors) = join_consumers(&mut consumers).await;
    errors += consumer_errors;
    errors += teardown(&topology, admin_conn, admin).await;

    let mut report = base_report(r, "throughput");
    report.window_s = window_s;
    report.published = pub1 - pub0;
    report.consumed = con1 - con0;
    report.confirmed = Counters::get(&c.confirmed);
    report.publish_rate = Some(report.published as f64 / window_s);
    report.consume_rate = Some(report.consumed as f64 / window_s);
    report.set_latency(hist.percentiles());
    report.set_broker_window(sample0, sample1, report.consumed);
    report.errors = errors + Counters::get(&c.errors) + Counters::get(&c.nacked);
    Ok(report)
}

pub fn spawn_consumers(
    r: &Run,
    topology: &Arc<Topology>,
    ctl: &Arc<Control>,
) -> JoinSet<anyhow::Result<LatencyHistogram>> {
    let mut set = JoinSet::new();
    for index in 0..r.settings.consumers as usize {
        let c = Consumer {
            uri: r.uri.clone(),
            settings: r.settings.clone(),
            topology: topology.clone(),
            index,
        };
        let name = format!("perf-consumer-{index}");
        spawn_worker(&mut set, &r.settings, name, c.run(ctl.clone()));
    }
    set
}

/// Starts the producers; with `total`, they publish exactly that many between them.
pub fn spawn_producers(
    r: &Run,
    topology: &Arc<Topology>,
    ctl: &Arc<Control>,
    total: Option<u64>,
) -> JoinSet<anyhow::Result<()>> {
    let n = u64::from(r.settings.producers);
    let mut set = JoinSet::new();
    for index in 0..n {
        let p = Producer {
            uri: r.uri.clone(),
            settings: r.settings.clone(),
            topology: topology.clone(),
            index: index as usize,
            limit: total.map(|t| t / n + u64::from(index < t % n)),
        };
        let name = format!("perf-producer-{index}");
        spawn_worker(&mut set, &r.settings, name, p.run(ctl.clone()));
    }
    set
}

/// Starts one producer or consumer.
///
/// A fixed-rate run measures latency, so each of its workers gets a thread of its own with a
/// single-threaded runtime, as PerfTest gives each producer and consumer a thread. The amqprs
/// tasks of the worker's connection (reader, writer, channel dispatcher) are spawned from it
/// and stay on that thread: they hand a message to each other without waking another thread,
/// and a producer can sleep its thread until its next send is due (`Pace`). Against the same
/// broker, S6's p50 / p99 went from 83-94 / 225-381 µs to 65-69 / 144-176 µs (3 rounds).
///
/// A run at full speed keeps its workers on the shared pool, where a consumer's amqprs tasks
/// spread over the cores: a consumer alone on one thread fell behind an unpaced producer (S1
/// consumed 40k msg/s instead of 330k, with the tool's buffers growing by the second).
fn spawn_worker<T: Send + 'static>(
    set: &mut JoinSet<anyhow::Result<T>>,
    settings: &Settings,
    name: String,
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) {
    if settings.rate == 0 {
        set.spawn(work);
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(work));
        let _ = tx.send(result);
    });
    set.spawn(async move {
        spawned.context("spawning a worker thread")?;
        rx.await
            .unwrap_or_else(|_| Err(anyhow!("worker thread ended without a result")))
    });
}

pub async fn wait_consumers_ready(counters: &Counters, consumers: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while Counters::get(&counters.consumers_ready) < u64::from(consumers) {
        if Instant::now() > deadline {
            bail!("consumers did not start within {STEP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Waits for the producers; returns how many failed.
pub async fn join_producers(set: &mut JoinSet<anyhow::Result<()>>) -> u64 {
    let mut errors = 0;
    let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
        while let Some(res) = set.join_next().await {
            if let Err(e) = res.map_err(anyhow::Error::from).and_then(|r| r) {
                eprintln!("ferrymq-perf: producer failed: {e:#}");
                errors += 1;
            }
        }
    })
    .await;
    if joined.is_err() {
        eprintln!("ferrymq-perf: producers did not stop within {JOIN_TIMEOUT:?}");
        set.abort_all();
        errors += 1;
    }
    errors
}

/// Waits for the consumers; returns their merged latencies and how many failed.
pub async fn join_consumers(
    set: &mut JoinSet<anyhow::Result<LatencyHistogram>>,
) -> (LatencyHistogram, u64) {
    let mut merged = LatencyHistogram::default();
    let mut errors = 0;
    let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
        while let Some(res) = set.join_next().await {
            match res.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(h) => merged.merge(&h),
                Err(e) => {
                    eprintln!("ferrymq-perf: consumer failed: {e:#}");
                    errors += 1;
                }
            }
        }
    })
    .await;
    if joined.is_err() {
        eprintln!("ferrymq-perf: consumers did not stop within {JOIN_TIMEOUT:?}");
        set.abort_all();
        errors += 1;
    }
    (merged, errors)
}

/// Deletes what the run declared; returns 1 if that failed.
pub async fn teardown(
    topology: &Topology,
    conn: amqprs::connection::Connection,
    ch: amqprs::channel::Channel,
) -> u64 {
    let deleted = tokio::time::timeout(STEP_TIMEOUT, topology.delete(&ch)).await;
    close(conn).await;
    match deleted {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("ferrymq-perf: cleanup failed: {e:#}");
            1
        }
        Err(_) => {
            eprintln!("ferrymq-perf: cleanup timed out");
            1
        }
    }
}
