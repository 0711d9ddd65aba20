//! Real parts for the end-to-end tests and the demo: a tansu broker on 127.0.0.1 and
//! Asterisk 22 running in the Debian unstable root `make sandbox` builds, each started
//! here and stopped by a guard's `Drop`.
//!
//! Paths come from the environment the Makefile sets: CDR_KAFKA_ROOT (the root),
//! CDR_KAFKA_MODULE (the built cdr_kafka .so), CDR_KAFKA_TANSU (the tansu binary).
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(path) => PathBuf::from(path),
        None => panic!("{name} is not set: run the end-to-end tests with `make test`"),
    }
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

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
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

/// A tansu broker with in-memory storage, listening on 127.0.0.1.
pub struct Tansu {
    child: Child,
    pub port: u16,
    binary: PathBuf,
    _dir: ScratchDir,
}

impl Tansu {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts on a given port: a broker brought back after an outage keeps its address.
    pub fn start_on(port: u16) -> Self {
        let binary = env_path("CDR_KAFKA_TANSU");
        let dir = ScratchDir::new("tansu");
        let url = format!("tcp://127.0.0.1:{port}");
        let log = fs::File::create(dir.0.join("tansu.log")).expect("tansu log");
        let child = Command::new(&binary)
            .current_dir(&dir.0)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let tansu = Self {
            child,
            port,
            binary,
            _dir: dir,
        };
        wait_for("tansu to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        tansu
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, topic: &str) {
        let status = Command::new(&self.binary)
            .args(["topic", "create", topic, "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .status()
            .expect("run tansu topic create");
        assert!(status.success(), "tansu topic create {topic} failed");
    }

    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
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

    /// Everything on the topic now (kcat exits at the end of each partition).
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
[cdrk-callee]
exten => callee,1,Answer()
 same => n,Wait(1)
 same => n,Hangup()
exten => busy,1,Busy(1)
exten => noanswer,1,Ringing()
 same => n,Wait(10)
"#;

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
    /// Asterisk's main thread).
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
        let log = root.path.join("var/log/asterisk/messages.log");
        let _ = fs::remove_file(&log);
        let proc_mounted = mount_proc(root);
        let child = root
            .command("/usr/sbin/asterisk")
            .args(["-U", "root", "-G", "root", "-f", "-n", "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Asterisk in the root");
        let asterisk = Self {
            root,
            child,
            proc_mounted,
        };
        wait_for("Asterisk to boot", Duration::from_secs(60), || {
            let out = asterisk.try_rx("core waitfullybooted")?;
            out.contains("fully booted").then_some(())
        });
        asterisk
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

    /// Runs a CLI command (`asterisk -rx`) and returns what it printed.
    pub fn rx(&self, command: &str) -> String {
        self.try_rx(command)
            .unwrap_or_else(|| panic!("asterisk -rx '{command}' failed"))
    }

    /// Asterisk's log (messages.log) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.path.join("var/log/asterisk/messages.log")).unwrap_or_default()
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the module's image is mapped in Asterisk's process.
    pub fn module_mapped(&self) -> bool {
        let pid = self.asterisk_pid();
        fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|maps| maps.contains("cdr_kafka.so"))
            .unwrap_or(false)
    }

    /// `chroot` execs Asterisk, so the child is Asterisk itself.
    fn asterisk_pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.try_rx("core stop now");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if self.proc_mounted {
            let _ = Command::new("umount")
                .arg(self.root.path.join("proc"))
                .status();
        }
    }
}

impl Drop for Asterisk<'_> {
    fn drop(&mut self) {
        self.stop();
    }
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
