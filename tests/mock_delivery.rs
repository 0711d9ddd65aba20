//! Delivery against librdkafka's own mock cluster: what reaches the topic (payload, key,
//! headers), what the counters say, and how faults (broker down, full queue, message
//! timeout, shutdown while down) are reported.
//!
//! Each test starts its own `MockCluster` (its own listeners, dropped with the test), so
//! the tests run in parallel. Waits are bounded polls of observable state; no sleep
//! stands in for an assertion.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cdr_kafka::asterisk::host::Identity;
use cdr_kafka::config::{self, ConfigError, Entry, HostCapabilities, Settings};
use cdr_kafka::delivery::stats::Stats;
use cdr_kafka::delivery::SendError;
use cdr_kafka::module::Running;
use cdr_kafka::record::{self, Cdr, CdrTime, EncodeOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "asterisk_cdr";
/// `broker_down`/`broker_up` take a broker id; -1 means every broker of the cluster.
const ALL_BROKERS: i32 = -1;
/// Far above what any wait here needs on a loaded 2-core machine: a bound, not a timing.
const DEADLINE: Duration = Duration::from_secs(60);

/// A mock cluster of one broker with `TOPIC` (one partition) created.
fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("create topic");
    cluster
}

/// Settings as cdr_kafka.conf `[global]` would give them; `topic` is `TOPIC` unless given.
fn settings(brokers: &str, options: &[(&str, &str)]) -> Settings {
    let topic = options
        .iter()
        .all(|(name, _)| *name != "topic")
        .then_some(("topic", TOPIC));
    let entries: Vec<Entry> = [("brokers", brokers)]
        .into_iter()
        .chain(topic)
        .chain(options.iter().copied())
        .enumerate()
        .map(|(line, (name, value))| Entry {
            section: "global".into(),
            name: (*name).into(),
            value: (*value).into(),
            line: line as i32 + 2,
        })
        .collect();
    config::parse(
        &entries,
        HostCapabilities {
            tenant_fields: true,
        },
        &mut no_kafka_conf,
    )
    .expect("valid settings")
}

/// kafka.conf is read only for `connection =`, which these settings never set.
// The signature is `config::parse`'s; ConfigError's size is src's choice, not this file's.
#[allow(clippy::result_large_err)]
fn no_kafka_conf() -> Result<Vec<Entry>, ConfigError> {
    unreachable!("no connection = is set")
}

fn identity(system_name: &str) -> Identity {
    Identity {
        entity_id: "00:11:22:33:44:55".into(),
        system_name: system_name.into(),
        asterisk_version: "22.1.0".into(),
        hostname: "pbx-host-01".into(),
        tenant_fields: true,
    }
}

/// An answered call, told apart by its linkedid.
fn answered_call(linkedid: &str) -> Cdr<'_> {
    let at = |sec| CdrTime {
        sec,
        usec: 0,
        gmtoff: -3 * 3600,
    };
    let start = 1_768_483_800;
    Cdr {
        clid: b"\"Alice\" <100>",
        src: b"100",
        dst: b"200",
        dcontext: b"default",
        channel: b"PJSIP/100-00000001",
        dstchannel: b"PJSIP/200-00000002",
        lastapp: b"Dial",
        lastdata: b"PJSIP/200,30",
        start: at(start),
        answer: at(start + 5),
        end: at(start + 135),
        duration: 135,
        billsec: 130,
        disposition: b"ANSWERED",
        amaflags: b"DOCUMENTATION",
        uniqueid: linkedid.as_bytes(),
        linkedid: linkedid.as_bytes(),
        tenantid: Some(b""),
        peertenantid: Some(b""),
        variables: vec![(b"myvar", b"hello")],
        ..Cdr::default()
    }
}

/// The value the contract promises for `cdr` under `running`'s settings and identity.
fn expected_payload(running: &Running, cdr: &Cdr<'_>) -> Vec<u8> {
    let options = EncodeOptions {
        loguniqueid: running.settings.loguniqueid,
        loguserfield: running.settings.loguserfield,
        usegmtime: running.settings.usegmtime,
        entity_id: running.identity.entity_id.clone(),
        system_name: running.identity.system_name.clone(),
    };
    let mut payload = Vec::new();
    record::encode(cdr, &options, &mut payload);
    payload
}

/// Polls `condition` until it holds; fails the test with `what` after `DEADLINE`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn counters(stats: &Stats) -> [u64; 4] {
    [
        Stats::get(&stats.received),
        Stats::get(&stats.queued),
        Stats::get(&stats.delivered),
        Stats::get(&stats.failed),
    ]
}

