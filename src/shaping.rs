//! A destination's `format`, `fields`, `normalize` and `pretty` as the feeder's
//! `Shaper`: the shape module does the work; this adds the envelope's metadata and
//! acc_syslog's prefixes. Runs on the destination's feeder thread.

use chrono::{Local, TimeZone};

use crate::config::{DestinationType, OutputFormat, Routing, Settings};
use crate::delivery::feeder::Shaper;
use crate::record::{format_time, CdrTime};
use crate::routing::fields::Fields;
use crate::shape::{Format, Meta, Normalize, Shape};
use crate::spooled::{RecordKind, StoredRecord};

/// acc_syslog's words before a CDR written as `kv` to syslog.
const ACC_ANSWERED: &[u8] = b"ACC: call answered: ";
const ACC_MISSED: &[u8] = b"ACC: call missed: ";

struct Shaped {
    shape: Shape,
    entity_id: String,
    system_name: String,
    usegmtime: bool,
    acc_prefix: bool,
}

impl Shaper for Shaped {
    fn shape(&self, record: &StoredRecord<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        if self.acc_prefix && record.kind == RecordKind::Cdr {
            let missed = Fields::parse(record.payload).is_some_and(|f| f.is_missed_call());
            out.extend_from_slice(if missed { ACC_MISSED } else { ACC_ANSWERED });
        }
        let kind = match record.kind {
            RecordKind::Cdr => "cdr",
            RecordKind::Cel => "cel",
            RecordKind::Control => control_type(record.payload),
        };
        let emitted_at = contract_time(record.captured_ms, self.usegmtime);
        let meta = Meta {
            kind,
            record_id: record.record_id,
            entity_id: &self.entity_id,
            system_name: &self.system_name,
            emitted_at: &emitted_at,
        };
        self.shape
            .apply(record.payload, &meta, out)
            .map_err(|error| error.to_string())
    }
}

/// `module_start` or `module_stop`, from a control record.
fn control_type(payload: &[u8]) -> &'static str {
    if payload.windows(12).any(|w| w == b"module_start") {
        "module_start"
    } else {
        "module_stop"
    }
}

/// Unix milliseconds in the contract's time format (the record's own formatter: no
/// format string to read for every record).
pub fn contract_time(ms: u64, usegmtime: bool) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    let sec = ms.div_euclid(1000);
    let gmtoff = if usegmtime {
        0
    } else {
        Local
            .timestamp_opt(sec, 0)
            .single()
            .map_or(0, |time| time.offset().local_minus_utc())
    };
    let time = CdrTime {
        sec,
        usec: ms.rem_euclid(1000) * 1000,
        gmtoff,
    };
    format_time(time, usegmtime)
}

/// The shaper of a destination, `None` when it writes the contract as logged.
pub fn shaper(
    settings: &Settings,
    kind: DestinationType,
    routing: &Routing,
    identity: (&str, &str),
) -> Result<Option<Box<dyn Shaper>>, String> {
    let output = &routing.output;
    let fields = match &output.fields {
        Some(spec) => {
            Some(Shape::parse_fields(spec).map_err(|error| format!("fields = '{spec}': {error}"))?)
        }
        None => None,
    };
    let shape = Shape {
        format: match output.format {
            OutputFormat::Contract => Format::Contract,
            OutputFormat::Envelope => Format::Envelope,
            OutputFormat::Kv => Format::Kv,
        },
        fields,
        normalize: if output.snake_case {
            Normalize::SnakeCase
        } else {
            Normalize::None
        },
        pretty: output.pretty,
    };
    shape.validate()?;
    let acc_prefix = kind == DestinationType::Syslog && output.format == OutputFormat::Kv;
    if shape.is_identity() && !acc_prefix {
        return Ok(None);
    }
    Ok(Some(Box::new(Shaped {
        shape,
        entity_id: identity.0.to_string(),
        system_name: identity.1.to_string(),
        usegmtime: settings.usegmtime,
        acc_prefix,
    })))
}

#[cfg(test)]
mod tests {
    use chrono::{Local, TimeZone, Utc};

    use super::contract_time;

    #[test]
    fn contract_time_reads_like_chrono_in_both_zones() {
        const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f%z";
        for ms in [
            0,
            999,
            1_000,
            951_782_400_500,
            1_768_483_800_999,
            4_102_444_799_001,
        ] {
            let signed = ms as i64;
            let utc = Utc.timestamp_millis_opt(signed).unwrap().format(FORMAT);
            let local = Local.timestamp_millis_opt(signed).unwrap().format(FORMAT);
            assert_eq!(contract_time(ms, true), utc.to_string(), "{ms}");
            assert_eq!(contract_time(ms, false), local.to_string(), "{ms}");
        }
    }
}
