//! The HTTP destination over https end to end: Asterisk 22 (the root `make sandbox`
//! builds) with the module and a tansu broker, sending to an HTTPS server of the test's
//! own on 127.0.0.1 (`support::https`) whose certificates come from CAs the test makes.
//! The server requires a client certificate. The CA and client files are written inside
//! the root, where Asterisk reads them; the config names them as Asterisk sees them.
//!
//! One Asterisk runs at a time (they share the root), so the tests take a lock.

mod support;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::https::{Ca, HttpsServer, Usage};
use support::{Asterisk, Root, ScratchDir, Tansu};

const TZ: &str = "UTC";
const WAIT: Duration = Duration::from_secs(40);
/// The folder of the test's TLS files inside the root, as Asterisk sees it.
const KEYS: &str = "/etc/asterisk/cdrk-e2e-keys";

const DIALPLAN: &str = r#"
[cdrk-https]
exten => plain,1,Answer()
 same => n,Hangup()
"#;

/// The CAs, the server (on the host) and the files Asterisk reads (in the root).
struct Setup {
    _scratch: ScratchDir,
    server: HttpsServer,
    /// The keys folder in the root, removed on drop.
    keys: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.keys);
    }
}

impl Setup {
    /// `ca` signs the server's and the client's certificates, `other` nothing in use;
    /// inside the root: `ca.pem`, `other-ca.pem`, `client.pem`, `client.key`.
    fn new(root: &Root) -> Self {
        let scratch = ScratchDir::new("https");
        let ca = Ca::new(&scratch.0, "ca");
        let other = Ca::new(&scratch.0, "other-ca");
        let (server_cert, server_key) = ca.issue("server", Usage::Server);
        let (client_cert, client_key) = ca.issue("client", Usage::Client);
        let keys = root.path.join(KEYS.trim_start_matches('/'));
        let _ = fs::remove_dir_all(&keys);
        fs::create_dir_all(&keys).expect("keys folder in the root");
        for (from, name) in [
            (ca.file(), "ca.pem"),
            (other.file(), "other-ca.pem"),
            (client_cert, "client.pem"),
            (client_key, "client.key"),
        ] {
            fs::copy(&from, keys.join(name)).expect("copy into the root");
        }
        let server = HttpsServer::start(&server_cert, &server_key, Some(&ca.file()));
        Self {
            _scratch: scratch,
            server,
            keys,
        }
    }

    /// cdr_kafka.conf: [global] to Kafka, [billing] to the server trusting `ca_file`.
    fn conf(&self, brokers: &str, ca_file: &str) -> String {
        format!(
            "[global]\nbrokers = {brokers}\ntopic = all\n\n\
             [billing]\ntype = http\nurl = {url}\ntimeout_ms = 2000\nformat = envelope\n\
             ca_file = {ca_file}\nclient_cert = {KEYS}/client.pem\nclient_key = {KEYS}/client.key\n",
            url = self.server.url()
        )
    }

    /// The record ids the server took, each as often as it took it.
    fn taken(&self) -> Vec<String> {
        self.server
            .bodies()
            .iter()
            .flat_map(|body| body.lines().map(str::to_string).collect::<Vec<_>>())
            .map(|line| {
                let envelope: Value = serde_json::from_str(&line).expect("JSON lines");
                envelope["record_id"]
                    .as_str()
                    .expect("record_id")
                    .to_string()
            })
            .collect()
    }
}

/// One line of `cdr kafka show destinations`: counters and the target's status.
#[derive(Debug, Clone, Default)]
struct Row {
    matched: u64,
    delivered: u64,
    failed: u64,
    waiting: u64,
    target: String,
}

