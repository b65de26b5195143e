//! Command line: every load knob is optional so a `--scenario` preset can supply it and an
//! explicit flag still wins (CI runs tiny versions of the presets with `--duration 1`).

use std::str::FromStr;

use anyhow::{bail, Context};
use clap::Parser;

/// ferrymq-perf: AMQP 0-9-1 load generator in the spirit of lavinmqperf / RabbitMQ PerfTest.
///
/// Reports publish and consume rates, end-to-end latency (timestamp in the first 8 bytes of
/// each body), broker CPU µs per consumed message and broker RSS, read from /proc.
#[derive(Debug, Parser, Default)]
#[command(version, about)]
pub struct Args {
    /// AMQP URI of the broker under test.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Preset from the performance issue: s1..s8 (flags given explicitly override it).
    #[arg(long)]
    pub scenario: Option<Scenario>,
    /// Label for the broker in the report (e.g. "ferrymq", "rabbitmq").
    #[arg(long, default_value = "broker")]
    pub label: String,
    /// Publishing connections (one channel each).
    #[arg(long)]
    pub producers: Option<u32>,
    /// Consuming connections (one channel each), spread round-robin over the queues.
    #[arg(long)]
    pub consumers: Option<u32>,
    /// Message body size in bytes (the first 8 bytes carry the send timestamp).
    #[arg(long)]
    pub size: Option<usize>,
    /// Measurement window in seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Load before the measurement window starts, in seconds.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Consumer prefetch (basic.qos); 0 = unlimited.
    #[arg(long)]
    pub prefetch: Option<u16>,
    /// Consumer acknowledgements: auto | each | every:N (multiple=true every N deliveries).
    #[arg(long)]
    pub ack: Option<AckMode>,
    /// Publisher confirms with at most WINDOW unconfirmed messages per producer.
    #[arg(long, value_name = "WINDOW")]
    pub confirm: Option<u32>,
    /// Publish with delivery-mode 2 and declare the queues durable.
    #[arg(long)]
    pub persistent: bool,
    /// Fixed publish rate per producer in msg/s; 0 = as fast as possible.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Queue argument KEY=VALUE (integers are sent as longs, anything else as strings); repeatable.
    #[arg(long = "queue-args", value_name = "KEY=VALUE", value_delimiter = ',')]
    pub queue_args: Vec<String>,
    /// Number of queues.
    #[arg(long)]
    pub queues: Option<u32>,
    /// Publish through a declared exchange of this type (direct, fanout, topic) bound to every
    /// queue, instead of the default exchange.
    #[arg(long)]
    pub exchange_type: Option<String>,
    /// Shorthand for `--exchange-type fanout`.
    #[arg(long)]
    pub fanout: bool,
    /// Publish exactly N messages in total (split over the producers), then stop.
    #[arg(long)]
    pub pmessages: Option<u64>,
    /// With --pmessages: consumers start only after the backlog is complete, then drain it.
    #[arg(long)]
    pub drain: bool,
    /// Declare N durable queues one by one and report time and broker RSS per queue.
    #[arg(long, value_name = "N")]
    pub declare_queues: Option<u32>,
    /// Open N idle connections with a channel each and report broker RSS per connection.
    #[arg(long, value_name = "N")]
    pub idle_connections: Option<u32>,
    /// Measure this host's latency floor for the fixed-rate run instead of a broker: the same
    /// paced producer and consumer, joined by a relay process that only copies bytes.
    #[arg(long)]
    pub floor: bool,
    /// Run as the relay of a `--floor` run, on this address (started by the tool itself).
    #[arg(long, value_name = "ADDR", hide = true)]
    pub relay_listen: Option<String>,
    /// Broker process id for CPU and RSS figures.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Find the broker process by the port it listens on (default: the URI's port).
    #[arg(long)]
    pub broker_port: Option<u16>,
    /// Print the report as one JSON line on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Hard limit on the whole run in seconds; the tool exits with an error past it.
    #[arg(long)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    S7,
    S8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// no-ack consumers: the broker forgets a message once sent.
    Auto,
    /// basic.ack for every delivery.
    Each,
    /// basic.ack multiple=true every N deliveries.
    Every(u32),
}

impl FromStr for AckMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<AckMode> {
        match s {
            "auto" => Ok(AckMode::Auto),
            "each" => Ok(AckMode::Each),
            _ => {
                let Some(n) = s.strip_prefix("every:") else {
                    bail!("ack mode is auto, each or every:N, not {s:?}");
                };
                let n: u32 = n.parse().context("every:N needs a number")?;
                if n == 0 {
                    bail!("every:N needs N > 0");
                }
                Ok(AckMode::Every(n))
            }
        }
    }
}

/// What the run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Producers and consumers run together for warm-up + duration.
    Throughput,
    /// Publish a fixed count with no consumer, then (with drain) consume it all.
    Backlog { messages: u64, drain: bool },
    /// Declare durable queues one by one.
    Declare { queues: u32 },
    /// Open idle connections.
    Connections { connections: u32 },
}

/// The resolved settings of one run: preset defaults overridden by explicit flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scenario: String,
    pub mode: Mode,
    pub producers: u32,
    pub consumers: u32,
    pub size: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub prefetch: u16,
    pub ack: AckMode,
    pub confirm: Option<u32>,
    pub persistent: bool,
    pub rate: u32,
    pub queue_args: Vec<(String, String)>,
    pub queues: u32,
    pub exchange_type: Option<String>,
    pub timeout_s: f64,
}

impl Settings {
    pub fn resolve(args: &Args) -> anyhow::Result<Settings> {
        let mut s = preset(args.scenario);
        override_knobs(&mut s, args)?;
        validate(&s)?;
        Ok(s)
    }
}

