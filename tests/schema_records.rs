//! The JSON Schemas in docs/schema/ against the records the module makes: the contract's
//! CDR and CEL encoders and every output format of `Shape::apply`, and broken records,
//! which they must reject.

#[path = "support/schema.rs"]
mod schema;

use cdr_kafka::cel::{self, CelEncodeOptions, CelEvent};
use cdr_kafka::record::{self, Cdr, CdrTime, EncodeOptions, CONTRACT_FIELDS};
use cdr_kafka::shape::{snake_case, Format, Meta, Normalize, Shape};
use serde_json::{json, Map, Value};

fn at(sec: i64) -> CdrTime {
    CdrTime {
        sec,
        usec: 250_000,
        gmtoff: -3 * 3600,
    }
}

fn answered_call() -> Cdr<'static> {
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
        linkedid: b"1768483800.1",
        uniqueid: b"1768483800.1",
        tenantid: Some(b""),
        peertenantid: Some(b""),
        variables: vec![(b"myvar", b"hello"), (b"campaignId", b"spring")],
        ..Cdr::default()
    }
}

fn cdr_options() -> EncodeOptions {
    EncodeOptions {
        entity_id: "00:11:22:33:44:55".into(),
        system_name: "pbx-01".into(),
        ..EncodeOptions::default()
    }
}

fn encode_cdr(cdr: &Cdr<'_>, options: &EncodeOptions) -> Vec<u8> {
    let mut out = Vec::new();
    record::encode(cdr, options, &mut out);
    out
}

/// CDRs covering each optional part of the contract.
fn cdr_records() -> Vec<Vec<u8>> {
    let unanswered = Cdr {
        answer: CdrTime::default(),
        billsec: 0,
        disposition: b"NO ANSWER",
        variables: Vec::new(),
        ..answered_call()
    };
    let old_asterisk = Cdr {
        tenantid: None,
        peertenantid: None,
        clid: b"\"Jos\xe9\" <100>\x01",
        amaflags: b"BILLING",
        disposition: b"BUSY",
        ..answered_call()
    };
    let everything = EncodeOptions {
        loguniqueid: true,
        loguserfield: true,
        usegmtime: true,
        ..cdr_options()
    };
    let no_system_name = EncodeOptions {
        system_name: String::new(),
        ..cdr_options()
    };
    vec![
        encode_cdr(&answered_call(), &cdr_options()),
        encode_cdr(&unanswered, &no_system_name),
        encode_cdr(&old_asterisk, &everything),
    ]
}

fn hangup() -> CelEvent<'static> {
    CelEvent {
        eventname: b"HANGUP",
        eventtime: at(1_768_483_800),
        cid_name: b"Alice",
        cid_num: b"100",
        exten: b"200",
        context: b"default",
        channame: b"PJSIP/100-00000001",
        uniqueid: b"1768483800.1",
        linkedid: b"1768483800.1",
        amaflags: b"DOCUMENTATION",
        tenantid: Some(b""),
        extra: br#"{"hangupcause":16,"dialstatus":"ANSWER"}"#,
        ..CelEvent::default()
    }
}

fn cel_records() -> Vec<Vec<u8>> {
    let options = CelEncodeOptions {
        usegmtime: false,
        entity_id: "00:11:22:33:44:55".into(),
        system_name: "pbx-01".into(),
    };
    let bare = CelEncodeOptions {
        system_name: String::new(),
        usegmtime: true,
        ..options.clone()
    };
    let odd_extra = CelEvent {
        eventname: b"USER_DEFINED",
        userdeftype: b"MYEVENT",
        extra: b"not json",
        tenantid: None,
        ..hangup()
    };
    [(hangup(), &options), (odd_extra, &bare)]
        .iter()
        .map(|(event, options)| {
            let mut out = Vec::new();
            cel::encode(event, options, &mut out);
            out
        })
        .collect()
}

