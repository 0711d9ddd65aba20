//! The Kafka destination against librdkafka's mock cluster: destinations sharing one
//! producer each get exactly their own outcomes, survive a fatal error together, and
//! outlive each other; what reaches the topic is read back with a consumer. Each test
//! starts its own cluster; waits are bounded polls of observable state.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::shared::unpack;
use super::*;
use crate::delivery::log::RecordKind;

/// Far above what any wait here needs on a loaded 2-core machine: a bound, not a timing.
const DEADLINE: Duration = Duration::from_secs(60);

/// A mock cluster of one broker with `topics` (one partition each) created.
fn cluster(topics: &[&str]) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in topics {
        cluster.create_topic(topic, 1, 1).expect("create topic");
    }
    cluster
}

fn settings(brokers: &str) -> ProducerSettings {
    ProducerSettings {
        properties: vec![("bootstrap.servers".into(), brokers.into())],
        secrets: Vec::new(),
    }
}

/// What destination `name` sends for record `seq`: tells the records apart on a topic.
fn payload(name: &str, seq: u64) -> String {
    format!("{name}:{seq}")
}

fn stored<'a>(
    seq: u64,
    topic: &'a str,
    payload: &'a str,
    headers: Vec<(&'a str, &'a [u8])>,
) -> StoredRecord<'a> {
    StoredRecord {
        seq,
        captured_ms: 0,
        kind: RecordKind::Cdr,
        record_id: payload,
        topic,
        key: Some(payload.as_bytes()),
        headers,
        payload: payload.as_bytes(),
    }
}

/// Offers records `seqs` to `destination`, for `topic`; librdkafka's queue takes them all.
fn offer(destination: &mut KafkaDestination, topic: &str, seqs: impl Iterator<Item = u64>) {
    for seq in seqs {
        let payload = payload(destination.name(), seq);
        let record = stored(
            seq,
            topic,
            &payload,
            vec![("record_id", payload.as_bytes())],
        );
        assert_eq!(destination.offer(&record), Offer::Taken, "record {seq}");
    }
}

/// Polls `condition` until it holds; fails the test with `what` after `DEADLINE`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Collects until nothing is in flight; returns the outcomes, sorted.
fn collect_all(destination: &mut KafkaDestination) -> Vec<(u64, Outcome)> {
    let mut outcomes = Vec::new();
    wait_until("every record is reported on", || {
        destination.collect(&mut outcomes);
        destination.in_flight() == 0
    });
    outcomes.sort_by_key(|(seq, _)| *seq);
    outcomes
}

fn all_delivered(seqs: Range<u64>) -> Vec<(u64, Outcome)> {
    seqs.map(|seq| (seq, Outcome::Delivered)).collect()
}

fn delivered(outcomes: &[(u64, Outcome)]) -> BTreeSet<u64> {
    outcomes
        .iter()
        .filter(|(_, outcome)| *outcome == Outcome::Delivered)
        .map(|(seq, _)| *seq)
        .collect()
}

