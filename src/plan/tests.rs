use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{for_disable, for_enable, for_load, for_reload};
use crate::asterisk::host::Identity;
use crate::config::{self, ConfigError, Entry, HostCapabilities, Settings};
use crate::delivery::log::{Log, LogSettings, SyncPolicy};
use crate::delivery::Delivery;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("cdr_kafka-plan-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// cdr_kafka.conf's text as Asterisk's config reader hands it over.
fn settings(text: &str) -> Settings {
    let mut section = String::new();
    let mut entries = Vec::new();
    for (line, text) in text.lines().enumerate() {
        let text = text.trim();
        if let Some(name) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((name, value)) = text.split_once('=') {
            entries.push(Entry {
                section: section.clone(),
                name: name.trim().to_string(),
                value: value.trim().to_string(),
                line: line as i32 + 1,
            });
        }
    }
    let host = HostCapabilities {
        tenant_fields: true,
    };
    config::parse(
        &entries,
        host,
        &mut || -> Result<Vec<Entry>, ConfigError> { panic!("no kafka.conf here") },
    )
    .unwrap()
}

fn conf(dir: &Path, archive: &str, topic: &str) -> String {
    format!(
        "[global]\nbrokers = 127.0.0.1:1\ntopic = {topic}\n\
         [archive]\ntype = file\npath = {}\n\
         [copy]\ntype = kafka\ntopic = copy\n",
        dir.join(archive).display()
    )
}

fn delivery(dir: &Path) -> Delivery {
    let log = Log::open(LogSettings {
        dir: dir.join("spool"),
        sync: SyncPolicy::Never,
        sync_interval: std::time::Duration::from_millis(100),
        max_bytes: 0,
    })
    .unwrap();
    Delivery::new(Arc::new(log))
}

/// A delivery running what `conf(dir, "a.json", "cdr")` says, and those settings.
fn loaded(dir: &Path, identity: &Identity) -> (Delivery, Settings) {
    let mut delivery = delivery(dir);
    let first = settings(&conf(dir, "a.json", "cdr"));
    delivery
        .install(for_load(&first, identity, &delivery).unwrap().change)
        .unwrap();
    (delivery, first)
}

fn started(plan: &super::Plan) -> Vec<&str> {
    let mut names: Vec<&str> = plan
        .change
        .start
        .iter()
        .map(|s| s.destination.name())
        .collect();
    names.sort_unstable();
    names
}

#[test]
fn a_reload_restarts_only_the_destination_whose_section_changed() {
    let dir = TempDir::new("changed");
    let identity = Identity::default();
    let mut delivery = delivery(&dir.0);
    let first = settings(&conf(&dir.0, "a.json", "cdr"));
    let plan = for_load(&first, &identity, &delivery).unwrap();
    assert_eq!(started(&plan), ["archive", "copy", "global"]);
    delivery.install(plan.change).unwrap();
    let producer = delivery.shared_producer.clone().unwrap();

    let second = settings(&conf(&dir.0, "b.json", "cdr"));
    let plan = for_reload(Some(&first), &second, &identity, &delivery).unwrap();
    assert_eq!(started(&plan), ["archive"]);
    assert_eq!(plan.kept, ["global", "copy"]);
    assert_eq!(plan.summary(), "started archive; kept global, copy");
    delivery.install(plan.change).unwrap();
    // The [global] producer and what it has in flight carry on.
    assert!(Arc::ptr_eq(
        &producer,
        delivery.shared_producer.as_ref().unwrap()
    ));
    let mut running = delivery.running_names();
    running.sort_unstable();
    assert_eq!(running, ["archive", "copy", "global"]);

    // `topic` is written into each record as it is spooled: no destination changes.
    let third = settings(&conf(&dir.0, "b.json", "other"));
    let plan = for_reload(Some(&second), &third, &identity, &delivery).unwrap();
    assert!(started(&plan).is_empty());
    // A format is the destination's own: the stack stays.
    let fourth =
        settings(&conf(&dir.0, "b.json", "other").replace("[copy]", "format = kv\n[copy]"));
    let plan = for_reload(Some(&third), &fourth, &identity, &delivery).unwrap();
    assert_eq!(started(&plan), ["archive"]);
    delivery.shutdown();
}

#[test]
fn a_changed_producer_restarts_every_destination_on_it_and_no_other() {
    let dir = TempDir::new("producer");
    let identity = Identity::default();
    let (mut delivery, first) = loaded(&dir.0, &identity);
    let text = conf(&dir.0, "a.json", "cdr").replace("127.0.0.1:1", "127.0.0.1:2");
    let second = settings(&text);
    let plan = for_reload(Some(&first), &second, &identity, &delivery).unwrap();
    assert_eq!(started(&plan), ["copy", "global"]);
    assert_eq!(plan.kept, ["archive"]);
    delivery.shutdown();
}

#[test]
fn control_flags_changed_restack_every_destination() {
    let dir = TempDir::new("restack");
    let identity = Identity::default();
    let (mut delivery, first) = loaded(&dir.0, &identity);
    let text = format!("{}control = sufficient\n", conf(&dir.0, "a.json", "cdr"));
    let second = settings(&text);
    let plan = for_reload(Some(&first), &second, &identity, &delivery).unwrap();
    assert_eq!(started(&plan), ["archive", "copy", "global"]);
    assert!(plan.change.stack.is_some());
    delivery.shutdown();
}

#[test]
fn a_section_left_out_is_forgotten_and_a_disabled_one_comes_back_at_reload() {
    let dir = TempDir::new("forget");
    let identity = Identity::default();
    let (mut delivery, first) = loaded(&dir.0, &identity);
    delivery
        .install(for_disable(&delivery, "copy").change)
        .unwrap();
    assert!(!delivery.is_running("copy"));
    let plan = for_reload(Some(&first), &first, &identity, &delivery).unwrap();
    assert_eq!(started(&plan), ["copy"]);
    delivery.install(plan.change).unwrap();
    assert!(delivery.is_running("copy"));

    let text = format!("{}enabled = no\n", conf(&dir.0, "a.json", "cdr"));
    let second = settings(&text);
    let plan = for_reload(Some(&first), &second, &identity, &delivery).unwrap();
    assert_eq!(plan.change.forget, ["copy"]);
    // One destination fewer is a new stack: the others restart on it.
    assert_eq!(plan.summary(), "started global, archive; stopped copy");
    delivery.install(plan.change).unwrap();
    assert!(!delivery.is_running("copy"));
    assert!(for_enable(&second, &identity, &delivery, "global").is_ok());
    delivery.shutdown();
}

#[test]
fn a_destination_that_cannot_be_made_at_load_keeps_its_records_and_starts_when_it_can() {
    let dir = TempDir::new("unbuilt");
    let identity = Identity::default();
    let mut delivery = delivery(&dir.0);
    // A plain file where the destination's folder is to be: it cannot be opened.
    let missing = dir.0.join("not-yet");
    std::fs::write(&missing, b"in the way").unwrap();
    let text = format!(
        "[global]\nbrokers = 127.0.0.1:1\ntopic = cdr\nenabled = no\n\
         [archive]\ntype = file\npath = {}\n",
        missing.join("a.json").display()
    );
    let loaded = settings(&text);
    // A reload of the same file is refused: the running configuration stays.
    assert!(for_reload(Some(&loaded), &loaded, &identity, &delivery).is_err());
    let plan = for_load(&loaded, &identity, &delivery).unwrap();
    assert_eq!(plan.unbuilt.len(), 1);
    let (name, error) = &plan.unbuilt[0];
    assert_eq!(name, "archive");
    assert!(
        error
            .to_string()
            .starts_with("destination 'archive' cannot open its target"),
        "{error}"
    );
    assert_eq!(plan.summary(), "started archive; not built yet archive");
    delivery.install(plan.change).unwrap();
    for n in 0..5 {
        crate::delivery::log::tests::append(delivery.log(), n).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        delivery.waiting_for("archive"),
        5,
        "kept for the destination"
    );

    std::fs::remove_file(&missing).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while delivery.waiting_for("archive") > 0 {
        assert!(std::time::Instant::now() < deadline, "never made");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let written = std::fs::read_to_string(missing.join("a.json")).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 5, "{written}");
    assert!(
        lines[0].contains("\"n\":0") && lines[4].contains("\"n\":4"),
        "{written}"
    );
    delivery.shutdown();
}

#[test]
fn a_disabled_section_is_not_opened() {
    // Its options were parsed and checked as the file was read (config's tests).
    let dir = TempDir::new("disabled");
    let identity = Identity::default();
    let delivery = delivery(&dir.0);
    let global = "[global]\nbrokers = 127.0.0.1:1\ntopic = cdr\n";
    let path = dir.0.join("later").join("a.json");
    let text = format!(
        "{global}[archive]\ntype = file\npath = {}\nenabled = no\n",
        path.display()
    );
    let plan = for_load(&settings(&text), &identity, &delivery).unwrap();
    assert_eq!(started(&plan), ["global"]);
    assert!(!path.parent().unwrap().exists());
}
