//! A borrowed view of one Asterisk CDR, as the glue flattened it.
//!
//! Lifetime: Asterisk owns the CDR and frees it when the backend callback returns, so
//! a [`Cdr`] made here must be encoded before then; nothing of it is kept.

use std::ffi::{c_char, CStr};

use super::host::table;
use crate::record::{Cdr, CdrTime};
use crate::sys;

/// Bytes of a C string field; empty for NULL.
///
/// # Safety
/// `pointer` is NULL or a NUL-terminated string valid for `'a`.
pub(super) unsafe fn bytes<'a>(pointer: *const c_char) -> &'a [u8] {
    if pointer.is_null() {
        return b"";
    }
    // SAFETY: the caller guarantees a NUL-terminated string that lives for 'a.
    unsafe { CStr::from_ptr(pointer) }.to_bytes()
}

fn time(time: &sys::cdrk_time) -> CdrTime {
    CdrTime {
        sec: time.sec,
        usec: time.usec,
        gmtoff: time.gmtoff,
    }
}

/// Reads the flat CDR the glue built.
///
/// # Safety
/// `raw` and every pointer in it must stay valid for `'a`: true inside the CDR callback,
/// where Asterisk owns the CDR until the callback returns.
pub unsafe fn view<'a>(raw: &'a sys::cdrk_cdr) -> Cdr<'a> {
    // SAFETY: the glue points every field at the char arrays of the `struct ast_cdr` being
    // logged or at Asterisk's static strings (disp2str, amaflags), alive for 'a.
    unsafe {
        let tenant = |pointer: *const c_char| (!pointer.is_null()).then(|| bytes(pointer));
        Cdr {
            clid: bytes(raw.clid),
            src: bytes(raw.src),
            dst: bytes(raw.dst),
            dcontext: bytes(raw.dcontext),
            channel: bytes(raw.channel),
            dstchannel: bytes(raw.dstchannel),
            lastapp: bytes(raw.lastapp),
            lastdata: bytes(raw.lastdata),
            start: time(&raw.start),
            answer: time(&raw.answer),
            end: time(&raw.end),
            duration: raw.duration,
            billsec: raw.billsec,
            disposition: bytes(raw.disposition),
            amaflags: bytes(raw.amaflags),
            accountcode: bytes(raw.accountcode),
            peeraccount: bytes(raw.peeraccount),
            uniqueid: bytes(raw.uniqueid),
            linkedid: bytes(raw.linkedid),
            tenantid: tenant(raw.tenantid),
            peertenantid: tenant(raw.peertenantid),
            userfield: bytes(raw.userfield),
            sequence: raw.sequence,
            variables: variables(raw.variables),
        }
    }
}

/// Walks the CDR's variable list with the glue's `variable_next`.
///
/// # Safety
/// `first` is NULL or the first `struct ast_var_t` of a CDR valid for `'a`.
unsafe fn variables<'a>(first: *const std::ffi::c_void) -> Vec<(&'a [u8], &'a [u8])> {
    let mut variables = Vec::new();
    let Some(next) = table().and_then(|host| host.variable_next) else {
        return variables;
    };
    let mut cursor = first;
    while !cursor.is_null() {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_char = std::ptr::null();
        // SAFETY: `cursor` is an element of the CDR's list (first, or what the previous call
        // returned); the glue reads name and value with ast_var_name/ast_var_value.
        cursor = unsafe { next(cursor, &mut name, &mut value) };
        // SAFETY: a variable's name and value live as long as the CDR.
        variables.push(unsafe { (bytes(name), bytes(value)) });
    }
    variables
}