/// Reads every message of `topic` (one partition) from the beginning. The producer's
/// acknowledgements are in, so the high watermark is final and is the exact count to read.
fn consume_all(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cdr_kafka-mock-delivery")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, DEADLINE)
        .expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut messages = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while messages.len() < usize::try_from(high).expect("watermark") {
        assert!(
            Instant::now() < deadline,
            "read {} of {high} messages of {topic} before the deadline",
            messages.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => messages.push(message.detach()),
            Some(Err(error)) => panic!("consumer error: {error}"),
            None => {}
        }
    }
    messages
}

fn header<'m>(message: &'m OwnedMessage, key: &str) -> Option<&'m str> {
    let headers = message.headers()?;
    let mut values = headers.iter().filter(|header| header.key == key);
    let value = values.next()?;
    assert!(values.next().is_none(), "header {key} appears twice");
    Some(std::str::from_utf8(value.value.expect("header has a value")).expect("UTF-8 header"))
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn linkedids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("1705312200.{i}")).collect()
}

#[test]
fn records_arrive_with_key_and_headers() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("unnamed", 1, 1).expect("create topic");
    let named = Running::start(
        settings(&brokers, &[("key", "linkedid")]),
        identity("pbx-01"),
    )
    .expect("producer");
    let unnamed = Running::start(
        settings(&brokers, &[("key", "linkedid"), ("topic", "unnamed")]),
        identity(""),
    )
    .expect("producer");

    let ids = linkedids(3);
    let calls: Vec<Cdr<'_>> = ids.iter().map(|id| answered_call(id)).collect();
    let before = unix_seconds();
    for call in &calls {
        named.publish(call).expect("handed over");
    }
    unnamed.publish(&calls[0]).expect("handed over");
    wait_until("every record is delivered", || {
        Stats::get(&named.stats.delivered) == 3 && Stats::get(&unnamed.stats.delivered) == 1
    });
    let after = unix_seconds();

    let messages = consume_all(&brokers, TOPIC);
    assert_eq!(messages.len(), calls.len());
    for (message, call) in messages.iter().zip(&calls) {
        assert_eq!(message.payload(), Some(&expected_payload(&named, call)[..]));
        assert_eq!(message.key(), Some(call.linkedid));
        assert_eq!(header(message, "entity_id"), Some("00:11:22:33:44:55"));
        assert_eq!(header(message, "system_name"), Some("pbx-01"));
        assert_eq!(header(message, "asterisk_version"), Some("22.1.0"));
        assert_eq!(header(message, "hostname"), Some("pbx-host-01"));
        let timestamp: u64 = header(message, "timestamp")
            .expect("timestamp header")
            .parse()
            .expect("unix seconds");
        assert!(
            (before..=after).contains(&timestamp),
            "timestamp {timestamp} outside {before}..={after}"
        );
        assert_eq!(message.headers().map(Headers::count), Some(5));
    }
    let json: serde_json::Value =
        serde_json::from_slice(messages[0].payload().expect("payload")).expect("JSON");
    assert_eq!(json["linkedid"], "1705312200.0");
    assert_eq!(json["SystemName"], "pbx-01");

    let messages = consume_all(&brokers, "unnamed");
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(
        message.payload(),
        Some(&expected_payload(&unnamed, &calls[0])[..])
    );
    assert_eq!(header(message, "system_name"), None);
    assert_eq!(header(message, "entity_id"), Some("00:11:22:33:44:55"));
    assert_eq!(message.headers().map(Headers::count), Some(4));
    let json: serde_json::Value =
        serde_json::from_slice(message.payload().expect("payload")).expect("JSON");
    assert!(json.get("SystemName").is_none(), "{json}");

    assert_eq!(counters(&named.stats), [3, 3, 3, 0]);
    assert_eq!(counters(&unnamed.stats), [1, 1, 1, 0]);
    assert_eq!(named.shutdown(), 0);
    assert_eq!(unnamed.shutdown(), 0);
}

