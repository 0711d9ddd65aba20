//! https against a real TLS server on 127.0.0.1 with certificates of CAs each test makes:
//! verification on by default, `ca_file`, a wrong CA, a client certificate; and the TLS
//! files as configuration errors.

use std::path::{Path, PathBuf};

use super::*;

#[path = "../../../../tests/support/https.rs"]
mod https;

use https::{Ca, HttpsServer, Usage};

/// A folder of CAs and certificates for one test: `ca` signs the server's and the
/// client's certificates, `other` signs nothing the server uses.
struct Pki {
    dir: TempDir,
    ca: Ca,
    other: Ca,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(&dir.0).unwrap();
        let ca = Ca::new(&dir.0, "ca");
        let other = Ca::new(&dir.0, "other-ca");
        let server = ca.issue("server", Usage::Server);
        let client = ca.issue("client", Usage::Client);
        Self {
            dir,
            ca,
            other,
            server,
            client,
        }
    }

    fn server(&self, require_client: bool) -> HttpsServer {
        let client_ca = require_client.then(|| self.ca.file());
        HttpsServer::start(&self.server.0, &self.server.1, client_ca.as_deref())
    }
}

fn https_settings(url: &str, ca_file: Option<&Path>) -> HttpSettings {
    let mut settings = HttpSettings::new("crm", url);
    settings.tls.ca_file = ca_file.map(Path::to_path_buf);
    settings
}

/// Offers one record and waits for its first outcome; returns it with the status line.
fn first_outcome(http: &mut HttpDestination) -> (Vec<(u64, Outcome)>, String) {
    assert_eq!(http.offer(&record(0, "{}")), Offer::Taken);
    let mut outcomes = Vec::new();
    wait_for("an outcome", || {
        http.collect(&mut outcomes);
        !outcomes.is_empty()
    });
    (outcomes, http.describe())
}

#[test]
fn default_verification_refuses_a_server_of_a_ca_the_system_does_not_trust() {
    let pki = Pki::new("tls-default");
    let server = pki.server(false);
    let mut http = HttpDestination::new(https_settings(&server.url(), None)).unwrap();
    let (outcomes, status) = first_outcome(&mut http);
    assert_eq!(outcomes, [(0, Outcome::Retry)], "{status}");
    assert!(
        status.contains("the server's certificate failed verification: unable to get local issuer certificate (trusted: the system's CAs (no ca_file))"),
        "{status}"
    );
    assert_eq!(http.broken(), None);
    assert!(
        server.bodies().is_empty(),
        "nothing sent to an unverified server"
    );
}

#[test]
fn ca_file_of_the_servers_ca_delivers_every_record_once() {
    let pki = Pki::new("tls-ca");
    let server = pki.server(false);
    let file = pki.ca.file();
    let mut http = HttpDestination::new(https_settings(&server.url(), Some(&file))).unwrap();
    let payloads = payloads(7);
    let outcomes = feed(&mut http, &payloads);
    assert!(
        outcomes.iter().all(|(_, o)| *o == Outcome::Delivered),
        "{outcomes:?}"
    );
    assert_eq!(outcomes.len(), 7, "each record reported once");
    assert_eq!(server.bodies().concat(), lines(&payloads));
    assert!(http.describe().contains("last 200"), "{}", http.describe());
}

#[test]
fn wrong_ca_file_is_retried_with_backoff_and_names_the_cause_and_the_file() {
    let pki = Pki::new("tls-wrong");
    let server = pki.server(false);
    let wrong = pki.other.file();
    let mut http = HttpDestination::new(https_settings(&server.url(), Some(&wrong))).unwrap();
    for backoff in ["retrying after 100 ms", "retrying after 200 ms"] {
        let (outcomes, status) = first_outcome(&mut http);
        assert_eq!(outcomes, [(0, Outcome::Retry)], "{status}");
        let expected = format!(
            "failed verification: unable to get local issuer certificate (trusted: the CAs of ca_file {})",
            wrong.display()
        );
        assert!(status.contains(&expected), "{status}");
        assert!(status.contains(backoff), "{status}");
    }
    assert_eq!(http.broken(), None);
    assert!(server.bodies().is_empty());
    let refused = server.failures();
    assert!(
        refused.iter().all(|f| f.contains("unknown ca")),
        "the client refused the server: {refused:?}"
    );
}

#[test]
fn host_name_the_certificate_does_not_name_is_refused() {
    let pki = Pki::new("tls-host");
    let server = pki.server(false);
    // The certificate names 127.0.0.1 only.
    let url = server.url().replace("127.0.0.1", "localhost");
    let file = pki.ca.file();
    let mut http = HttpDestination::new(https_settings(&url, Some(&file))).unwrap();
    let (outcomes, status) = first_outcome(&mut http);
    assert_eq!(outcomes, [(0, Outcome::Retry)], "{status}");
    assert!(
        status.contains("failed verification: hostname mismatch"),
        "{status}"
    );
    assert!(server.bodies().is_empty());
}

