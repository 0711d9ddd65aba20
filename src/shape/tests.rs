use serde_json::Value;

use super::*;
use crate::cel::{self, CelEncodeOptions, CelEvent};
use crate::record::{self, Cdr, CdrTime, EncodeOptions};

fn at(sec: i64) -> CdrTime {
    CdrTime {
        sec,
        usec: 0,
        gmtoff: -3 * 3600,
    }
}

/// The contract's example call, as the CDR thread encodes it into the log.
fn example_cdr() -> Cdr<'static> {
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
        linkedid: b"1705312200.1",
        uniqueid: b"1705312200.1",
        tenantid: Some(b""),
        peertenantid: Some(b""),
        variables: vec![(b"myvar", b"hello")],
        ..Cdr::default()
    }
}

fn encode_cdr(cdr: &Cdr<'_>, system_name: &str) -> Vec<u8> {
    let options = EncodeOptions {
        loguniqueid: true,
        entity_id: "00:11:22:33:44:55".into(),
        system_name: system_name.into(),
        ..EncodeOptions::default()
    };
    let mut out = Vec::new();
    record::encode(cdr, &options, &mut out);
    out
}

fn example_record() -> Vec<u8> {
    encode_cdr(&example_cdr(), "pbx-01")
}

fn hangup_record() -> Vec<u8> {
    let event = CelEvent {
        eventname: b"HANGUP",
        eventtime: at(1_768_483_800),
        cid_num: b"100",
        channame: b"PJSIP/100-00000001",
        uniqueid: b"1768483800.1",
        linkedid: b"1768483800.1",
        extra: br#"{"hangupcause":16,"dialstatus":"ANSWER","list":[1,{"a":null}]}"#,
        ..CelEvent::default()
    };
    let options = CelEncodeOptions {
        usegmtime: false,
        entity_id: "00:11:22:33:44:55".into(),
        system_name: String::new(),
    };
    let mut out = Vec::new();
    cel::encode(&event, &options, &mut out);
    out
}

const META: Meta<'static> = Meta {
    kind: "cdr",
    record_id: "0000000000000007",
    entity_id: "00:11:22:33:44:55",
    system_name: "pbx-01",
    emitted_at: "2026-01-15T10:32:16.000-0300",
};

fn shape(format: Format, fields: Option<&str>, normalize: Normalize, pretty: bool) -> Shape {
    Shape {
        format,
        fields: fields.map(|spec| Shape::parse_fields(spec).unwrap()),
        normalize,
        pretty,
    }
}

