//! The Debian package `make deb` builds, checked with dpkg-deb and lintian, and used with the
//! root's dpkg and Asterisk 22 (the Debian unstable root of `make sandbox`): installed, it is
//! loaded at boot and delivers; built for another Asterisk, it is refused; upgraded with
//! records in the spool, none is lost and the edited config stays; removed, the spool and
//! config stay; purged, the config goes.
//!
//! One Asterisk runs at a time (they share the root), so the tests take a lock; each leaves
//! the root without the package.

mod support;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::deb::{self, Installation, Package};
use support::{one_asterisk, Asterisk, Root, ScratchDir, Tansu};

const TOPIC: &str = "calls";
const WAIT: Duration = Duration::from_secs(60);
/// An address nothing listens on: the broker is down.
const NO_BROKER: &str = "127.0.0.1:9";

/// Waits until `count` distinct records are on the topic; returns the count per record_id.
fn wait_for_records(root: &Root, tansu: &Tansu, count: usize) -> HashMap<String, usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let counts = root.count_by(&tansu.brokers(), TOPIC, "record_id");
        if counts.len() >= count {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} records arrived",
            counts.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn assert_each_once(counts: &HashMap<String, usize>, count: usize) {
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(counts.len(), count, "distinct records on the topic");
    assert!(twice.is_empty(), "records that came twice: {twice:?}");
}

fn spool_files(root: &Root) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.spool())
        .map(|entries| {
            entries
                .map(|entry| entry.expect("entry").file_name().to_string_lossy().into())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn package_holds_the_module_docs_and_conffile_for_this_asterisk() {
    let package = Package::build(None);
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .expect("run dpkg")
            .stdout,
    )
    .unwrap();
    assert_eq!(
        package.path.file_name().unwrap().to_string_lossy(),
        format!("cdr-kafka_{}_{}.deb", deb::cargo_version(), arch.trim())
    );
    assert_eq!(package.field("Version"), deb::cargo_version());
    assert_eq!(
        package.field("Pre-Depends"),
        format!("asterisk-abi-{}", deb::buildopt_sum())
    );
    assert!(
        package.field("Depends").contains("libc6 (>= "),
        "Depends: {}",
        package.field("Depends")
    );
    assert_eq!(
        package.control_file("conffiles").trim(),
        "/etc/asterisk/cdr_kafka.conf"
    );

    let contents = package.contents();
    let entry = |path: &str| {
        contents
            .iter()
            .find(|line| line.ends_with(&format!("./{path}")))
            .unwrap_or_else(|| panic!("no {path} in {contents:#?}"))
            .clone()
    };
    assert!(entry(deb::MODULE).starts_with("-rw-r--r-- root/root"));
    assert!(entry(deb::DOCS).starts_with("-rw-r--r-- root/root"));
    assert!(entry(deb::CONF).starts_with("-rw-r----- root/root"));
}

#[test]
fn make_deb_refuses_a_module_built_against_other_headers() {
    let scratch = ScratchDir::new("deb-headers");
    let include_dir = scratch.0.join("include");
    fs::create_dir_all(include_dir.join("asterisk")).unwrap();
    let other_sum = "0123456789abcdef0123456789abcdef";
    fs::write(
        include_dir.join("asterisk/buildopts.h"),
        format!("#define AST_BUILDOPT_SUM \"{other_sum}\"\n"),
    )
    .unwrap();
    let module = std::env::var_os("CDR_KAFKA_MODULE").expect("CDR_KAFKA_MODULE");
    let output = deb::run_make_deb(&scratch.0, module.as_ref(), &include_dir, None);
    assert!(!output.status.success(), "make deb packaged it");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains(&format!("does not carry build-option sum {other_sum}")),
        "make deb said: {said}"
    );
    assert!(
        !fs::read_dir(&scratch.0).unwrap().any(|entry| entry
            .unwrap()
            .path()
            .extension()
            .is_some_and(|e| e == "deb")),
        "a package was left"
    );
}

#[test]
fn lintian_reports_nothing_but_the_explained_overrides() {
    let package = Package::build(None);
    let output = Command::new("lintian")
        // Overridden tags (packaging/lintian-overrides says why) are not shown.
        .args(["--fail-on", "error,warning", "--display-info"])
        .arg(&package.path)
        .output()
        .expect("run lintian (tests/sandbox/install-tools.sh installs it)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "lintian:\n{report}");
    let unexplained: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("E: ") || line.starts_with("W: "))
        .collect();
    assert!(unexplained.is_empty(), "lintian:\n{report}");
}

#[test]
fn package_for_another_asterisk_refuses_to_install() {
    let root = Root::from_env();
    let _one = one_asterisk();
    let other_sum = "0123456789abcdef0123456789abcdef";
    let package = Package::build_for_sum(other_sum);
    let mut installation = Installation::begin(&root);

    let output = installation.install(&package);
    assert!(!output.status.success(), "dpkg -i installed it");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains(&format!("pre-depends on asterisk-abi-{other_sum}")),
        "dpkg said: {said}"
    );
    let status = installation.status();
    assert!(
        status
            .as_deref()
            .is_none_or(|status| status.split(' ').nth(2) == Some("not-installed")),
        "status {status:?}"
    );
    // Refused before unpacking: nothing of it is on disk.
    assert!(!root.path.join(deb::MODULE).exists());
    assert!(!root.path.join(deb::CONF).exists());
}

