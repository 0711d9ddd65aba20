//! One list of options: `cdr_kafka::config::OPTIONS`, `CEL_OPTIONS` and
//! `DESTINATION_OPTIONS` are what the sample file, the XML documentation (`config show
//! help cdr_kafka`) and the README's option tables say, name for name, default for
//! default, in the same order. The sample must also be a configuration the module
//! accepts as is, with any one commented-out line enabled, and with any one of its
//! commented-out destination sections enabled (its values checked by the parsers the
//! destinations use).
//!
//! Plain file reads: no Asterisk, no broker.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cdr_kafka::config::{
    self, ConfigError, DestinationSettings, DestinationType, Entry, HostCapabilities, OptionDoc,
    Settings, CEL_OPTIONS, DESTINATION_OPTIONS, OPTIONS,
};
use cdr_kafka::delivery::file::Rotation;
use cdr_kafka::delivery::http::{HttpDestination, HttpSettings, Method};
use cdr_kafka::delivery::syslog::{Facility, Level, SyslogDestination, SyslogSettings};
use cdr_kafka::routing::Missed;

const SAMPLE: &str = "cdr_kafka.conf.sample";
const XML_DOCS: &str = "documentation/cdr_kafka_config-en_US.xml";
const README: &str = "README.md";
const README_TABLE_HEADER: &str = "| option | default | what it does |";
const README_CEL_TABLE_HEADER: &str = "| [cel] option | default | what it does |";
const README_DESTINATION_TABLE_HEADER: &str =
    "| destination option | types | default | what it does |";
/// How the docs name every producer option a Kafka destination with its own brokers takes.
const PRODUCER_OPTION: &str = "<producer option>";

/// The documented options of a section of cdr_kafka.conf.
fn options_of(section: &str) -> &'static [OptionDoc] {
    match section {
        "global" => OPTIONS,
        "cel" => CEL_OPTIONS,
        other => panic!("cdr_kafka.conf has no section [{other}]"),
    }
}

/// Every option, `[global]`'s then `[cel]`'s, as `section.name`.
fn all_qualified_names() -> Vec<String> {
    let global = OPTIONS.iter().map(|o| format!("global.{}", o.name));
    let cel = CEL_OPTIONS.iter().map(|o| format!("cel.{}", o.name));
    global.chain(cel).collect()
}

const HOST: HostCapabilities = HostCapabilities {
    tenant_fields: true,
};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn names(options: &[&OptionDoc]) -> Vec<&'static str> {
    options.iter().map(|o| o.name).collect()
}

/// The option a name belongs to; `rdkafka.<property>` stands for every `rdkafka.X`.
fn option_for(section: &str, name: &str) -> Option<&'static OptionDoc> {
    options_of(section).iter().find(|o| {
        o.name == name
            || o.name.strip_suffix("<property>").is_some_and(|prefix| {
                name.len() > prefix.len() && name.starts_with(prefix) && !name.contains('<')
            })
    })
}

// ---------------------------------------------------------------- the sample file

/// An option line of the sample: `name = value`, or commented out as `;name = value`.
#[derive(Debug)]
struct SampleOption {
    line: i32,
    section: String,
    name: String,
    value: String,
    active: bool,
    /// In a commented-out destination section (`;[name]`).
    example: bool,
    /// `;;name = value` in such a section: an alternative, enabled on top of it.
    alternative: bool,
    /// The `; ` comment lines right above it.
    comment: Vec<String>,
}

/// A commented-out destination section, `;[name]`.
#[derive(Debug)]
struct ExampleSection {
    name: String,
    line: i32,
    /// The `; ` comment lines right above its header.
    description: Vec<String>,
}

struct Sample {
    options: Vec<SampleOption>,
    examples: Vec<ExampleSection>,
}

/// Name of a commented-out option line: `;name = value`, no space after the `;`.
fn commented_option(rest: &str) -> Option<(&str, &str)> {
    let (name, value) = rest
        .split_once(" = ")
        .or_else(|| rest.strip_suffix(" =").map(|name| (name, "")))?;
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.<>-".contains(c));
    is_name.then_some((name, value))
}

