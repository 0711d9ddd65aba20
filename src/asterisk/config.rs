//! Reading a configuration file with Asterisk's own config engine (`ast_config_load2`),
//! through the glue: `#include`, templates and comments are Asterisk's business.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::host::{c_string, table};
use crate::config::{ConfigError, Entry};
use crate::sys;

/// Every `name = value` of `filename`, in file order.
pub fn read(filename: &'static str) -> Result<Vec<Entry>, ConfigError> {
    let Some(walk) = table().and_then(|host| host.config_walk) else {
        return Err(ConfigError::Unparsable { file: filename });
    };
    let mut entries: Vec<Entry> = Vec::new();
    let name = c_string(filename);
    // SAFETY: the glue calls `collect_entry` synchronously, before returning, with the
    // context pointer we pass; `entries` outlives the call.
    let status = unsafe {
        walk(
            name.as_ptr(),
            (&mut entries as *mut Vec<Entry>).cast::<c_void>(),
            Some(collect_entry),
        )
    };
    match status {
        sys::cdrk_config_status::CDRK_CONFIG_OK => Ok(entries),
        sys::cdrk_config_status::CDRK_CONFIG_MISSING => {
            Err(ConfigError::Missing { file: filename })
        }
        sys::cdrk_config_status::CDRK_CONFIG_INVALID => {
            Err(ConfigError::Unparsable { file: filename })
        }
    }
}

fn text(pointer: *const c_char) -> String {
    if pointer.is_null() {
        return String::new();
    }
    // SAFETY: Asterisk's config variables are NUL-terminated and live until
    // ast_config_destroy, which the glue calls after the walk.
    unsafe { CStr::from_ptr(pointer) }
        .to_string_lossy()
        .into_owned()
}

unsafe extern "C" fn collect_entry(
    context: *mut c_void,
    category: *const c_char,
    name: *const c_char,
    value: *const c_char,
    lineno: c_int,
) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `context` is the `Vec<Entry>` `read` passed, exclusively ours during the walk.
        let entries = unsafe { &mut *context.cast::<Vec<Entry>>() };
        entries.push(Entry {
            section: text(category),
            name: text(name),
            value: text(value),
            line: lineno,
        });
    }));
    // Stop the walk if anything went wrong; the file is then reported unparsable upstream.
    c_int::from(result.is_err())
}
