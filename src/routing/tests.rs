use super::*;

fn record<'a>(
    kind: RecordKind,
    payload: &'a [u8],
    headers: Vec<(&'a str, &'a [u8])>,
) -> StoredRecord<'a> {
    StoredRecord {
        seq: 1,
        captured_ms: 0,
        kind,
        record_id: "r-1",
        topic: "asterisk_cdr",
        key: None,
        headers,
        payload,
    }
}

fn known(name: &str) -> bool {
    crate::record::CONTRACT_FIELDS.contains(&name)
}

const ANSWERED: &[u8] = br#"{"dcontext":"default","answer":"2026-01-15T10:30:05.000-0300","accountcode":"acme","disposition":"ANSWERED"}"#;
const MISSED: &[u8] =
    br#"{"dcontext":"default","answer":null,"accountcode":"","disposition":"NO ANSWER"}"#;

fn decide(route: &Route, record: &StoredRecord<'_>) -> Decision {
    let fields = route
        .needs_fields()
        .then(|| Fields::parse(record.payload))
        .flatten();
    route.decide(record, fields.as_ref())
}

#[test]
fn missed_only_takes_unanswered_cdrs() {
    let mut route = Route::plain("missed", RecordKinds::CDR);
    route.missed = Missed::Only;
    assert_eq!(
        decide(&route, &record(RecordKind::Cdr, MISSED, vec![])),
        Decision::Take
    );
    assert_eq!(
        decide(&route, &record(RecordKind::Cdr, ANSWERED, vec![])),
        Decision::Filtered
    );
    route.missed = Missed::Exclude;
    assert_eq!(
        decide(&route, &record(RecordKind::Cdr, MISSED, vec![])),
        Decision::Filtered
    );
    assert_eq!(
        decide(&route, &record(RecordKind::Cdr, ANSWERED, vec![])),
        Decision::Take
    );
}

#[test]
fn kinds_and_kafka_to_decide_before_filters() {
    let route = Route::plain("archive", RecordKinds::CDR);
    assert_eq!(
        decide(&route, &record(RecordKind::Cel, b"{}", vec![])),
        Decision::OtherKind
    );
    let to_archive = vec![(KAFKA_TO_HEADER, &b"missed, archive"[..])];
    assert_eq!(
        decide(&route, &record(RecordKind::Cdr, ANSWERED, to_archive)),
        Decision::Take
    );
    let elsewhere = vec![(KAFKA_TO_HEADER, &b"missed"[..])];
    assert_eq!(
        decide(&route, &record(RecordKind::Cdr, ANSWERED, elsewhere)),
        Decision::NotNamed
    );
}

#[test]
fn all_filters_must_hold() {
    let mut route = Route::plain("acme", RecordKinds::CDR);
    route.filters = vec![
        Filter::parse("dcontext != internal", &known).unwrap(),
        Filter::parse("accountcode = acme", &known).unwrap(),
    ];
    assert_eq!(
        decide(&route, &record(RecordKind::Cdr, ANSWERED, vec![])),
        Decision::Take
    );
    assert_eq!(
        decide(&route, &record(RecordKind::Cdr, MISSED, vec![])),
        Decision::Filtered
    );
}

#[test]
fn templated_topic_falls_back_when_the_field_is_empty() {
    let mut route = Route::plain("missed", RecordKinds::CDR);
    route.topic = Some(Template::parse("cdr.missed.${accountcode}", &known).unwrap());
    route.topic_fallback = Some("cdr.missed.unknown".into());
    let mut buffer = String::new();
    for (payload, topic) in [
        (ANSWERED, "cdr.missed.acme"),
        (MISSED, "cdr.missed.unknown"),
    ] {
        let record = record(RecordKind::Cdr, payload, vec![]);
        let fields = Fields::parse(payload);
        assert_eq!(route.topic(&record, fields.as_ref(), &mut buffer), topic);
    }
    let plain = Route::plain("global", RecordKinds::CDR);
    let record = record(RecordKind::Cdr, ANSWERED, vec![]);
    assert_eq!(plain.topic(&record, None, &mut buffer), "asterisk_cdr");
}

#[test]
fn record_kinds_parse() {
    assert_eq!(
        RecordKinds::parse("cdr, control").map(RecordKinds::names),
        Ok("cdr,control".into())
    );
    assert!(RecordKinds::parse("cdr,calls")
        .unwrap_err()
        .contains("'calls'"));
    assert!(RecordKinds::parse(" ").is_err());
}
