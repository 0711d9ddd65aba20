//! Builds the destinations a configuration names, with their rules: `[global]`'s Kafka
//! destination first, then each `[name] type = ...` section in file order, stacked for
//! the control flags. Runs on the load/reload/CLI threads the glue starts, never on a
//! CDR thread (a destination's producer starts librdkafka's threads).

use std::path::Path;
use std::sync::Arc;

use crate::asterisk::host::Identity;
use crate::config::{
    known_field, ConfigError, DestinationSettings, DestinationType, Entry, KafkaSettings, Routing,
    Settings, SyncPolicy, Target, CONFIG_FILE,
};
use crate::delivery::destination::Destination;
use crate::delivery::feeder::{FeederSettings, Rules};
use crate::delivery::file::{FileDestination, FileSettings, FileSync, Rotation, SystemClock};
use crate::delivery::http::{HttpDestination, HttpError, HttpSettings};
use crate::delivery::kafka::{KafkaDestination, ProducerError, ProducerSettings, SharedProducer};
use crate::delivery::stack::{Member, Stack};
use crate::delivery::syslog::{SyslogDestination, SyslogSettings};
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

/// Checks every section's rules (its format and fields with this host's identity), a
/// section the file disables too, opening, connecting and starting nothing. Its own
/// options were parsed and checked as the file was read (`config::Target`).
pub fn check_all(settings: &Settings, identity: &Identity) -> Result<(), BuildError> {
    let sections = settings.destinations.iter();
    for name in std::iter::once(GLOBAL_DESTINATION).chain(sections.map(|d| d.name.as_str())) {
        check(settings, identity, name)?;
    }
    Ok(())
}

fn check(settings: &Settings, identity: &Identity, name: &str) -> Result<(), BuildError> {
    rules(settings, identity, name, None).map(drop)
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
    match &section.target {
        Target::Kafka => match &section.kafka {
            Some(own) => kafka(&section.name, own),
            None => on_shared(),
        },
        Target::Syslog(syslog_settings) => syslog(section, syslog_settings),
        Target::Http(http_settings) => http(section, http_settings),
        Target::File { path, rotation } => file(settings, &section.name, path, *rotation),
    }
}

/// A destination made, or why its target could not be.
type Made = Result<Box<dyn Destination>, BuildError>;

fn opened<D: Destination + 'static, E: std::fmt::Display>(
    name: &str,
    result: Result<D, E>,
) -> Made {
    result
        .map(|destination| Box::new(destination) as Box<dyn Destination>)
        .map_err(|error| BuildError::Open {
            name: name.to_string(),
            error: error.to_string(),
        })
}

fn syslog(section: &DestinationSettings, settings: &SyslogSettings) -> Made {
    opened(&section.name, SyslogDestination::new(settings.clone()))
}

fn http(section: &DestinationSettings, settings: &HttpSettings) -> Made {
    match HttpDestination::new(settings.clone()) {
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

/// A type option's value refused: the file's words, with section and line.
fn bad_option(entry: &Entry, expected: &str) -> BuildError {
    BuildError::Config(ConfigError::BadValue {
        file: CONFIG_FILE,
        section: entry.section.clone(),
        name: entry.name.clone(),
        value: entry.value.clone(),
        line: entry.line,
        expected: expected.to_string(),
    })
}

fn file(settings: &Settings, name: &str, path: &Path, rotation: Rotation) -> Made {
    let sync = match settings.spool.sync {
        SyncPolicy::Always => FileSync::Always,
        SyncPolicy::Interval => FileSync::Interval(settings.spool.sync_interval),
        SyncPolicy::Never => FileSync::Never,
    };
    let settings = FileSettings {
        name: name.to_string(),
        path: path.to_path_buf(),
        rotation,
        sync,
        clock: Arc::new(SystemClock),
    };
    opened(name, FileDestination::new(settings))
}