/// A tiny reader of Asterisk's config syntax, enough for the sample: `[section]`,
/// `name = value`, `;` comments; and the sample's own convention for examples:
/// `;[section]` opens a commented-out section, `;;name = value` is an alternative in it.
fn read_sample() -> Sample {
    let text = read(SAMPLE);
    let mut options = Vec::new();
    let mut examples = Vec::new();
    let mut section = String::new();
    let mut in_example = false;
    let mut comment = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index as i32 + 1;
        let trimmed = raw.trim();
        let header = |rest: &str| {
            rest.split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        if trimmed.is_empty() {
            comment.clear();
        } else if let Some(rest) = trimmed.strip_prefix(";[") {
            section = header(rest);
            in_example = true;
            examples.push(ExampleSection {
                name: section.clone(),
                line,
                description: std::mem::take(&mut comment),
            });
        } else if let Some(rest) = trimmed.strip_prefix(';') {
            let alternative = rest
                .strip_prefix(';')
                .filter(|_| in_example)
                .and_then(commented_option);
            if let Some((name, value)) = alternative.or_else(|| commented_option(rest)) {
                options.push(SampleOption {
                    line,
                    section: section.clone(),
                    name: name.to_string(),
                    value: value.trim().to_string(),
                    active: false,
                    example: in_example,
                    alternative: alternative.is_some(),
                    comment: std::mem::take(&mut comment),
                });
            } else {
                comment.push(rest.trim().to_string());
            }
        } else if let Some(rest) = trimmed.strip_prefix('[') {
            section = header(rest);
            in_example = false;
            comment.clear();
        } else {
            assert!(
                !in_example,
                "{SAMPLE} line {line}: an active line inside the commented-out section [{section}]"
            );
            let code = trimmed.split(';').next().unwrap_or_default();
            let (name, value) = code.split_once('=').unwrap_or_else(|| {
                panic!("{SAMPLE} line {line}: neither [section] nor name = value: {raw}")
            });
            options.push(SampleOption {
                line,
                section: section.clone(),
                name: name.trim().to_string(),
                value: value.trim().to_string(),
                active: true,
                example: false,
                alternative: false,
                comment: std::mem::take(&mut comment),
            });
        }
    }
    Sample { options, examples }
}

fn entry(option: &SampleOption) -> Entry {
    Entry {
        section: option.section.clone(),
        name: option.name.clone(),
        value: option.value.clone(),
        line: option.line,
    }
}

/// kafka.conf as res_kafka would have it, with the section `connection` names.
fn kafka_conf_with(connection: &str) -> Vec<Entry> {
    [("type", "connection"), ("brokers", "kafka-1:9092")]
        .iter()
        .enumerate()
        .map(|(i, (name, value))| Entry {
            section: connection.to_string(),
            name: name.to_string(),
            value: value.to_string(),
            line: i as i32 + 2,
        })
        .collect()
}

// The Err type is parse's; the lint would have us box it there, not here.
#[allow(clippy::result_large_err)]
fn no_kafka_conf() -> Result<Vec<Entry>, ConfigError> {
    panic!("kafka.conf is read only with connection set")
}

#[test]
fn sample_shows_every_option_once_with_its_default() {
    let sample = read_sample();
    let mut shown: Vec<String> = Vec::new();
    for line in sample.options.iter().filter(|o| !o.example) {
        let option = option_for(&line.section, &line.name).unwrap_or_else(|| {
            panic!(
                "{SAMPLE} line {}: '{}' is not an option of [{}]",
                line.line, line.name, line.section
            )
        });
        if !option.default.is_empty() {
            assert_eq!(
                line.value, option.default,
                "{SAMPLE} line {}: {} is shown with a value other than its default",
                line.line, line.name
            );
        }
        let block = line.comment.join("\n");
        assert!(
            block.starts_with(&format!("{}:", option.name)),
            "{SAMPLE} line {}: the comment above {} does not start with '{}:'",
            line.line,
            line.name,
            option.name
        );
        if let Some(property) = option.librdkafka {
            assert!(
                block.contains(&format!("librdkafka: {property}")),
                "{SAMPLE} line {}: the comment above {} does not name librdkafka's {property}",
                line.line,
                line.name
            );
        }
        shown.push(format!("{}.{}", line.section, option.name));
    }
    assert_eq!(shown, all_qualified_names(), "{SAMPLE}: options, in order");
}