/// Reads every message of `topic` (one partition) from the beginning. The producer's
/// acknowledgements are in, so the high watermark is the exact count to read.
fn consume_all(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cdr_kafka-kafka-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
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
            "read {} of {high} messages of {topic}",
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

/// The payloads on `topic`, as a set (a record sent twice counts once).
fn payloads_on(brokers: &str, topic: &str) -> BTreeSet<String> {
    consume_all(brokers, topic)
        .iter()
        .map(|message| {
            String::from_utf8(message.payload().expect("payload").to_vec()).expect("UTF-8")
        })
        .collect()
}

fn payloads(name: &str, seqs: impl IntoIterator<Item = u64>) -> BTreeSet<String> {
    seqs.into_iter().map(|seq| payload(name, seq)).collect()
}

#[test]
fn permanent_and_retriable_failures_are_told_apart() {
    use RDKafkaErrorCode as Code;
    assert_eq!(
        classify(Some(Code::MessageSizeTooLarge)),
        Failure::Permanent
    );
    assert_eq!(
        classify(Some(Code::TopicAuthorizationFailed)),
        Failure::Permanent
    );
    // A fatal error or a teardown never dead-letters: the records wait.
    assert_eq!(classify(Some(Code::Fatal)), Failure::Retriable);
    assert_eq!(classify(Some(Code::PurgeQueue)), Failure::Retriable);
    assert_eq!(classify(Some(Code::MessageTimedOut)), Failure::Retriable);
}

#[test]
fn unknown_librdkafka_property_is_named() {
    let settings = ProducerSettings {
        properties: vec![
            ("bootstrap.servers".into(), "127.0.0.1:9".into()),
            ("no.such.property".into(), "1".into()),
        ],
        secrets: Vec::new(),
    };
    let error = KafkaDestination::new("global", settings)
        .err()
        .expect("librdkafka refuses an unknown property");
    assert!(error.to_string().contains("no.such.property"), "{error}");
}

#[test]
fn secrets_are_redacted_from_producer_errors() {
    let settings = ProducerSettings {
        properties: Vec::new(),
        secrets: vec!["hunter2".into()],
    };
    assert_eq!(settings.redact("bad hunter2 here"), "bad ******** here");
}

#[test]
fn opaque_carries_the_seat_and_the_record_number() {
    let last = MAX_DESTINATIONS - 1;
    let opaque = pack(last, MAX_SEQ).expect("fits");
    assert_eq!(unpack(opaque), (last, MAX_SEQ));
    assert_eq!(unpack(pack(3, 17).expect("fits")), (3, 17));
    assert_eq!(pack(0, MAX_SEQ + 1), None);
    assert_eq!(pack(MAX_DESTINATIONS, 0), None);
}

#[test]
fn record_number_beyond_48_bits_is_refused_not_sent() {
    let mut destination =
        KafkaDestination::new("global", settings("127.0.0.1:9")).expect("producer");
    let record = stored(MAX_SEQ + 1, "cdr", "x", Vec::new());
    assert!(matches!(destination.offer(&record), Offer::Refused(_)));
    assert_eq!(destination.in_flight(), 0);
}

#[test]
fn describe_says_when_the_producer_is_the_global_one() {
    let producer = SharedProducer::new(settings("127.0.0.1:9")).expect("producer");
    let shared = KafkaDestination::on_shared("billing", &producer);
    assert_eq!(
        shared.describe(),
        "kafka 127.0.0.1:9 (the [global] producer) — producing"
    );
    let own = KafkaDestination::new("audit", settings("127.0.0.1:9")).expect("producer");
    assert_eq!(own.describe(), "kafka 127.0.0.1:9 — producing");
}

#[test]
fn a_seat_with_reports_outstanding_waits_for_its_own_destination() {
    let producer = SharedProducer::new(settings("127.0.0.1:9")).expect("producer");
    let first = producer.attach("copy").expect("seat");
    let index = first.index;
    first.sending();
    drop(first);
    let second = producer.attach("billing").expect("seat");
    assert_ne!(second.index, index, "a late report would reach the new one");
    drop(second);
    let again = producer.attach("copy").expect("seat");
    assert_eq!(
        again.index, index,
        "copy gets back its seat and the reports due"
    );
    assert_eq!(again.outstanding(), 1);
    producer.slot(index).expect("slot").reported();
    drop(again);
    assert_eq!(producer.attach("audit").expect("seat").index, index);
}

#[test]
fn kafka_to_header_never_reaches_kafka() {
    let cluster = cluster(&["cdr"]);
    let brokers = cluster.bootstrap_servers();
    let mut destination = KafkaDestination::new("global", settings(&brokers)).expect("producer");
    let record = stored(
        7,
        "cdr",
        "global:7",
        vec![
            ("record_id", b"r-7"),
            (ROUTING_HEADER, b"global,billing"),
            ("kind", b"cdr"),
        ],
    );
    assert_eq!(destination.offer(&record), Offer::Taken);
    assert_eq!(collect_all(&mut destination), all_delivered(7..8));
    let messages = consume_all(&brokers, "cdr");
    assert_eq!(messages.len(), 1);
    let headers = messages[0].headers().expect("headers");
    let names: Vec<&str> = headers.iter().map(|header| header.key).collect();
    assert_eq!(names, ["record_id", "kind"]);
}

#[test]
fn two_destinations_on_one_producer_each_get_exactly_their_own_outcomes() {
    let cluster = cluster(&["cdr_a", "cdr_b"]);
    let brokers = cluster.bootstrap_servers();
    let producer = SharedProducer::new(settings(&brokers)).expect("producer");
    // Overlapping numbers: routing by record number alone would mix them up.
    let plan = [("a", "cdr_a", 0..400), ("b", "cdr_b", 200..600)];
    let feeders: Vec<_> = plan
        .iter()
        .cloned()
        .map(|(name, topic, seqs)| {
            let mut destination = KafkaDestination::on_shared(name, &producer);
            std::thread::spawn(move || {
                offer(&mut destination, topic, seqs.clone());
                collect_all(&mut destination)
            })
        })
        .collect();
    for ((name, topic, seqs), feeder) in plan.into_iter().zip(feeders) {
        let outcomes = feeder.join().expect("feeder thread");
        assert_eq!(outcomes, all_delivered(seqs.clone()), "destination {name}");
        assert_eq!(payloads_on(&brokers, topic), payloads(name, seqs));
    }
    assert_eq!(producer.destinations(), 0, "dropped on their threads");
}

#[test]
fn flush_of_one_destination_leaves_the_others_outcomes_to_them() {
    let cluster = cluster(&["cdr_a", "cdr_b"]);
    let producer = SharedProducer::new(settings(&cluster.bootstrap_servers())).expect("producer");
    let mut a = KafkaDestination::on_shared("a", &producer);
    let mut b = KafkaDestination::on_shared("b", &producer);
    offer(&mut a, "cdr_a", 0..50);
    offer(&mut b, "cdr_b", 0..80);
    a.flush(DEADLINE);
    assert_eq!(collect_all(&mut a), all_delivered(0..50));
    assert_eq!(collect_all(&mut b), all_delivered(0..80));
}

/// Raises a fatal error on `producer`'s current librdkafka producer, as an idempotent
/// producer does on an out-of-order sequence.
fn raise_fatal_error(producer: &SharedProducer) {
    let current = producer.current();
    // SAFETY: the handle is alive while `current` is held; librdkafka copies the reason.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            current.producer.client().native_ptr(),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            c"raised by the test".as_ptr(),
        )
    };
    assert_eq!(error, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
}

