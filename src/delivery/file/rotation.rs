//! When the file destination starts a new file: GnuGk's [FileAcct] rules. A clock
//! rotation (hourly, daily, weekly, monthly) happens at a wall-clock moment in local
//! time; a count rotation (L lines, S size) when the next record would take the current
//! file past its limit. Plain values, no threads.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Weekday};

/// How the file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// One file forever.
    Never,
    /// Every hour at this minute.
    Hourly { minute: u32 },
    /// Every day at this time.
    Daily { at: NaiveTime },
    /// Every week on this day at this time.
    Weekly { day: Weekday, at: NaiveTime },
    /// Every month on this day (the last day of a shorter month) at this time.
    Monthly { day: u32, at: NaiveTime },
    /// Before the file would hold more than this many lines.
    Lines(u64),
    /// Before the file would hold more than this many bytes.
    Size(u64),
}

/// A rotation option the destination cannot use, with what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationError {
    /// `rotate`, `rotate_time` or `rotate_day`.
    pub option: &'static str,
    pub value: String,
    pub problem: String,
}

impl std::fmt::Display for RotationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = '{}': {}", self.option, self.value, self.problem)
    }
}

impl std::error::Error for RotationError {}

const WEEKDAYS: [(Weekday, &str); 7] = [
    (Weekday::Sun, "Sunday"),
    (Weekday::Mon, "Monday"),
    (Weekday::Tue, "Tuesday"),
    (Weekday::Wed, "Wednesday"),
    (Weekday::Thu, "Thursday"),
    (Weekday::Fri, "Friday"),
    (Weekday::Sat, "Saturday"),
];

fn weekday_name(day: Weekday) -> &'static str {
    WEEKDAYS
        .iter()
        .find(|(d, _)| *d == day)
        .map_or("?", |(_, name)| name)
}

fn problem(option: &'static str, value: &str, problem: &str) -> RotationError {
    RotationError {
        option,
        value: value.to_string(),
        problem: problem.to_string(),
    }
}

/// `HH:MM`, 00:00 to 23:59.
fn parse_time(value: &str) -> Result<NaiveTime, RotationError> {
    let bad = || {
        problem(
            "rotate_time",
            value,
            "not a time of day HH:MM (00:00 to 23:59)",
        )
    };
    let (hour, minute) = value.trim().split_once(':').ok_or_else(bad)?;
    let number = |text: &str| {
        (1..=2)
            .contains(&text.len())
            .then(|| text.parse::<u32>().ok())
            .flatten()
    };
    let (hour, minute) = number(hour).zip(number(minute)).ok_or_else(bad)?;
    NaiveTime::from_hms_opt(hour, minute, 0).ok_or_else(bad)
}

fn parse_minute(value: &str) -> Result<u32, RotationError> {
    match value.trim().parse::<u32>() {
        Ok(minute) if minute < 60 => Ok(minute),
        _ => Err(problem(
            "rotate_time",
            value,
            "not a minute past the hour for hourly rotation (0 to 59; 45 rotates at 00:45, 01:45, ...)",
        )),
    }
}

fn parse_weekday(value: &str) -> Result<Weekday, RotationError> {
    let wanted = value.trim().to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .find(|(_, name)| {
            let name = name.to_ascii_lowercase();
            wanted == name || wanted == name[..3]
        })
        .map(|(day, _)| *day)
        .ok_or_else(|| {
            problem(
                "rotate_day",
                value,
                "not a day of the week for weekly rotation (Sunday to Saturday, or Sun to Sat)",
            )
        })
}

fn parse_day_of_month(value: &str) -> Result<u32, RotationError> {
    match value.trim().parse::<u32>() {
        Ok(day) if (1..=31).contains(&day) => Ok(day),
        _ => Err(problem(
            "rotate_day",
            value,
            "not a day of the month for monthly rotation (1 to 31; a shorter month rotates on its last day)",
        )),
    }
}

