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
pub mod module;
pub mod ratelimit;
pub mod record;
pub mod routing;
pub mod shape;
pub mod shaping;
mod sys;

use std::ffi::{c_char, c_int, CString};
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

/// Frees a text returned by `cdr_kafka_status_text`.
///
/// # Safety
/// `text` is NULL or a pointer `cdr_kafka_status_text` returned, freed once.
#[no_mangle]
pub unsafe extern "C" fn cdr_kafka_free_text(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: `text` came from CString::into_raw in cdr_kafka_status_text.
        drop(unsafe { CString::from_raw(text) });
    }
}
