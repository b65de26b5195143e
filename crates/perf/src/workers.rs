//! Producer and consumer tasks, one connection and one channel each.
//!
//! Producers pipeline: `basic_publish` only queues the frames on amqprs's outgoing channel, so
//! nothing waits for the broker unless confirms (`--confirm WINDOW`) or a fixed rate ask for it.
//! Consumers take deliveries in batches and record latency only while the window is open.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments,
};
use amqprs::connection::Connection;
use amqprs::BasicProperties;
use anyhow::{bail, Context};
use tokio::sync::watch;

use crate::cli::{AckMode, Settings};
use crate::client::{connect, ConfirmWindow, Topology, STEP_TIMEOUT};
use crate::latency::{now_ns, read_stamp, stamp, LatencyHistogram};
use crate::uri::AmqpUri;

/// Deliveries a consumer takes from amqprs per wake-up.
const CONSUME_BATCH_MAX: usize = 256;

#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub consumed: AtomicU64,
    pub consumers_ready: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What every worker shares with the run that started it.
pub struct Control {
    pub counters: Arc<Counters>,
    /// Latencies are recorded only while this is set (the measurement window).
    pub measuring: AtomicBool,
    pub stop_producers: AtomicBool,
    pub stop_consumers: watch::Sender<bool>,
}

impl Control {
    pub fn new() -> Arc<Control> {
        Arc::new(Control {
            counters: Arc::default(),
            measuring: AtomicBool::new(false),
            stop_producers: AtomicBool::new(false),
            stop_consumers: watch::channel(false).0,
        })
    }
}

pub struct Producer {
    pub uri: AmqpUri,
    pub settings: Arc<Settings>,
    pub topology: Arc<Topology>,
    pub index: usize,
    /// Publish at most this many messages, then return.
    pub limit: Option<u64>,
}

impl Producer {
    pub async fn run(self, ctl: Arc<Control>) -> anyhow::Result<()> {
        let (conn, ch) = connect(&self.uri, &format!("perf-producer-{}", self.index)).await?;
        let window = match self.settings.confirm {
            Some(w) => Some(enable_confirms(&ch, w, &ctl).await?),
            None => None,
        };
        let result = self.publish_loop(&ch, window.as_ref(), &ctl).await;
        close(conn).await;
        result
    }