/// `digits[suffix]` with the suffix's factor; None if malformed, zero or too large.
fn parse_count(text: &str, suffixes: &[(char, u64)]) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let (digits, factor) = match suffixes.iter().find(|(s, _)| lower.ends_with(*s)) {
        Some(&(_, factor)) => (&lower[..lower.len() - 1], factor),
        None => (lower.as_str(), 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()?
        .checked_mul(factor)
        .filter(|&n| n > 0)
}

const ROTATE_ACCEPTS: &str =
    "not never, hourly, daily, weekly, monthly, L<lines>[k|m] or S<size>[k|m|g]";

impl Rotation {
    /// Reads the `rotate`, `rotate_time` and `rotate_day` options (None: not set).
    /// `rotate_time` is HH:MM (default 00:00), for hourly the minute (default 0);
    /// `rotate_day` a weekday (default Sunday) or a day of the month (default 1).
    pub fn parse(
        rotate: &str,
        rotate_time: Option<&str>,
        rotate_day: Option<&str>,
    ) -> Result<Rotation, RotationError> {
        let kind = rotate.trim().to_ascii_lowercase();
        let clocked = matches!(kind.as_str(), "hourly" | "daily" | "weekly" | "monthly");
        if let (Some(time), false) = (rotate_time, clocked) {
            return Err(problem(
                "rotate_time",
                time,
                &format!("applies only to hourly, daily, weekly and monthly rotation, and rotate = '{rotate}'"),
            ));
        }
        let dated = matches!(kind.as_str(), "weekly" | "monthly");
        if let (Some(day), false) = (rotate_day, dated) {
            return Err(problem(
                "rotate_day",
                day,
                &format!("applies only to weekly and monthly rotation, and rotate = '{rotate}'"),
            ));
        }
        let at = match rotate_time {
            Some(time) if kind != "hourly" => parse_time(time)?,
            _ => NaiveTime::MIN,
        };
        Ok(match kind.as_str() {
            "" | "never" => Rotation::Never,
            "hourly" => Rotation::Hourly {
                minute: rotate_time.map(parse_minute).transpose()?.unwrap_or(0),
            },
            "daily" => Rotation::Daily { at },
            "weekly" => Rotation::Weekly {
                day: rotate_day
                    .map(parse_weekday)
                    .transpose()?
                    .unwrap_or(Weekday::Sun),
                at,
            },
            "monthly" => Rotation::Monthly {
                day: rotate_day.map(parse_day_of_month).transpose()?.unwrap_or(1),
                at,
            },
            _ => {
                let count = |suffixes: &[(char, u64)]| {
                    parse_count(&kind[1..], suffixes)
                        .ok_or_else(|| problem("rotate", rotate, ROTATE_ACCEPTS))
                };
                match kind.as_bytes().first() {
                    Some(b'l') => Rotation::Lines(count(&[('k', 1_000), ('m', 1_000_000)])?),
                    Some(b's') => {
                        Rotation::Size(count(&[('k', 1 << 10), ('m', 1 << 20), ('g', 1 << 30)])?)
                    }
                    _ => return Err(problem("rotate", rotate, ROTATE_ACCEPTS)),
                }
            }
        })
    }

    /// Whether the rotation follows the clock (and files are stamped with when they began).
    pub fn is_clocked(&self) -> bool {
        !matches!(
            self,
            Rotation::Never | Rotation::Lines(_) | Rotation::Size(_)
        )
    }

    /// The first rotation moment strictly after `t` (local wall-clock time), for a
    /// clock rotation.
    pub fn next_after(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        let first_after = |candidate: NaiveDateTime, step: Duration| {
            if candidate > t {
                Some(candidate)
            } else {
                candidate.checked_add_signed(step)
            }
        };
        match *self {
            Rotation::Never | Rotation::Lines(_) | Rotation::Size(_) => None,
            Rotation::Hourly { minute } => first_after(
                t.with_second(0)?.with_nanosecond(0)?.with_minute(minute)?,
                Duration::hours(1),
            ),
            Rotation::Daily { at } => first_after(t.date().and_time(at), Duration::days(1)),
            Rotation::Weekly { day, at } => {
                let ahead =
                    (7 + day.num_days_from_sunday() - t.weekday().num_days_from_sunday()) % 7;
                let date = t
                    .date()
                    .checked_add_signed(Duration::days(i64::from(ahead)))?;
                first_after(date.and_time(at), Duration::days(7))
            }
            Rotation::Monthly { day, at } => {
                let this = monthly_point(t.year(), t.month(), day, at)?;
                if this > t {
                    return Some(this);
                }
                let (year, month) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                monthly_point(year, month, day, at)
            }
        }
    }
}

/// `day` of the month (its last day if it has fewer) at `at`.
fn monthly_point(year: i32, month: u32, day: u32, at: NaiveTime) -> Option<NaiveDateTime> {
    (28..=day.max(28))
        .rev()
        .find_map(|d| NaiveDate::from_ymd_opt(year, month, d.min(day)))
        .map(|date| date.and_time(at))
}

impl std::fmt::Display for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hm = |at: &NaiveTime| format!("{:02}:{:02}", at.hour(), at.minute());
        match self {
            Rotation::Never => write!(f, "no rotation"),
            Rotation::Hourly { minute } => write!(f, "rotate hourly at minute {minute}"),
            Rotation::Daily { at } => write!(f, "rotate daily at {}", hm(at)),
            Rotation::Weekly { day, at } => {
                write!(f, "rotate weekly on {} at {}", weekday_name(*day), hm(at))
            }
            Rotation::Monthly { day, at } if *day > 28 => write!(
                f,
                "rotate monthly on day {day} (or the month's last) at {}",
                hm(at)
            ),
            Rotation::Monthly { day, at } => write!(f, "rotate monthly on day {day} at {}", hm(at)),
            Rotation::Lines(lines) => write!(f, "rotate every {lines} lines"),
            Rotation::Size(bytes) => write!(f, "rotate at {bytes} bytes"),
        }
    }
}
