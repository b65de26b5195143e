//! CI check that ferrymq-perf runs each kind of scenario against a real ferrymq without errors.
//! Nothing here is timed: loads are tiny and only exit status and counts are asserted.
//!
//! The broker runs inside this test process (the root `ferrymq` package is a dev-dependency),
//! so the tool finds it by port and samples this process's CPU and RSS.

use std::process::Command;

use ferrymq::config::Config;
use ferrymq::server::{start, Running};
use serde_json::Value;

struct Broker {
    running: Running,
    _data_dir: tempfile::TempDir,
}

async fn broker() -> Broker {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::for_tests();
    config.data_dir = data_dir.path().to_path_buf();
    let running = start(config).await.expect("broker starts");
    Broker {
        running,
        _data_dir: data_dir,
    }
}

/// Runs the tool with `args` against `broker` and returns its JSON report.
async fn perf(broker: &Broker, args: &[&str]) -> Value {
    let uri = format!("amqp://guest:guest@{}/%2f", broker.running.amqp_addr);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrymq-perf"));
    cmd.args(["--uri", &uri, "--json", "--timeout", "60"])
        .args(args);
    // The broker lives on this runtime: wait for the child off it.
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("ferrymq-perf runs"))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ferrymq-perf {args:?} failed:\n{stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.lines().last().expect("a JSON line");
    let report: Value = serde_json::from_str(line).expect("valid JSON");
    assert_eq!(report["errors"], 0, "{stderr}");
    assert_eq!(
        report["broker_pid"],
        std::process::id(),
        "the in-process broker is found by its port"
    );
    report
}

fn count(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_short_run_consumes_and_reports_latency() {
    let b = broker().await;
    let r = perf(
        &b,
        &["--scenario", "s1", "--duration", "1", "--warmup", "0.2"],
    )
    .await;
    assert!(count(&r, "consumed") > 0, "{r}");
    assert!(r["latency_p99_us"].as_f64().is_some(), "{r}");
    assert!(r["broker_cpu_us_per_msg"].as_f64().is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_and_acks_every_n_run_clean() {
    let b = broker().await;
    let args = [
        "--scenario",
        "s3",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--ack",
        "every:10",
        "--rate",
        "2000",
    ];
    let r = perf(&b, &args).await;
    assert!(count(&r, "consumed") > 0, "{r}");
    assert!(count(&r, "confirmed") > 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_to_every_queue() {
    let b = broker().await;
    let args = [
        "--scenario",
        "s4",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--rate",
        "1000",
    ];
    let r = perf(&b, &args).await;
    assert!(count(&r, "consumed") > count(&r, "published"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_is_published_then_drained() {
    let b = broker().await;
    let r = perf(&b, &["--scenario", "s5", "--pmessages", "2000"]).await;
    assert_eq!(count(&r, "published"), 2000, "{r}");
    assert_eq!(count(&r, "consumed"), 2000, "{r}");
    assert!(r["backlog_rss_bytes"].as_u64().is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_idle_connections_are_counted() {
    let b = broker().await;
    let r = perf(&b, &["--scenario", "s7", "--declare-queues", "20"]).await;
    assert_eq!(count(&r, "objects"), 20, "{r}");
    let r = perf(&b, &["--scenario", "s8", "--idle-connections", "10"]).await;
    assert_eq!(count(&r, "objects"), 10, "{r}");
    // What S7 declared, it deleted.
    let vhost = b.running.broker.vhost("/").expect("default vhost");
    assert_eq!(vhost.queue_count(), 0);
}

/// `--floor` needs no broker: the tool starts a relay process of its own and reports it in the
/// broker's place.
#[test]
fn floor_runs_through_a_relay_process() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrymq-perf"))
        .args(["--scenario", "s6", "--floor", "--json", "--label", "floor"])
        .args(["--duration", "0.5", "--warmup", "0.1", "--rate", "2000"])
        .output()
        .expect("ferrymq-perf runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ferrymq-perf --floor failed:\n{stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let r: Value = serde_json::from_str(stdout.lines().last().expect("a JSON line")).unwrap();
    assert_eq!(r["mode"], "floor", "{r}");
    assert_eq!(r["errors"], 0, "{stderr}");
    assert!(count(&r, "consumed") > 0, "{r}");
    assert!(r["latency_p999_us"].as_f64().is_some(), "{r}");
    let relay = count(&r, "broker_pid");
    assert!(relay > 0 && relay != u64::from(std::process::id()), "{r}");
    assert!(
        !std::path::Path::new(&format!("/proc/{relay}")).exists(),
        "the relay has exited"
    );
}

#[test]
fn floor_refuses_a_run_without_a_fixed_rate() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrymq-perf"))
        .args(["--scenario", "s1", "--floor", "--duration", "0.1"])
        .output()
        .expect("ferrymq-perf runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--floor needs a fixed --rate"), "{stderr}");
}