fn apply(shape: &Shape, record: &[u8], meta: &Meta<'_>) -> String {
    let mut out = Vec::new();
    shape.apply(record, meta, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// The keys of a JSON object in the order the text has them.
fn keys_in_order(text: &str) -> Vec<String> {
    let pairs: Pairs<'_> = serde_json::from_str(text).unwrap();
    pairs
        .0
        .into_iter()
        .map(|(key, _)| key.into_owned())
        .collect()
}

#[test]
fn default_shape_copies_the_record_byte_for_byte() {
    let record = example_record();
    let mut out = b"earlier;".to_vec();
    let shape = Shape::default();
    assert!(shape.is_identity());
    shape.apply(&record, &META, &mut out).unwrap();
    assert_eq!(&out[..8], b"earlier;");
    assert_eq!(&out[8..], &record[..]);
}

#[test]
fn any_option_set_is_not_identity() {
    assert!(!shape(Format::Envelope, None, Normalize::None, false).is_identity());
    assert!(!shape(Format::Kv, None, Normalize::None, false).is_identity());
    assert!(!shape(Format::Contract, Some("src"), Normalize::None, false).is_identity());
    assert!(!shape(Format::Contract, None, Normalize::SnakeCase, false).is_identity());
    assert!(!shape(Format::Contract, None, Normalize::None, true).is_identity());
}

#[test]
fn parsed_and_rewritten_contract_record_keeps_every_byte() {
    // Through the parser and the serializer, not the identity copy.
    let record = encode_cdr(
        &Cdr {
            clid: b"\"Jos\xe9\" \x01\n\\ \xe2\x80\xa8",
            variables: vec![(b"note", b"a;b=c"), (b"myVar", b"x")],
            ..example_cdr()
        },
        "pbx-01",
    );
    let fields = "clid,src,dst,dcontext,channel,dstchannel,lastapp,lastdata,start,answer,end,\
        durationsec,billsec,disposition,accountcode,amaflags,peeraccount,linkedid,sequence,\
        tenantid,peertenantid,EntityID,SystemName,note,myVar,uniqueid";
    let text = apply(
        &shape(Format::Contract, Some(fields), Normalize::None, false),
        &record,
        &META,
    );
    assert_eq!(text.as_bytes(), &record[..]);
}

#[test]
fn numbers_keep_their_digits_in_every_json_format() {
    let record =
        br#"{"big":18446744073709551615,"neg":-9223372036854775808,"float":1.5e300,"zero":0.10}"#;
    for format in [Format::Contract, Format::Envelope] {
        let text = apply(
            &shape(format, Some("float,big,neg,zero"), Normalize::None, false),
            record,
            &META,
        );
        assert!(
            text.contains(r#"{"float":1.5e300,"big":18446744073709551615,"neg":-9223372036854775808,"zero":0.10}"#),
            "{text}"
        );
    }
}

#[test]
fn fields_pick_order_and_rename_keys() {
    let text = apply(
        &shape(
            Format::Contract,
            Some("start,src,dst,billsec:duration"),
            Normalize::None,
            false,
        ),
        &example_record(),
        &META,
    );
    assert_eq!(
        text,
        r#"{"start":"2026-01-15T10:30:00.000-0300","src":"100","dst":"200","duration":130}"#
    );
}

#[test]
fn picked_variable_that_was_not_set_is_left_out() {
    let text = apply(
        &shape(
            Format::Contract,
            Some("src,unsetvar,myvar"),
            Normalize::None,
            false,
        ),
        &example_record(),
        &META,
    );
    assert_eq!(text, r#"{"src":"100","myvar":"hello"}"#);
}

#[test]
fn one_key_can_be_picked_twice_under_two_names() {
    let text = apply(
        &shape(
            Format::Contract,
            Some("billsec,billsec:duration"),
            Normalize::None,
            false,
        ),
        &example_record(),
        &META,
    );
    assert_eq!(text, r#"{"billsec":130,"duration":130}"#);
}

#[test]
fn field_list_errors_name_the_item() {
    for (spec, expected) in [
        ("src,dst,src", "'src': a second field named 'src'"),
        (
            "src,billsec:src",
            "'billsec:src': a second field named 'src'",
        ),
        ("src,,dst", "'': empty field name"),
        ("src,billsec:", "'billsec:': empty field name"),
        (":x", "':x': empty field name"),
        ("a:b:c", "'a:b:c': more than one ':'"),
        ("", "'': empty field name"),
    ] {
        let error = Shape::parse_fields(spec).unwrap_err();
        assert!(error.starts_with(expected), "{spec}: {error}");
    }
}

#[test]
fn field_list_ignores_spaces_around_names() {
    let picks = Shape::parse_fields(" start , billsec : duration ").unwrap();
    assert_eq!(
        picks,
        vec![
            FieldPick {
                from: "start".into(),
                to: "start".into()
            },
            FieldPick {
                from: "billsec".into(),
                to: "duration".into()
            },
        ]
    );
}

#[test]
fn validate_refuses_pretty_kv_and_names_equal_in_snake_case() {
    let error = shape(Format::Kv, None, Normalize::None, true)
        .validate()
        .unwrap_err();
    assert!(error.contains("pretty"), "{error}");
    let error = shape(
        Format::Contract,
        Some("myVar,my_var"),
        Normalize::SnakeCase,
        false,
    )
    .validate()
    .unwrap_err();
    assert_eq!(
        error,
        "'myVar' and 'my_var' are both 'my_var' in snake_case"
    );
    assert!(shape(
        Format::Contract,
        Some("myVar,my_var"),
        Normalize::None,
        false
    )
    .validate()
    .is_ok());
    assert!(
        shape(Format::Envelope, Some("src"), Normalize::SnakeCase, true)
            .validate()
            .is_ok()
    );
}

#[test]
fn snake_case_renames_contract_keys_and_keeps_order() {
    let text = apply(
        &shape(Format::Contract, None, Normalize::SnakeCase, false),
        &example_record(),
        &META,
    );
    let expected: Vec<String> = [
        "clid",
        "src",
        "dst",
        "dcontext",
        "channel",
        "dstchannel",
        "lastapp",
        "lastdata",
        "start",
        "answer",
        "end",
        "durationsec",
        "billsec",
        "disposition",
        "accountcode",
        "amaflags",
        "peeraccount",
        "linkedid",
        "sequence",
        "tenantid",
        "peertenantid",
        "entity_id",
        "system_name",
        "myvar",
        "uniqueid",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(keys_in_order(&text), expected);
    assert!(
        text.contains(r#""entity_id":"00:11:22:33:44:55","system_name":"pbx-01","#),
        "{text}"
    );
}

#[test]
fn contract_field_wins_a_snake_case_collision_with_a_variable() {
    let record = encode_cdr(
        &Cdr {
            variables: vec![
                (b"entity_id", b"spoofed"),
                (b"Uniqueid", b"spoofed too"),
                (b"myVar", b"first"),
                (b"my_var", b"second"),
            ],
            ..example_cdr()
        },
        "pbx-01",
    );
    let text = apply(
        &shape(Format::Contract, None, Normalize::SnakeCase, false),
        &record,
        &META,
    );
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["entity_id"], "00:11:22:33:44:55");
    assert_eq!(json["uniqueid"], "1705312200.1");
    assert_eq!(json["my_var"], "first");
    let keys = keys_in_order(&text);
    for key in ["entity_id", "uniqueid", "my_var"] {
        assert_eq!(
            keys.iter().filter(|k| *k == key).count(),
            1,
            "{key} in {text}"
        );
    }
    // uniqueid stays where the contract puts it: last.
    assert_eq!(keys.last().map(String::as_str), Some("uniqueid"));
}

#[test]
fn fields_match_contract_or_snake_case_names_and_output_is_snake_case() {
    let text = apply(
        &shape(
            Format::Contract,
            Some("EntityID,system_name,billsec:BillSeconds"),
            Normalize::SnakeCase,
            false,
        ),
        &example_record(),
        &META,
    );
    assert_eq!(
        text,
        r#"{"entity_id":"00:11:22:33:44:55","system_name":"pbx-01","bill_seconds":130}"#
    );
}

#[test]
fn envelope_wraps_the_record_with_metadata_in_order() {
    let record = example_record();
    let text = apply(
        &shape(Format::Envelope, None, Normalize::None, false),
        &record,
        &META,
    );
    let expected = format!(
        r#"{{"type":"cdr","version":1,"entity_id":"00:11:22:33:44:55","system_name":"pbx-01","record_id":"0000000000000007","emitted_at":"2026-01-15T10:32:16.000-0300","record":{}}}"#,
        String::from_utf8(record).unwrap()
    );
    assert_eq!(text, expected);
}

#[test]
fn envelope_has_no_system_name_when_it_is_empty() {
    let meta = Meta {
        kind: "cel",
        system_name: "",
        ..META
    };
    let text = apply(
        &shape(Format::Envelope, None, Normalize::None, false),
        &hangup_record(),
        &meta,
    );
    assert_eq!(
        keys_in_order(&text),
        [
            "type",
            "version",
            "entity_id",
            "record_id",
            "emitted_at",
            "record"
        ]
    );
    assert!(
        text.starts_with(r#"{"type":"cel","version":1,"entity_id":"#),
        "{text}"
    );
}

#[test]
fn envelope_record_is_picked_and_normalized() {
    let text = apply(
        &shape(
            Format::Envelope,
            Some("EntityID,myvar"),
            Normalize::SnakeCase,
            false,
        ),
        &example_record(),
        &META,
    );
    assert!(
        text.ends_with(r#""record":{"entity_id":"00:11:22:33:44:55","myvar":"hello"}}"#),
        "{text}"
    );
}

#[test]
fn pretty_indents_by_two_spaces_nested_objects_too() {
    let record = hangup_record();
    for format in [Format::Contract, Format::Envelope] {
        let text = apply(&shape(format, None, Normalize::None, true), &record, &META);
        let compact = apply(&shape(format, None, Normalize::None, false), &record, &META);
        let pretty: Value = serde_json::from_str(&text).unwrap();
        let plain: Value = serde_json::from_str(&compact).unwrap();
        assert_eq!(pretty, plain);
        assert_eq!(keys_in_order(&text), keys_in_order(&compact));
        let reprinted = serde_json::to_string_pretty(&plain).unwrap();
        assert_eq!(text.len(), reprinted.len(), "{text}");
    }
    let text = apply(
        &shape(Format::Contract, None, Normalize::None, true),
        &record,
        &META,
    );
    assert!(
        text.starts_with("{\n  \"eventname\": \"HANGUP\",\n"),
        "{text}"
    );
    assert!(
        text.contains("  \"extra\": {\n    \"hangupcause\": 16,\n"),
        "{text}"
    );
    assert!(
        text.contains("\"list\": [\n      1,\n      {\n        \"a\": null\n"),
        "{text}"
    );
}

#[test]
fn kv_line_has_every_key_in_record_order() {
    let text = apply(
        &shape(Format::Kv, None, Normalize::None, false),
        &example_record(),
        &META,
    );
    assert_eq!(
        text,
        "clid=\"Alice\" <100>;src=100;dst=200;dcontext=default;channel=PJSIP/100-00000001;\
         dstchannel=PJSIP/200-00000002;lastapp=Dial;lastdata=PJSIP/200,30;\
         start=2026-01-15T10:30:00.000-0300;answer=2026-01-15T10:30:05.000-0300;\
         end=2026-01-15T10:32:15.000-0300;durationsec=135;billsec=130;disposition=ANSWERED;\
         accountcode=;amaflags=DOCUMENTATION;peeraccount=;linkedid=1705312200.1;sequence=0;\
         tenantid=;peertenantid=;EntityID=00:11:22:33:44:55;SystemName=pbx-01;myvar=hello;\
         uniqueid=1705312200.1"
    );
}

#[test]
fn kv_writes_null_as_empty_and_escapes_separators_in_keys_and_values() {
    let record = encode_cdr(
        &Cdr {
            answer: CdrTime::default(),
            lastdata: b"a;b=c\\d\ne\x01",
            variables: vec![(b"k=1;x", b"\xe9")],
            ..example_cdr()
        },
        "",
    );
    let text = apply(
        &shape(
            Format::Kv,
            Some("answer,lastdata,k=1;x:odd,billsec"),
            Normalize::None,
            false,
        ),
        &record,
        &META,
    );
    assert_eq!(
        text,
        "answer=;lastdata=a\\;b\\=c\\\\d\\ne\\x01;odd=\u{fffd};billsec=130"
    );
    let text = apply(
        &shape(Format::Kv, Some("k=1;x"), Normalize::None, false),
        &record,
        &META,
    );
    assert_eq!(text, "k\\=1\\;x=\u{fffd}");
}

#[test]
fn kv_writes_cel_extra_as_compact_json_text() {
    let text = apply(
        &shape(Format::Kv, Some("eventname,extra"), Normalize::None, false),
        &hangup_record(),
        &META,
    );
    assert_eq!(
        text,
        r#"eventname=HANGUP;extra={"hangupcause":16,"dialstatus":"ANSWER","list":[1,{"a":null}]}"#
    );
}

#[test]
fn kv_has_no_envelope_metadata_and_snake_cases_keys() {
    let text = apply(
        &shape(
            Format::Kv,
            Some("src,EntityID"),
            Normalize::SnakeCase,
            false,
        ),
        &example_record(),
        &META,
    );
    assert_eq!(text, "src=100;entity_id=00:11:22:33:44:55");
}

#[test]
fn control_record_in_an_envelope_keeps_its_nested_counters() {
    let record = br#"{"type":"module_start","module_version":"0.1.0","counters":{"received":3,"spooled":0}}"#;
    let meta = Meta {
        kind: "module_start",
        ..META
    };
    let text = apply(
        &shape(Format::Envelope, None, Normalize::SnakeCase, false),
        record,
        &meta,
    );
    assert!(
        text.starts_with(r#"{"type":"module_start","version":1,"#),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            r#""record":{}}}"#,
            std::str::from_utf8(record).unwrap()
        )),
        "{text}"
    );
}

#[test]
fn records_that_are_not_json_objects_are_errors_an_admin_can_read() {
    let shape = shape(Format::Kv, None, Normalize::None, false);
    for (record, expected) in [
        (
            &b"[1,2]"[..],
            "record is a JSON array, not the JSON object of a CDR or CEL event",
        ),
        (
            b"  \"text\"",
            "record is a JSON string, not the JSON object of a CDR or CEL event",
        ),
        (
            b"42",
            "record is a JSON number, not the JSON object of a CDR or CEL event",
        ),
        (
            b"null",
            "record is a JSON null, not the JSON object of a CDR or CEL event",
        ),
        (b"", "record is not valid JSON (the record is empty)"),
        (
            b"<xml/>",
            "record is not valid JSON (it does not start with '{')",
        ),
        (
            b"{\"a\":1",
            "record is not valid JSON (EOF while parsing an object at line 1 column 6)",
        ),
        (
            b"{\"a\":1} x",
            "record is not valid JSON (trailing characters at line 1 column 9)",
        ),
        (
            b"{\"a\":tru}",
            "record is not valid JSON (expected ident at line 1 column 9)",
        ),
    ] {
        let mut out = Vec::new();
        let error = shape.apply(record, &META, &mut out).unwrap_err();
        assert_eq!(
            error.to_string(),
            expected,
            "{:?}",
            String::from_utf8_lossy(record)
        );
    }
}

#[test]
fn format_and_normalize_names_round_trip() {
    for name in Format::NAMES {
        assert_eq!(Format::from_name(name).unwrap().name(), name);
    }
    for name in Normalize::NAMES {
        assert_eq!(Normalize::from_name(name).unwrap().name(), name);
    }
    assert_eq!(Format::from_name("json"), None);
    assert_eq!(Normalize::from_name("camelCase"), None);
}