fn destinations(asterisk: &Asterisk<'_>) -> HashMap<String, Row> {
    let text = asterisk.rx("cdr kafka show destinations");
    let mut rows = HashMap::new();
    for line in text.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 9 || words[3].parse::<u64>().is_err() {
            continue;
        }
        let n = |i: usize| words[i].parse::<u64>().unwrap_or(0);
        let target = words[9..].join(" ");
        rows.insert(
            words[0].to_string(),
            Row {
                matched: n(3),
                delivered: n(4),
                failed: n(5),
                waiting: n(8),
                target,
            },
        );
    }
    rows
}

/// Places `count` calls and waits until Asterisk posted their CDRs (the count stays put
/// for a second); returns how many CDRs it received in all.
fn calls(asterisk: &Asterisk<'_>, count: usize) -> usize {
    for _ in 0..count {
        asterisk.rx("channel originate Local/plain@cdrk-https application Wait 1");
    }
    asterisk.wait_for_no_channels(WAIT);
    let deadline = Instant::now() + WAIT;
    let mut received = asterisk.counter("Received");
    loop {
        sleep(Duration::from_secs(1));
        let now = asterisk.counter("Received");
        if now == received {
            return now;
        }
        received = now;
        assert!(Instant::now() < deadline, "CDRs kept coming");
    }
}

/// Waits until `done` holds for the destinations' rows; returns them then.
fn wait_for_rows(
    asterisk: &Asterisk<'_>,
    what: &str,
    done: impl Fn(&HashMap<String, Row>) -> bool,
) -> HashMap<String, Row> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = destinations(asterisk);
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{what}:\n{}",
            asterisk.rx("cdr kafka show destinations")
        );
        sleep(Duration::from_millis(200));
    }
}

/// Every record the destination's rules take is delivered, none waits.
fn settled(row: Option<&Row>) -> bool {
    row.is_some_and(|row| row.matched > 0 && row.delivered == row.matched && row.waiting == 0)
}

/// Kafka has every record, and billing as many with none waiting. (Not billing's
/// `matched`: the records a reload offers again are counted again.)
fn all_delivered(rows: &HashMap<String, Row>) -> bool {
    settled(rows.get("global"))
        && rows.get("billing").is_some_and(|billing| {
            billing.waiting == 0 && billing.delivered == rows["global"].delivered
        })
}

fn kafka_ids(root: &Root, brokers: &str) -> HashSet<String> {
    root.read_topic(brokers, "all")
        .iter()
        .map(|message| message.header("record_id").unwrap_or_default().to_string())
        .collect()
}

fn no_dead_letters(root: &Root) {
    let dead_letters = root.spool().join("dead-letter.jsonl");
    assert!(
        !dead_letters.exists() || fs::read_to_string(&dead_letters).unwrap().is_empty(),
        "nothing dead-lettered"
    );
}

fn start<'r>(root: &'r Root, conf: &str) -> Asterisk<'r> {
    let asterisk = Asterisk::start(root, conf, TZ);
    asterisk.add_dialplan(DIALPLAN);
    asterisk.load_module();
    asterisk
}

#[test]
fn calls_reach_an_https_server_of_a_private_ca_with_a_client_certificate_once_each() {
    let _one = support::one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    let setup = Setup::new(&root);
    let conf = setup.conf(&tansu.brokers(), &format!("{KEYS}/ca.pem"));
    let asterisk = start(&root, &conf);
    let received = calls(&asterisk, 3);
    assert!(received >= 6, "{received} CDRs");
    let rows = wait_for_rows(&asterisk, "every CDR delivered to both", all_delivered);
    assert!(rows["billing"].target.contains("last 200"), "{rows:?}");
    let taken = setup.taken();
    let unique: HashSet<String> = taken.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        taken.len(),
        "no record taken twice: {taken:?}"
    );
    assert_eq!(
        unique,
        kafka_ids(&root, &tansu.brokers()),
        "every record once"
    );
    assert_eq!(rows["billing"].failed, 0);
    no_dead_letters(&root);
}

/// How the admin puts the wrong CA right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// ca_file names the right file.
    Config,
    /// The file ca_file names gets the right CA; the config stays as it was.
    InPlace,
}

