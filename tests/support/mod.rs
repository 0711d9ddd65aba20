//! Real parts for the end-to-end tests and the demo: a tansu broker on 127.0.0.1 and
//! Asterisk 22 running in the Debian unstable root `make sandbox` builds, each started
//! here and stopped by a guard's `Drop`. Either can also be killed and brought back on the
//! same address, the root and the module's spool kept, and Asterisk can flood the module
//! with an exact number of CDRs: what the spool's no-loss tests need.
//!
//! Paths come from the environment the Makefile sets: CDR_KAFKA_ROOT (the root),
//! CDR_KAFKA_MODULE (the built cdr_kafka .so), CDR_KAFKA_TANSU (the tansu binary).
#![allow(dead_code)]

pub mod deb;
pub mod https;
pub mod schema;
pub mod tls;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(path) => PathBuf::from(path),
        None => panic!("{name} is not set: run the end-to-end tests with `make test`"),
    }
}

/// Held while a test runs an Asterisk: every Asterisk of a test binary shares the one root.
pub fn one_asterisk() -> MutexGuard<'static, ()> {
    static ONE_ASTERISK: Mutex<()> = Mutex::new(());
    ONE_ASTERISK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A folder of this test run, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "cdr_kafka-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch folder");
        Self(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(Duration::from_millis(100));
    }
}

/// Where tansu keeps its records. Memory is fast (20,000 records read back in 0.1 s) and gone
/// when the broker stops. The libsql file in the broker's folder survives a kill, but tansu
/// 0.6 reads it back in time growing with the square of the records: 1,000 CDRs in 0.3 s,
/// 4,000 in 3.5 s, 8,000 in 16 s, and 32,000 did not come back in 10 minutes.
const MEMORY_STORAGE: &str = "memory://tansu/";
const FILE_STORAGE: &str = "sqlite://tansu.db";

/// A tansu broker on 127.0.0.1, killed on drop.
pub struct Tansu {
    child: Child,
    /// The port clients are given (the relay's, when there is one).
    pub port: u16,
    /// The port tansu listens on: `port`, or the one behind the relay.
    listen_port: u16,
    binary: PathBuf,
    storage: &'static str,
    relay: Option<Relay>,
    dir: ScratchDir,
}

impl Tansu {
    /// A broker with in-memory storage.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts on a given port: a broker brought back after an outage keeps its address. With
    /// in-memory storage it comes back empty (topics must be created again); see `restart`.
    pub fn start_on(port: u16) -> Self {
        Self::launch(port, MEMORY_STORAGE, false)
    }

    /// A broker whose records and topics survive `kill` + `restart`, like a real cluster's;
    /// keep it to a few thousand records (see FILE_STORAGE).
    pub fn start_durable() -> Self {
        Self::launch(free_port(), FILE_STORAGE, false)
    }

    /// An in-memory broker reached through a relay on `port`, so that `cut_off` can make it
    /// unreachable while it keeps its records: an outage at any volume.
    pub fn start_behind_relay() -> Self {
        Self::launch(free_port(), MEMORY_STORAGE, true)
    }

    fn launch(port: u16, storage: &'static str, relayed: bool) -> Self {
        let binary = env_path("CDR_KAFKA_TANSU");
        let dir = ScratchDir::new("tansu");
        let listen_port = if relayed { free_port() } else { port };
        let child = spawn_tansu(&binary, &dir.0, listen_port, port, storage);
        let mut tansu = Self {
            child,
            port,
            listen_port,
            binary,
            storage,
            relay: None,
            dir,
        };
        tansu.wait_until_listening();
        tansu.relay = relayed.then(|| Relay::open(port, listen_port));
        tansu
    }

