//! `make samples` and `make install` into a scratch DESTDIR: each file gets the owner and
//! group of the folder it goes into (Debian's Asterisk runs as user asterisk, and
//! /etc/asterisk is root:asterisk or asterisk:asterisk), with the mode the Makefile names.
//! Needs root to hand folders to another user, as `make test` runs. Before it copies
//! anything, `make install` refuses a module the installed Asterisk would refuse for its
//! build options (those tests need no root).

mod support;

use std::fs;
use std::os::unix::fs::{chown, MetadataExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::ScratchDir;

/// An owner that is neither root nor whoever runs the test: the `asterisk` of a Debian host.
const ASTERISK_UID: u32 = 4321;
const ASTERISK_GID: u32 = 8765;

fn make_output(destdir: &Path, args: &[&str]) -> Output {
    Command::new("make")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .arg(format!("DESTDIR={}", destdir.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run make")
}

fn make(destdir: &Path, args: &[&str]) {
    let output = make_output(destdir, args);
    assert!(
        output.status.success(),
        "make {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Creates `destdir/folder` owned by ASTERISK_UID:ASTERISK_GID.
fn folder_of_asterisk(destdir: &Path, folder: &str) {
    let path = destdir.join(folder);
    fs::create_dir_all(&path).expect("create folder");
    chown(&path, Some(ASTERISK_UID), Some(ASTERISK_GID))
        .unwrap_or_else(|e| panic!("chown {} (run as root): {e}", path.display()));
}

fn assert_owned_by_asterisk(path: &Path, mode: u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (meta.uid(), meta.gid()),
        (ASTERISK_UID, ASTERISK_GID),
        "owner:group of {}",
        path.display()
    );
    assert_eq!(
        meta.mode() & 0o7777,
        mode,
        "mode of {} is {:o}",
        path.display(),
        meta.mode() & 0o7777
    );
}

#[test]
fn samples_into_a_folder_of_asterisk_is_readable_by_asterisk() {
    let scratch = ScratchDir::new("samples");
    folder_of_asterisk(&scratch.0, "etc/asterisk");
    make(&scratch.0, &["samples"]);
    let conf = scratch.0.join("etc/asterisk/cdr_kafka.conf");
    assert_owned_by_asterisk(&conf, 0o640);

    // Again: the operator's file is kept as .old, and the new one is theirs too.
    fs::write(&conf, "; the operator's own file\n").expect("write conf");
    make(&scratch.0, &["samples"]);
    assert_owned_by_asterisk(&conf, 0o640);
    assert_owned_by_asterisk(&scratch.0.join("etc/asterisk/cdr_kafka.conf.old"), 0o640);
    assert_eq!(
        fs::read_to_string(scratch.0.join("etc/asterisk/cdr_kafka.conf.old")).unwrap(),
        "; the operator's own file\n"
    );
}

#[test]
fn install_into_folders_of_asterisk_gives_them_the_module_and_docs() {
    let scratch = ScratchDir::new("install");
    folder_of_asterisk(&scratch.0, "modules");
    folder_of_asterisk(&scratch.0, "data/documentation/thirdparty");
    // Any file will do as the module: what is checked is where it goes and how.
    let module = scratch.0.join("cdr_kafka.so");
    fs::write(&module, b"not really a module").expect("write module");
    make(
        &scratch.0,
        &[
            "install",
            "ASTMODDIR=/modules",
            "ASTDATADIR=/data",
            &format!("MODULE={}", module.display()),
        ],
    );
    assert_owned_by_asterisk(&scratch.0.join("modules/cdr_kafka.so"), 0o755);
    assert_owned_by_asterisk(
        &scratch
            .0
            .join("data/documentation/thirdparty/cdr_kafka_config-en_US.xml"),
        0o644,
    );
}

const SUM_OF_THE_MODULE: &str = "1fb7f5c06d7a2052e38d021b3d8ca151";
const ANOTHER_SUM: &str = "da6642af068ee5e6490c5b1d2cc1d238";

/// A file holding `sum` as a C string among other bytes, as a module or Asterisk does.
fn with_sum(path: &Path, sum: &str) {
    fs::create_dir_all(path.parent().expect("a folder")).expect("create folder");
    let mut bytes = b"\x7fELF\0cdr_kafka\0".to_vec();
    bytes.extend_from_slice(sum.as_bytes());
    bytes.extend_from_slice(b"\0GPL\0");
    fs::write(path, bytes).expect("write file");
}

/// Headers whose buildopts.h has the sum SUM_OF_THE_MODULE.
fn headers_with_the_sum_of_the_module(folder: &Path) {
    fs::create_dir_all(folder.join("asterisk")).expect("create asterisk/");
    fs::write(
        folder.join("asterisk/buildopts.h"),
        format!("#define AST_BUILDOPT_SUM \"{SUM_OF_THE_MODULE}\"\n"),
    )
    .expect("write buildopts.h");
}

/// `make install` into `destdir` (its own folders: no root needed) of a module with the
/// sum SUM_OF_THE_MODULE, the installed Asterisk there having `asterisk_sum`.
fn install_beside_asterisk(destdir: &Path, asterisk_sum: &str) -> Output {
    with_sum(&destdir.join("usr/sbin/asterisk"), asterisk_sum);
    let module = destdir.join("cdr_kafka.so");
    with_sum(&module, SUM_OF_THE_MODULE);
    fs::create_dir_all(destdir.join("modules")).expect("create modules/");
    fs::create_dir_all(destdir.join("data/documentation/thirdparty")).expect("create data/");
    let headers = destdir.join("include");
    headers_with_the_sum_of_the_module(&headers);
    make_output(
        destdir,
        &[
            "install",
            "ASTMODDIR=/modules",
            "ASTDATADIR=/data",
            &format!("MODULE={}", module.display()),
            &format!("ASTERISK_INCLUDE_DIR={}", headers.display()),
        ],
    )
}

#[test]
fn install_refuses_a_module_built_for_other_build_options_than_the_installed_asterisk() {
    let scratch = ScratchDir::new("install-buildopts");
    let output = install_beside_asterisk(&scratch.0, ANOTHER_SUM);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("cdr_kafka: "))
        .collect();
    assert_eq!(ours.len(), 1, "one sentence: {stderr}");
    for part in [
        SUM_OF_THE_MODULE,
        ANOTHER_SUM,
        "ASTERISK_INCLUDE_DIR=",
        "asterisk-dev",
    ] {
        assert!(ours[0].contains(part), "{part} missing in: {}", ours[0]);
    }
    assert!(
        !scratch.0.join("modules/cdr_kafka.so").exists(),
        "nothing installed"
    );
}

#[test]
fn install_takes_a_module_of_the_installed_asterisk_build_options() {
    let scratch = ScratchDir::new("install-buildopts-same");
    let output = install_beside_asterisk(&scratch.0, SUM_OF_THE_MODULE);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(scratch.0.join("modules/cdr_kafka.so").is_file());
}

#[test]
fn building_for_other_build_options_than_the_installed_asterisk_is_a_warning() {
    let scratch = ScratchDir::new("buildopts-warn");
    let (module, asterisk) = (scratch.0.join("cdr_kafka.so"), scratch.0.join("asterisk"));
    with_sum(&module, SUM_OF_THE_MODULE);
    with_sum(&asterisk, ANOTHER_SUM);
    let headers = scratch.0.join("include");
    headers_with_the_sum_of_the_module(&headers);
    let output = Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("build/buildopts.sh"))
        .args([&module, &asterisk, &headers])
        .arg("warn")
        .output()
        .expect("run build/buildopts.sh");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(ANOTHER_SUM), "{stderr}");
}