#[test]
fn sample_is_accepted_as_is() {
    let entries: Vec<Entry> = read_sample()
        .options
        .iter()
        .filter(|o| o.active)
        .map(entry)
        .collect();
    let settings = config::parse(&entries, HOST, &mut no_kafka_conf)
        .unwrap_or_else(|e| panic!("{SAMPLE} as is: {e}"));
    assert_eq!(settings.topic, "asterisk_cdr");
    assert_eq!(
        settings.kafka.get("bootstrap.servers"),
        Some("127.0.0.1:9092")
    );
}

#[test]
fn each_commented_out_line_is_accepted_when_enabled() {
    let sample = read_sample();
    let active: Vec<&SampleOption> = sample.options.iter().filter(|o| o.active).collect();
    for enabled in sample.options.iter().filter(|o| !o.active && !o.example) {
        let mut entries: Vec<Entry> = active
            .iter()
            .filter(|o| o.name != enabled.name || o.section != enabled.section)
            .map(|o| entry(o))
            .collect();
        entries.push(entry(enabled));
        // The Err type is parse's; the lint would have us box it there, not here.
        #[allow(clippy::result_large_err)]
        let mut kafka_conf = || Ok(kafka_conf_with(&enabled.value));
        if let Err(e) = config::parse(&entries, HOST, &mut kafka_conf) {
            panic!(
                "{SAMPLE} line {}: enabling '{} = {}' is refused: {e}",
                enabled.line, enabled.name, enabled.value
            );
        }
    }
}

/// The documented option a line of a destination section stands for.
fn destination_option_for(name: &str) -> Option<&'static OptionDoc> {
    let producer = name.starts_with("rdkafka.")
        || OPTIONS
            .iter()
            .any(|o| o.name == name && o.name != "brokers" && o.librdkafka.is_some());
    let name = if producer { PRODUCER_OPTION } else { name };
    DESTINATION_OPTIONS.iter().find(|o| o.name == name)
}

/// The `type` an example section sets.
fn example_type<'s>(sample: &'s Sample, section: &str) -> &'s str {
    sample
        .options
        .iter()
        .find(|o| o.example && o.section == section && o.name == "type")
        .map_or_else(
            || panic!("{SAMPLE}: the example [{section}] has no type"),
            |o| o.value.as_str(),
        )
}

#[test]
fn sample_examples_document_every_destination_option_in_order() {
    let sample = read_sample();
    let mut documented: Vec<&str> = Vec::new();
    for line in sample.options.iter().filter(|o| o.example) {
        let option = destination_option_for(&line.name).unwrap_or_else(|| {
            panic!(
                "{SAMPLE} line {}: '{}' is not an option of a destination section",
                line.line, line.name
            )
        });
        let kind = example_type(&sample, &line.section);
        assert!(
            option.types == "all" || option.types == kind,
            "{SAMPLE} line {}: {} is not an option of type {kind}",
            line.line,
            line.name
        );
        if documented.contains(&option.name) {
            continue;
        }
        let block = line.comment.join("\n");
        let at = format!(
            "{SAMPLE} line {}: the comment above {}",
            line.line, line.name
        );
        assert!(
            block.starts_with(&format!("{}:", option.name)),
            "{at} does not start with '{}:'",
            option.name
        );
        if !option.default.is_empty() {
            assert!(
                block.contains(&format!("Default: {}", option.default)),
                "{at} does not say 'Default: {}'",
                option.default
            );
        }
        if let Some(property) = option.librdkafka {
            assert!(
                block.contains(&format!("librdkafka: {property}")),
                "{at} does not name librdkafka's {property}"
            );
        }
        documented.push(option.name);
    }
    let expected: Vec<&str> = DESTINATION_OPTIONS.iter().map(|o| o.name).collect();
    assert_eq!(
        documented, expected,
        "{SAMPLE}: destination options, first shown, in order"
    );
}