    fn wait_until_listening(&mut self) {
        let port = self.listen_port;
        let log = self.dir.0.join("tansu.log");
        let child = &mut self.child;
        wait_for("tansu to listen", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                let log = fs::read_to_string(&log).unwrap_or_default();
                panic!("tansu exited ({status}) before listening on {port}:\n{log}");
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic of 3 partitions (tansu's default), also while the broker is cut off.
    pub fn create_topic(&self, topic: &str) {
        let status = Command::new(&self.binary)
            .args(["topic", "create", topic, "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.listen_port))
            .stdout(Stdio::null())
            .status()
            .expect("run tansu topic create");
        assert!(status.success(), "tansu topic create {topic} failed");
    }

    /// Kills the broker (SIGKILL) as a crash would: connections drop and the port refuses new
    /// ones until `restart`.
    pub fn kill(&mut self) {
        if let Some(relay) = &mut self.relay {
            relay.close();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port and storage (killing it first if it runs).
    /// tansu binds with SO_REUSEADDR, so the port is free at once even while clients retry.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_tansu(
            &self.binary,
            &self.dir.0,
            self.listen_port,
            self.port,
            self.storage,
        );
        self.wait_until_listening();
        if let Some(relay) = &mut self.relay {
            relay.reopen();
        }
    }

    /// Makes the broker unreachable, as if it had died: every connection to `port` is closed
    /// and new ones are refused. tansu runs on behind the relay with its records.
    pub fn cut_off(&mut self) {
        self.relay_mut().close();
    }

    /// Ends `cut_off`: `port` accepts connections again.
    pub fn reconnect(&mut self) {
        self.relay_mut().reopen();
    }

    fn relay_mut(&mut self) -> &mut Relay {
        self.relay
            .as_mut()
            .expect("only a broker from Tansu::start_behind_relay can be cut off")
    }

    pub fn stop(mut self) {
        self.kill();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `tansu broker` in `dir` (a file storage lives there), appending to dir/tansu.log.
fn spawn_tansu(binary: &Path, dir: &Path, port: u16, advertised: u16, storage: &str) -> Child {
    let log = fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .expect("tansu log");
    dies_with_the_test(Command::new(binary).current_dir(dir))
        .arg("broker")
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised}"))
        .args(["--storage-engine", storage])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

/// Makes a child die with the thread that starts it (PR_SET_PDEATHSIG): a test run killed
/// before its guards drop leaves no broker or Asterisk running, holding the root. Asterisk's
/// `-U root` changes no id, so the setting survives it.
fn dies_with_the_test(command: &mut Command) -> &mut Command {
    use std::os::raw::{c_int, c_ulong};
    use std::os::unix::process::CommandExt;
    extern "C" {
        fn prctl(option: c_int, ...) -> c_int;
    }
    const PR_SET_PDEATHSIG: c_int = 1;
    const SIGKILL: c_ulong = 9;
    // SAFETY: runs in the forked child before exec; prctl only sets an attribute of that
    // process and is async-signal-safe, and nothing here allocates or takes a lock.
    unsafe {
        command.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A TCP relay from `port` to `upstream` on 127.0.0.1 that the test closes and opens: what
/// librdkafka sees of a broker that dies (connections closed, then refused) and comes back.
struct Relay {
    port: u16,
    upstream: u16,
    /// Held by the acceptor and by both pumps of every connection since the last `reopen`;
    /// setting it ends them all.
    closed: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    fn open(port: u16, upstream: u16) -> Self {
        let mut relay = Self {
            port,
            upstream,
            closed: Arc::new(AtomicBool::new(true)),
            acceptor: None,
        };
        relay.reopen();
        relay
    }

    fn reopen(&mut self) {
        if self.acceptor.is_some() {
            return;
        }
        // std sets SO_REUSEADDR: the port is free again although closed connections linger.
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("relay cannot listen on {}: {e}", self.port));
        // Non-blocking, so the acceptor sees `closed` without a connection arriving.
        listener.set_nonblocking(true).expect("non-blocking relay");
        self.closed = Arc::new(AtomicBool::new(false));
        let closed = Arc::clone(&self.closed);
        let upstream = self.upstream;
        self.acceptor = Some(std::thread::spawn(move || {
            accept_relayed(listener, upstream, closed)
        }));
    }

    /// Stops listening and ends every connection; returns once they are gone (at most 5 s).
    fn close(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.closed) > 1 && Instant::now() < deadline {
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.close();
    }
}

fn accept_relayed(listener: TcpListener, upstream: u16, closed: Arc<AtomicBool>) {
    while !closed.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => relay_connection(client, upstream, &closed),
            Err(_) => sleep(Duration::from_millis(5)),
        }
    }
}

fn relay_connection(client: TcpStream, upstream: u16, closed: &Arc<AtomicBool>) {
    let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(client_reader), Ok(broker_reader)) = (client.try_clone(), broker.try_clone()) else {
        return;
    };
    for (from, to) in [(client_reader, broker), (broker_reader, client)] {
        let closed = Arc::clone(closed);
        std::thread::spawn(move || pump(from, to, closed));
    }
}

/// Copies `from` to `to` until either side or the relay closes, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, closed: Arc<AtomicBool>) {
    // Accepted sockets do not inherit the listener's non-blocking mode; the timeout lets
    // the pump see `closed` while the connection is idle.
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buffer = vec![0; 64 * 1024];
    while !closed.load(Ordering::SeqCst) {
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Message {
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: String,
    pub partition: i64,
    pub offset: i64,
}

impl Message {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|e| panic!("payload is not JSON ({e}): {}", self.payload))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Where the module keeps records not yet delivered, relative to the root.
pub const SPOOL_DIR: &str = "var/spool/asterisk/cdr_kafka";

/// The Debian unstable root with Asterisk 22 that `make sandbox` built.
pub struct Root {
    pub path: PathBuf,
}

impl Root {
    pub fn from_env() -> Self {
        let path = env_path("CDR_KAFKA_ROOT");
        assert!(
            path.join("usr/sbin/asterisk").is_file(),
            "{} holds no Asterisk: run `make sandbox`",
            path.display()
        );
        Self { path }
    }

    /// Runs a command inside the root.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("chroot");
        command.arg(&self.path).arg(program);
        command
    }

    /// Reads a topic from the beginning with the root's kcat until `count` messages came
    /// or `timeout` passed; returns what arrived.
    pub fn consume(
        &self,
        brokers: &str,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        let mut messages = Vec::new();
        while Instant::now() < deadline {
            messages = self.read_topic(brokers, topic);
            if messages.len() >= count {
                break;
            }
            sleep(Duration::from_millis(300));
        }
        messages
    }

    /// Everything on the topic now: kcat exits once it reached the end of every partition
    /// (checked with 50,000 records over 3 partitions, tansu's default).
    pub fn read_topic(&self, brokers: &str, topic: &str) -> Vec<Message> {
        let output = self
            .command("kcat")
            .args([
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
            ])
            .args(["-m", "10"])
            // The end of a partition is seen when a fetch comes back empty, after at most this
            // wait (librdkafka's default 500 ms made reading 20,000 records take 1.1 s, not 0.1 s).
            .args(["-X", "fetch.wait.max.ms=10"])
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

    /// How many times each value of `header` occurs on the topic: "none lost, none twice" is
    /// every expected value counted once. Every message must carry the header.
    pub fn count_by(&self, brokers: &str, topic: &str, header: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for message in self.read_topic(brokers, topic) {
            let value = message.header(header).unwrap_or_else(|| {
                panic!(
                    "no header {header} at partition {} offset {}: {:?}",
                    message.partition, message.offset, message.headers
                )
            });
            *counts.entry(value.to_string()).or_default() += 1;
        }
        counts
    }

    /// Asterisk's astrundir (asterisk.ctl, asterisk.pid). Not `var/run/asterisk`: var/run is
    /// a link to the absolute /run, which from outside the chroot is this machine's own.
    pub fn run_dir(&self) -> PathBuf {
        self.path.join("run/asterisk")
    }

    /// The module's spool folder in the root: `Asterisk::start` empties it, `restart` keeps it.
    pub fn spool(&self) -> PathBuf {
        self.path.join(SPOOL_DIR)
    }
}

fn parse_kcat_line(line: &str) -> Message {
    let envelope: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("kcat line is not JSON ({e}): {line}"));
    let headers = envelope["headers"]
        .as_array()
        .map(|flat| {
            flat.chunks(2)
                .map(|pair| {
                    (
                        pair[0].as_str().unwrap_or_default().to_string(),
                        pair.get(1)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        key: envelope["key"].as_str().map(str::to_string),
        headers,
        payload: envelope["payload"].as_str().unwrap_or_default().to_string(),
        partition: envelope["partition"].as_i64().unwrap_or(-1),
        offset: envelope["offset"].as_i64().unwrap_or(-1),
    }
}

/// What a test puts in /etc/asterisk besides cdr_kafka.conf.
pub const ASTERISK_CONF: &str = "[directories]
astetcdir => /etc/asterisk
astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules
astvarlibdir => /var/lib/asterisk
astdbdir => /var/lib/asterisk
astkeydir => /var/lib/asterisk
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => /var/spool/asterisk
astrundir => /var/run/asterisk
astlogdir => /var/log/asterisk
astsbindir => /usr/sbin
[options]
systemname = pbx-test
entityid = 00:11:22:33:44:55
";

pub const MODULES_CONF: &str = "[modules]
autoload = no
load => pbx_config.so
load => app_dial.so
load => func_cdr.so
load => func_callerid.so
load => func_channel.so
load => bridge_simple.so
load => res_clioriginate.so
load => app_while.so
load => app_forkcdr.so
load => app_celgenuserevent.so
";

/// CEL on for every event type, and APP_START/APP_END for the applications the calls
/// use (what the module publishes is then `[cel]`'s choice).
pub const CEL_CONF: &str = "[general]
enable = yes
apps = dial,wait,busy
events = ALL
";

pub const CDR_CONF: &str = "[general]
enable = yes
unanswered = yes
congestion = yes
";

pub const LOGGER_CONF: &str = "[general]
[logfiles]
messages.log => notice,warning,error,verbose
";

/// The calls of the tests: the caller side runs in [cdrk], the callee side in [cdrk-callee].
/// LATIN1_NAME is written as the Latin-1 bytes of "José", as a trunk might send them.
/// `cdrs<N>` posts exactly N CDRs at hangup (see `Asterisk::flood`): the originated half
/// (;1) posts one, this half one plus one per ForkCDR, or none once CDR_PROP(disable) is set.
/// ForkCDR(e) ends the CDR it forks from, which keeps each fork cheap.
/// `call<ms>` is a plain answered call (see `Manager::call`): it answers, lasts <ms>
/// milliseconds and hangs up, each half of the Local channel posting its one CDR.
pub const EXTENSIONS_CONF: &str = r#"[general]
[cdrk]
exten => answered,1,Set(CDR(myvar)=hello)
 same => n,Set(CDR(EntityID)=spoofed)
 same => n,Set(CALLERID(name)=Alice "Al" O'Hara)
 same => n,Set(CALLERID(num)=100)
 same => n,Set(CHANNEL(accountcode)=acct-1)
 same => n,Dial(Local/callee@cdrk-callee,5)
 same => n,Hangup()
exten => busy,1,Set(CALLERID(num)=101)
 same => n,Set(CALLERID(name)=LATIN1_NAME)
 same => n,Dial(Local/busy@cdrk-callee,5)
 same => n,Hangup()
exten => noanswer,1,Set(CALLERID(num)=102)
 same => n,Dial(Local/noanswer@cdrk-callee,1)
 same => n,Hangup()
exten => flood,1,Answer()
 same => n,Hangup()
exten => userevent,1,Answer()
 same => n,CELGenUserEvent(billing_mark,campaign 42)
 same => n,Hangup()
exten => _call.,1,Answer()
 same => n,Wait($[${EXTEN:4} / 1000])
 same => n,Hangup()
exten => _cdrs.,1,Set(forks=$[${EXTEN:4} - 2])
 same => n,GotoIf($[${forks} < 0]?one)
 same => n,Set(i=0)
 same => n,While($[${i} < ${forks}])
 same => n,ForkCDR(e)
 same => n,Set(i=$[${i} + 1])
 same => n,EndWhile()
 same => n,Hangup()
 same => n(one),Set(CDR_PROP(disable)=1)
 same => n,Hangup()
[cdrk-callee]
exten => callee,1,Answer()
 same => n,Wait(1)
 same => n,Hangup()
exten => busy,1,Busy(1)
exten => noanswer,1,Ringing()
 same => n,Wait(10)
"#;

/// CDRs one flood channel posts at most. ForkCDR grows the channel's CDR chain and Asterisk
/// walks the chain on every dialplan step: 10,000 CDRs on one channel took 3.3 s (13.6 s
/// without ForkCDR's `e`), 20 channels of 500 took 0.9 s, and 250 to 1,000 were all as fast.
const FLOOD_CHANNEL_CDRS: usize = 500;

/// How long `core stop now` may take: the module's flush bound (flush_timeout_ms, 5 s by
/// default) and the rest of Asterisk's shutdown.
const STOP_BOUND: Duration = Duration::from_secs(15);

/// Asterisk 22 running inside the root, stopped on drop.
pub struct Asterisk<'r> {
    pub root: &'r Root,
    child: Child,
    proc_mounted: bool,
}

impl<'r> Asterisk<'r> {
    /// Installs the module and `cdr_kafka_conf`, then starts Asterisk in the time zone
    /// `tz` (Asterisk reads /etc/localtime, not TZ) and waits until it has fully booted.
    /// The module is not loaded yet.
    pub fn start(root: &'r Root, cdr_kafka_conf: &str, tz: &str) -> Self {
        Self::start_with_modules(root, cdr_kafka_conf, tz, "")
    }

    /// Like `start`, with more `load =>` lines in modules.conf (loaded at boot, on
    /// Asterisk's main thread). A fresh start: the log and the module's spool are emptied.
    pub fn start_with_modules(
        root: &'r Root,
        cdr_kafka_conf: &str,
        tz: &str,
        more_modules: &str,
    ) -> Self {
        let etc = root.path.join("etc/asterisk");
        let modules_conf = format!("{MODULES_CONF}{more_modules}");
        for (name, text) in [
            ("asterisk.conf", ASTERISK_CONF),
            ("modules.conf", modules_conf.as_str()),
            ("cdr.conf", CDR_CONF),
            ("logger.conf", LOGGER_CONF),
            ("cel.conf", CEL_CONF),
            ("cdr_kafka.conf", cdr_kafka_conf),
        ] {
            fs::write(etc.join(name), text).expect("write Asterisk config");
        }
        let extensions = EXTENSIONS_CONF.replace("LATIN1_NAME", "\u{1}");
        let extensions: Vec<u8> = extensions
            .bytes()
            .flat_map(|b| if b == 1 { b"Jos\xe9".to_vec() } else { vec![b] })
            .collect();
        fs::write(etc.join("extensions.conf"), extensions).expect("write extensions.conf");
        let _ = fs::remove_file(etc.join("kafka.conf"));
        install_module(root);
        let localtime = root.path.join("etc/localtime");
        let _ = fs::remove_file(&localtime);
        std::os::unix::fs::symlink(format!("/usr/share/zoneinfo/{tz}"), &localtime)
            .expect("set the root's time zone");
        let _ = fs::remove_file(root.path.join("var/log/asterisk/messages.log"));
        // A spool an earlier test left would be replayed into this one.
        let _ = fs::remove_dir_all(root.spool());
        Self::boot(root)
    }

    /// Starts Asterisk on the root as it is (no file written) and waits until it has fully
    /// booted.
    pub fn boot(root: &'r Root) -> Self {
        let proc_mounted = mount_proc(root);
        let child = spawn_asterisk(root);
        let mut asterisk = Self {
            root,
            child,
            proc_mounted,
        };
        asterisk.wait_until_booted();
        asterisk
    }

    fn wait_until_booted(&mut self) {
        wait_for("Asterisk to boot", Duration::from_secs(60), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Asterisk exited ({status}) while booting:\n{}", self.log());
            }
            let out = self.try_rx("core waitfullybooted")?;
            out.contains("fully booted").then_some(())
        });
    }

    /// Whether the Asterisk process is still there.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash or the OOM killer would: no module is unloaded, nothing flushed.
    /// asterisk.ctl and asterisk.pid stay in `Root::run_dir` (the next Asterisk finds the
    /// socket dead and replaces both); /proc stays mounted for `restart`.
    pub fn kill9(&mut self) {
        // chroot execs Asterisk, so the child is Asterisk itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `core stop now`: Asterisk hangs up the calls, posts their CDRs and exits without
    /// unloading modules; the module's exit handler delivers for up to flush_timeout_ms.
    /// Returns how long it took; kills it and panics past `STOP_BOUND`.
    pub fn stop_gracefully(&mut self) -> Duration {
        let started = Instant::now();
        let _ = self.try_rx("core stop now");
        if !self.wait_for_exit(STOP_BOUND) {
            self.kill9();
            panic!("Asterisk still ran {STOP_BOUND:?} after `core stop now`");
        }
        started.elapsed()
    }

    /// SIGTERM, as `systemctl stop` sends: Asterisk's fast shutdown, which neither waits
    /// for calls nor unloads modules. Returns how long it took to exit; kills it and
    /// panics past `STOP_BOUND`.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {}", self.pid());
        if !self.wait_for_exit(STOP_BOUND) {
            self.kill9();
            panic!("Asterisk still ran {STOP_BOUND:?} after SIGTERM");
        }
        started.elapsed()
    }

    /// Starts Asterisk again on the same root as it is: the config files, the installed
    /// module, its spool and messages.log (Asterisk appends) are kept. A running Asterisk is
    /// stopped gracefully first, so `restart` alone is an operator's restart.
    pub fn restart(&mut self) {
        if self.running() {
            self.stop_gracefully();
        }
        self.child = spawn_asterisk(self.root);
        self.wait_until_booted();
    }

    fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() > deadline {
                return false;
            }
            sleep(Duration::from_millis(50));
        }
        true
    }

    fn try_rx(&self, command: &str) -> Option<String> {
        let output = self
            .root
            .command("/usr/sbin/asterisk")
            .args(["-r", "-x", command])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `module load cdr_kafka.so`, failing the test (with Asterisk's log) unless it loaded.
    pub fn load_module(&self) {
        let out = self.rx("module load cdr_kafka.so");
        assert!(
            out.contains("Loaded cdr_kafka.so"),
            "module load said: {out}\n{}",
            self.log()
        );
    }

    /// Runs a CLI command (`asterisk -rx`) and returns what it printed.
    pub fn rx(&self, command: &str) -> String {
        self.try_rx(command)
            .unwrap_or_else(|| panic!("asterisk -rx '{command}' failed"))
    }

    /// Asterisk's log (messages.log) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.path.join("var/log/asterisk/messages.log")).unwrap_or_default()
    }

    /// Asterisk's log once it says `words`. Asterisk's logger thread writes messages.log
    /// after the CLI command that caused a line has returned, so a look right after the
    /// command can come too early; fails the test with the log after 20 s.
    pub fn log_saying(&self, words: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.contains(words) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log never said '{words}':\n{log}"
            );
            sleep(Duration::from_millis(50));
        }
    }

    pub fn write_config(&self, name: &str, text: &str) {
        fs::write(self.root.path.join("etc/asterisk").join(name), text).expect("write config");
    }

    /// Places a call: a Local channel into `exten@cdrk`, its other half running Wait(1).
    pub fn originate(&self, exten: &str) {
        self.rx(&format!(
            "channel originate Local/{exten}@cdrk application Wait 1"
        ));
    }

    /// Appends `text` (contexts of a test's own) to extensions.conf and reloads the dialplan.
    pub fn add_dialplan(&self, text: &str) {
        let path = self.root.path.join("etc/asterisk/extensions.conf");
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
        self.rx("dialplan reload");
    }

    /// Waits until at least `count` channels are up; returns how many there are then.
    pub fn wait_for_channels(&self, count: usize, timeout: Duration) -> usize {
        wait_for(&format!("{count} channels to be up"), timeout, || {
            let up = self.active_channels();
            (up >= count).then_some(up)
        })
    }

    /// Makes Asterisk post exactly `count` CDRs as fast as it reliably can, and returns once
    /// every channel of the flood has hung up; the backends get the CDRs a moment later
    /// (`wait_for_counter`). One `channel originate` into `cdrs<N>@cdrk` per 500 CDRs, the
    /// channels running side by side: about 9,000 CDRs a second on 2 shared cores (1,000 in
    /// 0.14 s, 10,000 in 0.9 to 1.1 s, 20,000 in 2.3 to 2.7 s). The records are unanswered
    /// (FAILED, the last of a channel NO ANSWER) and alike within a channel (one linkedid and
    /// uniqueid) but for `sequence`, which is unique per Asterisk run.
    pub fn flood(&self, count: usize) {
        let mut left = count;
        while left > 0 {
            let cdrs = left.min(FLOOD_CHANNEL_CDRS);
            self.rx(&format!(
                "channel originate Local/cdrs{cdrs}@cdrk application NoOp"
            ));
            left -= cdrs;
        }
        let bound = Duration::from_secs(30 + count as u64 / 1000);
        self.wait_for_no_channels(bound);
    }

    /// A counter of `cdr kafka show status` (`Received`, `Delivered`, ...).
    pub fn counter(&self, name: &str) -> usize {
        let status = self.rx("cdr kafka show status");
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split(':').nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no counter {name} in:\n{status}"))
    }

    /// Waits until counter `name` reaches `at_least`; returns its value then.
    pub fn wait_for_counter(&self, name: &str, at_least: usize, timeout: Duration) -> usize {
        wait_for(&format!("{name} to reach {at_least}"), timeout, || {
            let value = self.counter(name);
            (value >= at_least).then_some(value)
        })
    }

    /// Waits until the broker acknowledged every CDR Asterisk handed over; returns how many.
    pub fn wait_until_all_delivered(&self, timeout: Duration) -> usize {
        wait_for("every CDR to be delivered", timeout, || {
            let received = self.counter("Received");
            (received > 0 && self.counter("Delivered") == received).then_some(received)
        })
    }

    /// Number of channels up now.
    pub fn active_channels(&self) -> usize {
        let out = self.rx("core show channels count");
        out.lines()
            .find(|line| line.contains("active channel"))
            .and_then(|line| line.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until every call has hung up (CDRs are posted at hangup).
    pub fn wait_for_no_channels(&self, timeout: Duration) {
        wait_for("all channels to hang up", timeout, || {
            (self.active_channels() == 0).then_some(())
        });
    }

    /// The process id of the Asterisk running now (a restart changes it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the module's image is mapped in Asterisk's process.
    pub fn module_mapped(&self) -> bool {
        let pid = self.pid();
        fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|maps| maps.contains("cdr_kafka.so"))
            .unwrap_or(false)
    }

    /// Stops Asterisk however it can, and unmounts the root's /proc if `boot` mounted it.
    fn shut_down(&mut self) {
        if self.running() {
            let _ = self.try_rx("core stop now");
            self.wait_for_exit(STOP_BOUND);
        }
        self.kill9();
        if self.proc_mounted {
            let _ = Command::new("umount")
                .arg(self.root.path.join("proc"))
                .status();
            self.proc_mounted = false;
        }
    }
}

impl Drop for Asterisk<'_> {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// CDRs one `Manager::call` posts: one per half of its Local channel.
pub const CDRS_PER_CALL: usize = 2;

/// An AMI (manager) session to a running Asterisk: what places calls one after another
/// faster than `asterisk -rx` can (one process per command: about 60 a second on 2 shared
/// cores, where one session takes 2,000 originates a second). `open` writes a manager.conf
/// with a user of its own on a free port of 127.0.0.1 and reloads the manager; the file
/// the root had is put back on drop (the next Asterisk started reads it). The session
/// asks for no events, so it costs Asterisk nothing while the calls run.
pub struct Manager {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    conf: PathBuf,
    previous_conf: Option<Vec<u8>>,
}

impl Manager {
    pub fn open(asterisk: &Asterisk<'_>) -> Self {
        let port = free_port();
        let conf = asterisk.root.path.join("etc/asterisk/manager.conf");
        let previous_conf = fs::read(&conf).ok();
        fs::write(
            &conf,
            format!(
                "[general]\nenabled = yes\nport = {port}\nbindaddr = 127.0.0.1\n\
                 displayconnects = no\n[cdrk]\nsecret = cdrk\nread =\n\
                 write = originate,command\n"
            ),
        )
        .expect("write manager.conf");
        asterisk.rx("manager reload");
        let stream = wait_for("the manager to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let _ = stream.set_nodelay(true);
        let reader = BufReader::new(stream.try_clone().expect("manager socket"));
        let mut manager = Self {
            stream,
            reader,
            conf,
            previous_conf,
        };
        let mut banner = String::new();
        let _ = manager.reader.read_line(&mut banner);
        let login = manager.action(
            "Login",
            &[("Username", "cdrk"), ("Secret", "cdrk"), ("Events", "off")],
        );
        assert!(
            login.iter().any(|line| line == "Response: Success"),
            "manager login refused: {login:?}"
        );
        manager
    }

    /// Sends an action and returns its response's lines (events never come: none asked).
    pub fn action(&mut self, action: &str, fields: &[(&str, &str)]) -> Vec<String> {
        let mut message = format!("Action: {action}\r\n");
        for (name, value) in fields {
            message.push_str(&format!("{name}: {value}\r\n"));
        }
        message.push_str("\r\n");
        self.stream
            .write_all(message.as_bytes())
            .expect("write to the manager");
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = self.reader.read_line(&mut line).expect("read the manager");
            let line = line.trim_end().to_string();
            if read == 0 || (line.is_empty() && !lines.is_empty()) {
                return lines;
            }
            if !line.is_empty() {
                lines.push(line);
            }
        }
    }

    /// Places a call as `channel originate Local/call<ms>@cdrk application Wait ...` would,
    /// without waiting for it: a Local channel whose second half runs `call<ms>@cdrk`
    /// (answers, waits `ms`, hangs up) and whose first half waits in Wait() until then;
    /// `CDRS_PER_CALL` CDRs at hangup. Returns once Asterisk queued it.
    pub fn call(&mut self, ms: u64) {
        let channel = format!("Local/call{ms}@cdrk");
        let wait = (ms / 1000 + 10).to_string();
        let response = self.action(
            "Originate",
            &[
                ("Channel", &channel),
                ("Application", "Wait"),
                ("Data", &wait),
                ("Async", "true"),
            ],
        );
        assert!(
            response.iter().any(|line| line == "Response: Success"),
            "originate refused: {response:?}"
        );
    }

    /// A CLI command run through the session (no `asterisk -rx` process); its output.
    pub fn command(&mut self, command: &str) -> String {
        let response = self.action("Command", &[("Command", command)]);
        response
            .iter()
            .filter_map(|line| line.strip_prefix("Output: "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Number of channels up now.
    pub fn active_channels(&mut self) -> usize {
        self.command("core show channels count")
            .lines()
            .find(|line| line.contains("active channel"))
            .and_then(|line| line.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until every call has hung up, asking every 100 ms through the session.
    pub fn wait_for_no_channels(&mut self, timeout: Duration) {
        wait_for("all channels to hang up", timeout, || {
            (self.active_channels() == 0).then_some(())
        });
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.stream.write_all(b"Action: Logoff\r\n\r\n");
        let _ = self.stream.shutdown(Shutdown::Both);
        match &self.previous_conf {
            Some(text) => {
                let _ = fs::write(&self.conf, text);
            }
            None => {
                let _ = fs::remove_file(&self.conf);
            }
        }
    }
}

/// Runs Asterisk in the foreground inside the root; `chroot` execs it, so the child is
/// Asterisk itself.
fn spawn_asterisk(root: &Root) -> Child {
    dies_with_the_test(&mut root.command("/usr/sbin/asterisk"))
        .args(["-U", "root", "-G", "root", "-f", "-n", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Asterisk in the root")
}

/// Copies the built module into the root's module folder as a new file.
pub fn install_module(root: &Root) {
    let module = env_path("CDR_KAFKA_MODULE");
    let modules = root.path.join("usr/lib/x86_64-linux-gnu/asterisk/modules");
    let target = modules.join("cdr_kafka.so");
    let _ = fs::remove_file(&target);
    fs::copy(&module, &target)
        .unwrap_or_else(|e| panic!("copy {} into the root: {e}", module.display()));
}

/// Mounts /proc in the root unless it is there already; true when we mounted it.
fn mount_proc(root: &Root) -> bool {
    let proc_dir = root.path.join("proc");
    if proc_dir.join("self").exists() {
        return false;
    }
    let status = Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(&proc_dir)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "cannot mount /proc in {}",
        proc_dir.display()
    );
    true
}

/// cdr_kafka.conf for a broker and topic, plus extra `name = value` lines.
pub fn cdr_kafka_conf(brokers: &str, topic: &str, extra: &str) -> String {
    format!("[global]\nbrokers = {brokers}\ntopic = {topic}\n{extra}")
}

/// Follows a file as it grows (for the demo's live output).
pub fn lines_of(path: &Path) -> impl Iterator<Item = String> {
    let file = fs::File::open(path).expect("open");
    BufReader::new(file).lines().map_while(Result::ok)
}
