//! ferrymq-perf: load generator for AMQP 0-9-1 brokers, so ferrymq and RabbitMQ are measured
//! with the same client (amqprs) on the same machine.
//!
//! Layout:
//! - `cli`: flags, ack modes and the s1..s8 scenario presets, resolved into `Settings`.
//! - `modes/`: one file per kind of run (throughput window, fixed backlog, idle objects, and
//!   the host's latency floor through a relay instead of a broker).
//! - `workers`: producer and consumer tasks, one connection each.
//! - `client`: amqprs plumbing: connect, the run's own queues/exchange, confirm window.
//! - `latency`: body timestamps and the hdrhistogram percentiles.
//! - `procfs`: the broker process by listening port, its CPU time and RSS.
//! - `report`: the table and the JSON line.

/// The load generator shares the machine's cores with the broker it measures: every
/// microsecond it spends per message is one the broker does not get, and glibc's malloc
/// took about 5% of its profile under S3 (1 KiB bodies copied through amqprs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod client;
mod latency;
mod modes;
mod procfs;
mod report;
mod uri;
mod workers;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::cli::{Args, Mode, Settings};
use crate::modes::Run;
use crate::procfs::BrokerProbe;
use crate::report::Report;
use crate::uri::AmqpUri;

fn main() -> ExitCode {
    no_huge_pages();
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferrymq-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(addr) = &args.relay_listen {
        modes::floor::relay(addr)?;
        return Ok(ExitCode::SUCCESS);
    }
    let settings = Arc::new(Settings::resolve(args)?);
    let report = if args.floor {
        modes::floor::run(&settings, &args.label)?
    } else {
        run_against_broker(args, &settings)?
    };
    if args.json {
        eprint!("{}", report.table());
        println!("{}", report.json_line());
    } else {
        print!("{}", report.table());
    }
    let idle_consumers =
        settings.consumers > 0 && matches!(settings.mode, Mode::Throughput) && report.consumed == 0;
    if idle_consumers {
        eprintln!("ferrymq-perf: consumers received nothing");
    }
    Ok(if report.errors > 0 || idle_consumers {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn run_against_broker(args: &Args, settings: &Arc<Settings>) -> anyhow::Result<Report> {
    let uri = AmqpUri::parse(&args.uri)?;
    raise_open_files_limit();
    let probe = find_broker(args, &uri);
    if probe.is_none() {
        eprintln!("ferrymq-perf: broker process not found; CPU and RSS will be missing");
    }
    let r = Run {
        uri,
        settings: settings.clone(),
        probe,
        label: args.label.clone(),
    };
    // Declaring queues is one request and one reply at a time: on a single thread the
    // client's reader and writer tasks hand each reply to the loop without waking another
    // thread, so the loop measures the broker's round trip rather than the tool's wake-ups.
    let runtime = match settings.mode {
        Mode::Declare { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    let deadline = Duration::from_secs_f64(settings.timeout_s);
    let report = runtime
        .block_on(async { tokio::time::timeout(deadline, modes::run(&r)).await })
        .with_context(|| format!("run exceeded its {deadline:?} deadline"))??;
    // amqprs keeps background tasks per connection; do not wait for them on the way out.
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(report)
}

fn find_broker(args: &Args, uri: &AmqpUri) -> Option<BrokerProbe> {
    let pid = match args.broker_pid {
        Some(pid) => Some(pid),
        None => procfs::find_pid_by_port(args.broker_port.unwrap_or(uri.port)),
    };
    pid.map(BrokerProbe::new)
}

/// The tool's memory comes and goes with the messages in flight (amqprs buffers what a
/// producer publishes ahead of the socket). With transparent huge pages, each page the
/// allocator takes back costs a fault that zeroes 2 MiB; under S1 that was 12% of the tool's
/// CPU, taken from the cores the broker under test runs on.
fn no_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and changes only this
    // process's (and its children's) use of transparent huge pages.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1u64, 0u64, 0u64, 0u64) };
}

/// S8 opens 1,000 connections; make sure the descriptor limit is not what stops it.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
