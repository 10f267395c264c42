//! Wall-clock time at the precision taskstream stores.

use chrono::{DateTime, SubsecRound, Utc};

/// The current time, truncated to microseconds: the precision every store
/// keeps, so a timestamp read back equals the one handed out.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
