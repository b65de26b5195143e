//! Cross-language compatibility: runs `tests/python/pika_test.py` (pika, the reference
//! Python client) against a broker on an ephemeral port. The virtualenv comes from
//! `scripts/python-venv.sh`, which is run first when `.venv/bin/python` is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// The script itself bounds each broker wait to 5 s; this bounds the whole run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Creating the virtualenv and installing pika from PyPI on a cold machine.
const VENV_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command` with a deadline, without blocking the runtime the broker runs on.
/// Returns the exit status and everything it printed.
async fn run(mut command: Command, deadline: Duration) -> (ExitStatus, String) {
    let out = tempfile::tempfile().expect("temp file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out.try_clone().expect("dup"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let give_up = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} did not finish within {deadline:?}:\n{}",
                read(out)
            );
        }
        sleep(Duration::from_millis(50)).await;
    };
    (status, read(out))
}

fn read(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    file.rewind().expect("rewind");
    file.read_to_string(&mut text).expect("read output");
    text
}

async fn python() -> PathBuf {
    let python = repo().join(".venv/bin/python");
    if !python.exists() {
        let (status, output) = run(
            Command::new(repo().join("scripts/python-venv.sh")),
            VENV_TIMEOUT,
        )
        .await;
        assert!(status.success(), "python-venv.sh failed:\n{output}");
    }
    assert!(Path::new(&python).exists(), "no {}", python.display());
    python
}

#[tokio::test]
async fn pika_declares_publishes_with_confirms_consumes_and_gets() {
    let broker = common::TestBroker::start().await;
    let mut command = Command::new(python().await);
    command
        .arg(repo().join("tests/python/pika_test.py"))
        .arg(broker.uri())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (status, output) = run(command, SCRIPT_TIMEOUT).await;
    println!("{output}");
    assert!(status.success(), "pika_test.py failed:\n{output}");
    assert!(output.contains(" passed, 0 failed"), "{output}");
    broker.shutdown().await;
}
