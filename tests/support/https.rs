//! https for the tests: certificate authorities made fresh in a folder each run (OpenSSL,
//! the one the module links), and a small HTTPS server on 127.0.0.1 that can require a
//! client certificate. It answers 200 to every request and keeps each body, and each
//! handshake that failed with OpenSSL's reason. Stopped by its guard's `Drop`.
//!
//! Shared by the module's own tests (`src/delivery/http/tls_tests.rs` includes this
//! file) and the end-to-end tests: std and openssl only.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{HandshakeError, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// A certificate authority whose certificate is `<dir>/<name>.pem`.
pub struct Ca {
    pub name: String,
    pub dir: PathBuf,
    certificate: X509,
    key: PKey<Private>,
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("key")
}

fn builder(common_name: &str, key: &PKey<Private>, serial: u32) -> X509Builder {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .expect("CN");
    let name = name.build();
    let mut builder = X509Builder::new().expect("builder");
    builder.set_version(2).expect("v3");
    let serial = BigNum::from_u32(serial).and_then(|n| n.to_asn1_integer());
    builder
        .set_serial_number(&serial.expect("serial"))
        .expect("serial");
    builder.set_subject_name(&name).expect("subject");
    builder.set_pubkey(key).expect("public key");
    let from = Asn1Time::days_from_now(0).expect("now");
    let until = Asn1Time::days_from_now(2).expect("later");
    builder.set_not_before(&from).expect("not before");
    builder.set_not_after(&until).expect("not after");
    builder
}

impl Ca {
    /// A CA named `name`; its certificate is written to `<dir>/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = new_key();
        let mut builder = builder(&format!("cdr_kafka test CA {name}"), &key, 1);
        let subject = builder.x509v3_context(None, None);
        let skid = SubjectKeyIdentifier::new().build(&subject).expect("SKID");
        let issuer = X509NameBuilder::new()
            .and_then(|mut n| {
                n.append_entry_by_nid(Nid::COMMONNAME, &format!("cdr_kafka test CA {name}"))?;
                Ok(n.build())
            })
            .expect("issuer");
        builder.set_issuer_name(&issuer).expect("issuer");
        for extension in [
            BasicConstraints::new().critical().ca().build(),
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build(),
            Ok(skid),
        ] {
            builder
                .append_extension(extension.expect("extension"))
                .expect("extension");
        }
        builder.sign(&key, MessageDigest::sha256()).expect("sign");
        let certificate = builder.build();
        let ca = Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            certificate,
            key,
        };
        write(&ca.file(), &ca.certificate.to_pem().expect("PEM"));
        ca
    }

    /// `<dir>/<name>.pem`.
    pub fn file(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A certificate for 127.0.0.1 (no host name) signed by this CA, written to
    /// `<dir>/<name>.pem` and its key to `<dir>/<name>.key`; returns both paths. A client
    /// key is written as SEC1 (`BEGIN EC PRIVATE KEY`), a server key as PKCS#8.
    pub fn issue(&self, name: &str, usage: Usage) -> (PathBuf, PathBuf) {
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(2);
        let key = new_key();
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let mut builder = builder(&format!("cdr_kafka test {name}"), &key, serial);
        builder
            .set_issuer_name(self.certificate.subject_name())
            .expect("issuer");
        let context = builder.x509v3_context(Some(&self.certificate), None);
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .build(&context)
            .expect("SAN");
        let purpose = match usage {
            Usage::Server => ExtendedKeyUsage::new().server_auth().build(),
            Usage::Client => ExtendedKeyUsage::new().client_auth().build(),
        };
        for extension in [
            BasicConstraints::new().build(),
            KeyUsage::new().critical().digital_signature().build(),
            purpose,
            Ok(san),
        ] {
            builder
                .append_extension(extension.expect("extension"))
                .expect("extension");
        }
        builder
            .sign(&self.key, MessageDigest::sha256())
            .expect("sign");
        let certificate = builder.build();
        let (cert_file, key_file) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        write(&cert_file, &certificate.to_pem().expect("PEM"));
        let key_pem = match usage {
            Usage::Server => key.private_key_to_pem_pkcs8(),
            Usage::Client => key.ec_key().and_then(|ec| ec.private_key_to_pem()),
        };
        write(&key_file, &key_pem.expect("key PEM"));
        (cert_file, key_file)
    }
}

fn write(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// An HTTPS server on 127.0.0.1 answering 200 to every request.
pub struct HttpsServer {
    pub port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpsServer {
    /// Serves with `cert` and `key`; with `client_ca`, requires a client certificate
    /// that CA signed.
    pub fn start(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        let mut acceptor =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("acceptor");
        acceptor
            .set_certificate_chain_file(cert)
            .expect("server certificate");
        acceptor
            .set_private_key_file(key, SslFiletype::PEM)
            .expect("server key");
        if let Some(ca) = client_ca {
            acceptor.set_ca_file(ca).expect("client CA");
            acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        let acceptor = Arc::new(acceptor.build());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let bodies = Arc::<Mutex<Vec<String>>>::default();
        let failures = Arc::<Mutex<Vec<String>>>::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_bodies, thread_failures, thread_stop) = (
            Arc::clone(&bodies),
            Arc::clone(&failures),
            Arc::clone(&stop),
        );
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Acquire) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (acceptor, bodies, failures) = (
                    Arc::clone(&acceptor),
                    Arc::clone(&thread_bodies),
                    Arc::clone(&thread_failures),
                );
                std::thread::spawn(move || serve(&acceptor, stream, &bodies, &failures));
            }
        });
        Self {
            port,
            bodies,
            failures,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/cdr", self.port)
    }

    /// Every body answered 200, in the order they came.
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    /// OpenSSL's reason for each handshake that failed.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection: the handshake, then requests until the client closes it.
fn serve(
    acceptor: &SslAcceptor,
    stream: TcpStream,
    bodies: &Mutex<Vec<String>>,
    failures: &Mutex<Vec<String>>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let tls = match acceptor.accept(stream) {
        Ok(tls) => tls,
        Err(HandshakeError::Failure(mut failed)) => {
            failures.lock().unwrap().push(failed.error().to_string());
            // Read what the client still sends: a close with unread data would be a
            // reset, which can overtake the alert the client is to read.
            let socket = failed.get_mut();
            let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
            let mut rest = [0u8; 4096];
            while matches!(socket.read(&mut rest), Ok(n) if n > 0) {}
            return;
        }
        Err(error) => {
            failures.lock().unwrap().push(error.to_string());
            return;
        }
    };
    let mut reader = BufReader::new(tls);
    loop {
        let mut length = 0usize;
        let mut started = false;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" && started {
                break;
            }
            started = true;
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        bodies
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&body).into_owned());
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        if reader.get_mut().write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