/// `[global] name = value` lines of an example's description: what it needs in [global].
fn global_lines(example: &ExampleSection) -> Vec<Entry> {
    example
        .description
        .iter()
        .filter_map(|text| {
            let (name, value) = text.strip_prefix("[global] ")?.split_once(" = ")?;
            Some(Entry {
                section: "global".into(),
                name: name.trim().into(),
                value: value.trim().into(),
                line: example.line,
            })
        })
        .collect()
}

/// The sample as is with `example` (and `alternative`, one of its `;;` lines) enabled.
#[allow(clippy::result_large_err)]
fn enable_example(
    sample: &Sample,
    example: &ExampleSection,
    alternative: Option<&SampleOption>,
) -> Result<Settings, ConfigError> {
    let globals = global_lines(example);
    let mut entries: Vec<Entry> = sample
        .options
        .iter()
        .filter(|o| o.active)
        .filter(|o| {
            !globals
                .iter()
                .any(|g| g.section == o.section && g.name == o.name)
        })
        .map(entry)
        .collect();
    entries.extend(globals);
    let own = sample
        .options
        .iter()
        .filter(|o| o.example && !o.alternative && o.section == example.name);
    entries.extend(own.map(entry));
    entries.extend(alternative.map(entry));
    let connection = entries
        .iter()
        .rev()
        .find(|e| e.name == "connection")
        .map(|e| e.value.clone())
        .unwrap_or_default();
    #[allow(clippy::result_large_err)]
    let mut kafka_conf = || Ok(kafka_conf_with(&connection));
    config::parse(&entries, HOST, &mut kafka_conf)
}

