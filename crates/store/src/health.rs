//! Whether the store is taking writes: the last task write's outcome, kept
//! for readiness, so a full disk or a lost database shows in `/readyz` and
//! clears by itself once a write commits again.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::StoreError;

/// Why task writes are failing, since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    /// When the first write of the current run of failures failed.
    pub since: DateTime<Utc>,
    /// The latest failure, as the store reported it.
    pub error: String,
    /// Whether the database is out of space (rather than unreachable).
    pub storage_full: bool,
}

/// The outcome of the latest task write; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct WriteHealth(Arc<Mutex<Option<WriteFailure>>>);

impl WriteHealth {
    /// Records a write's outcome: success clears a failure; a failure of the
    /// database's condition ([`StoreError::is_transient`]) starts or extends
    /// one. A write's own refusal (a version conflict) says nothing about
    /// the database and changes nothing.
    pub fn record(&self, outcome: &Result<(), StoreError>) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => *state = None,
            Err(error) if error.is_transient() => {
                let since = state.as_ref().map_or_else(Utc::now, |f| f.since);
                *state = Some(WriteFailure {
                    since,
                    error: error.to_string(),
                    storage_full: matches!(error, StoreError::StorageFull(_)),
                });
            }
            Err(_) => {}
        }
    }

    /// The current run of failures, if the latest write failed.
    pub fn failing(&self) -> Option<WriteFailure> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_kept_until_a_write_succeeds() {
        let health = WriteHealth::default();
        assert_eq!(health.failing(), None);
        health.record(&Err(StoreError::StorageFull("disk full".into())));
        let first = health.failing().expect("failing");
        assert!(first.storage_full);
        health.record(&Err(StoreError::Unavailable("gone".into())));
        let second = health.failing().expect("still failing");
        assert_eq!(second.since, first.since, "the run keeps its start");
        assert!(!second.storage_full);
        assert!(second.error.contains("gone"));
        health.record(&Ok(()));
        assert_eq!(health.failing(), None);
    }

    #[test]
    fn a_version_conflict_says_nothing_about_the_database() {
        let health = WriteHealth::default();
        health.record(&Err(StoreError::VersionConflict {
            task_id: "t".into(),
            expected: 1,
        }));
        assert_eq!(health.failing(), None);
    }
}
