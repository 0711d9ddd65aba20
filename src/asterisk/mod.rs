//! Safe wrappers over what the C glue hands us. Only this module, `sys` and the entry
//! points in lib.rs touch raw pointers.

pub mod cdr;
pub mod cel;
pub mod config;
pub mod host;
