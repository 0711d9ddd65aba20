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
use crate::delivery::kafka::{KafkaDestination, ProducerError, ProducerSettings};
use crate::delivery::stack::{Member, Stack};
use crate::routing::filter::Filter;
use crate::routing::template::Template;
use crate::routing::Route;

/// The name of the Kafka destination `[global]` configures.
pub const GLOBAL_DESTINATION: &str = "global";

/// Why a destination could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// An option's value was refused where the destination is made.
    Config(ConfigError),
    /// librdkafka refused the producer settings of this destination.
    Producer { name: String, error: ProducerError },
    /// The destination could not be opened (a file, a socket, a URL).
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
            Self::Open { name, error } => write!(f, "{CONFIG_FILE} [{name}]: {error}"),
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
        .map(|p| Member::new(p.routing.control, route(&p.name, &p.routing)))
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
) -> Result<(Box<dyn Destination>, Rules), BuildError> {
    let (destination, routing, kind) = if name == GLOBAL_DESTINATION {
        (kafka(name, &settings.kafka)?, &settings.routing, DestinationType::Kafka)
    } else {
        let section = settings
            .destinations
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| BuildError::Open {
                name: name.to_string(),
                error: "no such destination".into(),
            })?;
        (open(settings, section)?, &section.routing, section.kind)
    };
    let mut rules = Rules::everything(name);
    rules.route = route(name, routing);
    rules.give_up_after = routing.give_up_after;
    rules.stack = stack.and_then(|stack| Some((Arc::clone(stack), stack.index_of(name)?)));
    let identity = (identity.entity_id.as_str(), identity.system_name.as_str());
    rules.shaper =
        crate::shaping::shaper(settings, kind, routing, identity).map_err(BuildError::Config)?;
    Ok((destination, rules))
}

/// Opens a destination section's target.
fn open(
    settings: &Settings,
    section: &DestinationSettings,
) -> Result<Box<dyn Destination>, BuildError> {
    match section.kind {
        DestinationType::Kafka => kafka(
            &section.name,
            section.kafka.as_ref().unwrap_or(&settings.kafka),
        ),
        other => Err(BuildError::Open {
            name: section.name.clone(),
            error: format!("type = {} is not built yet", other.name()),
        }),
    }
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
