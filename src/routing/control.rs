//! Control flags, exactly as GnuGk's accounting stack (section 8.1 of its manual)
//! words them, applied per record to the destinations in file order:
//! - required: a failure sets the final status to failure; the record goes on down;
//! - optional: tried, the final status is not affected (unless it is the last one
//!   that took the record); the record always goes on down;
//! - sufficient: success ends the walk; a failure sets the final status to failure
//!   and the record goes on down;
//! - alternative: success ends the walk; a failure leaves the final status as it is
//!   and the record goes on down.
//!
//! After the walk, the final status is a failure if the last destination that took
//! the record did not succeed. A destination that does not take a record (another
//! kind, a filter, a missed-call rule, `kafka_to`) is passed over as GnuGk passes
//! over a module not enabled for an event: it changes nothing.

/// How a destination's result weighs in the final status of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlFlag {
    #[default]
    Required,
    Optional,
    Sufficient,
    Alternative,
}

impl ControlFlag {
    pub const NAMES: [&'static str; 4] = ["required", "optional", "sufficient", "alternative"];

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "required" => Some(Self::Required),
            "optional" => Some(Self::Optional),
            "sufficient" => Some(Self::Sufficient),
            "alternative" => Some(Self::Alternative),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Optional => "optional",
            Self::Sufficient => "sufficient",
            Self::Alternative => "alternative",
        }
    }

    /// Success of a destination with this flag ends the walk.
    pub fn ends_walk_on_success(self) -> bool {
        matches!(self, Self::Sufficient | Self::Alternative)
    }
}

/// What one destination did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Delivered.
    Ok,
    /// Refused for good, or not confirmed within `give_up_after_ms`.
    Failed,
    /// Did not take it (not reached, or its rules leave the record out).
    Passed,
}

/// Whether the walk reaches position `statuses.len()`, given what the destinations
/// before it did (those not reached count as `Passed`).
pub fn reached(flags: &[ControlFlag], statuses: &[Status]) -> bool {
    !flags
        .iter()
        .zip(statuses)
        .any(|(flag, status)| *status == Status::Ok && flag.ends_walk_on_success())
}

/// The final status of a record: true for success. `statuses` holds every
/// destination's, in stack order.
pub fn final_success(flags: &[ControlFlag], statuses: &[Status]) -> bool {
    let mut success = true;
    let mut last = Status::Ok;
    for (flag, status) in flags.iter().zip(statuses) {
        if *status == Status::Passed {
            continue;
        }
        last = *status;
        if *status == Status::Failed
            && matches!(flag, ControlFlag::Required | ControlFlag::Sufficient)
        {
            success = false;
        }
        if *status == Status::Ok && flag.ends_walk_on_success() {
            break;
        }
    }
    success && last == Status::Ok
}

#[cfg(test)]
mod tests {
    use super::ControlFlag::{Alternative, Optional, Required, Sufficient};
    use super::Status::{Failed, Ok, Passed};
    use super::*;

    /// Walks a stack the way the feeders do: each destination is asked only when
    /// reached; `results` is what each would do if asked.
    fn walk(stack: &[(ControlFlag, Status)]) -> (Vec<bool>, bool) {
        let flags: Vec<ControlFlag> = stack.iter().map(|(flag, _)| *flag).collect();
        let mut statuses = Vec::new();
        let mut asked = Vec::new();
        for (index, (_, result)) in stack.iter().enumerate() {
            let reach = reached(&flags[..index], &statuses);
            asked.push(reach && *result != Passed);
            statuses.push(if reach { *result } else { Passed });
        }
        (asked, final_success(&flags, &statuses))
    }

    #[test]
    fn gnugk_control_flag_table() {
        // (stack, which destinations write the record, final status)
        type Row<'a> = (&'a [(ControlFlag, Status)], &'a [bool], bool);
        let table: &[Row] = &[
            // required: a failure fails the record, the rest still get it
            (&[(Required, Ok)], &[true], true),
            (&[(Required, Failed)], &[true], false),
            (&[(Required, Failed), (Required, Ok)], &[true, true], false),
            (&[(Required, Ok), (Required, Ok)], &[true, true], true),
            // optional: no effect, unless last
            (&[(Optional, Failed), (Required, Ok)], &[true, true], true),
            (&[(Required, Ok), (Optional, Failed)], &[true, true], false),
            (&[(Required, Ok), (Optional, Ok)], &[true, true], true),
            // sufficient: success ends the walk; failure fails and goes on
            (
                &[(Sufficient, Ok), (Required, Failed)],
                &[true, false],
                true,
            ),
            (
                &[(Sufficient, Failed), (Required, Ok)],
                &[true, true],
                false,
            ),
            (
                &[(Required, Failed), (Sufficient, Ok)],
                &[true, true],
                false,
            ),
            // alternative: success ends the walk; failure changes nothing
            (&[(Alternative, Ok), (Sufficient, Ok)], &[true, false], true),
            (
                &[(Alternative, Failed), (Sufficient, Ok)],
                &[true, true],
                true,
            ),
            (
                &[(Alternative, Failed), (Sufficient, Failed)],
                &[true, true],
                false,
            ),
            (
                &[(Alternative, Failed), (Optional, Ok)],
                &[true, true],
                true,
            ),
            (&[(Alternative, Failed)], &[true], false),
            // GnuGk's sample #1: RADIUS optional, file required
            (&[(Optional, Failed), (Required, Ok)], &[true, true], true),
            // a destination that does not take the record changes nothing
            (
                &[(Alternative, Passed), (Sufficient, Ok)],
                &[false, true],
                true,
            ),
            (&[(Required, Ok), (Optional, Passed)], &[true, false], true),
            (
                &[(Required, Failed), (Optional, Passed)],
                &[true, false],
                false,
            ),
            (&[(Required, Passed)], &[false], true),
            // chains: the first success of a terminal flag stops everything after it
            (
                &[
                    (Alternative, Failed),
                    (Alternative, Ok),
                    (Sufficient, Ok),
                    (Required, Ok),
                ],
                &[true, true, false, false],
                true,
            ),
        ];
        for (stack, writes, success) in table {
            let (asked, final_status) = walk(stack);
            assert_eq!(&asked, writes, "who is asked in {stack:?}");
            assert_eq!(final_status, *success, "final status of {stack:?}");
        }
    }

    #[test]
    fn flags_parse_by_name() {
        for name in ControlFlag::NAMES {
            assert_eq!(ControlFlag::parse(name).map(ControlFlag::name), Some(name));
        }
        assert_eq!(ControlFlag::parse("Sufficient"), Some(Sufficient));
        assert_eq!(ControlFlag::parse("requisite"), None);
    }
}
