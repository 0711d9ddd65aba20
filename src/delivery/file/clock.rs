//! Local wall-clock time for the file destination's rotation, behind a trait so the
//! tests can move time at will. The system clock asks libc (`localtime_r`, which reads
//! the machine's zone and `TZ`): chrono is built without its clock feature here.
//! Called on the destination's feeder thread only.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, NaiveDateTime, Offset, TimeZone, Utc};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// The local time now, with its offset from UTC.
    fn now(&self) -> DateTime<FixedOffset>;

    /// The local wall-clock time of an instant (a file's modification time). By default
    /// with the offset in force now; the system clock uses the offset of that instant.
    fn local(&self, at: SystemTime) -> NaiveDateTime {
        let offset = *self.now().offset();
        offset.from_utc_datetime(&utc(at)).naive_local()
    }
}

fn utc(at: SystemTime) -> NaiveDateTime {
    let secs = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    DateTime::from_timestamp(secs, 0).map_or(NaiveDateTime::MIN, |t| t.naive_utc())
}

/// The machine's clock and time zone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// `at` in the machine's zone; UTC if libc cannot say.
    fn zoned(at: SystemTime) -> DateTime<FixedOffset> {
        let utc = utc(at);
        let secs = utc.and_utc().timestamp() as libc::time_t;
        // SAFETY: `tm` is plain data that any bit pattern (all zeroes here) makes valid.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals for the length of the call;
        // localtime_r is the thread-safe variant and keeps neither pointer.
        let filled = unsafe { libc::localtime_r(&secs, &mut tm) };
        let offset = if filled.is_null() {
            None
        } else {
            FixedOffset::east_opt(tm.tm_gmtoff as i32)
        };
        let offset = offset.unwrap_or_else(|| Utc.fix());
        offset.from_utc_datetime(&utc)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<FixedOffset> {
        Self::zoned(SystemTime::now())
    }

    fn local(&self, at: SystemTime) -> NaiveDateTime {
        Self::zoned(at).naive_local()
    }
}
