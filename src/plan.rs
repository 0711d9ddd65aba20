//! Config → plan: what a configuration runs, and what of the running destinations a
//! reload must change. Load, reload and the CLI all hand `Delivery::install` a plan
//! made here; a destination whose part of the configuration did not change keeps
//! running through a reload (no flush, nothing in flight resent).

use std::sync::Arc;
use std::time::Duration;

use crate::asterisk::host::Identity;
use crate::config::{
    DestinationSettings, DestinationType, KafkaSettings, Routing, Settings, SyncPolicy,
};
use crate::delivery::stack::Stack;
use crate::delivery::{Change, Delivery, Start};
use crate::destinations::{self, feeder_settings, BuildError, GLOBAL_DESTINATION};
use crate::routing::control::ControlFlag;
use crate::routing::{Missed, RecordKinds};

/// A change for `Delivery::install`, and what it leaves as it runs.
pub struct Plan {
    pub change: Change,
    /// Running destinations the plan leaves running as they are.
    pub kept: Vec<String>,
    /// Destinations a load starts before their target could be made, and why not: their
    /// records wait in the spool while their feeders try again.
    pub unbuilt: Vec<(String, BuildError)>,
}

impl Plan {
    /// What the operator is told a reload did.
    pub fn summary(&self) -> String {
        let started: Vec<&str> = self
            .change
            .start
            .iter()
            .map(|start| start.destination.name())
            .collect();
        let mut parts = Vec::new();
        for (what, names) in [
            ("started", started),
            ("kept", self.kept.iter().map(String::as_str).collect()),
            (
                "stopped",
                self.change.forget.iter().map(String::as_str).collect(),
            ),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        if !self.unbuilt.is_empty() {
            let names: Vec<&str> = self.unbuilt.iter().map(|(name, _)| name.as_str()).collect();
            parts.push(format!("not built yet {}", names.join(", ")));
        }
        if parts.is_empty() {
            "no destination".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// One destination's part of a configuration: two equal specs run the same.
#[derive(Debug, PartialEq)]
struct Spec<'a> {
    kind: DestinationType,
    routing: &'a Routing,
    topic: Option<&'a str>,
    key: Option<Option<crate::record::KeyField>>,
    own_kafka: Option<&'a KafkaSettings>,
    /// The type's options by name and value (a line moved is no change).
    options: Vec<(&'a str, &'a str)>,
    usegmtime: bool,
    pacing: crate::delivery::feeder::FeederSettings,
    /// A file destination syncs as the spool does.
    file_sync: Option<(SyncPolicy, Duration)>,
}

fn section<'a>(settings: &'a Settings, name: &str) -> Option<&'a DestinationSettings> {
    settings.destinations.iter().find(|d| d.name == name)
}

fn spec<'a>(settings: &'a Settings, name: &str) -> Option<Spec<'a>> {
    let pacing = feeder_settings(settings);
    if name == GLOBAL_DESTINATION {
        return Some(Spec {
            kind: DestinationType::Kafka,
            routing: &settings.routing,
            topic: None,
            key: None,
            own_kafka: None,
            options: Vec::new(),
            usegmtime: settings.usegmtime,
            pacing,
            file_sync: None,
        });
    }
    let section = section(settings, name)?;
    Some(Spec {
        kind: section.kind,
        routing: &section.routing,
        topic: section.topic.as_deref(),
        key: section.key,
        own_kafka: section.kafka.as_ref(),
        options: section
            .options
            .iter()
            .map(|entry| (entry.name.as_str(), entry.value.as_str()))
            .collect(),
        usegmtime: settings.usegmtime,
        pacing,
        file_sync: (section.kind == DestinationType::File)
            .then_some((settings.spool.sync, settings.spool.sync_interval)),
    })
}

/// Whether a destination sends through the `[global]` producer.
fn on_shared_producer(settings: &Settings, name: &str) -> bool {
    name == GLOBAL_DESTINATION
        || section(settings, name)
            .is_some_and(|d| d.kind == DestinationType::Kafka && d.kafka.is_none())
}

/// A destination's place in the stack: its flag, its limit and what it takes.
#[derive(PartialEq)]
struct Place {
    name: String,
    control: ControlFlag,
    give_up_after: Option<Duration>,
    records: RecordKinds,
    missed: Missed,
    filters: Vec<String>,
    topic: (Option<String>, Option<String>),
}

/// What the stack is made of: equal, the running stack serves the new configuration.
/// With more than one destination the stack couples them all, so adding or removing
/// one restarts every one on a new stack.
fn stack_shape(settings: &Settings) -> Vec<Place> {
    destinations::planned(settings)
        .into_iter()
        .map(|p| Place {
            name: p.name,
            control: p.routing.control,
            give_up_after: p.routing.give_up_after,
            records: p.routing.records,
            missed: p.routing.missed,
            filters: p.routing.filters,
            topic: (p.routing.topic_template, p.routing.topic_fallback),
        })
        .collect()
}

