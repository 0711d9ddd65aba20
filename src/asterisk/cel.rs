//! A borrowed view of one CEL event, as the glue read it with `ast_cel_fill_record`.
//!
//! Lifetime: the strings belong to Asterisk's event and live until the CEL callback
//! returns, so a [`CelEvent`] made here is encoded before then and nothing is kept.

use super::cdr::bytes;
use crate::cel::CelEvent;
use crate::record::CdrTime;
use crate::sys;

/// Reads the flat event the glue built.
///
/// # Safety
/// `raw` and every pointer in it must stay valid for `'a`: true inside the CEL callback.
pub unsafe fn view<'a>(raw: &'a sys::cdrk_cel) -> CelEvent<'a> {
    // SAFETY: the glue points every field at the strings of the `ast_cel_event_record`
    // being logged (or at Asterisk's static strings), alive for 'a.
    unsafe {
        CelEvent {
            eventname: bytes(raw.eventname),
            eventtime: CdrTime {
                sec: raw.eventtime.sec,
                usec: raw.eventtime.usec,
                gmtoff: raw.eventtime.gmtoff,
            },
            userdeftype: bytes(raw.userdeftype),
            cid_name: bytes(raw.cid_name),
            cid_num: bytes(raw.cid_num),
            cid_ani: bytes(raw.cid_ani),
            cid_rdnis: bytes(raw.cid_rdnis),
            cid_dnid: bytes(raw.cid_dnid),
            exten: bytes(raw.exten),
            context: bytes(raw.context),
            channame: bytes(raw.channame),
            appname: bytes(raw.appname),
            appdata: bytes(raw.appdata),
            accountcode: bytes(raw.accountcode),
            peeraccount: bytes(raw.peeraccount),
            uniqueid: bytes(raw.uniqueid),
            linkedid: bytes(raw.linkedid),
            amaflags: bytes(raw.amaflags),
            userfield: bytes(raw.userfield),
            peer: bytes(raw.peer),
            tenantid: (!raw.tenantid.is_null()).then(|| bytes(raw.tenantid)),
            extra: bytes(raw.extra),
        }
    }
}
