//! `magnetar-client`: produce and consume messages from the command line (pulsar-client's
//! verbs), through our Rust client.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use magnetar_cli::load::{ClientArgs, SubType};
use magnetar_cli::parse_duration;
use magnetar_client::{
    Compression, InitialPosition, Message, MessageId, ProducerMessage, SubscriptionType,
};

#[derive(Parser)]
#[command(
    name = "magnetar-client",
    version,
    about = "Produce and consume messages on Magnetar (or Pulsar) through the binary protocol",
    after_help = "Exit status: 0 done, 1 the broker refused or could not be reached, 2 bad usage."
)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send messages: each -m, each line of --file (or stdin with --file -), -n times.
    Produce(Produce),
    /// Receive messages and print them, acknowledging each.
    Consume(Consume),
    /// Read a topic from a position without a durable subscription.
    Read(Read),
}

#[derive(clap::Args)]
struct Produce {
    topic: String,
    /// A message to send (repeatable).
    #[arg(long, short = 'm')]
    messages: Vec<String>,
    /// Send each line of this file as a message (`-` reads stdin).
    #[arg(long, short = 'f')]
    file: Option<String>,
    /// Send the messages this many times.
    #[arg(long, short = 'n', default_value_t = 1)]
    num_produce: u64,
    /// Partition key for every message.
    #[arg(long, short = 'k')]
    key: Option<String>,
    /// Property KEY=VALUE for every message (repeatable).
    #[arg(long, short = 'p', value_parser = key_value)]
    property: Vec<(String, String)>,
    /// Deliver the messages after this delay (Shared subscriptions).
    #[arg(long, value_parser = parse_duration)]
    deliver_after: Option<Duration>,
    /// none, lz4, zlib, zstd or snappy.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Split messages larger than the broker allows into chunks.
    #[arg(long)]
    chunking: bool,
    /// Messages per second (0: as fast as possible).
    #[arg(long, short = 'r', default_value_t = 0.0)]
    rate: f64,
}

#[derive(clap::Args)]
struct Consume {
    topic: String,
    #[arg(long, short = 's')]
    subscription: String,
    #[arg(long, short = 't', value_enum, default_value = "exclusive")]
    sub_type: SubType,
    /// Messages to receive (0: until interrupted).
    #[arg(long, short = 'n', default_value_t = 1)]
    num_messages: u64,
    /// Start a new subscription at the oldest message (default: the newest).
    #[arg(long)]
    earliest: bool,
    #[command(flatten)]
    out: Output,
    /// Give up when nothing arrives for this long (default: wait forever).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

#[derive(clap::Args)]
struct Read {
    topic: String,
    /// earliest, latest, or ledger:entry[:partition[:batch]].
    #[arg(long, default_value = "earliest")]
    start: MessageId,
    /// Messages to read (0: until the end of what is stored now).
    #[arg(long, short = 'n', default_value_t = 0)]
    num_messages: u64,
    #[command(flatten)]
    out: Output,
}

#[derive(clap::Args)]
struct Output {
    /// One JSON object per message (id, key, properties, publish time, payload).
    #[arg(long)]
    json: bool,
    /// Print payloads as hex instead of text.
    #[arg(long)]
    hex: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn print(m: &Message, o: &Output) -> Result<()> {
    let payload = if o.hex {
        m.payload.iter().map(|b| format!("{b:02x}")).collect()
    } else {
        m.text().into_owned()
    };
    let mut out = std::io::stdout().lock();
    if o.json {
        let props: serde_json::Map<String, serde_json::Value> = m
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let v = serde_json::json!({
            "topic": &*m.topic,
            "id": m.id.to_string(),
            "key": m.key,
            "properties": props,
            "publish_time": m.publish_time,
            "event_time": m.event_time,
            "redelivery_count": m.redelivery_count,
            "payload": payload,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{payload}")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("magnetar-client: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let client = cli.client.client()?;
    match cli.cmd {
        Cmd::Produce(p) => {
            let mut bodies = p.messages.clone();
            if let Some(f) = &p.file {
                let text = if f == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    std::fs::read_to_string(f).with_context(|| format!("read {f}"))?
                };
                bodies.extend(text.lines().map(str::to_string));
            }
            if bodies.is_empty() {
                bail!("nothing to send: give -m or --file");
            }
            let producer = client
                .producer(&p.topic)
                .compression(p.compression)
                .chunking(p.chunking)
                .batching(!p.chunking)
                .create()
                .await?;
            let started = std::time::Instant::now();
            let mut receipts = Vec::new();
            let mut n = 0u64;
            for _ in 0..p.num_produce {
                for b in &bodies {
                    if p.rate > 0.0 {
                        let due = started + Duration::from_secs_f64(n as f64 / p.rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let mut m = ProducerMessage::new(b.clone().into_bytes());
                    m.key = p.key.clone();
                    m.properties = p.property.clone();
                    if let Some(d) = p.deliver_after {
                        m = m.deliver_after(d);
                    }
                    receipts.push(producer.send_async(m).await?);
                    n += 1;
                }
            }
            for r in receipts {
                r.await?;
            }
            producer.close().await?;
            eprintln!("{n} messages produced to {}", producer.topic());
        }
        Cmd::Consume(c) => {
            let mut consumer = client
                .consumer()
                .topic(&c.topic)
                .subscription(&c.subscription)
                .subscription_type(SubscriptionType::from(c.sub_type))
                .initial_position(if c.earliest {
                    InitialPosition::Earliest
                } else {
                    InitialPosition::Latest
                })
                .subscribe()
                .await?;
            let mut n = 0;
            while c.num_messages == 0 || n < c.num_messages {
                let m = match c.timeout {
                    Some(t) => match tokio::time::timeout(t, consumer.receive()).await {
                        Ok(m) => m?,
                        Err(_) => bail!("no message within {t:?} ({n} received)"),
                    },
                    None => consumer.receive().await?,
                };
                print(&m, &c.out)?;
                consumer.ack(&m)?;
                n += 1;
            }
            consumer.close().await?;
            eprintln!("{n} messages consumed");
        }
        Cmd::Read(r) => {
            let mut reader = client
                .reader(&r.topic)
                .start_message_id(r.start)
                .start_inclusive(true)
                .create()
                .await?;
            let mut n = 0;
            loop {
                if r.num_messages > 0 && n >= r.num_messages {
                    break;
                }
                if r.num_messages == 0 && !reader.has_message_available().await? {
                    break;
                }
                let m = reader.read_next().await?;
                print(&m, &r.out)?;
                n += 1;
            }
            reader.close().await?;
            eprintln!("{n} messages read");
        }
    }
    Ok(())
}
