//! Cost of idle objects: durable queues (S7) and connections with one channel (S8), as
//! broker RSS growth per object.

use std::time::{Duration, Instant};

use amqprs::channel::{QueueDeclareArguments, QueueDeleteArguments};
use anyhow::Context;
use tokio::task::JoinSet;

use crate::client::{connect, run_prefix, STEP_TIMEOUT};
use crate::modes::{base_report, Run};
use crate::procfs::Sample;
use crate::report::Report;
use crate::workers::close;

/// Lets the broker finish the work behind the last reply before RSS is read.
const SETTLE: Duration = Duration::from_millis(500);
/// Connections opened at once in S8 (the handshake is a few round trips each).
const CONNECT_PARALLEL: usize = 16;

pub async fn declare_queues(r: &Run, queues: u32) -> anyhow::Result<Report> {
    let prefix = run_prefix();
    let names: Vec<String> = (0..queues).map(|i| format!("{prefix}-d{i}")).collect();
    let (conn, ch) = connect(&r.uri, "perf-declare").await?;
    let sample0 = r.sample();
    let t0 = Instant::now();
    for name in &names {
        let args = QueueDeclareArguments::durable_client_named(name);
        ch.queue_declare(args).await.context("queue.declare")?;
    }
    let declare_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let sample1 = r.sample();

    let mut report = base_report(r, "declare");
    report.queues = queues;
    fill_object_costs(&mut report, queues, declare_s, sample0, sample1);

    // Pipelined deletes, then one synchronous delete so all have been processed.
    let deleted = tokio::time::timeout(STEP_TIMEOUT * 4, async {
        for (i, name) in names.iter().enumerate() {
            let mut args = QueueDeleteArguments::new(name);
            args.no_wait = i + 1 < names.len();
            ch.queue_delete(args).await?;
        }
        anyhow::Ok(())
    })
    .await;
    if !matches!(deleted, Ok(Ok(()))) {
        eprintln!("ferrymq-perf: deleting the declared queues failed or timed out");
        report.errors += 1;
    }
    close(conn).await;
    Ok(report)
}

pub async fn idle_connections(r: &Run, connections: u32) -> anyhow::Result<Report> {
    let sample0 = r.sample();
    let t0 = Instant::now();
    let mut open = Vec::with_capacity(connections as usize);
    let mut pending = JoinSet::new();
    let mut errors = 0u64;
    for i in 0..connections {
        if pending.len() >= CONNECT_PARALLEL {
            collect_one(&mut pending, &mut open, &mut errors).await;
        }
        let uri = r.uri.clone();
        pending.spawn(async move { connect(&uri, &format!("perf-idle-{i}")).await });
    }
    while !pending.is_empty() {
        collect_one(&mut pending, &mut open, &mut errors).await;
    }
    let open_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE * 2).await;
    let sample1 = r.sample();

    let mut report = base_report(r, "connections");
    fill_object_costs(&mut report, open.len() as u32, open_s, sample0, sample1);
    report.errors = errors;
    let mut closing = JoinSet::new();
    for (conn, _channel) in open {
        closing.spawn(close(conn));
    }
    let _ = tokio::time::timeout(STEP_TIMEOUT, async {
        while closing.join_next().await.is_some() {}
    })
    .await;
    Ok(report)
}

type Opened = anyhow::Result<(amqprs::connection::Connection, amqprs::channel::Channel)>;

async fn collect_one(
    pending: &mut JoinSet<Opened>,
    open: &mut Vec<(amqprs::connection::Connection, amqprs::channel::Channel)>,
    errors: &mut u64,
) {
    match pending.join_next().await {
        Some(Ok(Ok(pair))) => open.push(pair),
        Some(Ok(Err(e))) => {
            eprintln!("ferrymq-perf: connection failed: {e:#}");
            *errors += 1;
        }
        Some(Err(e)) => {
            eprintln!("ferrymq-perf: connect task failed: {e}");
            *errors += 1;
        }
        None => {}
    }
}

fn fill_object_costs(
    report: &mut Report,
    objects: u32,
    elapsed_s: f64,
    start: Option<Sample>,
    end: Option<Sample>,
) {
    report.objects = Some(objects);
    report.objects_s = Some(elapsed_s);
    report.window_s = elapsed_s;
    let (Some(start), Some(end)) = (start, end) else {
        return;
    };
    report.broker_rss_bytes = Some(end.rss_bytes);
    report.broker_cpu_s = Some((end.cpu_s - start.cpu_s).max(0.0));
    if objects > 0 {
        let n = f64::from(objects);
        report.rss_bytes_per_object = Some((end.rss_bytes as f64 - start.rss_bytes as f64) / n);
        report.cpu_us_per_object = Some((end.cpu_s - start.cpu_s).max(0.0) * 1e6 / n);
    }
}
