//! The Debian package in the root: `make deb` builds it from the module CDR_KAFKA_MODULE and
//! the headers ASTERISK_INCLUDE_DIR into a scratch folder, and the root's own dpkg installs,
//! upgrades, removes and purges it. `Installation` leaves the root as it found it: the
//! package purged, the root's cdr_kafka.conf put back, no copy of a package left inside.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{
    env_path, Root, ScratchDir, ASTERISK_CONF, CDR_CONF, CEL_CONF, EXTENSIONS_CONF, LOGGER_CONF,
    MODULES_CONF,
};

/// The module's place in the root, as the package installs it.
pub const MODULE: &str = "usr/lib/x86_64-linux-gnu/asterisk/modules/cdr_kafka.so";
/// The XML documentation's place in the root.
pub const DOCS: &str = "usr/share/asterisk/documentation/thirdparty/cdr_kafka_config-en_US.xml";
/// The package's conffile in the root.
pub const CONF: &str = "etc/asterisk/cdr_kafka.conf";

/// The version in Cargo.toml, which `make deb` gives the package.
pub fn cargo_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// AST_BUILDOPT_SUM of the headers the module was built against.
pub fn buildopt_sum() -> String {
    let buildopts = env_path("ASTERISK_INCLUDE_DIR").join("asterisk/buildopts.h");
    let text = fs::read_to_string(&buildopts)
        .unwrap_or_else(|e| panic!("read {}: {e}", buildopts.display()));
    text.lines()
        .find_map(|line| line.strip_prefix("#define AST_BUILDOPT_SUM "))
        .map(|sum| sum.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no AST_BUILDOPT_SUM in {}", buildopts.display()))
}

/// Runs `make deb` with the module and headers given; its output.
pub fn run_make_deb(
    out: &Path,
    module: &Path,
    include_dir: &Path,
    version: Option<&str>,
) -> Output {
    let mut make = Command::new("make");
    make.arg("-s")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("deb")
        .arg(format!("DEB_MODULE={}", module.display()))
        .arg(format!("ASTERISK_INCLUDE_DIR={}", include_dir.display()))
        .arg(format!("DEB_DIR={}", out.display()));
    if let Some(version) = version {
        make.arg(format!("DEB_VERSION={version}"));
    }
    make.stdin(Stdio::null()).output().expect("run make deb")
}

/// Runs `make deb`, which must succeed; returns the package's path.
fn make_deb(out: &Path, module: &Path, include_dir: &Path, version: Option<&str>) -> PathBuf {
    assert_success("make deb", &run_make_deb(out, module, include_dir, version));
    let mut debs: Vec<PathBuf> = fs::read_dir(out)
        .expect("make deb's folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "make deb made one package: {debs:?}");
    debs.pop().unwrap()
}

/// A package `make deb` built, in a folder of its own removed on drop.
pub struct Package {
    pub path: PathBuf,
    _dir: ScratchDir,
}

impl Package {
    /// The package of the tree, at Cargo.toml's version or at `version`.
    pub fn build(version: Option<&str>) -> Self {
        let dir = ScratchDir::new("deb");
        let path = make_deb(
            &dir.0,
            &env_path("CDR_KAFKA_MODULE"),
            &env_path("ASTERISK_INCLUDE_DIR"),
            version,
        );
        Self { path, _dir: dir }
    }

    /// The package of an Asterisk whose build-option sum is `sum`: the module with its
    /// sum rewritten (the bytes AST_MODULE_INFO carries), and headers saying `sum`.
    pub fn build_for_sum(sum: &str) -> Self {
        let own = buildopt_sum();
        assert_eq!(sum.len(), own.len(), "a sum of the same length");
        let dir = ScratchDir::new("deb-other");
        let module = fs::read(env_path("CDR_KAFKA_MODULE")).expect("read the module");
        let mut rewritten = Vec::with_capacity(module.len());
        let mut rest = module.as_slice();
        while let Some(at) = find(rest, own.as_bytes()) {
            rewritten.extend_from_slice(&rest[..at]);
            rewritten.extend_from_slice(sum.as_bytes());
            rest = &rest[at + own.len()..];
        }
        rewritten.extend_from_slice(rest);
        assert_ne!(rewritten, module, "the module carries its sum {own}");
        let other_module = dir.0.join("libcdr_kafka.so");
        fs::write(&other_module, rewritten).expect("write the other module");
        let include_dir = dir.0.join("include");
        fs::create_dir_all(include_dir.join("asterisk")).expect("create headers folder");
        fs::write(
            include_dir.join("asterisk/buildopts.h"),
            format!("#define AST_BUILDOPT_SUM \"{sum}\"\n"),
        )
        .expect("write buildopts.h");
        let out = dir.0.join("out");
        let path = make_deb(&out, &other_module, &include_dir, None);
        Self { path, _dir: dir }
    }

    /// `dpkg-deb -f`: one field of the control file.
    pub fn field(&self, name: &str) -> String {
        let output = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&self.path)
            .arg(name)
            .output()
            .expect("run dpkg-deb -f");
        assert!(output.status.success(), "dpkg-deb -f {name}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// `dpkg-deb --ctrl-tarfile` member `name` (conffiles, postinst, ...).
    pub fn control_file(&self, name: &str) -> String {
        let dir = ScratchDir::new("deb-control");
        let status = Command::new("dpkg-deb")
            .arg("--control")
            .arg(&self.path)
            .arg(&dir.0)
            .status()
            .expect("run dpkg-deb --control");
        assert!(status.success(), "dpkg-deb --control");
        fs::read_to_string(dir.0.join(name)).unwrap_or_default()
    }

    /// `dpkg-deb -c`: the files, one line each (mode, owner/group, size, date, path).
    pub fn contents(&self) -> Vec<String> {
        let output = Command::new("dpkg-deb")
            .arg("-c")
            .arg(&self.path)
            .output()
            .expect("run dpkg-deb -c");
        assert!(output.status.success(), "dpkg-deb -c");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The package's life in the root, with dpkg. Drop purges it and puts back the
/// cdr_kafka.conf the root had.
pub struct Installation<'r> {
    pub root: &'r Root,
    previous_conf: Option<Vec<u8>>,
    copies: Vec<PathBuf>,
}

impl<'r> Installation<'r> {
    /// Starts from a root without the package, the module, a cdr_kafka.conf or a spool:
    /// the other tests copy the module in, and a conffile already on disk would make dpkg
    /// ask whether to keep it.
    pub fn begin(root: &'r Root) -> Self {
        let conf = root.path.join(CONF);
        let previous_conf = fs::read(&conf).ok();
        let installation = Self {
            root,
            previous_conf,
            copies: Vec::new(),
        };
        installation.dpkg(&["--purge", "cdr-kafka"]);
        let _ = fs::remove_file(&conf);
        let _ = fs::remove_file(root.path.join(MODULE));
        let _ = fs::remove_dir_all(root.spool());
        installation
    }

    /// Runs the root's dpkg with `args` (no terminal: a question would fail it).
    pub fn dpkg(&self, args: &[&str]) -> Output {
        self.root
            .command("dpkg")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run dpkg in the root")
    }

    /// `dpkg -i` of `package`, copied into the root; its output.
    pub fn install(&mut self, package: &Package) -> Output {
        let name = package.path.file_name().expect("package file name");
        let inside = format!(
            "/tmp/cdr_kafka-{}-{}",
            std::process::id(),
            self.copies.len()
        );
        let copy = self.root.path.join(inside.trim_start_matches('/'));
        fs::create_dir_all(&copy).expect("create folder in the root");
        fs::copy(&package.path, copy.join(name)).expect("copy the package into the root");
        self.copies.push(copy);
        let path = format!("{inside}/{}", name.to_string_lossy());
        self.dpkg(&["-i", &path])
    }

    /// `dpkg -i` that must succeed.
    pub fn install_ok(&mut self, package: &Package) {
        let output = self.install(package);
        assert_success("dpkg -i", &output);
    }

    /// `dpkg-query`'s status of the package ("install ok installed", "deinstall ok
    /// config-files"); None when dpkg knows no such package.
    pub fn status(&self) -> Option<String> {
        let output = self
            .root
            .command("dpkg-query")
            .args(["-W", "-f=${Status} ${Version}", "cdr-kafka"])
            .output()
            .expect("run dpkg-query");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Writes the Asterisk config the tests use (their modules.conf plus `load =>
    /// cdr_kafka.so`: loaded at boot) and empties the log; cdr_kafka.conf and the module
    /// are the package's.
    pub fn configure_asterisk(&self) {
        let etc = self.root.path.join("etc/asterisk");
        let modules_conf = format!("{MODULES_CONF}load => cdr_kafka.so\n");
        let extensions = EXTENSIONS_CONF.replace("LATIN1_NAME", "Jose");
        for (name, text) in [
            ("asterisk.conf", ASTERISK_CONF),
            ("modules.conf", modules_conf.as_str()),
            ("cdr.conf", CDR_CONF),
            ("logger.conf", LOGGER_CONF),
            ("cel.conf", CEL_CONF),
            ("extensions.conf", extensions.as_str()),
        ] {
            fs::write(etc.join(name), text).expect("write Asterisk config");
        }
        let _ = fs::remove_file(etc.join("kafka.conf"));
        let _ = fs::remove_file(self.root.path.join("var/log/asterisk/messages.log"));
    }

    /// An operator's edit of the installed cdr_kafka.conf: the sample's brokers and topic
    /// lines pointed at `brokers` and `topic`, the rest as the package has it.
    pub fn edit_conf(&self, brokers: &str, topic: &str) -> String {
        let path = self.root.path.join(CONF);
        let sample = fs::read_to_string(&path).expect("the package's cdr_kafka.conf");
        let edited: String = sample
            .lines()
            .map(|line| {
                if line.starts_with("brokers = ") {
                    format!("brokers = {brokers}\n")
                } else if line.starts_with("topic = ") {
                    format!("topic = {topic}\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        assert_ne!(edited, sample, "the sample has brokers and topic lines");
        fs::write(&path, &edited).expect("edit cdr_kafka.conf");
        edited
    }

    /// The id of a group of the root (its /etc/group).
    pub fn group_id(&self, name: &str) -> u32 {
        let groups = fs::read_to_string(self.root.path.join("etc/group")).expect("etc/group");
        groups
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields[0] == name)
            .and_then(|fields| fields.get(2)?.parse().ok())
            .unwrap_or_else(|| panic!("no group {name} in the root"))
    }
}

impl Drop for Installation<'_> {
    fn drop(&mut self) {
        self.dpkg(&["--purge", "cdr-kafka"]);
        // A package dpkg refused stays listed ("purge ok not-installed") until dpkg next
        // writes its database, which this second request does.
        self.dpkg(&["--purge", "cdr-kafka"]);
        let conf = self.root.path.join(CONF);
        match &self.previous_conf {
            Some(text) => {
                let _ = fs::write(&conf, text);
            }
            None => {
                let _ = fs::remove_file(&conf);
            }
        }
        for copy in &self.copies {
            let _ = fs::remove_dir_all(copy);
        }
    }
}

/// Fails the test with the command's output unless it succeeded.
pub fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
