//! https for the HTTP destination: OpenSSL (the one rdkafka links) over the abortable
//! socket of [`super::abort`], as a ureq connector that follows the TCP one.
//!
//! The server's certificate and host name are always verified: against `ca_file`'s CAs
//! when it is given (instead of the system's, as curl's `--cacert`), else against the
//! system's CAs. `client_cert` and `client_key` give the client certificate a server may
//! require (mutual TLS). The files are read and checked once, when the destination is
//! made (load, reload): a bad file refuses the configuration, it never fails a request.
//!
//! Threads: the connector is built on the load/reload thread and used by the worker
//! thread; OpenSSL's context is shared (reference counted) and safe to use from both. The
//! handshake runs on the worker thread when a connection is made, within `timeout_ms`; an
//! [`super::abort::Abort`] shuts the socket down under it as under a plain request.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{self, HandshakeError, SslConnector, SslMethod, SslStream};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509VerifyResult, X509};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
};
use ureq::Error;

use super::abort::AbortableTransport;

/// The TLS files of an https destination (absolute paths; `None`: not given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificates trusted instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, then the CAs between it and the server's root if any.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`, unencrypted.
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

/// A TLS file that cannot be used: the option that names it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub option: &'static str,
    pub why: String,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.option, self.why)
    }
}

/// OpenSSL's reasons, without its codes and source lines.
fn reasons(stack: &ErrorStack) -> String {
    let reasons: Vec<&str> = stack.errors().iter().filter_map(|e| e.reason()).collect();
    match reasons.is_empty() {
        true => stack.to_string(),
        false => reasons.join(": "),
    }
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|error| TlsError {
        option,
        why: format!("cannot read it: {error}"),
    })
}

/// Every certificate of a PEM file; none is an error.
fn certificates(option: &'static str, path: &Path) -> Result<Vec<X509>, TlsError> {
    let pem = read(option, path)?;
    let bad = |why: String| TlsError { option, why };
    let certificates = X509::stack_from_pem(&pem)
        .map_err(|e| bad(format!("not PEM certificates: {}", reasons(&e))))?;
    if certificates.is_empty() {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PKey<Private>, TlsError> {
    let option = "client_key";
    let pem = read(option, path)?;
    let bad = |why: String| TlsError { option, why };
    if pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(bad(
            "the key is encrypted and Asterisk cannot ask for its passphrase: write it unencrypted (openssl pkey -in KEY -out KEY.plain), readable by Asterisk only".into(),
        ));
    }
    // A passphrase callback that gives none: OpenSSL's default would prompt on a terminal.
    PKey::private_key_from_pem_callback(&pem, |_| Ok(0))
        .map_err(|e| bad(format!("not a PEM private key: {}", reasons(&e))))
}

/// OpenSSL's context of a destination, and what it trusts (for messages).
#[derive(Clone)]
pub struct Tls {
    connector: SslConnector,
    trusted: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls(trusted: {})", self.trusted)
    }
}

/// The TLS of a destination sending to `url` with `files`; `None` for an http:// url,
/// which takes no TLS file.
pub fn connector(url: &str, files: &TlsFiles) -> Result<Option<Tls>, TlsError> {
    let https = url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
    if !https {
        return match files.any() {
            false => Ok(None),
            true => Err(TlsError {
                option: given(files),
                why: "for an https:// url only (this url is not https)".into(),
            }),
        };
    }
    let setup = |why: ErrorStack| TlsError {
        option: "url",
        why: format!("cannot set up TLS: {}", reasons(&why)),
    };
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
    let trusted = match &files.ca_file {
        Some(path) => format!("the CAs of ca_file {}", path.display()),
        None => "the system's CAs (no ca_file)".to_string(),
    };
    match &files.ca_file {
        Some(path) => {
            let mut store = X509StoreBuilder::new().map_err(setup)?;
            for certificate in certificates("ca_file", path)? {
                store.add_cert(certificate).map_err(|e| TlsError {
                    option: "ca_file",
                    why: format!("a certificate cannot be trusted: {}", reasons(&e)),
                })?;
            }
            builder.set_cert_store(store.build());
        }
        None => {
            // Errors ignored: a missing folder only means fewer CAs, as native-tls does.
            let system = openssl_probe::probe();
            if let Some(file) = &system.cert_file {
                let _ = builder.load_verify_locations(Some(file), None);
            }
            for dir in &system.cert_dir {
                let _ = builder.load_verify_locations(None, Some(dir));
            }
        }
    }
    match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let mut chain = certificates("client_cert", cert)?.into_iter();
            let bad_cert = |e: ErrorStack| TlsError {
                option: "client_cert",
                why: reasons(&e),
            };
            if let Some(leaf) = chain.next() {
                builder.set_certificate(&leaf).map_err(bad_cert)?;
            }
            for intermediate in chain {
                builder
                    .add_extra_chain_cert(intermediate)
                    .map_err(bad_cert)?;
            }
            let bad_key = |e: ErrorStack| TlsError {
                option: "client_key",
                why: format!("not the key of client_cert: {}", reasons(&e)),
            };
            let key = private_key(key)?;
            builder.set_private_key(&key).map_err(bad_key)?;
            builder.check_private_key().map_err(bad_key)?;
        }
        (Some(_), None) => return Err(needs("client_cert", "client_key")),
        (None, Some(_)) => return Err(needs("client_key", "client_cert")),
        (None, None) => {}
    }
    Ok(Some(Tls {
        connector: builder.build(),
        trusted,
    }))
}

