//! The host's latency floor for a fixed-rate run (`--floor`): the same paced producer and
//! consumer as S6, with no broker between them, only a relay process that copies bytes.
//!
//! ```text
//!   this process                          relay (this binary, --relay-listen)
//!   producer thread ── TCP ──▶ read ─▶ write ── TCP ──▶ consumer thread
//!   (sleeps until due,         (one thread, blocked        (blocked in read,
//!    stamps, writes)            in read between messages)   subtracts the stamp)
//! ```
//!
//! Each message wakes the same three sleeping threads as through a broker: the producer on its
//! timer, the relay's thread, the consumer. Whatever latency the relay shows is the cost of
//! those wake-ups on this machine at this moment, with no AMQP parsing, queueing or routing
//! in it, so a broker's S6 percentiles can be read against it. The relay takes the broker's
//! place in the report: its pid, CPU per message and RSS fill the broker fields.
//!
//! A record on the wire is `--size` bytes (at least the 8-byte timestamp), as a body would be.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cli::Settings;
use crate::latency::{now_ns, read_stamp, stamp, LatencyHistogram, TIMESTAMP_BYTES};
use crate::procfs::BrokerProbe;
use crate::report::Report;
use crate::workers::{Control, Counters, Pace};

/// The relay's read size: far above what arrives between two wake-ups at a fixed rate.
const RELAY_READ_BYTES: usize = 64 * 1024;

/// Runs the relay: binds `addr`, prints the bound port on its own line on stdout, takes the
/// producer's connection and then the consumer's, and copies the first to the second until
/// the producer closes.
pub fn relay(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let port = listener.local_addr()?.port();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{port}")?;
    stdout.flush()?;
    let (mut from, _) = listener.accept().context("accepting the producer")?;
    let (mut to, _) = listener.accept().context("accepting the consumer")?;
    to.set_nodelay(true)?;
    let mut buf = vec![0u8; RELAY_READ_BYTES];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading from the producer"),
        };
        to.write_all(&buf[..n]).context("writing to the consumer")?;
    }
}

/// Starts a relay, runs the fixed-rate load through it for warm-up + duration, and reports
/// the latencies and the relay's CPU and RSS.
pub fn run(s: &Settings, label: &str) -> anyhow::Result<Report> {
    if s.rate == 0 || s.producers != 1 || s.consumers != 1 {
        bail!("--floor needs a fixed --rate with 1 producer and 1 consumer (as in s6)");
    }
    let record_bytes = s.size.max(TIMESTAMP_BYTES);
    let (relay, port) = start_relay()?;
    let relay = KillOnDrop(relay);
    let addr = ("127.0.0.1", port);
    // The relay accepts in this order: producer first, then consumer.
    let producer = TcpStream::connect(addr).context("connecting the producer")?;
    producer.set_nodelay(true)?;
    let consumer = TcpStream::connect(addr).context("connecting the consumer")?;

    let ctl = Control::new();
    let consuming = {
        let ctl = ctl.clone();
        thread::Builder::new()
            .name("floor-consumer".into())
            .spawn(move || consume(consumer, record_bytes, &ctl))?
    };
    let producing = {
        let (ctl, rate, producer) = (ctl.clone(), s.rate, producer.try_clone()?);
        thread::Builder::new()
            .name("floor-producer".into())
            .spawn(move || produce(producer, rate, record_bytes, &ctl))?
    };
    let counts = || {
        let c = &ctl.counters;
        (Counters::get(&c.published), Counters::get(&c.consumed))
    };

    let probe = BrokerProbe::new(relay.0.id());
    thread::sleep(Duration::from_secs_f64(s.warmup_s));
    let (pub0, con0) = counts();
    let sample0 = probe.sample();
    let t0 = Instant::now();
    ctl.measuring.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_secs_f64(s.duration_s));
    ctl.measuring.store(false, Ordering::Relaxed);
    let window_s = t0.elapsed().as_secs_f64();
    let (pub1, con1) = counts();
    let sample1 = probe.sample();

    ctl.stop_producers.store(true, Ordering::Relaxed);
    let produced = producing.join().expect("producer thread does not panic");
    // The relay sees end-of-file, closes its side, and the consumer reads to the end.
    let _ = producer.shutdown(Shutdown::Write);
    let consumed = consuming.join().expect("consumer thread does not panic");
    let mut errors = 0;
    if let Err(e) = &produced {
        eprintln!("ferrymq-perf: floor producer failed: {e:#}");
        errors += 1;
    }
    if let Err(e) = &consumed {
        eprintln!("ferrymq-perf: floor consumer failed: {e:#}");
        errors += 1;
    }

    let mut report = Report {
        scenario: s.scenario.clone(),
        label: label.to_string(),
        uri_host: format!("relay 127.0.0.1:{port}"),
        mode: "floor".into(),
        producers: 1,
        consumers: 1,
        queues: 0,
        size: record_bytes,
        broker_pid: Some(relay.0.id()),
        window_s,
        published: pub1 - pub0,
        consumed: con1 - con0,
        ..Report::default()
    };
    report.publish_rate = Some(report.published as f64 / window_s);
    report.consume_rate = Some(report.consumed as f64 / window_s);
    if let Ok(hist) = &consumed {
        report.set_latency(hist.percentiles());
    }
    report.set_broker_window(sample0, sample1, report.consumed);
    report.errors = errors;
    Ok(report)
}

fn produce(mut to: TcpStream, rate: u32, record_bytes: usize, ctl: &Control) -> anyhow::Result<()> {
    let pace = Pace::start(rate);
    let mut record = vec![0u8; record_bytes];
    let mut sent = 0u64;
    while !ctl.stop_producers.load(Ordering::Relaxed) {
        pace.sleep_until_due(sent);
        stamp(&mut record, now_ns());
        to.write_all(&record).context("writing to the relay")?;
        sent += 1;
        ctl.counters.published.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn consume(
    mut from: TcpStream,
    record_bytes: usize,
    ctl: &Control,
) -> anyhow::Result<LatencyHistogram> {
    let mut hist = LatencyHistogram::default();
    let mut record = vec![0u8; record_bytes];
    loop {
        match from.read_exact(&mut record) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(hist),
            Err(e) => return Err(e).context("reading from the relay"),
        }
        let received = now_ns();
        if ctl.measuring.load(Ordering::Relaxed) {
            if let Some(sent) = read_stamp(&record) {
                hist.record(sent, received);
            }
        }
        ctl.counters.consumed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs this binary as the relay on a free loopback port and reads that port back.
fn start_relay() -> anyhow::Result<(Child, u16)> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut child = Command::new(exe)
        .args(["--relay-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the relay")?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the relay's port")?;
    match line.trim().parse() {
        Ok(port) => Ok((child, port)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the relay did not report its port (got {line:?})")
        }
    }
}

/// The relay ends by itself when the producer closes; this makes sure it also ends when the
/// run fails half-way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