/// The plan that starts every destination `settings` enables (load). A destination
/// whose target cannot be made now starts unbuilt (see `destinations::build_at_load`):
/// the module loads and keeps its records; the file's own errors still refuse the plan.
pub fn for_load(
    settings: &Settings,
    identity: &Identity,
    delivery: &Delivery,
) -> Result<Plan, BuildError> {
    destinations::check_all(settings, identity)?;
    let shared = destinations::shared_producer(settings).ok();
    let stack = destinations::stack(settings);
    let mut change = delivery.change();
    change.stack = stack.clone();
    change.shared_producer = shared.clone();
    let mut unbuilt = Vec::new();
    for planned in destinations::planned(settings) {
        let at_load = destinations::build_at_load(
            settings,
            identity,
            &planned.name,
            stack.as_ref(),
            shared.as_ref(),
        )?;
        if let Some(error) = at_load.not_built {
            unbuilt.push((planned.name, error));
        }
        change.start.push(Start {
            destination: at_load.destination,
            rules: at_load.rules,
            settings: feeder_settings(settings),
        });
    }
    Ok(Plan {
        change,
        kept: Vec::new(),
        unbuilt,
    })
}

/// The plan that turns what runs for `old` into what `new` says: only destinations
/// whose part changed (or whose producer or stack changed) restart; what the file
/// enables runs, also what the CLI disabled. Everything is built here, before
/// anything stops: a destination that cannot be made refuses the plan.
pub fn for_reload(
    old: Option<&Settings>,
    new: &Settings,
    identity: &Identity,
    delivery: &Delivery,
) -> Result<Plan, BuildError> {
    destinations::check_all(new, identity)?;
    // A load that could not make the [global] producer left none: a reload makes it.
    let shared_kept =
        delivery.shared_producer.is_some() && old.is_some_and(|old| old.kafka == new.kafka);
    let shared = match (&delivery.shared_producer, shared_kept) {
        (Some(shared), true) => Arc::clone(shared),
        _ => destinations::shared_producer(new)?,
    };
    let stack_kept = old.is_some_and(|old| stack_shape(old) == stack_shape(new));
    let stack: Option<Arc<Stack>> = if stack_kept {
        delivery.stack.clone()
    } else {
        destinations::stack(new)
    };
    // A new stack couples every member anew: they all restart on it.
    let restack = !stack_kept && (stack.is_some() || delivery.stack.is_some());
    let running = delivery.running_names();
    let mut change = delivery.change();
    change.stack = stack.clone();
    change.shared_producer = Some(Arc::clone(&shared));
    let mut kept = Vec::new();
    for planned in destinations::planned(new) {
        let name = planned.name;
        // A TLS file renewed in place keeps its path: read again at every reload.
        let reads_files = section(new, &name).is_some_and(|d| d.target.reads_tls_files());
        let unchanged = running.contains(&name)
            && !restack
            && !reads_files
            && old.is_some_and(|old| spec(old, &name) == spec(new, &name))
            && (shared_kept || !on_shared_producer(new, &name));
        if unchanged {
            kept.push(name);
            continue;
        }
        let (destination, rules) =
            destinations::build(new, identity, &name, stack.as_ref(), &shared)?;
        change.start.push(Start {
            destination,
            rules,
            settings: feeder_settings(new),
        });
    }
    // A destination no longer enabled in the file: the log stops keeping its records.
    let enabled: Vec<String> = destinations::planned(new)
        .into_iter()
        .map(|p| p.name)
        .collect();
    if let Some(old) = old {
        for planned in destinations::planned(old) {
            if !enabled.contains(&planned.name) {
                change.forget.push(planned.name);
            }
        }
    }
    Ok(Plan {
        change,
        kept,
        unbuilt: Vec::new(),
    })
}

/// The plan that starts one destination of the running configuration again (the CLI's
/// enable), on the running stack and producer.
pub fn for_enable(
    settings: &Settings,
    identity: &Identity,
    delivery: &Delivery,
    name: &str,
) -> Result<Plan, BuildError> {
    let shared = match &delivery.shared_producer {
        Some(shared) => Arc::clone(shared),
        None => destinations::shared_producer(settings)?,
    };
    let mut change = delivery.change();
    change.shared_producer = Some(Arc::clone(&shared));
    let (destination, rules) =
        destinations::build(settings, identity, name, delivery.stack.as_ref(), &shared)?;
    change.start.push(Start {
        destination,
        rules,
        settings: feeder_settings(settings),
    });
    Ok(Plan {
        change,
        kept: delivery.running_names(),
        unbuilt: Vec::new(),
    })
}

/// The plan that stops one destination until it is enabled again (the CLI's disable).
pub fn for_disable(delivery: &Delivery, name: &str) -> Plan {
    let mut change = delivery.change();
    change.disable.push(name.to_string());
    let kept = delivery
        .running_names()
        .into_iter()
        .filter(|other| other != name)
        .collect();
    Plan {
        change,
        kept,
        unbuilt: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
