//! A destination whose target could not be made at load (librdkafka refused its
//! producer, its file could not be opened): it takes nothing and counts as broken, so
//! its feeder keeps its records in the spool and tries to make it again once per rebuild
//! pause. Made, it is the destination from then on.

use std::time::Duration;

use super::BuildError;
use crate::delivery::destination::{Destination, Offer, Outcome};
use crate::delivery::log::StoredRecord;

/// Makes the destination's target again; the error says why not.
pub type Make = Box<dyn FnMut() -> Result<Box<dyn Destination>, BuildError> + Send>;

pub struct Unbuilt {
    name: String,
    make: Make,
    /// Why the last attempt failed (while `built` is `None`).
    error: String,
    built: Option<Box<dyn Destination>>,
}

impl Unbuilt {
    pub fn new(name: &str, error: &BuildError, make: Make) -> Self {
        Self {
            name: name.to_string(),
            make,
            error: error.to_string(),
            built: None,
        }
    }
}

impl Destination for Unbuilt {
    fn name(&self) -> &str {
        &self.name
    }

    fn offer(&mut self, record: &StoredRecord<'_>) -> Offer {
        match &mut self.built {
            Some(built) => built.offer(record),
            None => Offer::Full,
        }
    }

    fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
        if let Some(built) = &mut self.built {
            built.collect(outcomes);
        }
    }

    fn broken(&mut self) -> Option<String> {
        match &mut self.built {
            Some(built) => built.broken(),
            None => Some(format!("not built yet: {}", self.error)),
        }
    }

    fn rebuild(&mut self) -> Result<(), String> {
        if let Some(built) = &mut self.built {
            return built.rebuild();
        }
        match (self.make)() {
            Ok(built) => {
                self.built = Some(built);
                Ok(())
            }
            Err(error) => {
                self.error = error.to_string();
                Err(self.error.clone())
            }
        }
    }

    fn in_flight(&self) -> u64 {
        self.built.as_ref().map_or(0, |built| built.in_flight())
    }

    fn flush(&mut self, timeout: Duration) {
        if let Some(built) = &mut self.built {
            built.flush(timeout);
        }
    }

    fn describe(&self) -> String {
        match &self.built {
            Some(built) => built.describe(),
            None => format!(
                "not built ({}) — its records wait in the spool; tried again every second",
                self.error
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes everything and confirms it at the next collect.
    struct Taker {
        taken: Vec<u64>,
    }

    impl Destination for Taker {
        fn name(&self) -> &str {
            "later"
        }
        fn offer(&mut self, record: &StoredRecord<'_>) -> Offer {
            self.taken.push(record.seq);
            Offer::Taken
        }
        fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
            outcomes.extend(self.taken.drain(..).map(|seq| (seq, Outcome::Delivered)));
        }
        fn broken(&mut self) -> Option<String> {
            None
        }
        fn rebuild(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn in_flight(&self) -> u64 {
            self.taken.len() as u64
        }
        fn flush(&mut self, _: Duration) {}
        fn describe(&self) -> String {
            "taker".into()
        }
    }

    fn refused(attempt: u32) -> BuildError {
        BuildError::Open {
            name: "later".into(),
            error: format!("attempt {attempt}: No such file or directory"),
        }
    }

    #[test]
    fn it_takes_nothing_until_made_then_is_the_destination_made() {
        let mut attempts = 0;
        let make: Make = Box::new(move || {
            attempts += 1;
            if attempts < 3 {
                Err(refused(attempts))
            } else {
                Ok(Box::new(Taker { taken: Vec::new() }) as Box<dyn Destination>)
            }
        });
        let mut unbuilt = Unbuilt::new("later", &refused(0), make);
        let record = StoredRecord::test_cdr(7, b"{}");
        assert_eq!(unbuilt.offer(&record), Offer::Full);
        let reason = unbuilt.broken().expect("broken until made");
        assert!(reason.contains("attempt 0"), "{reason}");
        assert!(unbuilt.describe().contains("its records wait in the spool"));

        let error = unbuilt.rebuild().expect_err("the first attempt fails");
        assert!(error.contains("attempt 1"), "{error}");
        assert!(unbuilt
            .broken()
            .expect("still broken")
            .contains("attempt 1"));
        assert!(unbuilt.rebuild().is_err());
        unbuilt.rebuild().expect("the third attempt makes it");

        assert_eq!(unbuilt.broken(), None);
        assert_eq!(unbuilt.describe(), "taker");
        assert_eq!(unbuilt.offer(&record), Offer::Taken);
        assert_eq!(unbuilt.in_flight(), 1);
        let mut outcomes = Vec::new();
        unbuilt.collect(&mut outcomes);
        assert_eq!(outcomes, vec![(7, Outcome::Delivered)]);
    }
}
