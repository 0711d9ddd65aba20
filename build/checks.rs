//! What build.rs checks before bindgen runs, so that a missing piece costs one sentence
//! naming what provides it instead of a bindgen panic and its backtrace. build.rs hands
//! the sentence to cargo as `cargo::error`; tests/build_checks.rs runs these same checks.

use std::env;
use std::path::{Path, PathBuf};

/// The Asterisk headers the bindings and the C glue include (res_prometheus.h is
/// optional: probed). buildopts.h comes first: an Asterisk source tree has it only after
/// its own `make`, and the module takes its AST_BUILDOPT_SUM.
pub const ASTERISK_HEADERS: &[&str] = &[
    "asterisk/buildopts.h",
    "asterisk.h",
    "asterisk/ast_version.h",
    "asterisk/cdr.h",
    "asterisk/cel.h",
    "asterisk/channel.h",
    "asterisk/chanvars.h",
    "asterisk/cli.h",
    "asterisk/config.h",
    "asterisk/event.h",
    "asterisk/localtime.h",
    "asterisk/logger.h",
    "asterisk/module.h",
    "asterisk/options.h",
    "asterisk/paths.h",
    "asterisk/strings.h",
    "asterisk/utils.h",
];

/// The headers folder: ASTERISK_INCLUDE_DIR, else where asterisk-dev puts them.
pub fn include_dir() -> PathBuf {
    env::var_os("ASTERISK_INCLUDE_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/usr/include"), PathBuf::from)
}

/// Every header the module includes is in `dir`, else the sentence naming the first
/// one missing.
pub fn asterisk_headers(dir: &Path) -> Result<(), String> {
    match ASTERISK_HEADERS.iter().find(|h| !dir.join(h).is_file()) {
        None => Ok(()),
        Some(missing) => Err(format!(
            "no Asterisk headers in {} ({missing} is missing): apt-get install asterisk-dev, \
             or set ASTERISK_INCLUDE_DIR= to the folder holding asterisk.h and asterisk/ of \
             the Asterisk the module is for",
            dir.display()
        )),
    }
}

/// bindgen can load libclang, found as bindgen finds it (clang-sys: LIBCLANG_PATH,
/// llvm-config, the usual folders); else the sentence. Stays loaded for bindgen.
pub fn libclang() -> Result<(), String> {
    if clang_sys::load().is_ok() {
        return Ok(());
    }
    Err(match env::var_os("LIBCLANG_PATH") {
        Some(path) => format!(
            "no usable libclang in LIBCLANG_PATH={} (bindgen needs it to read the Asterisk \
             headers): set LIBCLANG_PATH= to the folder holding libclang.so, or unset it \
             after apt-get install libclang-dev",
            Path::new(&path).display()
        ),
        None => "no usable libclang (bindgen needs it to read the Asterisk headers): \
                 apt-get install libclang-dev, or set LIBCLANG_PATH= to the folder holding \
                 libclang.so"
            .to_string(),
    })
}

/// The checks build.rs runs before bindgen, in order: false once one failed and its
/// sentence went to cargo (which then fails the build).
pub fn before_bindgen(include_dir: &Path) -> bool {
    match asterisk_headers(include_dir).and_then(|()| libclang()) {
        Ok(()) => true,
        Err(sentence) => {
            println!("cargo::error={sentence}");
            false
        }
    }
}
