//! build.rs's checks (build/checks.rs) as cargo meets them: a folder without the Asterisk
//! headers, or no libclang to be found, gives one `cargo::error` line naming what provides
//! the missing piece, and no panic. Each case runs the checks in a child process (this
//! test's own executable): they read the environment, as bindgen does, and the child's
//! output must be only what build.rs would print — hence no libtest harness.

#[path = "../build/checks.rs"]
mod checks;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command};

/// Set in the child: run the checks as build.rs does, then exit.
const CHILD: &str = "CDRK_BUILD_CHECKS_CHILD";

/// The headers this crate was built against (build.rs passes them on).
const HEADERS: &str = env!("CDRK_ASTERISK_INCLUDE_DIR");

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let path = env::temp_dir().join(format!("cdr_kafka-checks-{tag}-{}", process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch folder");
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What build.rs would print with `vars` set in its environment: (stdout, stderr).
fn checks_with(vars: &[(&str, &Path)]) -> (String, String) {
    let mut child = Command::new(env::current_exe().expect("own executable"));
    child.env(CHILD, "1").env("RUST_BACKTRACE", "1");
    for (name, value) in vars {
        child.env(name, value);
    }
    let output = child.output().expect("run the checks");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

/// The one line a failed check gives cargo, with nothing else around it.
fn one_error_line(stdout: &str, stderr: &str) -> String {
    assert_eq!(stderr, "", "nothing on stderr (no panic, no backtrace)");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stdout}");
    let sentence = lines[0]
        .strip_prefix("cargo::error=")
        .unwrap_or_else(|| panic!("a cargo::error line: {stdout}"));
    assert!(!sentence.contains("panicked"), "{sentence}");
    sentence.to_string()
}

fn assert_names(sentence: &str, parts: &[&str]) {
    for part in parts {
        assert!(sentence.contains(part), "{part:?} missing in: {sentence}");
    }
}

fn empty_headers_folder_is_one_line_naming_asterisk_dev() {
    let empty = Scratch::new("empty");
    let (stdout, stderr) = checks_with(&[("ASTERISK_INCLUDE_DIR", &empty.0)]);
    let sentence = one_error_line(&stdout, &stderr);
    assert_names(
        &sentence,
        &[
            &format!("no Asterisk headers in {} ", empty.0.display()),
            "(asterisk/buildopts.h is missing)",
            "apt-get install asterisk-dev",
            "ASTERISK_INCLUDE_DIR=",
        ],
    );
}

fn a_header_the_glue_includes_missing_is_named() {
    let headers = Scratch::new("partial");
    fs::create_dir_all(headers.0.join("asterisk")).expect("create asterisk/");
    for header in checks::ASTERISK_HEADERS {
        if *header != "asterisk/cel.h" {
            fs::write(headers.0.join(header), "").expect("write header");
        }
    }
    let (stdout, stderr) = checks_with(&[("ASTERISK_INCLUDE_DIR", &headers.0)]);
    let sentence = one_error_line(&stdout, &stderr);
    assert_names(&sentence, &["(asterisk/cel.h is missing)", "asterisk-dev"]);
}

fn no_libclang_on_the_path_is_one_line_naming_libclang_dev() {
    let nothing = Scratch::new("no-libclang");
    let (stdout, stderr) = checks_with(&[
        ("ASTERISK_INCLUDE_DIR", Path::new(HEADERS)),
        ("LIBCLANG_PATH", &nothing.0),
        ("PATH", &nothing.0),
    ]);
    let sentence = one_error_line(&stdout, &stderr);
    assert_names(
        &sentence,
        &[
            &format!(
                "no usable libclang in LIBCLANG_PATH={} ",
                nothing.0.display()
            ),
            "apt-get install libclang-dev",
        ],
    );
}

fn headers_and_libclang_at_hand_pass_silently() {
    let (stdout, stderr) = checks_with(&[("ASTERISK_INCLUDE_DIR", Path::new(HEADERS))]);
    assert_eq!((stdout.as_str(), stderr.as_str()), ("", ""));
}

/// Every Asterisk header src/glue.c includes is one the checks look for (bar the
/// optional one build.rs probes).
fn the_checks_cover_every_header_of_the_glue() {
    let glue = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/glue.c"))
        .expect("read src/glue.c");
    let included: Vec<&str> = glue
        .lines()
        .filter_map(|line| line.trim().strip_prefix("#include \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .filter(|header| header.starts_with("asterisk"))
        .filter(|header| *header != "asterisk/res_prometheus.h")
        .collect();
    assert!(included.len() > 10, "{included:?}");
    for header in included {
        assert!(
            checks::ASTERISK_HEADERS.contains(&header),
            "{header} is not checked"
        );
    }
}

fn main() {
    if env::var_os(CHILD).is_some() {
        // What build.rs does; a failed check has printed its line.
        checks::before_bindgen(&checks::include_dir());
        return;
    }
    let tests: &[(&str, fn())] = &[
        (
            "empty_headers_folder_is_one_line_naming_asterisk_dev",
            empty_headers_folder_is_one_line_naming_asterisk_dev,
        ),
        (
            "a_header_the_glue_includes_missing_is_named",
            a_header_the_glue_includes_missing_is_named,
        ),
        (
            "no_libclang_on_the_path_is_one_line_naming_libclang_dev",
            no_libclang_on_the_path_is_one_line_naming_libclang_dev,
        ),
        (
            "headers_and_libclang_at_hand_pass_silently",
            headers_and_libclang_at_hand_pass_silently,
        ),
        (
            "the_checks_cover_every_header_of_the_glue",
            the_checks_cover_every_header_of_the_glue,
        ),
    ];
    // Like libtest: flags are ignored, other arguments filter by name.
    let args: Vec<String> = env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|arg| !arg.starts_with('-')).collect();
    let chosen = tests.iter().filter(|(name, _)| {
        filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
    });
    let mut ran = 0;
    for (name, test) in chosen {
        test();
        println!("test {name} ... ok");
        ran += 1;
    }
    println!("\ntest result: ok. {ran} passed");
}
