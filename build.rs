//! Finds the Asterisk headers (`ASTERISK_INCLUDE_DIR`, else `/usr/include`), probes what
//! they define, generates the FFI bindings with bindgen and compiles the C glue with cc.
//!
//! The glue object is handed to the linker only for the cdylib: the tests link the rlib,
//! which must not reference Asterisk's symbols (they exist only inside a running Asterisk).

#[path = "build/checks.rs"]
mod checks;

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    // First, and nothing else on stdout before: a failed check is cargo's only message.
    let include_dir = checks::include_dir();
    if !checks::before_bindgen(&include_dir) {
        return;
    }
    println!("cargo:rerun-if-env-changed=ASTERISK_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
    for file in ["wrapper.h", "include/cdr_kafka.h", "src/glue.c"] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo::rustc-check-cfg=cfg(asterisk_cdr_tenant)");
    println!("cargo::rustc-check-cfg=cfg(asterisk_cel_tenant)");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let own_include = manifest_dir.join("include");

    let mut defines: Vec<&str> = Vec::new();
    if probe(
        &include_dir,
        &out_dir,
        "cdr_tenant",
        "#include \"asterisk.h\"\n#include \"asterisk/cdr.h\"\n\
         int probe(struct ast_cdr *cdr) { return cdr->tenantid[0] + cdr->peertenantid[0]; }\n",
    ) {
        println!("cargo:rustc-cfg=asterisk_cdr_tenant");
        defines.push("CDRK_HAVE_CDR_TENANTID");
    }

    if probe(
        &include_dir,
        &out_dir,
        "cel_tenant",
        "#include \"asterisk.h\"\n#include \"asterisk/cel.h\"\n\
         const char *probe(struct ast_cel_event_record *r) { return r->tenant_id; }\n",
    ) {
        println!("cargo:rustc-cfg=asterisk_cel_tenant");
        defines.push("CDRK_HAVE_CEL_TENANTID");
    }

    // res_prometheus.h is in every release line since 17, but an install may leave it out.
    if probe(
        &include_dir,
        &out_dir,
        "prometheus",
        "#include \"asterisk.h\"\n#include \"asterisk/res_prometheus.h\"\n\
         int probe(struct prometheus_callback *c) { return c->name != 0; }\n",
    ) {
        defines.push("CDRK_HAVE_PROMETHEUS");
    }

    if let Err(sentence) = generate_bindings(&include_dir, &own_include, &out_dir) {
        println!("cargo::error={sentence}");
        return;
    }
    compile_glue(&include_dir, &own_include, &defines);

    // For tests/glue_view.rs: how to compile the glue exactly as above.
    let mut flags = asterisk_cflags(&include_dir);
    flags.push(format!("-I{}", own_include.display()));
    flags.extend(defines.iter().map(|define| format!("-D{define}")));
    println!("cargo:rustc-env=CDRK_GLUE_CFLAGS={}", flags.join("\u{1f}"));
    println!(
        "cargo:rustc-env=CDRK_ASTERISK_INCLUDE_DIR={}",
        include_dir.display()
    );
}

/// Flags every compile against Asterisk's headers needs: its headers assume GNU C.
fn asterisk_cflags(include_dir: &Path) -> Vec<String> {
    vec![
        format!("-I{}", include_dir.display()),
        "-D_GNU_SOURCE".to_string(),
        "-D_REENTRANT".to_string(),
        // asterisk.h refuses an out-of-tree module that does not name its self symbol.
        "-DAST_MODULE_SELF_SYM=__internal_cdr_kafka_self".to_string(),
        "-DAST_MODULE=\"cdr_kafka\"".to_string(),
    ]
}

/// Test-compiles `source` against the headers: true when they define what it uses.
fn probe(include_dir: &Path, out_dir: &Path, name: &str, source: &str) -> bool {
    let file = out_dir.join(format!("probe_{name}.c"));
    std::fs::write(&file, source).expect("write probe source");
    let compiler = cc::Build::new().get_compiler();
    let status = compiler
        .to_command()
        .args(asterisk_cflags(include_dir))
        .args(["-fsyntax-only", "-w"])
        .arg(&file)
        .status();
    matches!(status, Ok(s) if s.success())
}

fn generate_bindings(include_dir: &Path, own_include: &Path, out_dir: &Path) -> Result<(), String> {
    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(asterisk_cflags(include_dir))
        .clang_arg(format!("-I{}", own_include.display()))
        // utils.h uses blocks when compiled by clang.
        .clang_arg("-fblocks")
        .allowlist_type("cdrk_.*")
        .allowlist_function("cdr_kafka_.*")
        .allowlist_var("AST_MAX_.*")
        .rustified_enum("cdrk_log_level")
        .rustified_enum("cdrk_config_status")
        .derive_debug(true)
        .layout_tests(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    // bindgen 0.72 keeps `unsafe extern` off unless asked.
    builder = builder.generate_comments(false);
    let bindings = builder.generate().map_err(|err| {
        format!(
            "bindgen could not read the Asterisk headers in {}: {err}",
            include_dir.display()
        )
    })?;
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .expect("write bindings.rs");
    Ok(())
}

fn compile_glue(include_dir: &Path, own_include: &Path, defines: &[&str]) {
    let mut build = cc::Build::new();
    build
        .file("src/glue.c")
        .include(own_include)
        .pic(true)
        // Asterisk's own headers warn under modern compilers; their noise is not ours.
        .warnings(false)
        // The archive must not reach the rlib: the tests would need Asterisk's symbols.
        .cargo_metadata(false);
    for flag in asterisk_cflags(include_dir) {
        build.flag(flag);
    }
    for define in defines {
        build.define(define, None);
    }
    let objects = build.compile_intermediates();
    for object in objects {
        // Only the module links the glue; whole objects, so AST_MODULE_INFO's constructor stays.
        println!("cargo:rustc-cdylib-link-arg={}", object.display());
    }
}
