//! One list of options: `cdr_kafka::config::OPTIONS` is what the sample file, the XML
//! documentation (`config show help cdr_kafka`) and the README's option table say,
//! name for name, default for default, in the same order. The sample must also be a
//! configuration the module accepts as is, and with any one commented-out line enabled.
//!
//! Plain file reads: no Asterisk, no broker.

use std::fs;
use std::path::Path;
use std::time::Duration;

use cdr_kafka::config::{
    self, ConfigError, Entry, HostCapabilities, OptionDoc, CEL_OPTIONS, OPTIONS,
};

const SAMPLE: &str = "cdr_kafka.conf.sample";
const XML_DOCS: &str = "documentation/cdr_kafka_config-en_US.xml";
const README: &str = "README.md";
const README_TABLE_HEADER: &str = "| option | default | what it does |";
const README_CEL_TABLE_HEADER: &str = "| [cel] option | default | what it does |";

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
    /// The `; ` comment lines right above it.
    comment: Vec<String>,
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
/// `name = value`, `;` comments.
fn read_sample() -> Vec<SampleOption> {
    let text = read(SAMPLE);
    let mut options = Vec::new();
    let mut section = String::new();
    let mut comment = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index as i32 + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            comment.clear();
        } else if let Some(rest) = trimmed.strip_prefix(';') {
            if let Some((name, value)) = commented_option(rest) {
                options.push(SampleOption {
                    line,
                    section: section.clone(),
                    name: name.to_string(),
                    value: value.trim().to_string(),
                    active: false,
                    comment: std::mem::take(&mut comment),
                });
            } else {
                comment.push(rest.trim().to_string());
            }
        } else if let Some(name) = trimmed.strip_prefix('[') {
            let name = name.split(']').next().unwrap_or_default();
            section = name.trim().to_string();
            comment.clear();
        } else {
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
                comment: std::mem::take(&mut comment),
            });
        }
    }
    options
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
    for line in &sample {
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
    let active: Vec<&SampleOption> = sample.iter().filter(|o| o.active).collect();
    for enabled in sample.iter().filter(|o| !o.active) {
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
        "<configObject name=\"global\">",
        "<configObject name=\"cel\">",
    ] {
        assert!(xml.contains(expected), "{XML_DOCS} lacks {expected}");
    }
    assert_eq!(
        xml.matches("<configObject ").count(),
        2,
        "{XML_DOCS}: cdr_kafka.conf has [global] and [cel]"
    );
    let cel_start = xml.find("<configObject name=\"cel\">").expect("[cel]");
    let documented = read_xml_options(&xml);
    let global_count = read_xml_options(&xml[..cel_start]).len();
    let documented_names: Vec<String> = documented
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let section = if i < global_count { "global" } else { "cel" };
            format!("{section}.{}", o.name)
        })
        .collect();
    assert_eq!(
        documented_names,
        all_qualified_names(),
        "{XML_DOCS}: options, in order"
    );
    for (xml_option, option) in documented.iter().zip(OPTIONS.iter().chain(CEL_OPTIONS)) {
        let expected_default = (!option.default.is_empty()).then_some(option.default);
        assert_eq!(
            xml_option.default.as_deref(),
            expected_default,
            "{XML_DOCS}: default of {}",
            option.name
        );
        assert!(
            xml_option.body.contains("<synopsis>"),
            "{XML_DOCS}: {} has no synopsis",
            option.name
        );
        if let Some(property) = option.librdkafka {
            assert!(
                xml_option
                    .body
                    .contains(&format!("<literal>{property}</literal>")),
                "{XML_DOCS}: {} does not name librdkafka's {property}",
                option.name
            );
        }
    }
}

// ---------------------------------------------------------------- the README table

/// A README table as it must read, generated from the section's options.
fn expected_readme_table(header: &str, options: &[OptionDoc]) -> String {
    let mut table = format!("{header}\n|---|---|---|\n");
    for option in options {
        table.push_str(&format!(
            "| `{}` | {} | {} |\n",
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
        assert_eq!(cells.len(), 3, "{README}: not 3 cells: {row}. {help}");
        let name = cell(cells[0]);
        let option = options
            .iter()
            .find(|o| o.name == name)
            .unwrap_or_else(|| panic!("{README}: '{name}' is not documented here. {help}"));
        assert_eq!(
            cell(cells[1]),
            option.default,
            "{README}: default of {name}. {help}"
        );
        assert_eq!(
            cells[2].trim(),
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
}
