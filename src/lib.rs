//! cdr_kafka: an Asterisk CDR backend that publishes every CDR as JSON to Kafka.
//!
//! This file holds only the `extern "C"` entry points the C glue (src/glue.c) calls.
//! Each body runs inside [`guard`]: a panic is logged and turned into the C error
//! value, never unwound into Asterisk.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod asterisk;
pub mod cel;
pub mod config;
pub mod delivery;
pub mod destinations;
pub mod metrics;
pub mod module;
pub mod plan;
pub mod ratelimit;
pub mod record;
pub mod routing;
pub mod shape;
pub mod shaping;
pub mod spooled;
mod sys;

use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `body`, turning a panic into a log line and `fallback`.
fn guard<R>(fallback: R, body: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        ast_log!(
            Error,
            "internal error in cdr_kafka (see the panic above); Asterisk goes on"
        );
        fallback
    })
}

/// Panics are reported through Asterisk's log: its stderr is read by nobody.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        ast_log!(Error, "cdr_kafka panicked: {info}");
    }));
}

/// Loads cdr_kafka.conf and starts the producer; the glue registers the backend after.
///
/// # Safety
/// `host` points at the glue's static host table, valid while the module is loaded.
#[no_mangle]
pub unsafe extern "C" fn cdr_kafka_load(host: *const sys::cdrk_host) -> c_int {
    // SAFETY: the glue passes its static table, which lives as long as this image.
    unsafe { asterisk::host::install(host) };
    guard(-1, || {
        install_panic_hook();
        match module::load() {
            Ok(()) => 0,
            Err(error) => {
                ast_log!(Error, "not loaded: {error}");
                -1
            }
        }
    })
}

/// Applies a changed cdr_kafka.conf; on error the running configuration stays.
#[no_mangle]
pub extern "C" fn cdr_kafka_reload() -> c_int {
    guard(-1, || match module::reload() {
        Ok(()) => 0,
        Err(error) => {
            ast_log!(
                Error,
                "reload refused, the running configuration stays: {error}"
            );
            -1
        }
    })
}

/// Flushes and stops the producer; the glue has unregistered the backend already.
#[no_mangle]
pub extern "C" fn cdr_kafka_unload() -> c_int {
    let result = guard(-1, || {
        module::unload();
        0
    });
    let _ = std::panic::take_hook();
    asterisk::host::uninstall();
    result
}

/// The CDR backend callback: encode, hand off, return. Never waits on the network.
///
/// # Safety
/// `cdr` is the glue's view of a CDR Asterisk owns until this returns.
#[no_mangle]
pub unsafe extern "C" fn cdr_kafka_log_cdr(cdr: *const sys::cdrk_cdr) -> c_int {
    guard(-1, || {
        // SAFETY: the glue passes a pointer to a view on its stack, valid for this call.
        let Some(raw) = (unsafe { cdr.as_ref() }) else {
            return -1;
        };
        // SAFETY: Asterisk owns the CDR until this callback returns; the view is encoded
        // and dropped before then.
        let cdr = unsafe { asterisk::cdr::view(raw) };
        match module::log_cdr(&cdr) {
            Ok(()) => 0,
            Err(_) => -1,
        }
    })
}

/// The CEL backend callback: encode, append to the spool, return.
///
/// # Safety
/// `cel` is the glue's view of a CEL event Asterisk owns until this returns.
#[no_mangle]
pub unsafe extern "C" fn cdr_kafka_log_cel(cel: *const sys::cdrk_cel) -> c_int {
    guard(-1, || {
        // SAFETY: the glue passes a pointer to a view on its stack, valid for this call.
        let Some(raw) = (unsafe { cel.as_ref() }) else {
            return -1;
        };
        // SAFETY: Asterisk owns the event record until this callback returns; the view is
        // encoded and dropped before then.
        let event = unsafe { asterisk::cel::view(raw) };
        match module::log_cel(&event) {
            Ok(()) => 0,
            Err(_) => -1,
        }
    })
}

/// The status report for `cdr kafka show status`; free it with `cdr_kafka_free_text`.
#[no_mangle]
pub extern "C" fn cdr_kafka_status_text() -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        asterisk::host::c_string(&module::status_text()).into_raw()
    })
}

/// The text of `cdr kafka show destinations`; free it with `cdr_kafka_free_text`.
#[no_mangle]
pub extern "C" fn cdr_kafka_destinations_text() -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        asterisk::host::c_string(&module::destinations_text()).into_raw()
    })
}

/// The names of the destinations, one per line, for the CLI's completion; free it with
/// `cdr_kafka_free_text`.
#[no_mangle]
pub extern "C" fn cdr_kafka_destination_names() -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        asterisk::host::c_string(&module::destination_names().join("\n")).into_raw()
    })
}

/// Enables (`enabled` != 0) or disables the destination `name`; 0 on success. Sets
/// `*message` to the operator's text (free it with `cdr_kafka_free_text`). Starts and
/// stops threads: the glue calls it on a short-lived thread of its own.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string valid for the call; `message` is NULL or
/// points at a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn cdr_kafka_destination_set_enabled(
    name: *const c_char,
    enabled: c_int,
    message: *mut *mut c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or a valid NUL-terminated string (the CLI's argv).
    let name = (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_string_lossy());
    let (result, text) = guard((-1, None), || {
        let Some(name) = name else {
            return (-1, Some("give the name of a destination".to_string()));
        };
        match module::set_destination_enabled(&name, enabled != 0) {
            Ok(text) => (0, Some(text)),
            Err(error) => (-1, Some(error.to_string())),
        }
    });
    // SAFETY: the caller passes NULL or a pointer it lets us write.
    if let Some(slot) = unsafe { message.as_mut() } {
        *slot = text.map_or(std::ptr::null_mut(), |text| {
            asterisk::host::c_string(&text).into_raw()
        });
    }
    result
}

/// The module's metrics in Prometheus' text format, for res_prometheus' scrape; free
/// it with `cdr_kafka_free_text`. Reads counters only: no thread, no wait on I/O locks.
#[no_mangle]
pub extern "C" fn cdr_kafka_prometheus_text() -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        asterisk::host::c_string(&module::prometheus_text()).into_raw()
    })
}

/// Frees a text returned by any `cdr_kafka_*_text`, `cdr_kafka_destination_names` or
/// `cdr_kafka_destination_set_enabled`.
///
/// # Safety
/// `text` is NULL or a pointer one of them returned, freed once.
#[no_mangle]
pub unsafe extern "C" fn cdr_kafka_free_text(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: `text` came from CString::into_raw in one of the functions above.
        drop(unsafe { CString::from_raw(text) });
    }
}
