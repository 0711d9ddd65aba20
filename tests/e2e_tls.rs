//! TLS and SASL with real parts: Asterisk 22 in the root of `make sandbox`, librdkafka's
//! own TLS handshake against stunnel in front of tansu (tansu 0.6.0 has no TLS listener),
//! and SCRAM checked by tansu against the users it stores. Each test makes its own
//! certificates and broker. What goes wrong (a CA that did not sign the broker's
//! certificate, a port nothing listens on, a refused password) must leave Asterisk
//! running, say so in the status and the log in an operator's words, and keep the records
//! in the spool; the file fixed and `module reload`, every record arrives once. No secret
//! may show anywhere.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::tls::{
    read_topic, unique_secret, BrokerOptions, Metrics, Pki, TlsBroker, User, PROMETHEUS_MODULES,
};
use support::{cdr_kafka_conf, one_asterisk, Asterisk, Root};

const TZ: &str = "UTC";
const WAIT: Duration = Duration::from_secs(60);
const LOAD_AT_BOOT: &str = "load => cdr_kafka.so\n";
const TOPIC: &str = "calls";
const COUNT: usize = 100;
/// The stop of a producer that cannot reach its broker waits this long at a reload.
const FLUSH: &str = "flush_timeout_ms = 1000\n";

fn tls_only(topics: &'static [&'static str]) -> BrokerOptions<'static> {
    BrokerOptions {
        topics,
        users: &[],
        client_certificates: false,
    }
}

/// cdr_kafka.conf for TLS to `brokers` with CA file `ca`, plus `extra` lines.
fn ssl_conf(brokers: &str, ca: &str, extra: &str) -> String {
    cdr_kafka_conf(
        brokers,
        TOPIC,
        &format!("security_protocol = ssl\nssl_ca_location = {ca}\n{FLUSH}{extra}"),
    )
}

fn sasl_conf(brokers: &str, ca: &str, mechanism: &str, user: &str, password: &str) -> String {
    cdr_kafka_conf(
        brokers,
        TOPIC,
        &format!(
            "security_protocol = sasl_ssl\nssl_ca_location = {ca}\nsasl_mechanisms = {mechanism}\n\
             sasl_username = {user}\nsasl_password = {password}\n{FLUSH}"
        ),
    )
}

/// How many times each record_id is on the topic, read through TLS with `client`.
fn counts(root: &Root, brokers: &str, client: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in read_topic(root, brokers, TOPIC, client) {
        let id = message.header("record_id").expect("a record_id header");
        *counts.entry(id.to_string()).or_default() += 1;
    }
    counts
}

/// Waits until `count` distinct records are on the topic; each must be there once.
fn assert_each_once(root: &Root, brokers: &str, client: &[(&str, &str)], count: usize) {
    let deadline = Instant::now() + WAIT;
    let mut seen = counts(root, brokers, client);
    while seen.len() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        seen = counts(root, brokers, client);
    }
    assert_eq!(seen.len(), count, "distinct records on the topic");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records there more than once: {twice:?}");
}

/// Polls `cdr kafka show status` until it contains `words`; returns it then.
fn wait_for_status(asterisk: &Asterisk<'_>, words: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = asterisk.rx("cdr kafka show status");
        if status.contains(words) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the status never said '{words}':\n{status}\n{}",
            asterisk.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// With the broker unusable: the CDRs are spooled, none delivered, Asterisk runs, and
/// status and log both say `words`.
fn assert_records_wait(asterisk: &mut Asterisk<'_>, words: &str) {
    asterisk.flood(COUNT);
    assert_eq!(asterisk.wait_for_counter("Spooled", COUNT, WAIT), COUNT);
    let status = wait_for_status(asterisk, words);
    assert!(asterisk.running(), "Asterisk runs on");
    assert_eq!(asterisk.counter("Delivered"), 0, "{status}");
    assert!(
        status.contains(&format!("Spool depth         : {COUNT} records")),
        "{status}"
    );
    asterisk.log_saying(words);
}

/// The file fixed and `module reload`: every record is delivered.
fn fix_and_reload(asterisk: &Asterisk<'_>, conf: &str) {
    asterisk.write_config("cdr_kafka.conf", conf);
    asterisk.rx("module reload cdr_kafka.so");
    assert_eq!(asterisk.wait_until_all_delivered(WAIT), COUNT);
    let status = asterisk.rx("cdr kafka show status");
    assert!(
        status.contains("Spool depth         : 0 records"),
        "{status}"
    );
}

fn tls_client(pki: &Pki) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "ssl".into()),
        ("ssl.ca.location", pki.inside("ca.pem")),
    ]
}

