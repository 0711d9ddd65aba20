//! Bindings bindgen generated from wrapper.h against the Asterisk headers being built for.
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code
)]
#![allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
