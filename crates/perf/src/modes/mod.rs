//! One file per kind of run; `run` picks it from the resolved settings.

pub mod backlog;
pub mod floor;
pub mod objects;
pub mod throughput;

use std::sync::Arc;

use crate::cli::{Mode, Settings};
use crate::procfs::{BrokerProbe, Sample};
use crate::report::Report;
use crate::uri::AmqpUri;

/// What every mode needs: where the broker is, the settings, and how to read its process.
pub struct Run {
    pub uri: AmqpUri,
    pub settings: Arc<Settings>,
    pub probe: Option<BrokerProbe>,
    pub label: String,
}

impl Run {
    pub fn sample(&self) -> Option<Sample> {
        self.probe.and_then(|p| p.sample())
    }
}

pub async fn run(r: &Run) -> anyhow::Result<Report> {
    match r.settings.mode {
        Mode::Throughput => throughput::run(r).await,
        Mode::Backlog { messages, drain } => backlog::run(r, messages, drain).await,
        Mode::Declare { queues } => objects::declare_queues(r, queues).await,
        Mode::Connections { connections } => objects::idle_connections(r, connections).await,
    }
}

pub fn base_report(r: &Run, mode: &str) -> Report {
    let s = &r.settings;
    Report {
        scenario: s.scenario.clone(),
        label: r.label.clone(),
        uri_host: format!("{}:{}", r.uri.host, r.uri.port),
        mode: mode.to_string(),
        producers: s.producers,
        consumers: s.consumers,
        queues: s.queues,
        size: s.size,
        broker_pid: r.probe.map(|p| p.pid),
        ..Report::default()
    }
}
