//! Builds the destinations a configuration names, with their rules: `[global]`'s Kafka
//! destination first, then each `[name] type = ...` section in file order, stacked for
//! the control flags. Runs on the load/reload/CLI threads the glue starts, never on a
//! CDR thread (a destination's producer starts librdkafka's threads).

use std::sync::Arc;

use crate::asterisk::host::Identity;
use crate::config::{
    known_field, ConfigError, DestinationSettings, DestinationType, Entry, KafkaSettings, Routing,
    Settings, CONFIG_FILE,
};
use crate::delivery::destination::Destination;
use crate::delivery::feeder::{FeederSettings, Rules};
use crate::delivery::kafka::{KafkaDestination, ProducerError, ProducerSettings, SharedProducer};
use crate::delivery::stack::{Member, Stack};
use crate::routing::fields::FieldName;
use crate::routing::filter::Filter;
use crate::routing::template::Template;
use crate::routing::Route;
use unbuilt::Unbuilt;

mod unbuilt;

/// The name of the Kafka destination `[global]` configures.
pub const GLOBAL_DESTINATION: &str = "global";

/// Why a destination could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// An option's value was refused where the destination is made.
    Config(ConfigError),
    /// librdkafka refused the producer settings of this destination.
    Producer { name: String, error: ProducerError },
    /// A section's options do not make a destination (its format, its rotation).
    Section { name: String, problem: String },
    /// The destination could not be opened (a file, a socket, a URL): the machine's
    /// words, not the file's.
    Open { name: String, error: String },
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(error) => write!(f, "{error}"),
            Self::Producer { name, error } => write!(
                f,
                "{CONFIG_FILE} [{name}]: librdkafka refused the producer settings: {error}"
            ),
            Self::Section { name, problem } => write!(f, "{CONFIG_FILE} [{name}]: {problem}"),
            Self::Open { name, error } => {
                write!(f, "destination '{name}' cannot open its target: {error}")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// One destination of a configuration, as the stack sees it.
pub struct Planned {
    pub name: String,
    pub kind: DestinationType,
    pub routing: Routing,
}

/// Every destination of `settings` that is enabled in the file, `[global]` first.
pub fn planned(settings: &Settings) -> Vec<Planned> {
    let global = Planned {
        name: GLOBAL_DESTINATION.to_string(),
        kind: DestinationType::Kafka,
        routing: settings.routing.clone(),
    };
    let others = settings.destinations.iter().map(|d| Planned {
        name: d.name.clone(),
        kind: d.kind,
        routing: d.routing.clone(),
    });
    std::iter::once(global)
        .chain(others)
        .filter(|planned| planned.routing.enabled)
        .collect()
}

/// The rules of a destination's routing options (checked when the file was read).
pub fn route(name: &str, routing: &Routing) -> Route {
    let kinds = routing.records;
    let known = move |field: &str| known_field(kinds, field);
    let mut route = Route::plain(name, kinds);
    route.missed = routing.missed;
    route.filters = routing
        .filters
        .iter()
        .filter_map(|text| Filter::parse(text, &known).ok())
        .collect();
    route.topic = routing
        .topic_template
        .as_deref()
        .and_then(|text| Template::parse(text, &known).ok());
    route.topic_fallback = routing.topic_fallback.clone();
    route
}

/// The stack of `settings`' destinations, when control flags couple them.
pub fn stack(settings: &Settings) -> Option<Arc<Stack>> {
    let members = planned(settings)
        .iter()
        .map(|p| {
            Member::new(p.routing.control, route(&p.name, &p.routing))
                .with_give_up_after(p.routing.give_up_after)
        })
        .collect();
    let stack = Stack::new(members);
    stack.is_coupled().then_some(stack)
}

pub fn producer_settings(kafka: &KafkaSettings) -> ProducerSettings {
    ProducerSettings {
        properties: kafka
            .properties
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        secrets: kafka
            .properties
            .iter()
            .filter(|(name, _)| KafkaSettings::is_secret(name))
            .map(|(_, value)| value.clone())
            .collect(),
    }
}

pub fn feeder_settings(settings: &Settings) -> FeederSettings {
    FeederSettings {
        batch_window: settings.linger,
        flush_timeout: settings.flush_timeout,
    }
}

/// The `[global]` producer, shared by every Kafka destination without brokers of its own.
pub fn shared_producer(settings: &Settings) -> Result<Arc<SharedProducer>, BuildError> {
    SharedProducer::new(producer_settings(&settings.kafka)).map_err(|error| BuildError::Producer {
        name: GLOBAL_DESTINATION.to_string(),
        error,
    })
}

fn kafka(name: &str, kafka: &KafkaSettings) -> Result<Box<dyn Destination>, BuildError> {
    KafkaDestination::new(name, producer_settings(kafka))
        .map(|destination| Box::new(destination) as Box<dyn Destination>)
        .map_err(|error| BuildError::Producer {
            name: name.to_string(),
            error,
        })
}

/// Builds destination `name` of `settings` and its rules; `stack` is `stack(settings)`.
pub fn build(
    settings: &Settings,
    identity: &Identity,
    name: &str,
    stack: Option<&Arc<Stack>>,
    shared: &Arc<SharedProducer>,
) -> Result<(Box<dyn Destination>, Rules), BuildError> {
    let rules = rules(settings, identity, name, stack)?;
    Ok((target(settings, name, Some(shared))?, rules))
}

/// What a load starts for one destination.
pub struct AtLoad {
    pub destination: Box<dyn Destination>,
    pub rules: Rules,
    /// Why its target could not be made yet (then `destination` is `Unbuilt`).
    pub not_built: Option<BuildError>,
}

/// As `build`, for a load: a destination whose target cannot be made now (librdkafka
/// refuses its producer, its file cannot be opened) still starts, as `Unbuilt`: its
/// records wait in the spool while its feeder tries to make it again. The error comes
/// back beside it for the log. `shared` is `None` when the `[global]` producer could
/// not be made: each destination on it then tries to make one of its own.
pub fn build_at_load(
    settings: &Settings,
    identity: &Identity,
    name: &str,
    stack: Option<&Arc<Stack>>,
    shared: Option<&Arc<SharedProducer>>,
) -> Result<AtLoad, BuildError> {
    let rules = rules(settings, identity, name, stack)?;
    match target(settings, name, shared) {
        Ok(destination) => Ok(AtLoad {
            destination,
            rules,
            not_built: None,
        }),
        Err(error @ (BuildError::Producer { .. } | BuildError::Open { .. })) => {
            let settings = settings.clone();
            let shared = shared.cloned();
            let owned_name = name.to_string();
            let make: unbuilt::Make =
                Box::new(move || target(&settings, &owned_name, shared.as_ref()));
            Ok(AtLoad {
                destination: Box::new(Unbuilt::new(name, &error, make)),
                rules,
                not_built: Some(error),
            })
        }
        Err(error) => Err(error),
    }
}

/// The rules of destination `name`: its route, format, limit and place in the stack.
fn rules(
    settings: &Settings,
    identity: &Identity,
    name: &str,
    stack: Option<&Arc<Stack>>,
) -> Result<Rules, BuildError> {
    let section = settings.destinations.iter().find(|d| d.name == name);
    let (routing, kind) = match section {
        _ if name == GLOBAL_DESTINATION => (&settings.routing, DestinationType::Kafka),
        Some(section) => (&section.routing, section.kind),
        None => return Err(no_such_destination(name)),
    };
    let mut rules = Rules::everything(name);
    rules.route = route(name, routing);
    if let Some(topic) = section.and_then(|d| d.topic.as_deref()) {
        rules.route.topic = Template::parse(topic, &|_| false).ok();
    }
    if let Some(key) = section.and_then(|d| d.key) {
        rules.route.key = Some(key.map(|field| FieldName::Field(field.name().to_string())));
    }
    rules.give_up_after = routing.give_up_after;
    rules.batch_window = routing.linger;
    rules.stack = stack.and_then(|stack| Some((Arc::clone(stack), stack.index_of(name)?)));
    let identity = (identity.entity_id.as_str(), identity.system_name.as_str());
    rules.shaper =
        crate::shaping::shaper(settings, kind, routing, identity).map_err(|problem| {
            BuildError::Section {
                name: name.to_string(),
                problem,
            }
        })?;
    Ok(rules)
}

/// Checks every section as `build` would, opening, connecting and starting nothing:
/// a section the file disables too, so enabling it later is not refused for a typo,
/// and a mistake in the file refuses the load rather than retrying for ever.
pub fn check_all(settings: &Settings, identity: &Identity) -> Result<(), BuildError> {
    let sections = settings.destinations.iter();
    for name in std::iter::once(GLOBAL_DESTINATION).chain(sections.map(|d| d.name.as_str())) {
        check(settings, identity, name)?;
    }
    Ok(())
}

fn check(settings: &Settings, identity: &Identity, name: &str) -> Result<(), BuildError> {
    use crate::delivery::syslog::SyslogDestination;
    use crate::delivery::{file::FileDestination, http::HttpDestination};
    rules(settings, identity, name, None)?;
    let Some(section) = settings.destinations.iter().find(|d| d.name == name) else {
        return Ok(());
    };
    let refused = |problem: String| BuildError::Section {
        name: name.to_string(),
        problem,
    };
    match section.kind {
        // Its topic, key and producer options were checked as the file was read.
        DestinationType::Kafka => Ok(()),
        DestinationType::Syslog => SyslogDestination::check(&syslog_settings(section)?)
            .map_err(|error| refused(error.to_string())),
        DestinationType::Http => HttpDestination::check(&http_settings(section)?)
            .map_err(|error| refused(error.to_string())),
        DestinationType::File => FileDestination::check(&file_settings(settings, section)?)
            .map(drop)
            .map_err(|error| refused(error.to_string())),
    }
}

fn no_such_destination(name: &str) -> BuildError {
    BuildError::Section {
        name: name.to_string(),
        problem: "no such destination".into(),
    }
}

/// Makes destination `name`'s target; one on the `[global]` producer makes a producer
/// of its own when `shared` is `None`.
fn target(
    settings: &Settings,
    name: &str,
    shared: Option<&Arc<SharedProducer>>,
) -> Result<Box<dyn Destination>, BuildError> {
    let on_shared = || -> Result<Box<dyn Destination>, BuildError> {
        let shared = match shared {
            Some(shared) => Arc::clone(shared),
            None => shared_producer(settings)?,
        };
        Ok(Box::new(KafkaDestination::on_shared(name, &shared)))
    };
    if name == GLOBAL_DESTINATION {
        return on_shared();
    }
    let section = settings
        .destinations
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| no_such_destination(name))?;
    match section.kind {
        DestinationType::Kafka => match &section.kafka {
            Some(own) => kafka(&section.name, own),
            None => on_shared(),
        },
        DestinationType::Syslog => syslog(section),
        DestinationType::Http => http(section),
        DestinationType::File => file(settings, section),
    }
}

