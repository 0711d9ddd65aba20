//! Why a configuration was refused, in the file's words.

use std::fmt;

use super::{CONFIG_FILE, KAFKA_CONFIG_FILE};

/// Why a configuration was refused. Each message names the file, section, option and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file does not exist in Asterisk's config folder.
    Missing { file: &'static str },
    /// Asterisk's config engine could not parse the file.
    Unparsable { file: &'static str },
    /// A section this module does not know.
    UnknownSection {
        file: &'static str,
        section: String,
        line: i32,
    },
    /// An option this module does not know.
    UnknownOption {
        file: &'static str,
        section: String,
        name: String,
        line: i32,
    },
    /// A known option with a value it cannot take.
    BadValue {
        file: &'static str,
        section: String,
        name: String,
        value: String,
        line: i32,
        expected: String,
    },
    /// Neither `brokers` nor `connection` says where Kafka is.
    NoBrokers { file: &'static str, section: String },
    /// A destination lacks an option its type needs.
    MissingDestinationOption {
        section: String,
        name: &'static str,
        line: i32,
    },
    /// An option another option's value makes necessary is not set.
    MissingOption {
        name: &'static str,
        why: &'static str,
    },
    /// `connection = NAME` names no `type = connection` section of kafka.conf.
    UnknownConnection { name: String },
    /// A destination section's options do not make a destination together.
    Destination { section: String, problem: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { file } => write!(
                f,
                "{file} is missing: copy cdr_kafka.conf.sample there (make samples) and set brokers"
            ),
            Self::Unparsable { file } => write!(
                f,
                "{file} could not be parsed by Asterisk's config engine (see the error above)"
            ),
            Self::UnknownSection {
                file,
                section,
                line,
            } => write!(
                f,
                "{file} [{section}] (line {line}): unknown section (cdr_kafka.conf has [global], [cel] and destination sections with a type = kafka, file, syslog or http)"
            ),
            Self::UnknownOption {
                file,
                section,
                name,
                line,
            } => write!(
                f,
                "{file} [{section}] {name} (line {line}): unknown option (see 'config show help cdr_kafka')"
            ),
            Self::BadValue {
                file,
                section,
                name,
                value,
                line,
                expected,
            } => write!(
                f,
                "{file} [{section}] {name} = '{value}' (line {line}): {expected}"
            ),
            Self::NoBrokers { file, section } => write!(
                f,
                "{file} [{section}]: neither 'brokers' nor 'connection' is set, so there is no Kafka to publish to"
            ),
            Self::MissingDestinationOption {
                section,
                name,
                line,
            } => write!(
                f,
                "{CONFIG_FILE} [{section}] (line {line}): this type of destination needs '{name}'"
            ),
            Self::MissingOption { name, why } => {
                write!(f, "{CONFIG_FILE} [global] {name} is not set: {why}")
            }
            Self::UnknownConnection { name } => write!(
                f,
                "{CONFIG_FILE} [global] connection = '{name}': {KAFKA_CONFIG_FILE} has no section [{name}] with type = connection"
            ),
            Self::Destination { section, problem } => {
                write!(f, "{CONFIG_FILE} [{section}]: {problem}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}
