//! What one produce request costs librdkafka's own threads, apart from the module: a
//! `BaseProducer` with the module's producer defaults (acks = all, idempotent, linger.ms =
//! 5) hands over a paced stream of records in batches, one batch per window, as the
//! feeder does, into tansu on 127.0.0.1. Each row is one window at the same 200 records/s:
//! the broker thread's CPU per request and per record shows how much of the paced figure
//! of `asterisk_cpu` is librdkafka's fixed cost per request, which only fewer requests
//! (a longer window) lower. Then the same 100 ms window with librdkafka options that
//! might lower it, and with a key per record: librdkafka sends one request per partition
//! a window's records fall on (tansu's topics have 3), where records without a key stick
//! to one partition for a window (its sticky partitioner).
//!
//! `cargo bench --bench broker_requests`. CDR_KAFKA_BENCH_SECS (default 15) per row;
//! CDR_KAFKA_BENCH_QUICK=1: 2 s per row.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

/// librdkafka's latest statistics, kept as they came (parsed outside the figures).
#[derive(Default)]
struct Requests(Mutex<Vec<u8>>);

impl ClientContext for Requests {
    fn stats_raw(&self, statistics: &[u8]) {
        *self.0.lock().unwrap() = statistics.to_vec();
    }
}

impl Requests {
    /// Produce requests sent so far (`brokers.*.req.Produce`).
    fn produce_requests(&self) -> u64 {
        let raw = self.0.lock().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
        let brokers = json["brokers"].as_object().into_iter().flatten();
        brokers
            .filter_map(|(_, broker)| broker["req"]["Produce"].as_u64())
            .sum()
    }
}

impl ProducerContext for Requests {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

const TOPIC: &str = "requests";
const RATE: u64 = 200;

struct Row {
    window_ms: u64,
    options: &'static [(&'static str, &'static str)],
    /// Each record its own key (`key = linkedid`), else none (the module's default).
    keyed: bool,
}

fn main() {
    let secs = common::env_number("CDR_KAFKA_BENCH_SECS", 15, 2);
    let tansu = support::Tansu::start();
    tansu.create_topic(TOPIC);
    println!("{}", common::machine());
    println!();
    println!(
        "| window, librdkafka options ({RATE} records/s, {secs} s a row) | produce requests | \
         rdk:broker* per request, µs | rdk:broker* per record, µs | the producing thread per record, µs |"
    );
    println!("|---|---|---|---|---|");
    let none: &[(&str, &str)] = &[];
    let rows = [
        Row {
            window_ms: 50,
            options: none,
            keyed: false,
        },
        Row {
            window_ms: 100,
            options: none,
            keyed: false,
        },
        Row {
            window_ms: 200,
            options: none,
            keyed: false,
        },
        Row {
            window_ms: 500,
            options: none,
            keyed: false,
        },
        Row {
            window_ms: 1000,
            options: none,
            keyed: false,
        },
        Row {
            window_ms: 100,
            options: &[("enable.idempotence", "false")],
            keyed: false,
        },
        Row {
            window_ms: 100,
            options: &[("linger.ms", "1")],
            keyed: false,
        },
        Row {
            window_ms: 100,
            options: &[("socket.nagle.disable", "true")],
            keyed: false,
        },
        Row {
            window_ms: 100,
            options: none,
            keyed: true,
        },
    ];
    for row in rows {
        let (requests, broker_us, producing_us) = run(&tansu.brokers(), &row, secs);
        let records = (RATE * secs) as f64;
        let options: Vec<String> = row
            .options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "| {} ms{}{} | {requests} | {:.0} | {:.1} | {:.1} |",
            row.window_ms,
            if options.is_empty() {
                String::new()
            } else {
                format!(", {}", options.join(", "))
            },
            if row.keyed {
                ", a key per record (3 partitions)"
            } else {
                ""
            },
            broker_us / requests as f64,
            broker_us / records,
            producing_us / records,
        );
    }
    common::quick_note();
}

/// Runs one row: (requests, µs of the broker threads, µs of this thread).
fn run(brokers: &str, row: &Row, secs: u64) -> (u64, f64, f64) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.messages", "20000")
        .set("statistics.interval.ms", "1000");
    for (name, value) in row.options {
        config.set(*name, *value);
    }
    let producer: BaseProducer<Requests> = config
        .create_with_context(Requests::default())
        .expect("a producer");
    // The statistics of after the last request: one interval later.
    let requests = || {
        let until = Instant::now() + Duration::from_millis(1200);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            producer.poll(left);
        }
        producer.context().produce_requests()
    };
    let payload = vec![b'x'; 1100];
    let window = Duration::from_millis(row.window_ms);
    let per_window = (RATE * row.window_ms / 1000).max(1);
    let hand_over = |count: u64| {
        for n in 0..count {
            let id = format!("record-{n}");
            let headers = common::headers(&id).into_iter().fold(
                OwnedHeaders::new_with_capacity(6),
                |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(&value),
                    })
                },
            );
            let mut record: BaseRecord<'_, str, [u8]> =
                BaseRecord::to(TOPIC).payload(&payload[..]).headers(headers);
            if row.keyed {
                record = record.key(id.as_str());
            }
            while let Err((_, back)) = producer.send(record) {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
        }
    };
    // Connected, metadata known, the producer id assigned: not part of the figure.
    hand_over(50);
    producer
        .flush(Duration::from_secs(30))
        .expect("the warm-up is delivered");
    let requests_before = requests();
    let before = common::thread_cpu("self");
    let windows = secs * 1000 / row.window_ms;
    for _ in 0..windows {
        let started = Instant::now();
        hand_over(per_window);
        while let Some(left) = window.checked_sub(started.elapsed()) {
            producer.poll(left);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("every record is delivered");
    let after = common::thread_cpu("self");
    let requests = requests() - requests_before;
    let us = |group: &str| {
        let was = before.get(group).map_or(0, |c| c.run_ns);
        after.get(group).map_or(0, |c| c.run_ns.saturating_sub(was)) as f64 / 1000.0
    };
    (requests, us("rdk:broker*"), us("main"))
}