fn opened<D: Destination + 'static, E: std::fmt::Display>(
    name: &str,
    result: Result<D, E>,
) -> Result<Box<dyn Destination>, BuildError> {
    result
        .map(|destination| Box::new(destination) as Box<dyn Destination>)
        .map_err(|error| BuildError::Open {
            name: name.to_string(),
            error: error.to_string(),
        })
}

/// A type option's value through its parser; the parser's words in the error.
fn parsed<T>(
    section: &DestinationSettings,
    name: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, BuildError> {
    section
        .option(name)
        .map(|entry| parse(entry.value.trim()).map_err(|expected| bad_option(entry, &expected)))
        .transpose()
}

fn number(
    section: &DestinationSettings,
    name: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, BuildError> {
    parsed(section, name, |text| {
        text.parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("not a whole number from {min} to {max}"))
    })
}

fn syslog(section: &DestinationSettings) -> Result<Box<dyn Destination>, BuildError> {
    let settings = syslog_settings(section)?;
    opened(
        &section.name,
        crate::delivery::syslog::SyslogDestination::new(settings),
    )
}

fn syslog_settings(
    section: &DestinationSettings,
) -> Result<crate::delivery::syslog::SyslogSettings, BuildError> {
    use crate::delivery::syslog::{Facility, Level, SyslogSettings};
    let mut settings = SyslogSettings::new(&section.name);
    if let Some(socket) = parsed(section, "socket", |text| {
        if text.starts_with('/') {
            Ok(std::path::PathBuf::from(text))
        } else {
            Err("not an absolute path".to_string())
        }
    })? {
        settings.socket = socket;
    }
    if let Some(facility) = parsed(section, "facility", Facility::parse)? {
        settings.facility = facility;
    }
    if let Some(level) = parsed(section, "level", Level::parse)? {
        settings.level = level;
    }
    if let Some(tag) = parsed(section, "tag", |text| Ok(text.to_string()))? {
        settings.tag = tag;
    }
    Ok(settings)
}

fn http(section: &DestinationSettings) -> Result<Box<dyn Destination>, BuildError> {
    use crate::delivery::http::{HttpDestination, HttpError};
    match HttpDestination::new(http_settings(section)?) {
        // A file that cannot be used is the option's fault: its section and line.
        Err(HttpError::Tls(error)) => Err(match section.option(error.option) {
            Some(entry) => bad_option(entry, &error.why),
            None => BuildError::Open {
                name: section.name.clone(),
                error: error.to_string(),
            },
        }),
        result => opened(&section.name, result),
    }
}

fn http_settings(
    section: &DestinationSettings,
) -> Result<crate::delivery::http::HttpSettings, BuildError> {
    use crate::delivery::http::{header_shown, HttpSettings, Method};
    let url = section
        .option("url")
        .map(|e| e.value.trim())
        .unwrap_or_default();
    let mut settings = HttpSettings::new(&section.name, url);
    if let Some(method) = parsed(section, "method", Method::parse)? {
        settings.method = method;
    }
    for entry in section.options.iter().filter(|e| e.name == "header") {
        let (name, value) = entry.value.split_once(':').ok_or_else(|| {
            // A header's value is often a secret: the error shows its name only.
            let mut shown = entry.clone();
            shown.value = format!("{} (value not shown)", header_shown(&entry.value));
            bad_option(&shown, "not Name: value")
        })?;
        settings
            .headers
            .push((name.trim().to_string(), value.trim().to_string()));
    }
    if let Some(ms) = number(section, "timeout_ms", 1, 3_600_000)? {
        settings.timeout = std::time::Duration::from_millis(ms);
    }
    if let Some(batch) = number(section, "batch_max", 1, 100_000)? {
        settings.batch_max = batch as usize;
    }
    settings.tls.ca_file = tls_path(section, "ca_file")?;
    settings.tls.client_cert = tls_path(section, "client_cert")?;
    settings.tls.client_key = tls_path(section, "client_key")?;
    Ok(settings)
}

/// The options naming a file an https destination reads when it is built.
const TLS_FILES: [&str; 3] = ["ca_file", "client_cert", "client_key"];

/// Whether a destination reads TLS files when built: a reload builds it again, so a
/// certificate or CA renewed in place is read.
pub fn reads_tls_files(section: &DestinationSettings) -> bool {
    section.kind == DestinationType::Http
        && TLS_FILES.iter().any(|name| {
            section
                .option(name)
                .is_some_and(|e| !e.value.trim().is_empty())
        })
}

/// A TLS file option: an absolute path, or empty for none.
fn tls_path(
    section: &DestinationSettings,
    name: &str,
) -> Result<Option<std::path::PathBuf>, BuildError> {
    let path = parsed(section, name, |text| match text {
        "" => Ok(None),
        _ if text.starts_with('/') => Ok(Some(std::path::PathBuf::from(text))),
        _ => Err("not an absolute path".to_string()),
    })?;
    Ok(path.flatten())
}

/// A type option's value refused: the file's words, with section and line.
pub fn bad_option(entry: &Entry, expected: &str) -> BuildError {
    BuildError::Config(ConfigError::BadValue {
        file: CONFIG_FILE,
        section: entry.section.clone(),
        name: entry.name.clone(),
        value: entry.value.clone(),
        line: entry.line,
        expected: expected.to_string(),
    })
}

fn file(
    settings: &Settings,
    section: &DestinationSettings,
) -> Result<Box<dyn Destination>, BuildError> {
    let settings = file_settings(settings, section)?;
    opened(
        &section.name,
        crate::delivery::file::FileDestination::new(settings),
    )
}

fn file_settings(
    settings: &Settings,
    section: &DestinationSettings,
) -> Result<crate::delivery::file::FileSettings, BuildError> {
    use crate::config::SyncPolicy;
    use crate::delivery::file::{FileSettings, FileSync, Rotation, SystemClock};
    let path_entry = section.option("path");
    let path = parsed(section, "path", |text| {
        if text.starts_with('/') {
            Ok(std::path::PathBuf::from(text))
        } else {
            Err("not an absolute path".to_string())
        }
    })?
    .unwrap_or_default();
    let value = |name: &str| section.option(name).map(|e| e.value.trim());
    let rotation = Rotation::parse(
        value("rotate").unwrap_or("never"),
        value("rotate_time"),
        value("rotate_day"),
    )
    .map_err(|error| {
        let entry = section.option(error.option).or(path_entry);
        match entry {
            Some(entry) => bad_option(entry, &error.problem),
            None => BuildError::Section {
                name: section.name.clone(),
                problem: error.to_string(),
            },
        }
    })?;
    let sync = match settings.spool.sync {
        SyncPolicy::Always => FileSync::Always,
        SyncPolicy::Interval => FileSync::Interval(settings.spool.sync_interval),
        SyncPolicy::Never => FileSync::Never,
    };
    Ok(FileSettings {
        name: section.name.clone(),
        path,
        rotation,
        sync,
        clock: std::sync::Arc::new(SystemClock),
    })
}
