//! A destination section's own options (file, syslog, http), parsed and checked once,
//! as the file is read, whether the section is enabled or not: what the destination is
//! made of, so building it later opens a target and refuses no value.

use std::path::PathBuf;
use std::time::Duration;

use super::{bad_value, ConfigError, DestinationType, Entry, CONFIG_FILE};
use crate::delivery::file::{FileDestination, Rotation};
use crate::delivery::http::{header_shown, HttpDestination, HttpSettings, Method};
use crate::delivery::syslog::{Facility, Level, SyslogDestination, SyslogSettings};

/// What a destination section delivers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Its topic, key and producer are the section's `topic`, `key` and `kafka`.
    Kafka,
    /// The file's sync policy is the spool's, set where it is built.
    File {
        path: PathBuf,
        rotation: Rotation,
    },
    Syslog(SyslogSettings),
    Http(HttpSettings),
}

impl Target {
    /// Whether it reads TLS files when built: a reload builds it again, so a
    /// certificate or CA renewed in place is read.
    pub fn reads_tls_files(&self) -> bool {
        match self {
            Self::Http(http) => {
                let tls = &http.tls;
                tls.ca_file.is_some() || tls.client_cert.is_some() || tls.client_key.is_some()
            }
            _ => false,
        }
    }
}

/// The target of section `name` of type `kind` from its own options (the last value
/// of an option given twice counts).
pub fn parse_target(
    name: &str,
    kind: DestinationType,
    options: &[Entry],
) -> Result<Target, ConfigError> {
    let own = Options { name, options };
    let refused = |problem: String| ConfigError::Destination {
        section: name.to_string(),
        problem,
    };
    match kind {
        DestinationType::Kafka => Ok(Target::Kafka),
        DestinationType::Syslog => {
            let settings = own.syslog()?;
            SyslogDestination::check(&settings).map_err(|e| refused(e.to_string()))?;
            Ok(Target::Syslog(settings))
        }
        DestinationType::Http => {
            let settings = own.http()?;
            HttpDestination::check(&settings).map_err(|e| refused(e.to_string()))?;
            Ok(Target::Http(settings))
        }
        DestinationType::File => {
            let (path, rotation) = own.file()?;
            FileDestination::check(&path).map_err(|e| refused(e.to_string()))?;
            Ok(Target::File { path, rotation })
        }
    }
}

struct Options<'a> {
    name: &'a str,
    options: &'a [Entry],
}

impl Options<'_> {
    fn entry(&self, name: &str) -> Option<&Entry> {
        self.options.iter().rev().find(|entry| entry.name == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.entry(name).map(|entry| entry.value.trim())
    }

    /// An option's value through its parser; the parser's words in the error.
    fn parsed<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        self.entry(name)
            .map(|entry| {
                parse(entry.value.trim())
                    .map_err(|expected| bad_value(CONFIG_FILE, entry, &expected))
            })
            .transpose()
    }

    fn number(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        self.parsed(name, |text| {
            text.parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("not a whole number from {min} to {max}"))
        })
    }

    fn absolute_path(&self, name: &str) -> Result<Option<PathBuf>, ConfigError> {
        self.parsed(name, |text| {
            if text.starts_with('/') {
                Ok(PathBuf::from(text))
            } else {
                Err("not an absolute path".to_string())
            }
        })
    }

    /// A TLS file option: an absolute path, or empty for none.
    fn tls_path(&self, name: &str) -> Result<Option<PathBuf>, ConfigError> {
        let path = self.parsed(name, |text| match text {
            "" => Ok(None),
            _ if text.starts_with('/') => Ok(Some(PathBuf::from(text))),
            _ => Err("not an absolute path".to_string()),
        })?;
        Ok(path.flatten())
    }

    fn syslog(&self) -> Result<SyslogSettings, ConfigError> {
        let mut settings = SyslogSettings::new(self.name);
        if let Some(socket) = self.absolute_path("socket")? {
            settings.socket = socket;
        }
        if let Some(facility) = self.parsed("facility", Facility::parse)? {
            settings.facility = facility;
        }
        if let Some(level) = self.parsed("level", Level::parse)? {
            settings.level = level;
        }
        if let Some(tag) = self.value("tag") {
            settings.tag = tag.to_string();
        }
        Ok(settings)
    }

    fn http(&self) -> Result<HttpSettings, ConfigError> {
        let mut settings = HttpSettings::new(self.name, self.value("url").unwrap_or_default());
        if let Some(method) = self.parsed("method", Method::parse)? {
            settings.method = method;
        }
        for entry in self.options.iter().filter(|e| e.name == "header") {
            let (name, value) = entry.value.split_once(':').ok_or_else(|| {
                // A header's value is often a secret: the error shows its name only.
                let mut shown = entry.clone();
                shown.value = format!("{} (value not shown)", header_shown(&entry.value));
                bad_value(CONFIG_FILE, &shown, "not Name: value")
            })?;
            settings
                .headers
                .push((name.trim().to_string(), value.trim().to_string()));
        }
        if let Some(ms) = self.number("timeout_ms", 1, 3_600_000)? {
            settings.timeout = Duration::from_millis(ms);
        }
        if let Some(batch) = self.number("batch_max", 1, 100_000)? {
            settings.batch_max = batch as usize;
        }
        settings.tls.ca_file = self.tls_path("ca_file")?;
        settings.tls.client_cert = self.tls_path("client_cert")?;
        settings.tls.client_key = self.tls_path("client_key")?;
        Ok(settings)
    }

    fn file(&self) -> Result<(PathBuf, Rotation), ConfigError> {
        let path = self.absolute_path("path")?.unwrap_or_default();
        let rotation = Rotation::parse(
            self.value("rotate").unwrap_or("never"),
            self.value("rotate_time"),
            self.value("rotate_day"),
        )
        .map_err(
            |error| match self.entry(error.option).or(self.entry("path")) {
                Some(entry) => bad_value(CONFIG_FILE, entry, &error.problem),
                None => ConfigError::Destination {
                    section: self.name.to_string(),
                    problem: error.to_string(),
                },
            },
        )?;
        Ok((path, rotation))
    }
}
