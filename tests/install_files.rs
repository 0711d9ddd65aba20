//! `make samples` and `make install` into a scratch DESTDIR: each file gets the owner and
//! group of the folder it goes into (Debian's Asterisk runs as user asterisk, and
//! /etc/asterisk is root:asterisk or asterisk:asterisk), with the mode the Makefile names.
//! Needs root to hand folders to another user, as `make test` runs.

mod support;

use std::fs;
use std::os::unix::fs::{chown, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};

use support::ScratchDir;

/// An owner that is neither root nor whoever runs the test: the `asterisk` of a Debian host.
const ASTERISK_UID: u32 = 4321;
const ASTERISK_GID: u32 = 8765;

fn make(destdir: &Path, args: &[&str]) {
    let output = Command::new("make")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .arg(format!("DESTDIR={}", destdir.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run make");
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