fn borrowed<'a>(client: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    client.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

#[test]
fn ssl_with_the_ca_that_signed_the_broker_delivers_every_record_once() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let pki = Pki::new(&root);
    let broker = TlsBroker::start(&pki, &tls_only(&[TOPIC]));
    let conf = ssl_conf(&broker.brokers(), &pki.inside("ca.pem"), "");
    let asterisk = Asterisk::start_with_modules(&root, &conf, TZ, LOAD_AT_BOOT);
    asterisk.flood(COUNT);
    assert_eq!(asterisk.wait_until_all_delivered(WAIT), COUNT);
    let client = tls_client(&pki);
    assert_each_once(&root, &broker.brokers(), &borrowed(&client), COUNT);
    let status = asterisk.rx("cdr kafka show status");
    assert!(status.contains("security.protocol   : ssl"), "{status}");
    assert!(status.contains("— producing"), "{status}");
}

#[test]
fn a_ca_that_did_not_sign_the_broker_keeps_records_in_the_spool_until_the_file_is_fixed() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let pki = Pki::new(&root);
    let broker = TlsBroker::start(&pki, &tls_only(&[TOPIC]));
    let wrong = pki.inside("other-ca.pem");
    let conf = ssl_conf(&broker.brokers(), &wrong, "");
    let mut asterisk = Asterisk::start_with_modules(&root, &conf, TZ, LOAD_AT_BOOT);
    assert_records_wait(
        &mut asterisk,
        &format!(
            "TLS handshake with {} failed: the broker's certificate could not be verified with ssl_ca_location = {wrong}",
            broker.brokers()
        ),
    );
    fix_and_reload(
        &asterisk,
        &ssl_conf(&broker.brokers(), &pki.inside("ca.pem"), ""),
    );
    let client = tls_client(&pki);
    assert_each_once(&root, &broker.brokers(), &borrowed(&client), COUNT);
}

#[test]
fn an_unreachable_tls_port_keeps_records_in_the_spool_until_the_file_is_fixed() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let pki = Pki::new(&root);
    let broker = TlsBroker::start(&pki, &tls_only(&[TOPIC]));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let nowhere = format!("127.0.0.1:{closed}");
    let ca = pki.inside("ca.pem");
    let mut asterisk =
        Asterisk::start_with_modules(&root, &ssl_conf(&nowhere, &ca, ""), TZ, LOAD_AT_BOOT);
    assert_records_wait(
        &mut asterisk,
        &format!("cannot connect to {nowhere}: connection refused: no broker listens there"),
    );
    fix_and_reload(&asterisk, &ssl_conf(&broker.brokers(), &ca, ""));
    let client = tls_client(&pki);
    assert_each_once(&root, &broker.brokers(), &borrowed(&client), COUNT);
}

fn sasl_client(
    pki: &Pki,
    mechanism: &str,
    user: &str,
    password: &str,
) -> Vec<(&'static str, String)> {
    let mut client = tls_client(pki);
    client[0].1 = "sasl_ssl".into();
    client.extend([
        ("sasl.mechanisms", mechanism.to_string()),
        ("sasl.username", user.to_string()),
        ("sasl.password", password.to_string()),
    ]);
    client
}

/// A broker behind TLS that knows one SCRAM user, `asterisk`.
fn scram_broker(pki: &Pki, password: &str, mechanism: &str) -> TlsBroker {
    let users = [User {
        name: "asterisk",
        password,
        mechanism,
    }];
    TlsBroker::start(
        pki,
        &BrokerOptions {
            topics: &[TOPIC],
            users: &users,
            client_certificates: false,
        },
    )
}

