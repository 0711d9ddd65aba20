//! A broker behind TLS for the TLS and SASL tests. tansu 0.6.0 has no TLS listener
//! (`--cert` and `--key` are one clap group, so they cannot be given together, and the
//! acceptor it would build is never used), so stunnel (Debian's stunnel4) terminates TLS
//! in front of a plain tansu that advertises stunnel's port: librdkafka's metadata
//! reconnects go through TLS too. tansu checks SCRAM (SHA-256 and SHA-512) against the
//! credentials in its sqlite storage; its PLAIN accepts any password, so it is not used.
//!
//! The certificates are made per run with the openssl CLI, in a folder inside the root
//! (Asterisk runs chrooted there and must read the CA file); each file has two names:
//! its path on this machine and the one Asterisk and the root's kcat see.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{dies_with_the_test, env_path, free_port, parse_kcat_line, wait_for, Message, Root};

/// A folder inside the root, removed on drop.
struct RootDir {
    host: PathBuf,
    inside: String,
}

impl RootDir {
    fn new(root: &Root, tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let inside = format!(
            "/tmp/cdr_kafka-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let host = root.path.join(inside.trim_start_matches('/'));
        let _ = fs::remove_dir_all(&host);
        fs::create_dir_all(&host).expect("create a folder in the root");
        Self { host, inside }
    }
}

impl Drop for RootDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.host);
    }
}

/// A text no other part of a run writes: what a secret must be for a search of the
/// log for it to mean anything.
pub fn unique_secret(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{tag}-{}-{nanos:09}", std::process::id())
}

/// A CA, the broker's certificate it signed (for 127.0.0.1), a client certificate with
/// a key encrypted under `key_password`, and a second CA that signed nothing here.
pub struct Pki {
    dir: RootDir,
    pub key_password: String,
}

impl Pki {
    pub fn new(root: &Root) -> Self {
        let pki = Self {
            dir: RootDir::new(root, "pki"),
            key_password: unique_secret("keypass"),
        };
        pki.make_ca("ca", "cdr_kafka test CA");
        pki.make_ca("other-ca", "cdr_kafka other CA");
        pki.sign("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\n", None);
        pki.sign(
            "client",
            "asterisk",
            "extendedKeyUsage=clientAuth\n",
            Some(&pki.key_password),
        );
        pki
    }

    /// The host's path of file `name`.
    pub fn host(&self, name: &str) -> PathBuf {
        self.dir.host.join(name)
    }

    /// The path Asterisk and the root's kcat see for file `name`.
    pub fn inside(&self, name: &str) -> String {
        format!("{}/{name}", self.dir.inside)
    }

