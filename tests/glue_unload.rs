//! The C glue's unload against a stand-in of Asterisk's CDR backend list that refuses, as
//! main/cdr.c does, to let a backend that is not suspended go while CDRs are active:
//! tests/glue/unload_check.c includes glue.c, and tests/glue/unload_stubs.c prints every
//! call the unload makes. The shutdown case (Asterisk unloads every module whatever the
//! answer) is out of reach of the end-to-end tests, as Asterisk waits for the calls first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Compiles the check program to a file of its own (the tests run side by side).
fn compile_unload_check() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!(
        "cdr_kafka-unload-check-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(env!("CDRK_GLUE_CFLAGS").split('\u{1f}'))
        .arg("-w")
        .arg(manifest.join("tests/glue/unload_check.c"))
        .arg(manifest.join("tests/glue/unload_stubs.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "unload_check.c did not compile");
    out
}

/// What one unload did: the calls in order, the log lines, and unload's result.
struct Unload {
    events: Vec<String>,
    logs: Vec<String>,
    result: i32,
}

/// Registers CDR and CEL backends, then unloads with Asterisk in the given state.
fn unload(shutting_down: bool, active_cdrs: u32, channels: u32) -> Unload {
    let program = compile_unload_check();
    let output = Command::new(&program)
        .arg(u8::from(shutting_down).to_string())
        .arg(active_cdrs.to_string())
        .arg(channels.to_string())
        .output()
        .expect("run unload_check");
    let _ = std::fs::remove_file(&program);
    assert!(output.status.success(), "unload_check failed: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| -> Vec<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    };
    let result = field("result=")
        .first()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no result in:\n{text}"));
    Unload {
        events: field("event="),
        logs: field("log="),
        result,
    }
}

#[test]
fn unload_with_calls_up_is_refused_and_leaves_cdr_and_cel_registered() {
    let unload = unload(false, 2, 2);
    assert_eq!(unload.result, -1);
    assert_eq!(
        unload.events,
        ["cel_register", "cdr_unregister refused"],
        "no suspend, no CEL unregister, the producer untouched"
    );
    assert_eq!(
        unload.logs[0],
        "WARNING Unable to unregister CDR backend kafka; 2 CDRs are still active"
    );
    assert!(
        unload.logs[1].starts_with(
            "WARNING cdr_kafka: unload refused: calls are still up (2 channels), and their CDRs \
             are still active"
        ),
        "{:?}",
        unload.logs
    );
}

#[test]
fn unload_at_shutdown_with_calls_up_lets_go_and_logs_the_cdrs_not_captured() {
    let unload = unload(true, 2, 1);
    assert_eq!(unload.result, 0);
    assert_eq!(
        unload.events,
        [
            "cel_register",
            "cdr_unregister refused",
            "cdr_suspend",
            "cdr_unregister suspended",
            "cel_unregister",
            "cli_unregister",
            "rust_unload",
        ],
        "the producer goes only after the backend is unregistered"
    );
    assert_eq!(
        unload.logs.last().map(String::as_str),
        Some(
            "ERROR cdr_kafka: Asterisk is shutting down with CDRs still active (counted in the \
             warning above; 1 channel was still up): those CDRs are not captured by cdr_kafka"
        ),
        "{:?}",
        unload.logs
    );
}

#[test]
fn unload_with_no_call_up_unregisters_without_suspending() {
    for shutting_down in [false, true] {
        let unload = unload(shutting_down, 0, 0);
        assert_eq!(unload.result, 0);
        assert_eq!(
            unload.events,
            [
                "cel_register",
                "cdr_unregister",
                "cel_unregister",
                "cli_unregister",
                "rust_unload",
            ]
        );
        assert!(unload.logs.is_empty(), "{:?}", unload.logs);
    }
}