/// A destination's type options through the parsers building it uses (a syslog
/// destination is pointed at a socket that does not exist: it starts broken, no error).
fn check_type_options(
    settings: &Settings,
    destination: &DestinationSettings,
) -> Result<(), String> {
    let value = |name: &str| destination.option(name).map(|e| e.value.trim());
    let absolute = |name: &str| match value(name) {
        Some(path) if !path.is_empty() && !path.starts_with('/') => {
            Err(format!("{name} '{path}' is not absolute"))
        }
        _ => Ok(()),
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        value(name)
            .map(|text| text.parse::<u64>().map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    match destination.kind {
        DestinationType::Kafka => {}
        DestinationType::File => {
            absolute("path")?;
            Rotation::parse(
                value("rotate").unwrap_or("never"),
                value("rotate_time"),
                value("rotate_day"),
            )
            .map_err(|e| e.to_string())?;
        }
        DestinationType::Syslog => {
            absolute("socket")?;
            let mut syslog = SyslogSettings::new(&destination.name);
            syslog.socket = std::env::temp_dir().join("cdr_kafka-options-agree-no-syslog");
            if let Some(facility) = value("facility") {
                syslog.facility = Facility::parse(facility)?;
            }
            if let Some(level) = value("level") {
                syslog.level = Level::parse(level)?;
            }
            if let Some(tag) = value("tag") {
                syslog.tag = tag.to_string();
            }
            SyslogDestination::new(syslog).map_err(|e| e.to_string())?;
        }
        DestinationType::Http => {
            let url = value("url").unwrap_or_default();
            let mut http = HttpSettings::new(&destination.name, url);
            if let Some(method) = value("method") {
                http.method = Method::parse(method)?;
            }
            for header in destination.options.iter().filter(|e| e.name == "header") {
                let (name, value) = header
                    .value
                    .split_once(':')
                    .ok_or("a header is not Name: value")?;
                http.headers
                    .push((name.trim().to_string(), value.trim().to_string()));
            }
            if let Some(ms) = number("timeout_ms")? {
                http.timeout = Duration::from_millis(ms);
            }
            if let Some(batch) = number("batch_max")? {
                http.batch_max = batch as usize;
            }
            let path = |name: &str| value(name).filter(|p| !p.is_empty()).map(PathBuf::from);
            for name in ["ca_file", "client_cert", "client_key"] {
                absolute(name)?;
            }
            http.tls.ca_file = path("ca_file");
            http.tls.client_cert = path("client_cert");
            http.tls.client_key = path("client_key");
            HttpDestination::new(http).map_err(|e| e.to_string())?;
        }
    }
    let identity = ("00:11:22:33:44:55", "pbx-01");
    cdr_kafka::shaping::shaper(settings, destination.kind, &destination.routing, identity)
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn each_example_destination_section_is_accepted_when_enabled() {
    let sample = read_sample();
    assert!(!sample.examples.is_empty(), "{SAMPLE}: no example sections");
    for example in &sample.examples {
        let alternatives = sample
            .options
            .iter()
            .filter(|o| o.alternative && o.section == example.name);
        for alternative in std::iter::once(None).chain(alternatives.map(Some)) {
            let what = match alternative {
                Some(o) => format!("[{}] with '{} = {}'", example.name, o.name, o.value),
                None => format!("[{}]", example.name),
            };
            let settings = enable_example(&sample, example, alternative).unwrap_or_else(|e| {
                panic!(
                    "{SAMPLE} line {}: enabling {what} is refused: {e}",
                    example.line
                )
            });
            let destination = settings
                .destinations
                .iter()
                .find(|d| d.name == example.name)
                .unwrap_or_else(|| panic!("{SAMPLE}: {what} is no destination"));
            if let Err(e) = check_type_options(&settings, destination) {
                panic!("{SAMPLE} line {}: enabling {what}: {e}", example.line);
            }
        }
    }
}

#[test]
fn documented_destination_defaults_are_the_defaults_applied() {
    let lines = [
        ("global", "brokers", "127.0.0.1:9092"),
        ("k", "type", "kafka"),
        ("f", "type", "file"),
        ("f", "path", "/var/log/asterisk/cdr.jsonl"),
        ("s", "type", "syslog"),
        ("h", "type", "http"),
        ("h", "url", "http://127.0.0.1:8080/cdr"),
    ];
    let entries: Vec<Entry> = lines
        .iter()
        .enumerate()
        .map(|(i, (section, name, value))| Entry {
            section: section.to_string(),
            name: name.to_string(),
            value: value.to_string(),
            line: i as i32 + 1,
        })
        .collect();
    let settings = config::parse(&entries, HOST, &mut no_kafka_conf).unwrap();
    let of = |kind: DestinationType| {
        settings
            .destinations
            .iter()
            .find(|d| d.kind == kind)
            .expect("one of each type")
    };
    let flag = |on: bool| if on { "yes" } else { "no" }.to_string();
    let syslog = SyslogSettings::new("s");
    let http = HttpSettings::new("h", "http://127.0.0.1:8080/cdr");
    for option in DESTINATION_OPTIONS {
        let section = match option.types {
            "file" => of(DestinationType::File),
            "syslog" => of(DestinationType::Syslog),
            "http" => of(DestinationType::Http),
            _ => of(DestinationType::Kafka),
        };
        let routing = &section.routing;
        let applied = match option.name {
            // Required, or rotate_day: its default depends on rotate (checked in the
            // file destination's own tests).
            "type" | "path" | "url" | "rotate_day" => continue,
            "records" => routing.records.names(),
            "missed" => missed_name(routing.missed).to_string(),
            "filter" => routing.filters.join(","),
            "control" => routing.control.name().to_string(),
            "give_up_after_ms" => give_up_ms(routing.give_up_after),
            "format" => format_name(routing.output.format).to_string(),
            "fields" => routing.output.fields.clone().unwrap_or_default(),
            "normalize" => normalize_name(routing.output.snake_case).to_string(),
            "enabled" => flag(routing.enabled),
            "linger_ms" => routing
                .linger
                .map(|window| window.as_millis().to_string())
                .unwrap_or_default(),
            "topic_fallback" => routing.topic_fallback.clone().unwrap_or_default(),
            "topic" => section.topic.clone().unwrap_or_default(),
            "key" => section
                .key
                .flatten()
                .map(|k| k.name().to_string())
                .unwrap_or_default(),
            "brokers" | "connection" | PRODUCER_OPTION => {
                assert!(section.kafka.is_none(), "no own producer by default");
                String::new()
            }
            "rotate" => {
                assert_eq!(
                    Rotation::parse(option.default, None, None),
                    Ok(Rotation::Never)
                );
                continue;
            }
            "rotate_time" => {
                assert_eq!(
                    Rotation::parse("daily", Some(option.default), None),
                    Rotation::parse("daily", None, None),
                    "default of rotate_time"
                );
                continue;
            }
            "pretty" => flag(routing.output.pretty),
            "socket" => syslog.socket.display().to_string(),
            "facility" => syslog.facility.to_string(),
            "level" => syslog.level.to_string(),
            "tag" => syslog.tag.clone(),
            "method" => http.method.to_string().to_ascii_lowercase(),
            "header" => String::new(),
            "timeout_ms" => http.timeout.as_millis().to_string(),
            "batch_max" => http.batch_max.to_string(),
            "ca_file" => path_text(&http.tls.ca_file),
            "client_cert" => path_text(&http.tls.client_cert),
            "client_key" => path_text(&http.tls.client_key),
            other => panic!("destination option {other}: no default check"),
        };
        assert_eq!(
            applied, option.default,
            "default of destination option {}",
            option.name
        );
    }
}

fn path_text(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn missed_name(missed: Missed) -> &'static str {
    match missed {
        Missed::Include => "include",
        Missed::Only => "only",
        Missed::Exclude => "exclude",
    }
}

fn format_name(format: config::OutputFormat) -> &'static str {
    match format {
        config::OutputFormat::Contract => "contract",
        config::OutputFormat::Envelope => "envelope",
        config::OutputFormat::Kv => "kv",
    }
}

fn normalize_name(snake_case: bool) -> &'static str {
    if snake_case {
        "snake_case"
    } else {
        "none"
    }
}

fn give_up_ms(give_up_after: Option<Duration>) -> String {
    give_up_after.map_or(0, |d| d.as_millis()).to_string()
}

#[test]
fn documented_defaults_are_the_defaults_applied() {
    let only_brokers = [Entry {
        section: "global".into(),
        name: "brokers".into(),
        value: "127.0.0.1:9092".into(),
        line: 2,
    }];
    let settings = config::parse(&only_brokers, HOST, &mut no_kafka_conf).unwrap();
    let flag = |on: bool| if on { "yes" } else { "no" };
    let routing = &settings.routing;
    for option in OPTIONS {
        let applied = match option.name {
            "topic" => settings.topic.clone(),
            "key" => settings
                .key
                .map(|k| k.name().to_string())
                .unwrap_or_default(),
            "connection" => settings.connection.clone().unwrap_or_default(),
            "loguniqueid" => flag(settings.loguniqueid).into(),
            "loguserfield" => flag(settings.loguserfield).into(),
            "usegmtime" => flag(settings.usegmtime).into(),
            "flush_timeout_ms" => settings.flush_timeout.as_millis().to_string(),
            "topic_fallback" => routing.topic_fallback.clone().unwrap_or_default(),
            "records" => routing.records.names(),
            "missed" => missed_name(routing.missed).into(),
            "filter" => routing.filters.join(","),
            "control" => routing.control.name().into(),
            "give_up_after_ms" => give_up_ms(routing.give_up_after),
            "format" => format_name(routing.output.format).into(),
            "fields" => routing.output.fields.clone().unwrap_or_default(),
            "normalize" => normalize_name(routing.output.snake_case).into(),
            "enabled" => flag(routing.enabled).into(),
            "enable_idempotence" => match settings.kafka.get("enable.idempotence") {
                Some("true") => "yes".into(),
                Some("false") => "no".into(),
                other => panic!("enable.idempotence = {other:?}"),
            },
            // librdkafka's own default applies: nothing of ours to compare.
            _ => match option.librdkafka.and_then(|p| settings.kafka.get(p)) {
                Some(value) if option.name != "brokers" => value.to_string(),
                _ => continue,
            },
        };
        assert_eq!(applied, option.default, "default of {}", option.name);
    }
    assert_eq!(
        settings.flush_timeout,
        Duration::from_millis(config::DEFAULT_FLUSH_TIMEOUT_MS)
    );
    let cel = &settings.cel;
    for option in CEL_OPTIONS {
        let applied = match option.name {
            "enabled" => flag(cel.enabled).to_string(),
            "topic" => cel.topic.clone(),
            "key" => cel.key.map(|k| k.name().to_string()).unwrap_or_default(),
            "events" => cel.events.join(","),
            "usegmtime" => flag(cel.usegmtime).to_string(),
            other => panic!("[cel] {other}: no default check"),
        };
        assert_eq!(applied, option.default, "default of [cel] {}", option.name);
    }
}

// ---------------------------------------------------------------- the XML documentation

/// One `<configOption ...>` of the XML documentation.
#[derive(Debug)]
struct XmlOption {
    name: String,
    default: Option<String>,
    /// Everything up to `</configOption>` (empty for `<configOption .../>`).
    body: String,
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

fn read_xml_options(xml: &str) -> Vec<XmlOption> {
    let mut options = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<configOption ") {
        rest = &rest[start..];
        let tag_end = rest.find('>').expect("unterminated <configOption");
        let tag = &rest[..tag_end];
        let body = if tag.ends_with('/') {
            ""
        } else {
            let close = rest
                .find("</configOption>")
                .expect("<configOption> without </configOption>");
            &rest[tag_end + 1..close]
        };
        options.push(XmlOption {
            name: attribute(tag, "name").expect("<configOption> without name"),
            default: attribute(tag, "default"),
            body: body.to_string(),
        });
        rest = &rest[tag_end..];
    }
    options
}

#[test]
fn xml_documents_every_option_with_its_default() {
    let xml = read(XML_DOCS);
    for expected in [
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
        "<!DOCTYPE docs SYSTEM \"appdocsxml.dtd\">",
        "<configInfo name=\"cdr_kafka\" language=\"en_US\">",
        "<configFile name=\"cdr_kafka.conf\">",
    ] {
        assert!(xml.contains(expected), "{XML_DOCS} lacks {expected}");
    }
    let objects: [(&str, &[OptionDoc]); 3] = [
        ("global", OPTIONS),
        ("cel", CEL_OPTIONS),
        ("destination", DESTINATION_OPTIONS),
    ];
    assert_eq!(
        xml.matches("<configObject ").count(),
        objects.len(),
        "{XML_DOCS}: cdr_kafka.conf has [global], [cel] and destination sections"
    );
    for (index, (object, options)) in objects.iter().enumerate() {
        let open = format!("<configObject name=\"{object}\">");
        let start = xml
            .find(&open)
            .unwrap_or_else(|| panic!("{XML_DOCS} lacks {open}"));
        let end = match objects.get(index + 1) {
            Some((next, _)) => xml
                .find(&format!("<configObject name=\"{next}\">"))
                .unwrap_or_else(|| panic!("{XML_DOCS} lacks [{next}] after [{object}]")),
            None => xml.len(),
        };
        let documented = read_xml_options(&xml[start..end]);
        let documented_names: Vec<&str> = documented.iter().map(|o| o.name.as_str()).collect();
        let expected_names: Vec<&str> = options.iter().map(|o| o.name).collect();
        assert_eq!(
            documented_names, expected_names,
            "{XML_DOCS}: options of {object}, in order"
        );
        for (xml_option, option) in documented.iter().zip(options.iter()) {
            let expected_default = (!option.default.is_empty()).then_some(option.default);
            assert_eq!(
                xml_option.default.as_deref(),
                expected_default,
                "{XML_DOCS}: default of {object} {}",
                option.name
            );
            assert!(
                xml_option.body.contains("<synopsis>"),
                "{XML_DOCS}: {object} {} has no synopsis",
                option.name
            );
            if let Some(property) = option.librdkafka {
                assert!(
                    xml_option
                        .body
                        .contains(&format!("<literal>{property}</literal>")),
                    "{XML_DOCS}: {object} {} does not name librdkafka's {property}",
                    option.name
                );
            }
            if !option.types.is_empty() && option.types != "all" {
                assert!(
                    xml_option
                        .body
                        .contains(&format!("<literal>type = {}</literal>", option.types)),
                    "{XML_DOCS}: {object} {} does not say it is for type = {}",
                    option.name,
                    option.types
                );
            }
        }
    }
}

// ---------------------------------------------------------------- the README table

/// A README table as it must read, generated from the section's options; a table
/// of destination options has a `types` column.
fn expected_readme_table(header: &str, options: &[OptionDoc]) -> String {
    let with_types = header == README_DESTINATION_TABLE_HEADER;
    let mut table = format!("{header}\n");
    table.push_str(if with_types {
        "|---|---|---|---|\n"
    } else {
        "|---|---|---|\n"
    });
    for option in options {
        let types = if with_types {
            format!(" {} |", option.types)
        } else {
            String::new()
        };
        table.push_str(&format!(
            "| `{}` |{types} {} | {} |\n",
            option.name, option.default, option.summary
        ));
    }
    table
}

fn cell(text: &str) -> &str {
    let text = text.trim();
    text.strip_prefix('`')
        .and_then(|t| t.strip_suffix('`'))
        .unwrap_or(text)
}

fn check_readme_table(readme: &str, header: &str, options: &[OptionDoc]) {
    let help = format!(
        "{README} needs this option table (generated from the module's list):\n\n{}",
        expected_readme_table(header, options)
    );
    let Some(start) = readme.find(header) else {
        panic!("{README} has no line '{header}'. {help}");
    };
    let with_types = header == README_DESTINATION_TABLE_HEADER;
    let columns = if with_types { 4 } else { 3 };
    let rows: Vec<&str> = readme[start..]
        .lines()
        .skip(1)
        .take_while(|line| line.trim_start().starts_with('|'))
        .filter(|line| !line.chars().all(|c| "|-: ".contains(c)))
        .collect();
    let mut documented = Vec::new();
    for row in &rows {
        let cells: Vec<&str> = row
            .trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .split('|')
            .collect();
        assert_eq!(
            cells.len(),
            columns,
            "{README}: not {columns} cells: {row}. {help}"
        );
        let name = cell(cells[0]);
        let option = options
            .iter()
            .find(|o| o.name == name)
            .unwrap_or_else(|| panic!("{README}: '{name}' is not documented here. {help}"));
        let rest = &cells[columns - 2..];
        if with_types {
            assert_eq!(
                cells[1].trim(),
                option.types,
                "{README}: types of {name}. {help}"
            );
        }
        assert_eq!(
            cell(rest[0]),
            option.default,
            "{README}: default of {name}. {help}"
        );
        assert_eq!(
            rest[1].trim(),
            option.summary,
            "{README}: summary of {name}. {help}"
        );
        documented.push(option);
    }
    let expected: Vec<&OptionDoc> = options.iter().collect();
    assert_eq!(
        names(&documented),
        names(&expected),
        "{README}: options, in order. {help}"
    );
}

#[test]
fn readme_tables_list_every_option_with_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(README);
    let readme = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    check_readme_table(&readme, README_TABLE_HEADER, OPTIONS);
    check_readme_table(&readme, README_CEL_TABLE_HEADER, CEL_OPTIONS);
    check_readme_table(
        &readme,
        README_DESTINATION_TABLE_HEADER,
        DESTINATION_OPTIONS,
    );
}