    fn make_ca(&self, name: &str, subject: &str) {
        openssl(
            self.dir.host.as_path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={subject}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    /// A key and a certificate the CA `ca` signs; the key encrypted when `password` is given.
    fn sign(&self, name: &str, common_name: &str, extensions: &str, password: Option<&str>) {
        let dir = self.dir.host.as_path();
        let key_args = match password {
            Some(password) => vec!["-passout".to_string(), format!("pass:{password}")],
            None => vec!["-nodes".to_string()],
        };
        let mut args: Vec<String> = [
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-subj",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("/CN={common_name}"));
        args.extend(key_args);
        args.extend(
            [
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
        fs::write(dir.join(format!("{name}.ext")), extensions).expect("write extensions");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (install the openssl package)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A SCRAM user tansu knows.
pub struct User<'a> {
    pub name: &'a str,
    pub password: &'a str,
    /// `scram256` or `scram512`, as `tansu user create --mechanism` names them.
    pub mechanism: &'a str,
}

/// What the TLS listener and tansu require of a client.
pub struct BrokerOptions<'a> {
    pub topics: &'a [&'a str],
    /// Users for SCRAM; none: tansu does not ask for authentication.
    pub users: &'a [User<'a>],
    /// stunnel refuses clients without a certificate the CA signed.
    pub client_certificates: bool,
}

/// tansu on a plain port of 127.0.0.1, stunnel's TLS listener in front of it; both killed
/// on drop.
pub struct TlsBroker {
    tansu: Child,
    stunnel: Child,
    /// The TLS port: what clients are given and tansu advertises.
    pub port: u16,
    dir: super::ScratchDir,
}

impl TlsBroker {
    pub fn start(pki: &Pki, options: &BrokerOptions<'_>) -> Self {
        let dir = super::ScratchDir::new("tls-broker");
        let port = free_port();
        let plain = free_port();
        let authenticated = !options.users.is_empty();
        // SCRAM credentials live in the storage; memory storage keeps none.
        let storage = if authenticated {
            "sqlite://tansu.db"
        } else {
            "memory://tansu/"
        };
        let mut tansu = spawn_tansu(&dir.0, plain, port, storage, false);
        wait_until_listening(&mut tansu, &dir.0, plain);
        for topic in options.topics {
            tansu_cli(&dir.0, &["topic", "create", topic], plain);
        }
        if authenticated {
            // Users and topics are created before authentication is required: tansu's
            // own client does not authenticate.
            for user in options.users {
                tansu_cli(
                    &dir.0,
                    &[
                        "user",
                        "create",
                        user.name,
                        user.password,
                        "--mechanism",
                        user.mechanism,
                    ],
                    plain,
                );
            }
            let _ = tansu.kill();
            let _ = tansu.wait();
            tansu = spawn_tansu(&dir.0, plain, port, storage, true);
            wait_until_listening(&mut tansu, &dir.0, plain);
        }
        let mut stunnel = spawn_stunnel(&dir.0, pki, port, plain, options.client_certificates);
        wait_until_listening(&mut stunnel, &dir.0, port);
        Self {
            tansu,
            stunnel,
            port,
            dir,
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// stunnel's log so far (what it said of each handshake).
    pub fn stunnel_log(&self) -> String {
        fs::read_to_string(self.dir.0.join("stunnel.log")).unwrap_or_default()
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        for child in [&mut self.stunnel, &mut self.tansu] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_file(dir: &Path, name: &str) -> fs::File {
    fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("a log file")
}

fn spawn_tansu(dir: &Path, port: u16, advertised: u16, storage: &str, auth: bool) -> Child {
    let binary = env_path("CDR_KAFKA_TANSU");
    let log = log_file(dir, "tansu.log");
    let mut command = Command::new(&binary);
    dies_with_the_test(command.current_dir(dir))
        .arg("broker")
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised}"))
        .args(["--storage-engine", storage])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    if auth {
        command.arg("--authentication");
    }
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

fn tansu_cli(dir: &Path, args: &[&str], port: u16) {
    let output = Command::new(env_path("CDR_KAFKA_TANSU"))
        .args(args)
        .arg("--broker")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run tansu");
    assert!(
        output.status.success(),
        "tansu {} failed: {}",
        args[..2].join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn spawn_stunnel(dir: &Path, pki: &Pki, port: u16, upstream: u16, verify: bool) -> Child {
    let mut conf = format!(
        "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{upstream}\n\
         cert = {}\nkey = {}\n",
        pki.host("server.pem").display(),
        pki.host("server.key").display()
    );
    if verify {
        conf.push_str(&format!(
            "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
            pki.host("ca.pem").display()
        ));
    }
    let path = dir.join("stunnel.conf");
    fs::write(&path, conf).expect("write stunnel.conf");
    let log = log_file(dir, "stunnel.log");
    dies_with_the_test(&mut Command::new("stunnel4"))
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start stunnel4 (install the stunnel4 package)")
}

fn wait_until_listening(child: &mut Child, dir: &Path, port: u16) {
    wait_for("a listener", Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            let logs: Vec<String> = ["tansu.log", "stunnel.log"]
                .iter()
                .map(|name| fs::read_to_string(dir.join(name)).unwrap_or_default())
                .collect();
            panic!(
                "exited ({status}) before listening on {port}:\n{}",
                logs.join("\n")
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// Everything on `topic` now, read with the root's kcat and librdkafka `client`
/// properties (security.protocol, ssl.ca.location, sasl.*).
pub fn read_topic(
    root: &Root,
    brokers: &str,
    topic: &str,
    client: &[(&str, &str)],
) -> Vec<Message> {
    let mut command = root.command("kcat");
    command.args([
        "-b",
        brokers,
        "-C",
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-J",
        "-q",
    ]);
    command.args(["-X", "fetch.wait.max.ms=10"]);
    for (name, value) in client {
        command.arg("-X").arg(format!("{name}={value}"));
    }
    // Bounded: a read that never sees the end (see ASTERISK-FACTS on tansu) is retried.
    let output = Command::new("timeout")
        .arg("30")
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run kcat in the root");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(parse_kcat_line)
        .collect()
}

/// What res_prometheus needs loaded besides itself (its PJSIP metrics link against res_pjsip).
pub const PROMETHEUS_MODULES: &str = "load => res_sorcery_config.so
load => res_sorcery_memory.so
load => res_sorcery_astdb.so
load => res_pjproject.so
load => res_pjsip.so
load => res_prometheus.so
";

/// Asterisk's HTTP server on a free port of 127.0.0.1 with res_prometheus at `/metrics`,
/// configured in the root for the next boot; switched off again on drop.
pub struct Metrics {
    etc: PathBuf,
    port: u16,
}

impl Metrics {
    pub fn configure(root: &Root) -> Self {
        let port = free_port();
        let etc = root.path.join("etc/asterisk");
        fs::write(
            etc.join("http.conf"),
            format!("[general]\nenabled = yes\nbindaddr = 127.0.0.1\nbindport = {port}\n"),
        )
        .expect("http.conf");
        fs::write(
            etc.join("prometheus.conf"),
            "[general]\nenabled = yes\nuri = metrics\n",
        )
        .expect("prometheus.conf");
        Self { etc, port }
    }

    /// The text of one scrape.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .expect("connect to Asterisk's HTTP server");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        let _ = fs::write(self.etc.join("http.conf"), "[general]\nenabled = no\n");
    }
}