#[test]
fn server_requiring_a_client_certificate_refuses_one_without_and_takes_one_with() {
    let pki = Pki::new("tls-mutual");
    let server = pki.server(true);
    let file = pki.ca.file();
    let mut without = HttpDestination::new(https_settings(&server.url(), Some(&file))).unwrap();
    let (outcomes, status) = first_outcome(&mut without);
    assert_eq!(outcomes, [(0, Outcome::Retry)], "{status}");
    assert!(
        status.contains(
            "certificate required (the server wants a client certificate: client_cert, client_key)"
        ),
        "{status}"
    );
    assert!(server.bodies().is_empty());
    drop(without);

    let mut settings = https_settings(&server.url(), Some(&file));
    settings.tls.client_cert = Some(pki.client.0.clone());
    settings.tls.client_key = Some(pki.client.1.clone());
    let mut with = HttpDestination::new(settings).unwrap();
    let payloads = payloads(4);
    let outcomes = feed(&mut with, &payloads);
    assert!(
        outcomes.iter().all(|(_, o)| *o == Outcome::Delivered),
        "{outcomes:?}"
    );
    assert_eq!(server.bodies().concat(), lines(&payloads));
}

#[test]
fn https_to_a_plain_http_server_is_retried_with_the_reason_and_sends_nothing_in_clear() {
    let server = TestServer::start(&[]);
    let url = server.url.replace("http://", "https://");
    let mut http = HttpDestination::new(HttpSettings::new("crm", &url)).unwrap();
    let (outcomes, status) = first_outcome(&mut http);
    assert_eq!(outcomes, [(0, Outcome::Retry)]);
    assert_eq!(http.broken(), None);
    assert!(status.contains("TLS handshake failed"), "{status}");
    assert!(server.seen().is_empty(), "nothing sent in clear text");
}

/// What loading `[crm] type = http` with `options` says, as the module would at load.
fn load_error(url: &str, options: &[(&str, String)]) -> String {
    let mut all = vec![("type", "http"), ("url", url)];
    all.extend(options.iter().map(|(name, value)| (*name, value.as_str())));
    super::crm_build_error(&all)
}

/// A url, the TLS options of its section, and what the error must say.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, String);

#[test]
fn unusable_tls_files_are_configuration_errors_naming_section_option_and_line() {
    let pki = Pki::new("tls-config");
    let dir = &pki.dir.0;
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let encrypted = dir.join("encrypted.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let missing = dir.join("missing.pem");
    let path = |p: &Path| p.display().to_string();
    let https = "https://127.0.0.1:1/cdr";
    let cases: Vec<Case> = vec![
        (
            https,
            vec![("ca_file", path(&missing))],
            format!(
                "cdr_kafka.conf [crm] ca_file = '{}' (line 4): cannot read it: No such file or directory",
                path(&missing)
            ),
        ),
        (
            https,
            vec![("ca_file", path(&not_pem))],
            format!(
                "[crm] ca_file = '{}' (line 4): no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                path(&not_pem)
            ),
        ),
        (
            https,
            vec![("ca_file", "ca.pem".into())],
            "[crm] ca_file = 'ca.pem' (line 4): not an absolute path".into(),
        ),
        (
            "http://127.0.0.1:1/cdr",
            vec![("ca_file", path(&pki.ca.file()))],
            "(line 4): for an https:// url only (this url is not https)".into(),
        ),
        (
            https,
            vec![("client_cert", path(&pki.client.0))],
            "[crm] client_cert = ".to_string() + &format!("'{}' (line 4): needs client_key as well", path(&pki.client.0)),
        ),
        (
            https,
            vec![
                ("client_cert", path(&pki.client.0)),
                ("client_key", path(&pki.server.1)),
            ],
            format!(
                "[crm] client_key = '{}' (line 5): not the key of client_cert",
                path(&pki.server.1)
            ),
        ),
        (
            https,
            vec![
                ("client_cert", path(&pki.client.0)),
                ("client_key", path(&encrypted)),
            ],
            "(line 5): the key is encrypted and Asterisk cannot ask for its passphrase".into(),
        ),
        (
            https,
            vec![
                ("client_cert", path(&pki.client.0)),
                ("client_key", path(&not_pem)),
            ],
            "(line 5): not a PEM private key".into(),
        ),
    ];
    for (url, options, expected) in cases {
        let error = load_error(url, &options);
        assert!(
            error.contains(&expected),
            "{options:?}:\n{error}\nexpected: {expected}"
        );
    }
    let fine = load_error(
        https,
        &[
            ("ca_file", path(&pki.ca.file())),
            ("client_cert", path(&pki.client.0)),
            ("client_key", path(&pki.client.1)),
            ("ca_file", String::new()),
        ],
    );
    assert_eq!(
        fine, "",
        "valid files, and an empty ca_file for the system's CAs"
    );
}