#[test]
fn sasl_scram_sha_512_over_tls_delivers_every_record_once() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let pki = Pki::new(&root);
    let password = unique_secret("scram");
    let broker = scram_broker(&pki, &password, "scram512");
    let ca = pki.inside("ca.pem");
    let conf = sasl_conf(
        &broker.brokers(),
        &ca,
        "SCRAM-SHA-512",
        "asterisk",
        &password,
    );
    let asterisk = Asterisk::start_with_modules(&root, &conf, TZ, LOAD_AT_BOOT);
    asterisk.flood(COUNT);
    assert_eq!(asterisk.wait_until_all_delivered(WAIT), COUNT);
    let client = sasl_client(&pki, "SCRAM-SHA-512", "asterisk", &password);
    assert_each_once(&root, &broker.brokers(), &borrowed(&client), COUNT);
    // The broker does check: without a password it refuses to serve the topic.
    let anonymous = tls_client(&pki);
    assert!(read_topic(&root, &broker.brokers(), TOPIC, &borrowed(&anonymous)).is_empty());
}

#[test]
fn a_wrong_scram_password_keeps_records_in_the_spool_until_the_file_is_fixed() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let pki = Pki::new(&root);
    let password = unique_secret("scram");
    let wrong = unique_secret("wrong");
    let broker = scram_broker(&pki, &password, "scram256");
    let ca = pki.inside("ca.pem");
    let conf = sasl_conf(&broker.brokers(), &ca, "SCRAM-SHA-256", "asterisk", &wrong);
    let mut asterisk = Asterisk::start_with_modules(&root, &conf, TZ, LOAD_AT_BOOT);
    assert_records_wait(
        &mut asterisk,
        &format!(
            "SASL authentication with {} failed: the broker refused sasl_username = asterisk with its sasl_password (sasl_mechanisms = SCRAM-SHA-256)",
            broker.brokers()
        ),
    );
    let shown = asterisk.rx("cdr kafka show status") + &asterisk.log();
    assert!(
        !shown.contains(&wrong),
        "the wrong password is shown:\n{shown}"
    );
    fix_and_reload(
        &asterisk,
        &sasl_conf(
            &broker.brokers(),
            &ca,
            "SCRAM-SHA-256",
            "asterisk",
            &password,
        ),
    );
    let client = sasl_client(&pki, "SCRAM-SHA-256", "asterisk", &password);
    assert_each_once(&root, &broker.brokers(), &borrowed(&client), COUNT);
}

/// A client key whose password is wrong when the module first loads: librdkafka refuses
/// the producer, yet the module loads, keeps every record in the spool and says why, in
/// the log and the status; the file fixed and `module reload`, each arrives once.
#[test]
fn a_wrong_key_password_at_the_first_load_keeps_records_in_the_spool_until_the_file_is_fixed() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let pki = Pki::new(&root);
    let wrong_key_password = unique_secret("wrongkey");
    let broker = TlsBroker::start(
        &pki,
        &BrokerOptions {
            topics: &[TOPIC],
            users: &[],
            client_certificates: true,
        },
    );
    let conf = |key_password: &str| {
        ssl_conf(
            &broker.brokers(),
            &pki.inside("ca.pem"),
            &format!(
                "ssl_certificate_location = {}\nssl_key_location = {}\nrdkafka.ssl.key.password = {key_password}\n",
                pki.inside("client.pem"),
                pki.inside("client.key"),
            ),
        )
    };
    let asterisk =
        Asterisk::start_with_modules(&root, &conf(&wrong_key_password), TZ, LOAD_AT_BOOT);
    asterisk.flood(COUNT);
    assert_eq!(asterisk.wait_for_counter("Spooled", COUNT, WAIT), COUNT);
    let words = format!(
        "ssl_key_location = {}: the private key cannot be read: a wrong key password (rdkafka.ssl.key.password)",
        pki.inside("client.key")
    );
    let status = wait_for_status(&asterisk, &words);
    assert!(
        status.contains("Destination global  : not built ("),
        "{status}"
    );
    // The module_start record too: a destination not built reads nothing yet, not even
    // what its rules will leave out.
    assert!(
        status.contains(&format!("Spool depth         : {} records", COUNT + 1)),
        "{status}"
    );
    assert_eq!(asterisk.counter("Delivered"), 0, "{status}");
    let log = asterisk.log_saying("its records wait in the spool, it is tried again every second");
    assert!(
        log.contains(&words)
            && log.contains("destination 'global' cannot be made now")
            && log.contains("its records wait in the spool, it is tried again every second"),
        "{log}"
    );
    let shown = asterisk.rx("cdr kafka show status")
        + &asterisk.rx("cdr kafka show destinations")
        + &asterisk.log();
    assert!(
        !shown.contains(&wrong_key_password) && !shown.contains(&pki.key_password),
        "a key password is shown:\n{shown}"
    );
    fix_and_reload(&asterisk, &conf(&pki.key_password));
    let mut client = tls_client(&pki);
    client.extend([
        ("ssl.certificate.location", pki.inside("client.pem")),
        ("ssl.key.location", pki.inside("client.key")),
        ("ssl.key.password", pki.key_password.clone()),
    ]);
    assert_each_once(&root, &broker.brokers(), &borrowed(&client), COUNT);
}