#[test]
fn fatal_error_breaks_every_destination_on_the_producer_and_both_rebuild_onto_one() {
    const FIRST: Range<u64> = 0..20;
    const ALL: Range<u64> = 0..200;
    let cluster = cluster(&["cdr_a", "cdr_b"]);
    let brokers = cluster.bootstrap_servers();
    let producer = SharedProducer::new(settings(&brokers)).expect("producer");
    let mut a = KafkaDestination::on_shared("a", &producer);
    let mut b = KafkaDestination::on_shared("b", &producer);
    let mut reported_a = Vec::new();
    let mut reported_b = Vec::new();
    offer(&mut a, "cdr_a", FIRST);
    offer(&mut b, "cdr_b", FIRST);
    reported_a.extend(collect_all(&mut a));
    reported_b.extend(collect_all(&mut b));
    // Records still in librdkafka's queue when the error comes are purged.
    offer(&mut a, "cdr_a", FIRST.end..ALL.end);
    offer(&mut b, "cdr_b", FIRST.end..ALL.end);
    let old = Arc::downgrade(&producer.current());
    raise_fatal_error(&producer);
    // Only b polls: a's reports of the old producer wait for a, and must never count.
    let seat = a.seat.as_ref().expect("seat");
    wait_until(
        "b sees the fatal error and a's records are reported",
        || {
            b.collect(&mut reported_b);
            b.broken().is_some() && seat.waiting(a.generation.number) == a.in_flight()
        },
    );
    assert!(a.broken().is_some(), "one producer: a is broken too");
    let record = stored(ALL.end, "cdr_a", "a:late", Vec::new());
    assert_eq!(
        a.offer(&record),
        Offer::Full,
        "a broken producer takes nothing"
    );

    a.rebuild().expect("a new producer");
    assert!(b.broken().is_some(), "b still holds the old producer");
    b.rebuild().expect("adopts a's producer");
    assert!(
        Arc::ptr_eq(&a.generation, &b.generation),
        "one producer, not two"
    );
    assert_eq!(a.generation.number, 1);
    assert!(
        old.upgrade().is_none(),
        "the old producer ended in the last rebuild"
    );
    assert_eq!((a.in_flight(), b.in_flight()), (0, 0));
    assert_eq!((a.broken(), b.broken()), (None, None));

    // As a feeder does: offer again everything not confirmed.
    for (destination, reported, topic) in [
        (&mut a, &mut reported_a, "cdr_a"),
        (&mut b, &mut reported_b, "cdr_b"),
    ] {
        let confirmed = delivered(reported);
        let again: Vec<u64> = ALL.filter(|seq| !confirmed.contains(seq)).collect();
        offer(destination, topic, again.iter().copied());
        let outcomes = collect_all(destination);
        let expected: Vec<(u64, Outcome)> =
            again.iter().map(|seq| (*seq, Outcome::Delivered)).collect();
        assert_eq!(
            outcomes, expected,
            "no report of the old producer came through"
        );
        reported.extend(outcomes);
    }

    // Every record reported Delivered is on its topic, and every record is.
    for (name, topic, reported) in [("a", "cdr_a", &reported_a), ("b", "cdr_b", &reported_b)] {
        let on_topic = payloads_on(&brokers, topic);
        assert!(payloads(name, delivered(reported)).is_subset(&on_topic));
        assert_eq!(on_topic, payloads(name, ALL));
    }
}