/// A control record as the module writes it at start.
fn module_start() -> Value {
    json!({
        "type": "module_start",
        "module_version": "0.1.0",
        "asterisk_version": "22.10.1",
        "entity_id": "00:11:22:33:44:55",
        "system_name": "pbx-01",
        "hostname": "pbx-01.example",
        "time": "2026-01-15T10:30:00.000-0300",
        "config_digest": "crc32:0a1b2c3d",
        "counters": {"received": 3, "spooled": 0, "refused": 0, "delivered": 3,
                     "dead_lettered": 0, "skipped": 0},
        "spool_depth": 0
    })
}

/// The stop record of a PBX without a systemname.
fn module_stop() -> Value {
    let mut stop = module_start();
    stop["type"] = json!("module_stop");
    stop.as_object_mut().unwrap().remove("system_name");
    stop
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("a JSON record")
}

fn meta(kind: &'static str, system_name: &'static str) -> Meta<'static> {
    Meta {
        kind,
        record_id: "0000000000000042",
        entity_id: "00:11:22:33:44:55",
        system_name,
        emitted_at: "2026-01-15T10:32:16.004-0300",
    }
}

fn shaped(shape: &Shape, record: &[u8], meta: &Meta<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    shape
        .apply(record, meta, &mut out)
        .expect("a record to shape");
    out
}

fn assert_valid(schema_file: &str, record: &Value) {
    if let Err(error) = schema::validate(schema_file, record) {
        panic!("{error}\nrecord: {record}");
    }
}

fn assert_rejected(schema_file: &str, record: &Value, why: &str) {
    assert!(
        schema::validate(schema_file, record).is_err(),
        "{schema_file} accepted a record with {why}: {record}"
    );
}

#[test]
fn every_schema_file_is_a_draft_2020_12_schema() {
    let files = schema::schema_files().unwrap();
    assert_eq!(
        files,
        [
            "cdr.json",
            "cdr.snake_case.json",
            "cel.json",
            "cel.snake_case.json",
            "control.json",
            "envelope.json"
        ]
    );
    for file in files {
        let schema = schema::load(&file).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        if let Err(error) = jsonschema::draft202012::meta::validate(&schema) {
            panic!("{file}: {error}");
        }
    }
}

#[test]
fn cdr_schema_lists_exactly_the_contract_fields() {
    let schema = schema::load("cdr.json").unwrap();
    let properties: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    let mut expected: Vec<&str> = CONTRACT_FIELDS.to_vec();
    expected.sort_unstable();
    let mut found: Vec<&str> = properties.iter().map(|name| name.as_str()).collect();
    found.sort_unstable();
    assert_eq!(found, expected);
}

#[test]
fn snake_case_schemas_are_the_contract_schemas_with_snake_case_names() {
    for (plain, snake) in [
        ("cdr.json", "cdr.snake_case.json"),
        ("cel.json", "cel.snake_case.json"),
    ] {
        let plain = schema::load(plain).unwrap();
        let snake = schema::load(snake).unwrap();
        let renamed: Map<String, Value> = plain["properties"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, schema)| (snake_case(name).into_owned(), schema.clone()))
            .collect();
        assert_eq!(snake["properties"].as_object().unwrap(), &renamed);
        let required: Vec<String> = plain["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|name| snake_case(name.as_str().unwrap()).into_owned())
            .collect();
        assert_eq!(snake["required"], json!(required));
        assert_eq!(snake["additionalProperties"], plain["additionalProperties"]);
        assert_eq!(snake["$defs"], plain["$defs"]);
    }
}

#[test]
fn encoded_cdrs_match_cdr_json() {
    for record in cdr_records() {
        assert_valid("cdr.json", &parse(&record));
    }
}

#[test]
fn encoded_cel_events_match_cel_json() {
    for record in cel_records() {
        assert_valid("cel.json", &parse(&record));
    }
}

#[test]
fn module_start_and_stop_records_match_control_json() {
    assert_valid("control.json", &module_start());
    assert_valid("control.json", &module_stop());
}

#[test]
fn contract_format_matches_the_record_schemas_plain_and_snake_case() {
    for (records, plain, snake) in [
        (cdr_records(), "cdr.json", "cdr.snake_case.json"),
        (cel_records(), "cel.json", "cel.snake_case.json"),
    ] {
        for record in records {
            for pretty in [false, true] {
                for (normalize, schema_file) in
                    [(Normalize::None, plain), (Normalize::SnakeCase, snake)]
                {
                    let shape = Shape {
                        format: Format::Contract,
                        fields: None,
                        normalize,
                        pretty,
                    };
                    let out = parse(&shaped(&shape, &record, &meta("cdr", "pbx-01")));
                    assert_valid(schema_file, &out);
                }
            }
        }
    }
}

