//! Requests the HTTP worker can cut short: ureq's connector, transport and resolver
//! with every socket registered with an [`Abort`], so that stopping the destination
//! ends a request under way at once rather than after `timeout_ms` (up to an hour).
//!
//! Threads: the worker thread resolves, connects, sends and reads; the feeder thread,
//! dropping the destination, calls [`Abort::fire`], which shuts the sockets down: a
//! blocked read or write returns, a connect or a name lookup stops being waited for
//! (polled every `POLL`). The registry holds weak references: a connection ureq closes
//! is gone from it. A name lookup (getaddrinfo) cannot be interrupted: it runs on a
//! thread of its own, which ends with the lookup, also when no one waits any more.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};
use ureq::Error;

/// The addresses ureq keeps of a lookup (the size of `ResolvedSocketAddrs`).
const MAX_ADDRS: usize = 16;
/// How often a connect or a name lookup looks whether it was aborted.
const POLL: Duration = Duration::from_millis(20);

/// The stop signal of one agent's requests.
#[derive(Debug, Default)]
pub struct Abort {
    fired: AtomicBool,
    sockets: Mutex<Vec<Weak<TcpStream>>>,
}

impl Abort {
    /// Ends every request under way and refuses any later one.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        let sockets = std::mem::take(&mut *self.lock());
        for socket in sockets.iter().filter_map(Weak::upgrade) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<TcpStream>>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `socket` to be shut down by `fire`; fails once fired.
    fn register(&self, socket: &Arc<TcpStream>) -> io::Result<()> {
        let mut sockets = self.lock();
        // Checked under the lock `fire` takes after setting the flag: never missed.
        if self.fired() {
            return Err(aborted());
        }
        sockets.retain(|s| s.strong_count() > 0);
        sockets.push(Arc::downgrade(socket));
        Ok(())
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::Interrupted,
        "stopped: the destination is stopping",
    )
}

/// The instant `timeout` ends, `None` when it never does.
fn deadline(timeout: &NextTimeout) -> Option<Instant> {
    timeout.not_zero().map(|after| Instant::now() + *after)
}

/// Opens plain TCP connections registered with the abort (no proxy: the agent has none).
#[derive(Debug)]
pub struct AbortableTcp(pub Arc<Abort>);

impl Connector<()> for AbortableTcp {
    type Out = AbortableTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, Error> {
        let deadline = deadline(&details.timeout);
        let count = details.addrs.len();
        let mut last = None;
        for (index, addr) in details.addrs.iter().enumerate() {
            // Each address gets an equal share of the time left, so one that hangs
            // leaves time for the next.
            let share = deadline.map(|deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                Instant::now() + left / (count - index) as u32
            });
            match connect(*addr, share, &self.0) {
                Ok(stream) => {
                    if details.config.no_delay() {
                        stream.set_nodelay(true)?;
                    }
                    let buffers = LazyBuffers::new(
                        details.config.input_buffer_size(),
                        details.config.output_buffer_size(),
                    );
                    return Ok(Some(AbortableTransport {
                        stream,
                        buffers,
                        read_timeout: None,
                        write_timeout: None,
                    }));
                }
                Err(error) if error.kind() == io::ErrorKind::TimedOut && index + 1 == count => {
                    return Err(Error::Timeout(details.timeout.reason))
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                    return Err(Error::Io(error))
                }
                Err(error) => last = Some(error),
            }
        }
        Err(Error::Io(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no address to connect to")
        })))
    }
}

/// A non-blocking connect to `addr`, registered before it starts so that `fire` wakes
/// it, then a blocking socket for ureq.
fn connect(
    addr: SocketAddr,
    deadline: Option<Instant>,
    abort: &Abort,
) -> io::Result<Arc<TcpStream>> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) takes no pointers; a failure is checked below.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the socket just opened; nothing else owns or closes it.
    let stream = Arc::new(unsafe { TcpStream::from_raw_fd(fd) });
    abort.register(&stream)?;
    let started = start_connect(&stream, addr)?;
    if !started {
        wait_connected(&stream, deadline, abort)?;
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// connect(2) on the non-blocking socket: true when already connected, false when in
/// progress.
fn start_connect(stream: &TcpStream, addr: SocketAddr) -> io::Result<bool> {
    let fd = stream.as_raw_fd();
    let result = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            let len = std::mem::size_of_val(&sin) as libc::socklen_t;
            // SAFETY: `sin` is a sockaddr_in of `len` bytes that outlives the call.
            unsafe { libc::connect(fd, (&sin as *const libc::sockaddr_in).cast(), len) }
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_in6 is plain data; all zeroes is a valid value.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            let len = std::mem::size_of_val(&sin6) as libc::socklen_t;
            // SAFETY: `sin6` is a sockaddr_in6 of `len` bytes that outlives the call.
            unsafe { libc::connect(fd, (&sin6 as *const libc::sockaddr_in6).cast(), len) }
        }
    };
    if result == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINPROGRESS) | Some(libc::EINTR) => Ok(false),
        _ => Err(error),
    }
}