fn needs(option: &'static str, other: &str) -> TlsError {
    TlsError {
        option,
        why: format!("needs {other} as well"),
    }
}

/// The first TLS option `files` gives.
fn given(files: &TlsFiles) -> &'static str {
    match (&files.ca_file, &files.client_cert) {
        (Some(_), _) => "ca_file",
        (None, Some(_)) => "client_cert",
        (None, None) => "client_key",
    }
}

/// Makes the TLS connection of an https request over the TCP one before it.
#[derive(Debug)]
pub struct TlsConnector(pub Option<Tls>);

impl Connector<AbortableTransport> for TlsConnector {
    type Out = Either<AbortableTransport, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<AbortableTransport>,
    ) -> Result<Option<Self::Out>, Error> {
        let Some(tcp) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() {
            return Ok(Some(Either::A(tcp)));
        }
        // `connector` made one for every https url: this one is not the destination's.
        let tls = self.0.as_ref().ok_or_else(|| {
            Error::Io(io::Error::other(
                "https to a url the destination does not send to",
            ))
        })?;
        let host = details
            .uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let socket = tcp.into_socket();
        let stream = handshake(tls, host, Socket(Arc::clone(&socket)), &details.timeout)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            socket,
            stream,
            buffers,
            read_timeout: None,
            write_timeout: None,
        })))
    }
}

/// The TLS handshake with `host` within `timeout`; the reason in its error.
fn handshake(
    tls: &Tls,
    host: &str,
    socket: Socket,
    timeout: &NextTimeout,
) -> Result<SslStream<Socket>, Error> {
    let limit = timeout.not_zero().map(|t| *t);
    socket.0.set_read_timeout(limit)?;
    socket.0.set_write_timeout(limit)?;
    let started = Instant::now();
    let configuration = tls
        .connector
        .configure()
        .map_err(|e| tls_error(format!("cannot set up TLS: {}", reasons(&e))))?;
    let failed = match configuration.connect(host, socket) {
        Ok(stream) => return Ok(stream),
        Err(HandshakeError::SetupFailure(e)) => {
            return Err(tls_error(format!("cannot set up TLS: {}", reasons(&e))))
        }
        Err(HandshakeError::Failure(failed) | HandshakeError::WouldBlock(failed)) => failed,
    };
    let verified = failed.ssl().verify_result();
    if verified != X509VerifyResult::OK {
        return Err(tls_error(format!(
            "TLS: the server's certificate failed verification: {} (trusted: {})",
            verified.error_string(),
            tls.trusted
        )));
    }
    let error = failed.error();
    let timed_out = error.io_error().is_some_and(|e| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    });
    if timed_out || limit.is_some_and(|limit| started.elapsed() >= limit) {
        return Err(Error::Timeout(timeout.reason));
    }
    Err(tls_error(format!(
        "TLS handshake failed: {}",
        describe(error)
    )))
}

fn describe(error: &ssl::Error) -> String {
    match (error.ssl_error(), error.io_error()) {
        (Some(stack), _) => reasons(stack),
        (None, Some(io)) => io.to_string(),
        (None, None) if error.code() == ssl::ErrorCode::SYSCALL => {
            "the server closed the connection".into()
        }
        (None, None) => error.to_string(),
    }
}

/// Shown as is in the status (ureq's `Io` would prefix `io:`).
fn tls_error(text: String) -> Error {
    Error::Other(text.into())
}

/// The socket as OpenSSL reads and writes it; the transport keeps the same socket for
/// its timeouts, and the abort for shutting it down.
#[derive(Debug)]
pub struct Socket(Arc<TcpStream>);

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An https connection: ureq's buffers over an OpenSSL stream.
#[derive(Debug)]
pub struct TlsTransport {
    socket: Arc<TcpStream>,
    stream: SslStream<Socket>,
    buffers: LazyBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

/// An error of the TLS stream as ureq's: a timeout, or what TLS says went wrong.
fn stream_error(error: io::Error, timeout: &NextTimeout) -> Error {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(timeout.reason),
        _ => match error.get_ref().and_then(|e| e.downcast_ref::<ssl::Error>()) {
            Some(ssl) => {
                let reason = describe(ssl);
                // TLS 1.3 sends this alert after the handshake, on the first read.
                let hint = match reason.contains("certificate required") {
                    true => " (the server wants a client certificate: client_cert, client_key)",
                    false => "",
                };
                tls_error(format!("TLS: {reason}{hint}"))
            }
            None => Error::Io(error),
        },
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let wanted = timeout.not_zero().map(|t| *t);
        if wanted != self.write_timeout {
            self.socket.set_write_timeout(wanted)?;
            self.write_timeout = wanted;
        }
        let output = &self.buffers.output()[..amount];
        self.stream
            .write_all(output)
            .map_err(|error| stream_error(error, &timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let wanted = timeout.not_zero().map(|t| *t);
        if wanted != self.read_timeout {
            self.socket.set_read_timeout(wanted)?;
            self.read_timeout = wanted;
        }
        let input = self.buffers.input_append_buf();
        let amount = self
            .stream
            .read(input)
            .map_err(|error| stream_error(error, &timeout))?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // Reusable when nothing waits on the socket: anything there (a close_notify, a
        // session ticket) makes ureq open a new connection, never a wrong reading.
        if self.socket.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0];
        let open = matches!(
            self.socket.peek(&mut byte),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock
        );
        open && self.socket.set_nonblocking(false).is_ok()
    }

    fn is_tls(&self) -> bool {
        true
    }
}
