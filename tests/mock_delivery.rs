//! Delivery against librdkafka's own mock cluster, through the durable spool: what
//! reaches the topic (payload, key, headers), what the counters say, and that no record
//! is lost or doubled under faults (broker down, full queue, message timeout, shutdown
//! and restart while down, permanent and fatal errors).
//!
//! Each test starts its own `MockCluster` and spool folder, so the tests run in
//! parallel. Waits are bounded polls of observable state; no sleep stands in for an
//! assertion.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cdr_kafka::asterisk::host::Identity;
use cdr_kafka::config::{self, ConfigError, Entry, HostCapabilities, Settings};
use cdr_kafka::module::Running;
use cdr_kafka::record::{self, Cdr, CdrTime, EncodeOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
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

/// A spool folder of one test (Asterisk's spool folder stand-in), removed on drop.
struct SpoolFolder(PathBuf);

impl SpoolFolder {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("cdr_kafka-mock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for SpoolFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn identity(system_name: &str, spool: &SpoolFolder) -> Identity {
    Identity {
        entity_id: "00:11:22:33:44:55".into(),
        system_name: system_name.into(),
        asterisk_version: "22.1.0".into(),
        hostname: "pbx-host-01".into(),
        tenant_fields: true,
        spool_dir: spool.0.display().to_string(),
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

/// received, spooled, delivered, failed
fn counters(running: &Running) -> [u64; 4] {
    let counts = running.counts();
    [
        counts.received,
        counts.spooled,
        counts.delivered,
        counts.dead_lettered,
    ]
}

/// How often each `record_id` header value occurs.
fn record_id_counts(messages: &[OwnedMessage]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in messages {
        let id = header(message, "record_id")
            .expect("record_id header")
            .to_string();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// The keys of the messages, in topic order.
fn keys(messages: &[OwnedMessage]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .map(|message| message.key().expect("key").to_vec())
        .collect()
}

fn as_keys(ids: &[String]) -> Vec<Vec<u8>> {
    ids.iter().map(|id| id.as_bytes().to_vec()).collect()
}

/// Reads every message of `topic` (one partition) from the beginning. The producer's
/// acknowledgements are in, so the high watermark is final and is the exact count to read.
fn consume_all(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cdr_kafka-mock-delivery")
        .set("enable.auto.commit", "false")
        // The mock broker answers each fetch with little: ask often.
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, DEADLINE)
        .expect("watermarks");
    // The mock broker keeps a few thousand messages a partition; the tests stay below.
    assert_eq!(
        low, 0,
        "the mock broker dropped the oldest messages of {topic}"
    );
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
    let (spool_a, spool_b) = (SpoolFolder::new("headers-a"), SpoolFolder::new("headers-b"));
    let named = Running::start(
        settings(&brokers, &[("key", "linkedid")]),
        identity("pbx-01", &spool_a),
    )
    .expect("producer");
    let unnamed = Running::start(
        settings(&brokers, &[("key", "linkedid"), ("topic", "unnamed")]),
        identity("", &spool_b),
    )
    .expect("producer");

    let ids = linkedids(3);
    let calls: Vec<Cdr<'_>> = ids.iter().map(|id| answered_call(id)).collect();
    let before = unix_seconds();
    for call in &calls {
        named.publish(call).expect("spooled");
    }
    unnamed.publish(&calls[0]).expect("spooled");
    let after = unix_seconds();
    wait_until("every record is delivered", || {
        named.counts().delivered == 3 && unnamed.counts().delivered == 1
    });

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
        let record_id = header(message, "record_id").expect("record_id header");
        assert!(record_id.starts_with("001122334455-"), "{record_id}");
        assert_eq!(message.headers().map(Headers::count), Some(6));
    }
    assert_eq!(
        record_id_counts(&messages).len(),
        3,
        "record ids are unique"
    );
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
    assert_eq!(message.headers().map(Headers::count), Some(5));
    let json: serde_json::Value =
        serde_json::from_slice(message.payload().expect("payload")).expect("JSON");
    assert!(json.get("SystemName").is_none(), "{json}");

    assert_eq!(counters(&named), [3, 3, 3, 0]);
    assert_eq!(counters(&unnamed), [1, 1, 1, 0]);
    assert_eq!(named.log.depth().0, 0, "delivered records leave the spool");
    assert_eq!(named.shutdown(), 0);
    assert_eq!(unnamed.shutdown(), 0);
}

#[test]
fn thousands_of_records_while_the_broker_is_down_all_arrive_once_in_order() {
    // Within what the mock broker retains; 10,000 go through tansu in e2e_spool.
    const COUNT: usize = 4_000;
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let spool = SpoolFolder::new("outage");
    let running = Running::start(
        settings(&brokers, &[("key", "linkedid")]),
        identity("pbx-01", &spool),
    )
    .expect("producer");
    running
        .publish(&answered_call("1705312100.0"))
        .expect("spooled");
    wait_until("the first record is delivered", || {
        running.counts().delivered == 1
    });

    cluster.broker_down(ALL_BROKERS).expect("broker down");
    let ids = linkedids(COUNT);
    for id in &ids {
        running.publish(&answered_call(id)).expect("spooled");
    }
    assert_eq!(running.counts().delivered, 1);
    assert_eq!(running.log.depth().0, COUNT as u64);
    wait_until("the status says the producer is retrying", || {
        running.destination_states()[0].contains("retrying (")
    });

    cluster.broker_up(ALL_BROKERS).expect("broker up");
    wait_until("every record is delivered after the outage", || {
        running.counts().delivered == 1 + COUNT as u64
    });
    wait_until("the status says the producer is producing again", || {
        running.destination_states()[0].contains("producing")
    });
    assert_eq!(
        counters(&running),
        [1 + COUNT as u64, 1 + COUNT as u64, 1 + COUNT as u64, 0]
    );

    let messages = consume_all(&brokers, TOPIC);
    assert_eq!(messages.len(), 1 + COUNT, "no record lost or duplicated");
    assert!(
        record_id_counts(&messages).values().all(|&n| n == 1),
        "none twice"
    );
    assert_eq!(keys(&messages[1..]), as_keys(&ids), "spool order kept");
    assert_eq!(running.log.depth().0, 0);
    assert_eq!(running.shutdown(), 0);
}

#[test]
fn full_librdkafka_queue_leaves_records_in_the_spool_not_on_the_floor() {
    const QUEUE: u64 = 10;
    const COUNT: usize = 50;
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    cluster.broker_down(ALL_BROKERS).expect("broker down");
    let spool = SpoolFolder::new("queue-full");
    let running = Running::start(
        settings(
            &brokers,
            &[
                ("key", "linkedid"),
                ("queue_buffering_max_messages", &QUEUE.to_string()),
            ],
        ),
        identity("pbx-01", &spool),
    )
    .expect("producer");
    let ids = linkedids(COUNT);
    for id in &ids {
        running
            .publish(&answered_call(id))
            .expect("the CDR callback always succeeds");
    }
    wait_until("librdkafka's queue is full", || {
        running.in_flight() == QUEUE
    });
    assert_eq!(
        running.log.depth().0,
        COUNT as u64,
        "the rest waits on disk"
    );
    assert_eq!(running.counts().dead_lettered, 0);

    cluster.broker_up(ALL_BROKERS).expect("broker up");
    wait_until("every record is delivered", || {
        running.counts().delivered == COUNT as u64
    });
    let messages = consume_all(&brokers, TOPIC);
    assert_eq!(
        keys(&messages),
        as_keys(&ids),
        "all of them, once, in order"
    );
    assert_eq!(running.shutdown(), 0);
}

#[test]
fn records_that_time_out_in_librdkafka_are_tried_again_from_the_spool() {
    const COUNT: usize = 5;
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    cluster.broker_down(ALL_BROKERS).expect("broker down");
    let spool = SpoolFolder::new("timeout");
    let running = Running::start(
        settings(
            &brokers,
            &[("key", "linkedid"), ("message_timeout_ms", "500")],
        ),
        identity("pbx-01", &spool),
    )
    .expect("producer");
    let ids = linkedids(COUNT);
    for id in &ids {
        running.publish(&answered_call(id)).expect("spooled");
    }
    // Long enough for several rounds of timeouts and retries.
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(running.counts().delivered, 0);
    assert_eq!(
        running.log.depth().0,
        COUNT as u64,
        "nothing dropped on timeout"
    );

    cluster.broker_up(ALL_BROKERS).expect("broker up");
    wait_until("every record is delivered", || {
        running.counts().delivered == COUNT as u64
    });
    assert_eq!(running.counts().dead_lettered, 0);
    let messages = consume_all(&brokers, TOPIC);
    let counts = record_id_counts(&messages);
    assert_eq!(counts.len(), COUNT, "every record arrived");
    assert_eq!(running.shutdown(), 0);
}

#[test]
fn shutdown_with_broker_down_is_bounded_and_the_next_start_delivers_everything_once() {
    const COUNT: usize = 20;
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    cluster.broker_down(ALL_BROKERS).expect("broker down");
    let spool = SpoolFolder::new("restart");
    let conf = [("key", "linkedid"), ("flush_timeout_ms", "1000")];
    let running =
        Running::start(settings(&brokers, &conf), identity("pbx-01", &spool)).expect("producer");
    assert_eq!(running.settings.flush_timeout, Duration::from_millis(1000));
    let ids = linkedids(COUNT);
    for id in &ids {
        running.publish(&answered_call(id)).expect("spooled");
    }
    wait_until("the feeder handed every record over", || {
        running.in_flight() == COUNT as u64
    });
    let started = Instant::now();
    let unconfirmed = running.shutdown();
    let took = started.elapsed();
    // The folder's lock goes with the running module (a restart of Asterisk).
    drop(running);
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_eq!(unconfirmed, COUNT as u64);

    cluster.broker_up(ALL_BROKERS).expect("broker up");
    let restarted =
        Running::start(settings(&brokers, &conf), identity("pbx-01", &spool)).expect("producer");
    assert_eq!(restarted.counts().waiting, COUNT as u64);
    wait_until("the spooled records are delivered", || {
        restarted.counts().delivered == COUNT as u64
    });
    assert_eq!(restarted.counts().replayed, COUNT as u64);
    let messages = consume_all(&brokers, TOPIC);
    assert_eq!(
        keys(&messages),
        as_keys(&ids),
        "all of them, once, in order"
    );
    assert_eq!(restarted.log.depth().0, 0);
    assert_eq!(restarted.shutdown(), 0);
}

#[test]
fn record_the_broker_refuses_for_good_goes_to_the_dead_letter_file() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let spool = SpoolFolder::new("dead-letter");
    let running = Running::start(
        settings(&brokers, &[("key", "linkedid")]),
        identity("pbx-01", &spool),
    )
    .expect("producer");
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    running
        .publish(&answered_call("refused.1"))
        .expect("spooled");
    wait_until("the refused record is dead-lettered", || {
        running.counts().dead_lettered == 1
    });
    running
        .publish(&answered_call("accepted.2"))
        .expect("spooled");
    wait_until("the next record is delivered", || {
        running.counts().delivered == 1
    });
    let dead = std::fs::read_to_string(spool.0.join("cdr_kafka/dead-letter.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(dead.trim()).expect("one JSON line");
    assert!(
        line["reason"].as_str().unwrap().contains("too large"),
        "{line}"
    );
    let payload: serde_json::Value =
        serde_json::from_str(line["payload"].as_str().unwrap()).expect("the record");
    assert_eq!(payload["linkedid"], "refused.1");
    assert_eq!(
        running.log.depth().0,
        0,
        "a dead letter does not block the spool"
    );
    let messages = consume_all(&brokers, TOPIC);
    assert_eq!(keys(&messages), vec![b"accepted.2".to_vec()]);
    assert_eq!(running.shutdown(), 0);
}

#[test]
fn fatal_producer_error_recreates_the_producer_and_loses_nothing() {
    const COUNT: usize = 20;
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let spool = SpoolFolder::new("fatal");
    let running = Running::start(
        settings(&brokers, &[("key", "linkedid")]),
        identity("pbx-01", &spool),
    )
    .expect("producer");
    running
        .publish(&answered_call("1705312100.0"))
        .expect("spooled");
    wait_until("the first record is delivered", || {
        running.counts().delivered == 1
    });
    // An out-of-order sequence is fatal to librdkafka's idempotent producer.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let ids = linkedids(COUNT);
    for id in &ids {
        running.publish(&answered_call(id)).expect("spooled");
    }
    wait_until("every record is delivered by a new producer", || {
        running.counts().delivered == 1 + COUNT as u64
    });
    assert!(running.counts().rebuilds >= 1);
    let messages = consume_all(&brokers, TOPIC);
    let counts = record_id_counts(&messages);
    assert_eq!(counts.len(), 1 + COUNT, "nothing lost");
    assert_eq!(running.log.depth().0, 0);
    assert_eq!(running.shutdown(), 0);
}

#[test]
fn second_instance_on_the_same_spool_is_refused() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let spool = SpoolFolder::new("lock");
    let first =
        Running::start(settings(&brokers, &[]), identity("pbx-01", &spool)).expect("producer");
    let second = Running::start(settings(&brokers, &[]), identity("pbx-01", &spool));
    let error = second.err().expect("the spool is locked").to_string();
    assert!(error.contains("in use by another cdr_kafka"), "{error}");
    assert_eq!(first.shutdown(), 0);
}
