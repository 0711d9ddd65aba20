//! Checks a record against one of the JSON Schemas in docs/schema/, the files consumers
//! are given. Used by tests/schema_records.rs and the end-to-end tests (records real
//! Asterisk produced). Each call reads the folder afresh: a test sees the files as they
//! are, and the `$ref`s between them ("cdr.json") resolve to those files, no network.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;

use jsonschema::{Draft, Resource};
use serde_json::Value;

/// The URI the schema folder is known by while validating: relative `$ref`s resolve
/// against it, as they resolve against the folder for a consumer reading the files.
const BASE_URI: &str = "file:///cdr_kafka/docs/schema/";

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join("schema")
}

/// One schema file of docs/schema/ as JSON.
pub fn load(schema_file: &str) -> Result<Value, String> {
    let path = schema_dir().join(schema_file);
    let text = fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
}

/// The names of every schema file in docs/schema/.
pub fn schema_files() -> Result<Vec<String>, String> {
    let dir = schema_dir();
    let entries = fs::read_dir(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| format!("{}: {error}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// `Ok` when `record` is valid against `schema_file` (e.g. `cdr.json`); else every
/// violation, each with where in the record it is.
pub fn validate(schema_file: &str, record: &Value) -> Result<(), String> {
    let schema = load(schema_file)?;
    let mut options = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_base_uri(format!("{BASE_URI}{schema_file}"));
    for name in schema_files()? {
        if name != schema_file {
            let resource = Resource::from_contents(load(&name)?)
                .map_err(|error| format!("docs/schema/{name}: {error}"))?;
            options = options.with_resource(format!("{BASE_URI}{name}"), resource);
        }
    }
    let validator = options
        .build(&schema)
        .map_err(|error| format!("docs/schema/{schema_file} is not a usable schema: {error}"))?;
    let errors: Vec<String> = validator
        .iter_errors(record)
        .map(|error| format!("at '{}': {error}", error.instance_path))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{schema_file}: {}", errors.join("; ")))
    }
}
