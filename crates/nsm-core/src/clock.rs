//! The injected clock.
//!
//! Every timer and every "now" in nsm-rs goes through [`Clock`]. It is built on tokio's clock, so a test
//! that pauses tokio time (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) controls every
//! refresh, timeout, expiry and heal deterministically — wall-clock times included, because the wall
//! clock is derived from tokio's monotonic clock plus a fixed base.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use tokio::time::{Instant, Sleep};

/// Monotonic and wall-clock time for one process (or one test).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_wall: SystemTime,
    base_mono: Instant,
}

impl Clock {
    /// A clock whose wall time starts at the real current time.
    #[allow(clippy::disallowed_methods)] // the one place that reads the system clock
    pub fn system() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock whose wall time starts at `wall` now; useful in tests for reproducible timestamps.
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            base_wall: wall,
            base_mono: Instant::now(),
        }
    }

    /// Monotonic now (tokio's clock; frozen while a test has paused time).
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// Wall-clock now, derived from the monotonic clock.
    pub fn now(&self) -> SystemTime {
        self.base_wall + Instant::now().saturating_duration_since(self.base_mono)
    }

    /// Wall-clock now as a protobuf timestamp.
    pub fn now_timestamp(&self) -> Timestamp {
        to_timestamp(self.now())
    }

    /// A timer that fires after `d`.
    pub fn sleep(&self, d: Duration) -> Sleep {
        tokio::time::sleep(d)
    }

    /// A timer that fires at the monotonic instant `at`.
    pub fn sleep_until(&self, at: Instant) -> Sleep {
        tokio::time::sleep_until(at)
    }

    /// How long until the wall-clock time `t` (zero if it has passed).
    pub fn until(&self, t: SystemTime) -> Duration {
        t.duration_since(self.now()).unwrap_or(Duration::ZERO)
    }

    /// How long until the protobuf timestamp `t` (zero if it has passed or is malformed).
    pub fn until_timestamp(&self, t: &Timestamp) -> Duration {
        from_timestamp(t).map_or(Duration::ZERO, |t| self.until(t))
    }

    /// The monotonic instant at which wall-clock time `t` arrives.
    pub fn instant_of(&self, t: SystemTime) -> Instant {
        self.instant() + self.until(t)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

/// Converts a wall-clock time to a protobuf timestamp (times before 1970 clamp to the epoch).
pub fn to_timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // subsec_nanos < 1e9 always fits in i32.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf timestamp to wall-clock time; `None` for negative or malformed values.
pub fn from_timestamp(t: &Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_clock_follows_paused_tokio_time() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Clock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(90));
        let ts = clock.now_timestamp();
        assert_eq!(ts.seconds, 1_700_000_090);
        assert_eq!(from_timestamp(&ts), Some(clock.now()));
        assert_eq!(clock.until(start), Duration::ZERO);
    }

    #[test]
    fn malformed_timestamps_are_none() {
        assert!(
            from_timestamp(&Timestamp {
                seconds: -1,
                nanos: 0
            })
            .is_none()
        );
        assert!(
            from_timestamp(&Timestamp {
                seconds: 1,
                nanos: 2_000_000_000
            })
            .is_none()
        );
    }
}