#[test]
fn wrong_ca_keeps_the_records_waiting_then_the_fixed_config_and_a_reload_deliver_each_once() {
    wrong_ca_then(Fix::Config);
}

#[test]
fn wrong_ca_keeps_the_records_waiting_then_the_file_renewed_in_place_and_a_reload_deliver_each_once(
) {
    wrong_ca_then(Fix::InPlace);
}

/// The records wait while the CA is wrong, a reload with an unreadable CA file is
/// refused, then `fix` and a reload deliver every record once.
fn wrong_ca_then(fix: Fix) {
    let _one = support::one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    let setup = Setup::new(&root);
    let wrong = setup.conf(&tansu.brokers(), &format!("{KEYS}/other-ca.pem"));
    let asterisk = start(&root, &wrong);
    let received = calls(&asterisk, 2);
    // The server sends its CA too ("self-signed certificate in certificate chain") or
    // not ("unable to get local issuer certificate"): either way not ca_file's.
    let cause = "TLS: the server's certificate failed verification: ";
    let trusted = format!("(trusted: the CAs of ca_file {KEYS}/other-ca.pem)");
    let rows = wait_for_rows(&asterisk, "the status to say why", |rows| {
        rows.get("billing")
            .is_some_and(|row| row.target.contains(cause) && row.target.contains(&trusted))
            && settled(rows.get("global"))
    });
    let billing = &rows["billing"];
    assert!(billing.matched > 0, "{billing:?}");
    assert_eq!(billing.delivered, 0, "{billing:?}");
    assert_eq!(
        billing.failed, 0,
        "a TLS failure fails no record: {billing:?}"
    );
    assert_eq!(
        billing.waiting, billing.matched,
        "every record waits: {billing:?}"
    );
    assert!(billing.target.contains("retrying after"), "{billing:?}");
    assert!(setup.server.bodies().is_empty(), "nothing sent");
    assert!(
        setup
            .server
            .failures()
            .iter()
            .all(|failure| failure.contains("unknown ca")),
        "{:?}",
        setup.server.failures()
    );

    // A CA file that cannot be read refuses the reload, naming option and line.
    asterisk.write_config(
        "cdr_kafka.conf",
        &setup.conf(&tansu.brokers(), &format!("{KEYS}/missing.pem")),
    );
    asterisk.rx("module reload cdr_kafka.so");
    let refused = format!(
        "reload refused, the running configuration stays: cdr_kafka.conf [billing] ca_file = '{KEYS}/missing.pem' (line 10): cannot read it: No such file or directory"
    );
    asterisk.log_saying(&refused);
    let still = destinations(&asterisk);
    assert!(still["billing"].target.contains(&trusted), "{still:?}");

    let fixed = match fix {
        Fix::Config => setup.conf(&tansu.brokers(), &format!("{KEYS}/ca.pem")),
        Fix::InPlace => {
            let keys = &setup.keys;
            fs::copy(keys.join("ca.pem"), keys.join("other-ca.pem")).expect("renew the CA");
            wrong
        }
    };
    asterisk.write_config("cdr_kafka.conf", &fixed);
    asterisk.rx("module reload cdr_kafka.so");
    let more = calls(&asterisk, 1);
    assert!(more > received, "the call after the reload posted CDRs");
    let rows = wait_for_rows(
        &asterisk,
        "every CDR delivered after the fix",
        all_delivered,
    );
    let taken = setup.taken();
    let unique: HashSet<String> = taken.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        taken.len(),
        "no record taken twice: {taken:?}"
    );
    assert_eq!(
        unique,
        kafka_ids(&root, &tansu.brokers()),
        "every record once"
    );
    assert_eq!(unique.len() as u64, rows["billing"].delivered);
    assert_eq!(rows["billing"].failed, 0);
    no_dead_letters(&root);
}
