//! The C glue's view of a CDR, built from a `struct ast_cdr` laid out by the headers the
//! module is built against (`ASTERISK_INCLUDE_DIR`): tests/glue/view_check.c includes
//! glue.c, stubs the few Asterisk functions the CDR path calls, and prints what reached
//! the Rust entry point. Run by `make check-versions` for every Asterisk release line:
//! fields that move between releases must arrive with the right values, and the tenant
//! fields exactly where the headers have them.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn view_of_a_cdr() -> HashMap<String, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("cdr_kafka-view-check-{}", std::process::id()));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(env!("CDRK_GLUE_CFLAGS").split('\u{1f}'))
        .arg("-w")
        .arg(manifest.join("tests/glue/view_check.c"))
        .arg(manifest.join("tests/glue/stubs.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "view_check.c did not compile");
    let output = Command::new(&out).output().expect("run view_check");
    let _ = std::fs::remove_file(&out);
    assert!(output.status.success(), "view_check failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Read from the headers themselves, not from build.rs's probe.
fn headers_have_tenant_fields() -> bool {
    let cdr_h = Path::new(env!("CDRK_ASTERISK_INCLUDE_DIR")).join("asterisk/cdr.h");
    let text = std::fs::read_to_string(&cdr_h).expect("asterisk/cdr.h");
    let start = text.find("struct ast_cdr {").expect("struct ast_cdr");
    let end = start + text[start..].find("};").expect("end of struct ast_cdr");
    text[start..end].contains("peertenantid")
}

#[test]
fn every_field_of_the_cdr_reaches_the_view_for_these_headers() {
    let view = view_of_a_cdr();
    let expected = [
        ("clid", "\"Alice\" <100>"),
        ("src", "100"),
        ("dst", "200"),
        ("dcontext", "default"),
        ("channel", "PJSIP/100-00000001"),
        ("dstchannel", "PJSIP/200-00000002"),
        ("lastapp", "Dial"),
        ("lastdata", "PJSIP/200,30"),
        ("disposition", "ANSWERED"),
        ("amaflags", "DOCUMENTATION"),
        ("accountcode", "acct-1"),
        ("peeraccount", "acct-2"),
        ("uniqueid", "1700000000.1"),
        ("linkedid", "1700000000.0"),
        ("userfield", "campaign=42"),
        ("duration", "135"),
        ("billsec", "130"),
        ("sequence", "7"),
        ("variables", "none"),
    ];
    for (field, value) in expected {
        assert_eq!(view.get(field).map(String::as_str), Some(value), "{field}");
    }
    let (tenant, peer) = if headers_have_tenant_fields() {
        ("tenant-a", "tenant-b")
    } else {
        // Before the multi-tenant change: absent, so the record leaves the keys out.
        ("(absent)", "(absent)")
    };
    assert_eq!(view["tenantid"], tenant);
    assert_eq!(view["peertenantid"], peer);
}