#[test]
fn broker_down_then_up_within_message_timeout_delivers_everything() {
    const COUNT: usize = 200;
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let running = Running::start(
        settings(&brokers, &[("key", "linkedid")]),
        identity("pbx-01"),
    )
    .expect("producer");
    // A first record makes the producer connect (and get its idempotent producer id), so the
    // outage below cuts an established connection.
    running
        .publish(&answered_call("1705312100.0"))
        .expect("handed over");
    wait_until("the first record is delivered", || {
        Stats::get(&running.stats.delivered) == 1
    });

    cluster.broker_down(ALL_BROKERS).expect("broker down");
    let ids = linkedids(COUNT);
    for id in &ids {
        running.publish(&answered_call(id)).expect("handed over");
    }
    // Nothing can be acknowledged while the broker refuses connections.
    assert_eq!(
        counters(&running.stats),
        [1 + COUNT as u64, 1 + COUNT as u64, 1, 0]
    );
    assert_eq!(running.in_flight(), COUNT as u64);

    cluster.broker_up(ALL_BROKERS).expect("broker up");
    wait_until("every record is delivered after the outage", || {
        Stats::get(&running.stats.delivered) == 1 + COUNT as u64
    });
    assert_eq!(Stats::get(&running.stats.failed), 0);

    let messages = consume_all(&brokers, TOPIC);
    assert_eq!(messages.len(), 1 + COUNT, "no record lost or duplicated");
    assert_eq!(messages[0].key(), Some(&b"1705312100.0"[..]));
    let keys: Vec<&[u8]> = messages[1..]
        .iter()
        .map(|message| message.key().expect("key"))
        .collect();
    let distinct: HashSet<&[u8]> = keys.iter().copied().collect();
    assert_eq!(distinct.len(), COUNT, "each record exactly once");
    // Idempotence also keeps the order across librdkafka's retries.
    let expected: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
    assert_eq!(keys, expected);
    assert_eq!(running.shutdown(), 0);
}

#[test]
fn full_queue_is_reported_not_hidden() {
    const QUEUE: u64 = 10;
    const EXCESS: u64 = 5;
    let cluster = cluster();
    cluster.broker_down(ALL_BROKERS).expect("broker down");
    let running = Running::start(
        settings(
            &cluster.bootstrap_servers(),
            &[("queue_buffering_max_messages", &QUEUE.to_string())],
        ),
        identity("pbx-01"),
    )
    .expect("producer");
    let ids = linkedids((QUEUE + EXCESS) as usize);
    let mut errors_after_refusal = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let result = running.publish(&answered_call(id));
        if (index as u64) < QUEUE {
            assert!(result.is_ok(), "record {index}: {result:?}");
        } else {
            assert!(
                matches!(result, Err(SendError::QueueFull)),
                "record {index}: {result:?}"
            );
            errors_after_refusal.push(running.stats.last_error().map(|(error, _)| error));
        }
    }
    assert_eq!(counters(&running.stats), [QUEUE + EXCESS, QUEUE, 0, EXCESS]);
    // The broker's repeated "all brokers down" must not hide why records were refused.
    assert!(
        errors_after_refusal.iter().all(|error| error
            .as_deref()
            .is_some_and(|e| e.contains("queue is full"))),
        "last errors right after the refusals: {errors_after_refusal:?}"
    );
    let (last, _) = running.stats.last_error().expect("a last error");
    assert!(last.contains("queue is full"), "{last}");
    assert_eq!(running.in_flight(), QUEUE);
}

#[test]
fn message_timeout_expiry_counts_failures() {
    const COUNT: u64 = 5;
    let cluster = cluster();
    cluster.broker_down(ALL_BROKERS).expect("broker down");
    let running = Running::start(
        settings(
            &cluster.bootstrap_servers(),
            &[("message_timeout_ms", "1000")],
        ),
        identity("pbx-01"),
    )
    .expect("producer");

    for id in linkedids(COUNT as usize) {
        running.publish(&answered_call(&id)).expect("handed over");
    }
    wait_until("every record has timed out", || {
        Stats::get(&running.stats.failed) == COUNT
    });
    assert_eq!(counters(&running.stats), [COUNT, COUNT, 0, COUNT]);
    wait_until("nothing is left in flight", || running.in_flight() == 0);
    assert_eq!(running.shutdown(), 0);
}

#[test]
fn shutdown_with_broker_down_returns_within_flush_timeout() {
    const COUNT: u64 = 20;
    let cluster = cluster();
    cluster.broker_down(ALL_BROKERS).expect("broker down");
    let running = Running::start(
        settings(
            &cluster.bootstrap_servers(),
            &[("flush_timeout_ms", "1000")],
        ),
        identity("pbx-01"),
    )
    .expect("producer");
    assert_eq!(running.settings.flush_timeout, Duration::from_millis(1000));

    for id in linkedids(COUNT as usize) {
        running.publish(&answered_call(&id)).expect("handed over");
    }
    let stats = std::sync::Arc::clone(&running.stats);
    let started = Instant::now();
    let undelivered = running.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_eq!(undelivered, COUNT);
    // Dropping the producer purges what is left; a reload shares these counters.
    assert_eq!(counters(&stats), [COUNT, COUNT, 0, COUNT]);
}