fn override_knobs(s: &mut Settings, args: &Args) -> anyhow::Result<()> {
    macro_rules! take {
        ($field:ident, $arg:ident) => {
            if let Some(v) = args.$arg.clone() {
                s.$field = v;
            }
        };
    }
    take!(producers, producers);
    take!(consumers, consumers);
    take!(size, size);
    take!(duration_s, duration);
    take!(warmup_s, warmup);
    take!(prefetch, prefetch);
    take!(ack, ack);
    take!(rate, rate);
    take!(queues, queues);
    if args.confirm.is_some() {
        s.confirm = args.confirm;
    }
    s.persistent |= args.persistent;
    if args.fanout {
        s.exchange_type = Some("fanout".into());
    }
    if args.exchange_type.is_some() {
        s.exchange_type = args.exchange_type.clone();
    }
    for kv in &args.queue_args {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("queue argument {kv:?} is not KEY=VALUE"))?;
        s.queue_args.push((k.to_string(), v.to_string()));
    }
    s.mode = override_mode(s.mode, args);
    s.timeout_s = args
        .timeout
        .unwrap_or_else(|| default_timeout_s(s.mode, s.warmup_s + s.duration_s));
    Ok(())
}

fn override_mode(mode: Mode, args: &Args) -> Mode {
    if let Some(queues) = args.declare_queues {
        return Mode::Declare { queues };
    }
    if let Some(connections) = args.idle_connections {
        return Mode::Connections { connections };
    }
    match (mode, args.pmessages) {
        (Mode::Backlog { drain, .. }, Some(messages)) => Mode::Backlog {
            messages,
            drain: drain || args.drain,
        },
        (_, Some(messages)) => Mode::Backlog {
            messages,
            drain: args.drain,
        },
        (Mode::Declare { .. }, None) | (Mode::Connections { .. }, None) => mode,
        (Mode::Throughput, None) => Mode::Throughput,
        (Mode::Backlog { messages, drain }, None) => Mode::Backlog {
            messages,
            drain: drain || args.drain,
        },
    }
}

/// Generous: RabbitMQ needs ~25 s for S7 and minutes for a 1M backlog on a busy box.
fn default_timeout_s(mode: Mode, window_s: f64) -> f64 {
    match mode {
        Mode::Throughput => window_s + 60.0,
        Mode::Backlog { .. } => 600.0,
        Mode::Declare { .. } | Mode::Connections { .. } => 300.0,
    }
}

fn validate(s: &Settings) -> anyhow::Result<()> {
    if s.queues == 0 {
        bail!("--queues must be at least 1");
    }
    if s.producers == 0 && matches!(s.mode, Mode::Throughput | Mode::Backlog { .. }) {
        bail!("--producers must be at least 1");
    }
    if s.duration_s <= 0.0 || s.warmup_s < 0.0 {
        bail!("--duration must be > 0 and --warmup >= 0");
    }
    if s.confirm == Some(0) {
        bail!("--confirm WINDOW must be at least 1");
    }
    Ok(())
}

/// The scenarios of the performance issue; anything not listed is S1's shape.
pub fn preset(scenario: Option<Scenario>) -> Settings {
    let mut s = Settings {
        scenario: "custom".into(),
        mode: Mode::Throughput,
        producers: 1,
        consumers: 1,
        size: 16,
        duration_s: 10.0,
        warmup_s: 2.0,
        prefetch: 0,
        ack: AckMode::Auto,
        confirm: None,
        persistent: false,
        rate: 0,
        queue_args: Vec::new(),
        queues: 1,
        exchange_type: None,
        timeout_s: 0.0,
    };
    let Some(scenario) = scenario else {
        return s;
    };
    s.scenario = format!("{scenario:?}").to_lowercase();
    match scenario {
        Scenario::S1 => {}
        Scenario::S2 => {
            s.ack = AckMode::Each;
            s.prefetch = 1000;
        }
        Scenario::S3 => {
            s.persistent = true;
            s.size = 1024;
            s.confirm = Some(1000);
            s.ack = AckMode::Each;
            s.prefetch = 1000;
        }
        Scenario::S4 => {
            s.exchange_type = Some("fanout".into());
            s.queues = 4;
            s.consumers = 4;
        }
        Scenario::S5 => {
            s.mode = Mode::Backlog {
                messages: 1_000_000,
                drain: true,
            };
            s.consumers = 1;
        }
        Scenario::S6 => {
            s.rate = 10_000;
        }
        Scenario::S7 => s.mode = Mode::Declare { queues: 10_000 },
        Scenario::S8 => s.mode = Mode::Connections { connections: 1_000 },
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_modes_parse() {
        assert_eq!("auto".parse::<AckMode>().unwrap(), AckMode::Auto);
        assert_eq!("each".parse::<AckMode>().unwrap(), AckMode::Each);
        assert_eq!("every:50".parse::<AckMode>().unwrap(), AckMode::Every(50));
        assert!("every:0".parse::<AckMode>().is_err());
        assert!("sometimes".parse::<AckMode>().is_err());
    }

    #[test]
    fn explicit_flags_override_the_preset() {
        let args = Args {
            scenario: Some(Scenario::S5),
            pmessages: Some(1000),
            duration: Some(1.0),
            ..Args::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(
            s.mode,
            Mode::Backlog {
                messages: 1000,
                drain: true
            }
        );
        assert_eq!(s.duration_s, 1.0);
        assert_eq!(s.scenario, "s5");
    }

    #[test]
    fn s4_is_fanout_to_four_queues() {
        let s = preset(Some(Scenario::S4));
        assert_eq!(s.exchange_type.as_deref(), Some("fanout"));
        assert_eq!((s.queues, s.consumers), (4, 4));
    }
}