#[test]
fn dropping_one_destination_leaves_the_other_working_and_the_last_ends_the_producer() {
    let cluster = cluster(&["cdr_a", "cdr_b", "cdr_c"]);
    let brokers = cluster.bootstrap_servers();
    let producer = SharedProducer::new(settings(&brokers)).expect("producer");
    let mut a = KafkaDestination::on_shared("a", &producer);
    let mut b = KafkaDestination::on_shared("b", &producer);
    let weak = Arc::downgrade(&producer);
    drop(producer);
    offer(&mut a, "cdr_a", 0..50);
    offer(&mut b, "cdr_b", 0..50);
    // Dropped with its records in flight: their reports must reach nobody.
    drop(a);
    assert_eq!(collect_all(&mut b), all_delivered(0..50));
    let mut c = KafkaDestination::on_shared("c", &b.producer);
    offer(&mut c, "cdr_c", 1000..1050);
    offer(&mut b, "cdr_b", 50..100);
    assert_eq!(collect_all(&mut c), all_delivered(1000..1050));
    assert_eq!(collect_all(&mut b), all_delivered(50..100));
    assert_eq!(payloads_on(&brokers, "cdr_b"), payloads("b", 0..100));
    drop(b);
    assert!(weak.upgrade().is_some(), "c still uses it");
    drop(c);
    assert!(
        weak.upgrade().is_none(),
        "the last destination ended the producer"
    );
}

#[test]
fn a_destination_stopped_with_the_broker_down_gets_its_late_reports_back_and_sends_nothing_twice() {
    let cluster = cluster(&["cdr_a", "cdr_b"]);
    let brokers = cluster.bootstrap_servers();
    let producer = SharedProducer::new(settings(&brokers)).expect("producer");
    let mut a = KafkaDestination::on_shared("a", &producer);
    let mut b = KafkaDestination::on_shared("b", &producer);
    offer(&mut a, "cdr_a", 0..10);
    assert_eq!(collect_all(&mut a), all_delivered(0..10));
    cluster.broker_down(1).expect("broker down");
    offer(&mut a, "cdr_a", 10..60);
    offer(&mut b, "cdr_b", 0..60);
    a.flush(Duration::from_millis(300));
    assert_eq!(a.in_flight(), 50, "the broker is down: nothing confirmed");
    // Disabled: its records stay with the producer, its seat waits for it.
    drop(a);
    cluster.broker_up(1).expect("broker up");
    assert_eq!(collect_all(&mut b), all_delivered(0..60));
    let mut a = KafkaDestination::on_shared("a", &producer);
    assert_eq!(a.in_flight(), 50, "it takes back what its earlier run sent");
    let record = stored(60, "cdr_a", "a:60", Vec::new());
    let mut outcomes = Vec::new();
    // Until the earlier run's records are reported on, it sends nothing new.
    while a.offer(&record) != Offer::Taken {
        a.collect(&mut outcomes);
        std::thread::sleep(Duration::from_millis(5));
    }
    outcomes.extend(collect_all(&mut a));
    outcomes.sort_by_key(|(seq, _)| *seq);
    assert_eq!(outcomes, all_delivered(10..61));
    assert_eq!(consume_all(&brokers, "cdr_a").len(), 61, "each record once");
    assert_eq!(payloads_on(&brokers, "cdr_a"), payloads("a", 0..61));
}