/// SASL over TLS with a client certificate whose key is encrypted: neither the SASL
/// password nor the key's password shows in the status, the destinations, the log, the
/// control records, the metrics, or the error of a reload librdkafka refuses.
#[test]
fn no_secret_shows_in_status_log_control_records_metrics_or_a_refused_reload() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let pki = Pki::new(&root);
    let password = unique_secret("scram");
    let wrong_key_password = unique_secret("wrongkey");
    let users = [User {
        name: "asterisk",
        password: &password,
        mechanism: "scram512",
    }];
    let broker = TlsBroker::start(
        &pki,
        &BrokerOptions {
            topics: &[TOPIC],
            users: &users,
            client_certificates: true,
        },
    );
    let control = "var/log/asterisk/cdrk-tls-control.jsonl";
    let control_path = root.path.join(control);
    let _ = std::fs::remove_file(&control_path);
    let conf = |key_password: &str| {
        format!(
            "{}ssl_certificate_location = {}\nssl_key_location = {}\nrdkafka.ssl.key.password = {key_password}\n\n\
             [control]\ntype = file\npath = /{control}\nrecords = control\n",
            sasl_conf(
                &broker.brokers(),
                &pki.inside("ca.pem"),
                "SCRAM-SHA-512",
                "asterisk",
                &password
            ),
            pki.inside("client.pem"),
            pki.inside("client.key"),
        )
    };
    let metrics = Metrics::configure(&root);
    let asterisk = Asterisk::start_with_modules(
        &root,
        &conf(&pki.key_password),
        TZ,
        &format!("{PROMETHEUS_MODULES}{LOAD_AT_BOOT}"),
    );
    asterisk.flood(COUNT);
    // Delivered counts the control destination's records too: the spool says it all.
    assert_eq!(asterisk.wait_for_counter("Spooled", COUNT, WAIT), COUNT);
    wait_for_status(&asterisk, "Spool depth         : 0 records");
    let mut client = sasl_client(&pki, "SCRAM-SHA-512", "asterisk", &password);
    client.extend([
        ("ssl.certificate.location", pki.inside("client.pem")),
        ("ssl.key.location", pki.inside("client.key")),
        ("ssl.key.password", pki.key_password.clone()),
    ]);
    assert_each_once(&root, &broker.brokers(), &borrowed(&client), COUNT);
    // stunnel checked the client's certificate: one without is turned away.
    let anonymous = sasl_client(&pki, "SCRAM-SHA-512", "asterisk", &password);
    assert!(
        read_topic(&root, &broker.brokers(), TOPIC, &borrowed(&anonymous)).is_empty(),
        "{}",
        broker.stunnel_log()
    );

    asterisk.write_config("cdr_kafka.conf", &conf(&wrong_key_password));
    asterisk.rx("module reload cdr_kafka.so");
    let refused = format!(
        "ssl_key_location = {}: the private key cannot be read: a wrong key password (rdkafka.ssl.key.password)",
        pki.inside("client.key")
    );
    asterisk.log_saying(&refused);
    asterisk.log_saying("reload refused, the running configuration stays");

    let status = asterisk.rx("cdr kafka show status");
    assert!(
        status.contains("sasl.password       : ********"),
        "{status}"
    );
    assert!(
        status.contains("— producing"),
        "the old configuration runs:\n{status}"
    );
    let control_records = std::fs::read_to_string(&control_path).expect("the control records");
    assert!(
        control_records.contains("\"type\":\"module_start\""),
        "{control_records}"
    );
    let scrape = metrics.scrape();
    assert!(scrape.contains("asterisk_cdr_kafka_"), "{scrape}");
    let everything = [
        ("status", status),
        ("destinations", asterisk.rx("cdr kafka show destinations")),
        ("log", asterisk.log()),
        ("control records", control_records),
        ("metrics", scrape),
    ];
    for (what, text) in &everything {
        for secret in [&password, &pki.key_password, &wrong_key_password] {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows a secret:\n{text}"
            );
        }
    }
}