#[test]
fn envelope_format_matches_envelope_json_for_every_kind() {
    let mut cases: Vec<(&'static str, Vec<u8>)> = Vec::new();
    cases.extend(cdr_records().into_iter().map(|record| ("cdr", record)));
    cases.extend(cel_records().into_iter().map(|record| ("cel", record)));
    cases.push(("module_start", serde_json::to_vec(&module_start()).unwrap()));
    cases.push(("module_stop", serde_json::to_vec(&module_stop()).unwrap()));
    for (kind, record) in cases {
        for system_name in ["pbx-01", ""] {
            for normalize in [Normalize::None, Normalize::SnakeCase] {
                for pretty in [false, true] {
                    let shape = Shape {
                        format: Format::Envelope,
                        fields: None,
                        normalize,
                        pretty,
                    };
                    let out = parse(&shaped(&shape, &record, &meta(kind, system_name)));
                    assert_valid("envelope.json", &out);
                }
            }
        }
    }
}

/// Reads a kv line back by the grammar in docs/schema/README.md.
fn parse_kv(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let (mut key, mut text) = (None::<String>, String::new());
    let mut chars = line.chars();
    while let Some(character) = chars.next() {
        match character {
            '\\' => match chars.next() {
                Some(';') => text.push(';'),
                Some('=') => text.push('='),
                Some('\\') => text.push('\\'),
                Some('n') => text.push('\n'),
                Some('r') => text.push('\r'),
                Some('t') => text.push('\t'),
                Some('x') => {
                    let hex: String = chars.by_ref().take(2).collect();
                    let code =
                        u32::from_str_radix(&hex, 16).map_err(|_| format!("bad \\x{hex}"))?;
                    text.push(char::from_u32(code).ok_or("bad code point")?);
                }
                other => return Err(format!("unknown escape \\{other:?}")),
            },
            '=' if key.is_none() => key = Some(std::mem::take(&mut text)),
            ';' => {
                let name = key
                    .take()
                    .ok_or_else(|| format!("pair without '=' before '{text}'"))?;
                pairs.push((name, std::mem::take(&mut text)));
            }
            '=' => return Err("unescaped '=' in a value".to_string()),
            control if control.is_control() => return Err(format!("raw control {control:?}")),
            other => text.push(other),
        }
    }
    let name = key.ok_or("last pair without '='")?;
    pairs.push((name, text));
    Ok(pairs)
}

/// What kv writes for a JSON value.
fn kv_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[test]
fn kv_format_reads_back_to_the_record_by_its_grammar() {
    let tricky = encode_cdr(
        &Cdr {
            lastdata: b"a;b=c\\d\ne\x01\x7f",
            variables: vec![(b"odd=name;", b"x\ty")],
            ..answered_call()
        },
        &cdr_options(),
    );
    let mut records = cdr_records();
    records.extend(cel_records());
    records.push(tricky);
    for record in records {
        for normalize in [Normalize::None, Normalize::SnakeCase] {
            let shape = Shape {
                format: Format::Kv,
                fields: None,
                normalize,
                pretty: false,
            };
            let line = String::from_utf8(shaped(&shape, &record, &meta("cdr", ""))).unwrap();
            let pairs = parse_kv(&line).unwrap_or_else(|error| panic!("{error}: {line}"));
            // The same record in contract format, read as JSON, in key order.
            let contract = Shape {
                format: Format::Contract,
                ..shape
            };
            let json = parse(&shaped(&contract, &record, &meta("cdr", "")));
            let object = json.as_object().unwrap();
            assert_eq!(pairs.len(), object.len(), "{line}");
            for (name, text) in &pairs {
                let value = object
                    .get(name)
                    .unwrap_or_else(|| panic!("'{name}' in {line}"));
                if value.is_object() || value.is_array() {
                    // Compact JSON text; Value's map sorts keys, so compare as JSON.
                    let read: Value = serde_json::from_str(text).unwrap();
                    assert_eq!(&read, value, "'{name}' in {line}");
                } else {
                    assert_eq!(text, &kv_text(value), "'{name}' in {line}");
                }
            }
        }
    }
}

#[test]
fn broken_cdrs_are_rejected() {
    let good = parse(&encode_cdr(&answered_call(), &cdr_options()));
    assert_valid("cdr.json", &good);
    let broken = |change: &dyn Fn(&mut Map<String, Value>), why: &str| {
        let mut record = good.clone();
        change(record.as_object_mut().unwrap());
        assert_rejected("cdr.json", &record, why);
    };
    broken(&|r| drop(r.remove("billsec")), "billsec missing");
    broken(&|r| drop(r.remove("EntityID")), "EntityID missing");
    broken(
        &|r| drop(r.insert("src".into(), json!(100))),
        "a number for src",
    );
    broken(
        &|r| drop(r.insert("billsec".into(), json!("130"))),
        "a string for billsec",
    );
    broken(
        &|r| drop(r.insert("durationsec".into(), json!(1.5))),
        "a fraction for durationsec",
    );
    broken(
        &|r| drop(r.insert("answer".into(), json!(""))),
        "answer = \"\"",
    );
    broken(
        &|r| drop(r.insert("start".into(), json!("2026-01-15 10:30:00"))),
        "a time without offset",
    );
    broken(
        &|r| drop(r.insert("end".into(), json!("2026-01-15T10:32:15-0300"))),
        "a time without ms",
    );
    broken(
        &|r| drop(r.insert("disposition".into(), json!("answered"))),
        "an unknown disposition",
    );
    broken(
        &|r| drop(r.insert("amaflags".into(), json!(3))),
        "numeric amaflags",
    );
    broken(
        &|r| drop(r.insert("EntityID".into(), json!("00-11-22-33-44-55"))),
        "a malformed EntityID",
    );
    broken(
        &|r| drop(r.insert("SystemName".into(), json!(""))),
        "an empty SystemName",
    );
    broken(
        &|r| drop(r.insert("myvar".into(), json!(1))),
        "a variable that is not a string",
    );
}

#[test]
fn broken_cel_control_and_envelope_records_are_rejected() {
    let mut cel = parse(&cel_records()[0]);
    cel.as_object_mut().unwrap().remove("eventtime");
    assert_rejected("cel.json", &cel, "eventtime missing");
    let mut cel = parse(&cel_records()[0]);
    cel["extra"] = json!("text");
    assert_rejected("cel.json", &cel, "extra as a string");
    let mut cel = parse(&cel_records()[0]);
    cel["surprise"] = json!("x");
    assert_rejected("cel.json", &cel, "a key CEL records do not have");

    let mut control = module_start();
    control["counters"]
        .as_object_mut()
        .unwrap()
        .remove("delivered");
    assert_rejected("control.json", &control, "a counter missing");
    let mut control = module_start();
    control["config_digest"] = json!("0a1b2c3d");
    assert_rejected("control.json", &control, "a digest without crc32:");

    let record = encode_cdr(&answered_call(), &cdr_options());
    let envelope = Shape {
        format: Format::Envelope,
        ..Shape::default()
    };
    let good = parse(&shaped(&envelope, &record, &meta("cdr", "pbx-01")));
    assert_valid("envelope.json", &good);
    let mut wrong_kind = good.clone();
    wrong_kind["type"] = json!("cel");
    assert_rejected("envelope.json", &wrong_kind, "a CDR under type cel");
    let mut wrong_version = good.clone();
    wrong_version["version"] = json!(2);
    assert_rejected("envelope.json", &wrong_version, "version 2");
    let mut broken_record = good.clone();
    broken_record["record"]["answer"] = json!("");
    assert_rejected(
        "envelope.json",
        &broken_record,
        "answer = \"\" in its record",
    );
    let mut empty_name = good;
    empty_name["system_name"] = json!("");
    assert_rejected("envelope.json", &empty_name, "an empty system_name");
}