#[test]
fn installed_package_is_loaded_at_boot_and_delivers() {
    let root = Root::from_env();
    let _one = one_asterisk();
    let package = Package::build(None);
    let mut installation = Installation::begin(&root);
    installation.install_ok(&package);

    // Asterisk (group asterisk) reads the config; others do not.
    let conf = fs::metadata(root.path.join(deb::CONF)).expect("installed cdr_kafka.conf");
    assert_eq!(
        (conf.uid(), conf.gid(), conf.mode() & 0o7777),
        (0, installation.group_id("asterisk"), 0o640)
    );
    assert_eq!(
        fs::read(root.path.join(deb::CONF)).unwrap(),
        fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/cdr_kafka.conf.sample"
        ))
        .unwrap()
    );
    assert!(root.path.join(deb::DOCS).is_file());

    let tansu = Tansu::start();
    tansu.create_topic(TOPIC);
    installation.edit_conf(&tansu.brokers(), TOPIC);
    installation.configure_asterisk();
    let asterisk = Asterisk::boot(&root);
    assert!(asterisk
        .rx("module show like cdr_kafka")
        .contains("cdr_kafka.so"));
    asterisk.flood(10);
    assert_eq!(asterisk.wait_until_all_delivered(WAIT), 10);
    assert_each_once(&wait_for_records(&root, &tansu, 10), 10);
    // The XML documentation is the installed one Asterisk read at boot.
    assert!(
        asterisk
            .rx("config show help cdr_kafka global brokers")
            .contains("brokers"),
        "no help for cdr_kafka's options"
    );
}

#[test]
fn upgrade_with_records_in_the_spool_loses_none_and_keeps_the_edited_config() {
    let root = Root::from_env();
    let _one = one_asterisk();
    let old = Package::build(None);
    let rebuilt_version = format!("{}+rebuilt", deb::cargo_version());
    let rebuilt = Package::build(Some(&rebuilt_version));
    let mut installation = Installation::begin(&root);
    installation.install_ok(&old);

    let mut tansu = Tansu::start_behind_relay();
    tansu.create_topic(TOPIC);
    let edited = installation.edit_conf(&tansu.brokers(), TOPIC);
    installation.configure_asterisk();
    let mut asterisk = Asterisk::boot(&root);
    asterisk.flood(10);
    assert_eq!(asterisk.wait_until_all_delivered(WAIT), 10);

    // The broker goes away; these records wait in the spool through the upgrade.
    tansu.cut_off();
    asterisk.flood(20);
    asterisk.wait_for_counter("Received", 30, WAIT);
    assert_eq!(asterisk.counter("Delivered"), 10);
    asterisk.stop_gracefully();
    drop(asterisk);

    installation.install_ok(&rebuilt);
    assert_eq!(
        installation.status().as_deref(),
        Some(format!("install ok installed {rebuilt_version}").as_str())
    );
    assert_eq!(
        fs::read_to_string(root.path.join(deb::CONF)).unwrap(),
        edited,
        "the operator's cdr_kafka.conf"
    );

    tansu.reconnect();
    let asterisk = Asterisk::boot(&root);
    let counts = wait_for_records(&root, &tansu, 30);
    assert_each_once(&counts, 30);
    asterisk.wait_for_counter("Replayed", 20, WAIT);
}

#[test]
fn remove_keeps_spool_and_config_and_purge_removes_the_config() {
    let root = Root::from_env();
    let _one = one_asterisk();
    let package = Package::build(None);
    let mut installation = Installation::begin(&root);
    installation.install_ok(&package);
    let edited = installation.edit_conf(NO_BROKER, TOPIC);
    installation.configure_asterisk();
    let mut asterisk = Asterisk::boot(&root);
    asterisk.flood(5);
    asterisk.wait_for_counter("Received", 5, WAIT);
    asterisk.stop_gracefully();
    drop(asterisk);
    let spooled = spool_files(&root);
    assert!(
        spooled.iter().any(|name| name.ends_with(".log")),
        "a spool with records: {spooled:?}"
    );

    deb::assert_success("dpkg -r", &installation.dpkg(&["-r", "cdr-kafka"]));
    assert!(!root.path.join(deb::MODULE).exists(), "module still there");
    assert!(!root.path.join(deb::DOCS).exists(), "docs still there");
    assert_eq!(
        fs::read_to_string(root.path.join(deb::CONF)).unwrap(),
        edited
    );
    assert_eq!(spool_files(&root), spooled, "the spool after dpkg -r");
    assert_eq!(
        installation.status().as_deref(),
        Some(format!("deinstall ok config-files {}", deb::cargo_version()).as_str())
    );

    let purged = installation.dpkg(&["--purge", "cdr-kafka"]);
    deb::assert_success("dpkg --purge", &purged);
    assert!(!root.path.join(deb::CONF).exists(), "config still there");
    // Undelivered records outlive a purge (see packaging/postrm), and dpkg says so.
    assert_eq!(spool_files(&root), spooled, "the spool after dpkg --purge");
    assert!(
        String::from_utf8_lossy(&purged.stderr).contains("/var/spool/asterisk/cdr_kafka is kept")
    );
    assert_eq!(installation.status(), None);
}