    async fn publish_loop(
        &self,
        ch: &Channel,
        window: Option<&ConfirmWindow>,
        ctl: &Control,
    ) -> anyhow::Result<()> {
        let s = &self.settings;
        let (exchange, routing_key) = self.topology.target(self.index);
        let args = BasicPublishArguments::new(&exchange, &routing_key);
        let props = BasicProperties::default()
            .with_persistence(s.persistent)
            .finish();
        let template = vec![0u8; s.size];
        let pace = (s.rate > 0).then(|| Pace::start(s.rate));
        let mut sent = 0u64;
        while !ctl.stop_producers.load(Ordering::Relaxed) {
            if self.limit.is_some_and(|limit| sent >= limit) {
                break;
            }
            if let Some(pace) = &pace {
                pace.until_due(sent).await;
            }
            if let Some(w) = window {
                let permit = tokio::time::timeout(STEP_TIMEOUT, w.permits.acquire())
                    .await
                    .context("no publisher confirm within 30 s")??;
                permit.forget();
            }
            let mut body = template.clone();
            stamp(&mut body, now_ns());
            ch.basic_publish(props.clone(), body, args.clone())
                .await
                .context("basic.publish")?;
            sent += 1;
            ctl.counters.published.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Spaces a fixed-rate producer's sends. Such a producer has a thread of its own (see
/// `modes::throughput::spawn_worker`), so it can sleep that thread between sends, as a
/// blocking client does: tokio's timers tick in whole milliseconds, which at 10k msg/s would
/// send bursts of 10 and measure how a burst queues up rather than a steady rate.
pub struct Pace {
    start: Instant,
    rate: f64,
}

impl Pace {
    /// Starts the schedule now; call it on the thread that will send.
    pub fn start(rate: u32) -> Pace {
        // The default 50 µs of timer slack would stretch each 100 µs gap by half.
        // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer and changes only this
        // thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
        Pace {
            start: Instant::now(),
            rate: f64::from(rate),
        }
    }

    /// Returns when message `n` (from 0) is due.
    async fn until_due(&self, n: u64) {
        // First let this thread's amqprs writer send what was published before.
        tokio::task::yield_now().await;
        self.sleep_until_due(n);
    }

    /// Sleeps this thread until message `n` (from 0) is due.
    pub fn sleep_until_due(&self, n: u64) {
        let due = self.start + Duration::from_secs_f64(n as f64 / self.rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

async fn enable_confirms(
    ch: &Channel,
    window: u32,
    ctl: &Control,
) -> anyhow::Result<ConfirmWindow> {
    let w = ConfirmWindow::new(window, ctl.counters.clone());
    ch.register_callback(w.callback())
        .await
        .context("register confirm callback")?;
    ch.confirm_select(ConfirmSelectArguments::default())
        .await
        .context("confirm.select")?;
    Ok(w)
}

pub struct Consumer {
    pub uri: AmqpUri,
    pub settings: Arc<Settings>,
    pub topology: Arc<Topology>,
    pub index: usize,
}

impl Consumer {
    pub async fn run(self, ctl: Arc<Control>) -> anyhow::Result<LatencyHistogram> {
        let (conn, ch) = connect(&self.uri, &format!("perf-consumer-{}", self.index)).await?;
        let result = self.consume_loop(&ch, &ctl).await;
        close(conn).await;
        result
    }

    async fn consume_loop(&self, ch: &Channel, ctl: &Control) -> anyhow::Result<LatencyHistogram> {
        let s = &self.settings;
        if s.prefetch > 0 {
            ch.basic_qos(BasicQosArguments::new(0, s.prefetch, false))
                .await
                .context("basic.qos")?;
        }
        let queue = &self.topology.queues[self.index % self.topology.queues.len()];
        let tag = format!("perf-consumer-{}", self.index);
        let args = BasicConsumeArguments::new(queue, &tag)
            .auto_ack(s.ack == AckMode::Auto)
            .finish();
        let (_, mut rx) = ch.basic_consume_rx(args).await.context("basic.consume")?;
        ctl.counters.consumers_ready.fetch_add(1, Ordering::Relaxed);
        let mut stop = ctl.stop_consumers.subscribe();
        let mut hist = LatencyHistogram::default();
        let mut batch = Vec::with_capacity(CONSUME_BATCH_MAX);
        while !*stop.borrow() {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, CONSUME_BATCH_MAX) => n,
                _ = stop.changed() => break,
            };
            if n == 0 {
                bail!("consumer channel closed by the broker");
            }
            let received = now_ns();
            let measuring = ctl.measuring.load(Ordering::Relaxed);
            for msg in batch.drain(..) {
                if measuring {
                    if let Some(sent) = msg.content.as_deref().and_then(read_stamp) {
                        hist.record(sent, received);
                    }
                }
                let delivery_tag = msg.deliver.map_or(0, |d| d.delivery_tag());
                acknowledge(ch, s.ack, delivery_tag).await?;
            }
            ctl.counters.consumed.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(hist)
    }
}

async fn acknowledge(ch: &Channel, mode: AckMode, delivery_tag: u64) -> anyhow::Result<()> {
    let args = match mode {
        AckMode::Auto => return Ok(()),
        AckMode::Each => BasicAckArguments::new(delivery_tag, false),
        AckMode::Every(n) if delivery_tag % u64::from(n) == 0 => {
            BasicAckArguments::new(delivery_tag, true)
        }
        AckMode::Every(_) => return Ok(()),
    };
    ch.basic_ack(args).await.context("basic.ack")
}

/// Closes politely but never waits long: the run's deadline matters more than a close-ok.
pub async fn close(conn: Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
}