/// Waits until the connect in progress ends, the deadline passes or the abort fires.
fn wait_connected(stream: &TcpStream, deadline: Option<Instant>, abort: &Abort) -> io::Result<()> {
    loop {
        if abort.fired() {
            return Err(aborted());
        }
        let mut slice = POLL;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            slice = slice.min(left);
        }
        let mut poll = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        let ready = unsafe { libc::poll(&mut poll, 1, slice.as_millis().max(1) as libc::c_int) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINTR) {
                return Err(error);
            }
        } else if ready > 0 {
            if abort.fired() {
                return Err(aborted());
            }
            return match stream.take_error()? {
                Some(error) => Err(error),
                None => Ok(()),
            };
        }
    }
}

/// ureq's TCP transport over a socket the abort can shut down.
#[derive(Debug)]
pub struct AbortableTransport {
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl AbortableTransport {
    /// The socket, for TLS over it (still registered with the abort).
    pub fn into_socket(self) -> Arc<TcpStream> {
        self.stream
    }
}

/// A timed-out socket call as ureq's error.
fn io_error(error: io::Error, timeout: &NextTimeout) -> Error {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(timeout.reason),
        _ => Error::Io(error),
    }
}

impl Transport for AbortableTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let wanted = timeout.not_zero().map(|t| *t);
        if wanted != self.write_timeout {
            self.stream.set_write_timeout(wanted)?;
            self.write_timeout = wanted;
        }
        let output = &self.buffers.output()[..amount];
        (&*self.stream)
            .write_all(output)
            .map_err(|error| io_error(error, &timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let wanted = timeout.not_zero().map(|t| *t);
        if wanted != self.read_timeout {
            self.stream.set_read_timeout(wanted)?;
            self.read_timeout = wanted;
        }
        let input = self.buffers.input_append_buf();
        let amount = (&*self.stream)
            .read(input)
            .map_err(|error| io_error(error, &timeout))?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // Open when nothing waits to be read and the peer has not closed (as ureq's own).
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0];
        let open = matches!(
            (&*self.stream).read(&mut byte),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock
        );
        open && self.stream.set_nonblocking(false).is_ok()
    }
}

/// Name lookups the abort stops waiting for; an address as the URL's host needs none.
#[derive(Debug)]
pub struct AbortableResolver(pub Arc<Abort>);

impl Resolver for AbortableResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let scheme = uri.scheme().ok_or(Error::HostNotFound)?;
        let authority = uri.authority().ok_or(Error::HostNotFound)?;
        let host_port =
            DefaultResolver::host_and_port(scheme, authority).ok_or(Error::HostNotFound)?;
        let found: Vec<SocketAddr> = match host_port.parse::<SocketAddr>() {
            Ok(addr) => vec![addr],
            Err(_) => self.look_up(host_port, &timeout)?,
        };
        let mut addrs = self.empty();
        for addr in config
            .ip_family()
            .keep_wanted(found.into_iter())
            .take(MAX_ADDRS)
        {
            addrs.push(addr);
        }
        if addrs.is_empty() {
            return Err(Error::HostNotFound);
        }
        Ok(addrs)
    }
}

impl AbortableResolver {
    fn look_up(&self, host_port: String, timeout: &NextTimeout) -> Result<Vec<SocketAddr>, Error> {
        let deadline = deadline(timeout);
        let (sender, answer) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("cdr_kafka-dns".into())
            .spawn(move || {
                let _ = sender.send(host_port.to_socket_addrs().map(Vec::from_iter));
            })?;
        loop {
            if self.0.fired() {
                return Err(Error::Io(aborted()));
            }
            let mut slice = POLL;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(timeout.reason));
                }
                slice = slice.min(left);
            }
            match answer.recv_timeout(slice) {
                Ok(found) => return Ok(found?),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Error::HostNotFound),
            }
        }
    }
}
