//! The host table the C glue hands over at load: Asterisk's logger, config engine and
//! identity. Until it is installed (and always in tests) logging goes to stderr.
//!
//! The table is a static of the glue, alive as long as this module's image is mapped,
//! so a plain pointer to it is enough.

use std::ffi::{c_char, CStr, CString};
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::sys;

static HOST: AtomicPtr<sys::cdrk_host> = AtomicPtr::new(std::ptr::null_mut());

/// Severity of a log line, as Asterisk names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Notice,
    Warning,
    Error,
    Verbose,
}

/// Installs the glue's table.
///
/// # Safety
/// `host` must point at a `cdrk_host` that stays valid and unchanged while this module
/// is loaded (the glue's static table does).
pub unsafe fn install(host: *const sys::cdrk_host) {
    HOST.store(host.cast_mut(), Ordering::Release);
}

pub fn uninstall() {
    HOST.store(std::ptr::null_mut(), Ordering::Release);
}

pub(crate) fn table() -> Option<&'static sys::cdrk_host> {
    let host = HOST.load(Ordering::Acquire);
    // SAFETY: `install` requires the table to outlive the module's use of it.
    unsafe { host.as_ref() }
}

/// Text that crosses into C: a NUL inside it is replaced, never a reason to fail.
pub(crate) fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\u{fffd}")).unwrap_or_default()
}

/// Reads a C string of the host table; empty when the pointer is NULL.
pub(crate) fn host_str(pointer: *const c_char) -> String {
    if pointer.is_null() {
        return String::new();
    }
    // SAFETY: the glue fills the table with NUL-terminated strings that Asterisk keeps for
    // its whole run (ast_get_version, ast_config_AST_* and the glue's own buffers).
    unsafe { CStr::from_ptr(pointer) }
        .to_string_lossy()
        .into_owned()
}

/// Writes one line to Asterisk's log (stderr without Asterisk).
pub fn log(level: Level, file: &str, line: u32, function: &str, message: &str) {
    let Some(log) = table().and_then(|host| host.log) else {
        eprintln!("cdr_kafka {level:?}: {message}");
        return;
    };
    let level = match level {
        Level::Debug => sys::cdrk_log_level::CDRK_LOG_DEBUG,
        Level::Notice => sys::cdrk_log_level::CDRK_LOG_NOTICE,
        Level::Warning => sys::cdrk_log_level::CDRK_LOG_WARNING,
        Level::Error => sys::cdrk_log_level::CDRK_LOG_ERROR,
        Level::Verbose => sys::cdrk_log_level::CDRK_LOG_VERBOSE,
    };
    let (file, function, message) = (c_string(file), c_string(function), c_string(message));
    // SAFETY: the glue's log function copies what it needs (ast_log formats "%s" at once);
    // every pointer is a live NUL-terminated CString for the length of the call.
    unsafe {
        log(
            level,
            file.as_ptr(),
            line as i32,
            function.as_ptr(),
            message.as_ptr(),
        )
    };
}

/// Registers (or unregisters) the CEL backend with Asterisk. Without Asterisk (tests)
/// there is nothing to register with, and that is no error.
pub fn set_cel_backend(enabled: bool) -> Result<(), String> {
    let Some(host) = table() else {
        return Ok(());
    };
    let call = if enabled {
        host.cel_register
    } else {
        host.cel_unregister
    };
    // SAFETY: the glue's functions take no arguments and only touch its own statics and
    // Asterisk's CEL backend list.
    match call.map(|call| unsafe { call() }) {
        Some(0) | None => Ok(()),
        Some(_) => Err("Asterisk refused to register the CEL backend (is CEL built in?)".into()),
    }
}

/// Logs through Asterisk with this source location: `ast_log!(Warning, "x {}", y)`.
#[macro_export]
macro_rules! ast_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::asterisk::host::log(
            $crate::asterisk::host::Level::$level,
            file!(),
            line!(),
            module_path!(),
            &format!($($arg)+),
        )
    };
}

/// Who this Asterisk is, read once at load.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub entity_id: String,
    pub system_name: String,
    pub asterisk_version: String,
    pub hostname: String,
    pub tenant_fields: bool,
    /// Asterisk's spool folder (astspooldir).
    pub spool_dir: String,
}

impl Identity {
    pub fn from_host() -> Self {
        let Some(host) = table() else {
            return Self::default();
        };
        Self {
            entity_id: host_str(host.entity_id),
            system_name: host_str(host.system_name),
            asterisk_version: host_str(host.asterisk_version),
            hostname: host_str(host.hostname),
            tenant_fields: host.has_tenant_fields != 0,
            spool_dir: host_str(host.spool_dir),
        }
    }
}
