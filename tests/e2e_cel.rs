//! CEL channel events from real Asterisk 22 (the Debian root of `make sandbox`) to a real
//! broker (tansu), checked against Asterisk's CEL specification: the per-channel sequence
//! of the "Dial Nominal" and "Dial Busy" scenarios, bridges with peers, user-defined
//! events, and the backend registered only while `[cel] enabled = yes`.
//!
//! One Asterisk runs at a time (they share the root), so the tests take a lock.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::{cdr_kafka_conf, one_asterisk, Asterisk, Message, Root, Tansu};

const TZ: &str = "UTC";
const WAIT: Duration = Duration::from_secs(30);
const CEL_TOPIC: &str = "cel";

fn conf(brokers: &str, cel: &str) -> String {
    cdr_kafka_conf(brokers, "calls", &format!("[cel]\n{cel}"))
}

fn start<'r>(root: &'r Root, tansu: &Tansu, cel: &str) -> Asterisk<'r> {
    tansu.create_topic("calls");
    tansu.create_topic(CEL_TOPIC);
    let asterisk = Asterisk::start(root, &conf(&tansu.brokers(), cel), TZ);
    asterisk.load_module();
    asterisk
}

/// Every CEL event of the call whose caller half dialled `exten`, once LINKEDID_END came.
fn call_events(root: &Root, tansu: &Tansu, exten: &str) -> Vec<Message> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let messages = root.read_topic(&tansu.brokers(), CEL_TOPIC);
        let linkedid = messages.iter().find_map(|m| {
            let json = m.json();
            (json["eventname"] == "CHAN_START" && json["exten"] == exten)
                .then(|| json["linkedid"].as_str().unwrap_or_default().to_string())
        });
        if let Some(linkedid) = linkedid {
            let mut call: Vec<Message> = messages
                .into_iter()
                .filter(|m| m.json()["linkedid"] == linkedid.as_str())
                .collect();
            if call.iter().any(|m| m.json()["eventname"] == "LINKEDID_END") {
                call.sort_by_key(|m| (m.partition, m.offset));
                return call;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no complete call for {exten}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The non-empty `dialstatus` of the HANGUP events: what the Dial-ing channel saw.
fn dialstatuses(events: &[Message]) -> Vec<String> {
    events
        .iter()
        .map(Message::json)
        .filter(|e| e["eventname"] == "HANGUP")
        .filter_map(|e| e["extra"]["dialstatus"].as_str().map(str::to_string))
        .filter(|status| !status.is_empty())
        .collect()
}

fn names(events: &[Message]) -> Vec<String> {
    events
        .iter()
        .map(|m| {
            m.json()["eventname"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The events of each channel (by uniqueid), in topic order.
fn by_channel(events: &[Message]) -> BTreeMap<String, Vec<Value>> {
    let mut channels: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for message in events {
        let json = message.json();
        if json["eventname"] == "LINKEDID_END" {
            continue;
        }
        let uniqueid = json["uniqueid"].as_str().unwrap_or_default().to_string();
        channels.entry(uniqueid).or_default().push(json);
    }
    channels
}

/// What every channel's events must show, whatever the call: CHAN_START first, a HANGUP
/// with its cause, CHAN_END last; and LINKEDID_END last of the call, in one partition.
fn assert_call_shape(events: &[Message]) {
    assert!(
        events.iter().all(|m| m.partition == events[0].partition),
        "one partition"
    );
    let all = names(events);
    assert_eq!(
        all.last().map(String::as_str),
        Some("LINKEDID_END"),
        "{all:?}"
    );
    assert_eq!(all.iter().filter(|n| *n == "LINKEDID_END").count(), 1);
    for (uniqueid, channel) in by_channel(events) {
        let sequence: Vec<&str> = channel
            .iter()
            .map(|e| e["eventname"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            sequence.first(),
            Some(&"CHAN_START"),
            "{uniqueid}: {sequence:?}"
        );
        assert_eq!(
            sequence.last(),
            Some(&"CHAN_END"),
            "{uniqueid}: {sequence:?}"
        );
        let hangup = channel
            .iter()
            .find(|e| e["eventname"] == "HANGUP")
            .unwrap_or_else(|| panic!("{uniqueid}: no HANGUP in {sequence:?}"));
        assert!(hangup["extra"]["hangupcause"].is_i64(), "{hangup}");
        assert!(hangup["extra"].get("dialstatus").is_some(), "{hangup}");
        let position = |name: &str| sequence.iter().position(|n| *n == name);
        assert!(
            position("HANGUP") < position("CHAN_END"),
            "{uniqueid}: {sequence:?}"
        );
    }
    for message in events {
        let json = message.json();
        support::schema::validate("cel.json", &json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert!(json["extra"].is_object(), "extra is an object: {json}");
        assert_eq!(json["EntityID"], "00:11:22:33:44:55");
        assert_eq!(json["SystemName"], "pbx-test");
        assert_eq!(
            message.key.as_deref(),
            json["linkedid"].as_str(),
            "key is the linkedid"
        );
        assert_eq!(message.header("event"), json["eventname"].as_str());
        assert!(message.header("record_id").is_some());
        let time = json["eventtime"].as_str().unwrap();
        assert!(
            time.ends_with("+0000") && time.len() == 28,
            "eventtime = {time}"
        );
    }
}

#[test]
fn dial_nominal_follows_the_cel_specification() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    let asterisk = start(&root, &tansu, "enabled = yes\ntopic = cel\n");
    asterisk.originate("answered");
    asterisk.wait_for_no_channels(WAIT);
    let events = call_events(&root, &tansu, "answered");
    assert_call_shape(&events);
    let all = names(&events);
    for expected in [
        "CHAN_START",
        "APP_START",
        "ANSWER",
        "BRIDGE_ENTER",
        "BRIDGE_EXIT",
        "HANGUP",
        "CHAN_END",
    ] {
        assert!(
            all.iter().any(|n| n == expected),
            "{expected} missing from {all:?}"
        );
    }
    // The caller's Dial ended answered.
    assert_eq!(dialstatuses(&events), vec!["ANSWER"], "{all:?}");
    let app_start = events
        .iter()
        .map(Message::json)
        .find(|e| e["eventname"] == "APP_START" && e["appname"] == "Dial")
        .expect("APP_START of Dial");
    assert_eq!(app_start["appdata"], "Local/callee@cdrk-callee,5");
    // A bridge with peers: the second channel in sees the first as its peer.
    let enters: Vec<Value> = events
        .iter()
        .map(Message::json)
        .filter(|e| e["eventname"] == "BRIDGE_ENTER")
        .collect();
    assert!(!enters.is_empty());
    for enter in &enters {
        assert!(enter["extra"]["bridge_id"].is_string(), "{enter}");
    }
    assert!(
        enters
            .iter()
            .any(|e| !e["peer"].as_str().unwrap_or_default().is_empty()),
        "a BRIDGE_ENTER names its peer: {enters:?}"
    );
    let status = asterisk.rx("cdr kafka show status");
    assert!(
        status.contains("CEL                 : enabled, topic 'cel'"),
        "{status}"
    );
}

#[test]
fn dial_busy_follows_the_cel_specification() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    let asterisk = start(&root, &tansu, "enabled = yes\ntopic = cel\n");
    asterisk.originate("busy");
    asterisk.wait_for_no_channels(WAIT);
    let events = call_events(&root, &tansu, "busy");
    assert_call_shape(&events);
    assert_eq!(dialstatuses(&events), vec!["BUSY"]);
    assert!(
        !names(&events).iter().any(|n| n == "BRIDGE_ENTER"),
        "no bridge on busy"
    );
}

#[test]
fn user_defined_event_and_event_filter() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    let asterisk = start(
        &root,
        &tansu,
        "enabled = yes\ntopic = cel\nevents = CHAN_START,USER_DEFINED,LINKEDID_END\n",
    );
    asterisk.originate("userevent");
    asterisk.wait_for_no_channels(WAIT);
    let events = call_events(&root, &tansu, "userevent");
    let all = names(&events);
    assert!(
        all.iter()
            .all(|n| ["CHAN_START", "USER_DEFINED", "LINKEDID_END"].contains(&n.as_str())),
        "only the listed events: {all:?}"
    );
    let user = events
        .iter()
        .map(Message::json)
        .find(|e| e["eventname"] == "USER_DEFINED")
        .unwrap_or_else(|| panic!("no USER_DEFINED in {all:?}"));
    assert_eq!(user["userdeftype"], "billing_mark", "{user}");
    assert_eq!(user["appname"], "CELGenUserEvent", "{user}");
    assert!(user["extra"].is_object(), "{user}");
}

#[test]
fn cel_backend_exists_only_while_enabled_and_reload_switches_it() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    let asterisk = start(&root, &tansu, "enabled = no\ntopic = cel\n");
    let backends = |a: &Asterisk<'_>| a.rx("cel show status");
    assert!(
        !backends(&asterisk).contains("kafka"),
        "{}",
        backends(&asterisk)
    );
    asterisk.originate("flood");
    asterisk.wait_for_no_channels(WAIT);
    assert_eq!(asterisk.counter("CEL received"), 0);

    asterisk.write_config(
        "cdr_kafka.conf",
        &conf(&tansu.brokers(), "enabled = yes\ntopic = cel\n"),
    );
    asterisk.rx("module reload cdr_kafka.so");
    assert!(
        backends(&asterisk).contains("kafka"),
        "{}",
        backends(&asterisk)
    );
    asterisk.originate("answered");
    asterisk.wait_for_no_channels(WAIT);
    let events = call_events(&root, &tansu, "answered");
    assert_call_shape(&events);

    asterisk.write_config("cdr_kafka.conf", &conf(&tansu.brokers(), "enabled = no\n"));
    asterisk.rx("module reload cdr_kafka.so");
    assert!(!backends(&asterisk).contains("kafka"));
    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(out.contains("Unloaded"), "{out}");
    // CEL callbacks run on Asterisk's long-lived threads: nothing of ours may stay behind.
    assert!(
        !asterisk.module_mapped(),
        "the .so is still mapped after unload"
    );
}
