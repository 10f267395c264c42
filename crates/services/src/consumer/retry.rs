//! Retry and hold: one policy for every transient failure, whether the
//! record could not be decoded yet (schema registry away) or its handler
//! failed (store or downstream away).
//!
//! A transient failure is retried a few times at once, with exponential
//! backoff and jitter ([`attempt_in_a_row`]). If it persists, the record's
//! partition is *held* ([`Holds`]): paused and rewound to the record, which
//! comes again after a growing delay, while the other partitions flow and
//! the member keeps polling (so it keeps its place in the group). Only a
//! failure that lasts longer than [`RetryPolicy::give_up_after`] gives up on
//! the record (the caller dead-letters it).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use taskstream_kafka::{EventConsumer, InboundRecord, KafkaError};
use tokio::time::Instant;

use super::HandleError;
use crate::{Backoff, Shutdown};

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts made in a row, the first included, before the partition is held.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    /// The longest wait between attempts, in a row or while held.
    pub max_backoff: Duration,
    /// How long a transient failure may last, from its first attempt,
    /// before the record is dead-lettered (zero: after the attempts in a row).
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            give_up_after: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> Backoff {
        Backoff::new(self.initial_backoff, self.max_backoff)
    }
}

/// How a run of attempts ended.
pub(crate) enum Attempts<T> {
    Succeeded(T),
    /// The last failure: permanent, or transient after every attempt allowed.
    Failed {
        error: HandleError,
        attempts: u32,
    },
    /// Shutdown came during a wait between attempts.
    Interrupted,
}

/// Runs `attempt` up to `allowed` times while it fails transiently, waiting
/// the policy's backoff between attempts. `on_transient` sees each
/// transient failure with the attempt's number and the wait before the
/// next one (`None` when no attempt is left).
pub(crate) async fn attempt_in_a_row<T, F, Fut>(
    policy: &RetryPolicy,
    allowed: u32,
    shutdown: &mut Shutdown,
    mut on_transient: impl FnMut(&HandleError, u32, Option<Duration>),
    mut attempt: F,
) -> Attempts<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, HandleError>>,
{
    let mut backoff = policy.backoff();
    let mut number = 1;
    loop {
        let error = match attempt().await {
            Ok(value) => return Attempts::Succeeded(value),
            Err(error) => error,
        };
        if !error.is_retriable() || number >= allowed {
            if error.is_retriable() {
                on_transient(&error, number, None);
            }
            return Attempts::Failed {
                error,
                attempts: number,
            };
        }
        let delay = backoff.next_delay();
        on_transient(&error, number, Some(delay));
        tokio::select! {
            _ = shutdown.wait() => return Attempts::Interrupted,
            _ = tokio::time::sleep(delay) => {}
        }
        number += 1;
    }
}

/// What the runtime needs of its partitions to hold one.
pub(crate) trait Partitions {
    fn group(&self) -> &str;
    /// The current assignment's number for the partition; `None` if not ours.
    fn ownership(&self, topic: &str, partition: i32) -> Option<u64>;
    fn pause(&self, topic: &str, partition: i32) -> Result<(), KafkaError>;
    /// Resumes fetching at `offset`.
    fn resume_at(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError>;
}

impl Partitions for EventConsumer {
    fn group(&self) -> &str {
        EventConsumer::group(self)
    }
    fn ownership(&self, topic: &str, partition: i32) -> Option<u64> {
        EventConsumer::ownership(self, topic, partition)
    }
    fn pause(&self, topic: &str, partition: i32) -> Result<(), KafkaError> {
        EventConsumer::pause(self, topic, partition)
    }
    fn resume_at(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
        EventConsumer::resume_at(self, topic, partition, offset)
    }
}

/// What to do with a record whose transient failure outlasted its attempts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Its partition is held at it (or is no longer ours): nothing behind it
    /// is handled here meanwhile.
    Held,
    /// The failure has lasted `give_up_after`: give up after this many
    /// attempts in all.
    GiveUp(u32),
}

/// The partitions held at a failing record, by (topic, partition).
pub(crate) struct Holds {
    policy: RetryPolicy,
    held: HashMap<(String, i32), Held>,
}

/// A partition waiting to redeliver the record whose handling keeps failing.
struct Held {
    /// The consumer's ownership of the partition when it was held; another
    /// value means it was lost (and maybe assigned again) meanwhile.
    ownership: u64,
    offset: i64,
    /// The first failed attempt at this record.
    since: Instant,
    /// When to fetch again; `None` once resumed.
    resume_at: Option<Instant>,
    backoff: Backoff,
    /// Attempts at this record so far, across redeliveries.
    attempts: u32,
}

impl Holds {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            held: HashMap::new(),
        }
    }

    pub(crate) fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The earliest time a held partition is due to fetch again.
    pub(crate) fn next_resume(&self) -> Option<Instant> {
        self.held.values().filter_map(|h| h.resume_at).min()
    }

    /// Resumes every held partition whose wait is over, rewound to its
    /// held record. Entries of partitions lost meanwhile are dropped (a new
    /// assignment starts unpaused, from the committed offset).
    pub(crate) fn resume_due(&mut self, partitions: &impl Partitions) {
        let now = Instant::now();
        self.held.retain(|(topic, partition), h| {
            if partitions.ownership(topic, *partition) != Some(h.ownership) {
                return false;
            }
            if h.resume_at.is_some_and(|at| at <= now) {
                match partitions.resume_at(topic, *partition, h.offset) {
                    Ok(()) => h.resume_at = None,
                    Err(error) => {
                        tracing::warn!(group = partitions.group(), %error, "cannot resume a held partition; trying again");
                        h.resume_at = Some(now + Duration::from_millis(500));
                    }
                }
            }
            true
        });
    }

    /// Whether `record` arrived while its partition is held (it will come
    /// again: resuming rewinds to the held record). The partition is paused
    /// again, should the pause not have stopped it.
    pub(crate) fn is_held(&mut self, partitions: &impl Partitions, record: &InboundRecord) -> bool {
        let key = (record.topic.clone(), record.partition);
        let Some(h) = self.held.get(&key) else {
            return false;
        };
        if partitions.ownership(&record.topic, record.partition) != Some(h.ownership) {
            // Lost and assigned again since: the hold is over.
            self.held.remove(&key);
            return false;
        }
        if h.resume_at.is_none() {
            return false;
        }
        if let Err(error) = partitions.pause(&record.topic, record.partition) {
            tracing::warn!(group = partitions.group(), %error, "cannot pause a held partition");
        }
        true
    }

    /// Attempts to make in a row at `record`: the policy's, or one when it
    /// is a held record coming back (its partition waits between rounds).
    pub(crate) fn attempts_in_a_row(&self, record: &InboundRecord) -> u32 {
        let key = (record.topic.clone(), record.partition);
        match self.held.get(&key) {
            Some(h) if h.offset == record.offset => 1,
            _ => self.policy.max_attempts.max(1),
        }
    }

    /// After a transient failure of `record` outlasted `attempts` in a row:
    /// holds its partition at the record, or, once the failure has lasted
    /// `give_up_after`, gives up.
    pub(crate) fn hold(
        &mut self,
        partitions: &impl Partitions,
        record: &InboundRecord,
        error: &str,
        attempts: u32,
    ) -> Hold {
        let group = partitions.group();
        let key = (record.topic.clone(), record.partition);
        let Some(ownership) = partitions.ownership(&record.topic, record.partition) else {
            // Not ours any more: its new owner starts at the committed
            // offset, before this record. Nothing behind it is handled here.
            return Hold::Held;
        };
        let fresh = || Held {
            ownership,
            offset: record.offset,
            since: Instant::now(),
            resume_at: None,
            backoff: self.policy.backoff(),
            attempts: 0,
        };
        let entry = self.held.entry(key.clone()).or_insert_with(fresh);
        if entry.offset != record.offset || entry.ownership != ownership {
            // Another record, or another assignment: a new failure.
            *entry = fresh();
        }
        entry.attempts += attempts;
        let total = entry.attempts;
        let failing_for = entry.since.elapsed();
        if failing_for >= self.policy.give_up_after {
            // The partition is not paused (this record was just delivered).
            self.held.remove(&key);
            return Hold::GiveUp(total);
        }
        // Should pausing fail, records behind arrive and are dropped (and
        // the pause tried again) until the resume rewinds to this record.
        if let Err(pause_error) = partitions.pause(&record.topic, record.partition) {
            tracing::warn!(group, error = %pause_error, "cannot pause the partition");
        }
        let delay = entry.backoff.next_delay();
        entry.resume_at = Some(Instant::now() + delay);
        tracing::warn!(
            group,
            error,
            partition = record.partition,
            offset = record.offset,
            failing_for_s = failing_for.as_secs(),
            retry_in_ms = delay.as_millis() as u64,
            "still failing; holding the partition at this record"
        );
        Hold::Held
    }

    /// `record` was handled (or dead-lettered): its partition is no longer held.
    pub(crate) fn release(&mut self, record: &InboundRecord) {
        let key = (record.topic.clone(), record.partition);
        if self
            .held
            .get(&key)
            .is_some_and(|h| h.offset <= record.offset)
        {
            self.held.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::consumer::fixtures::record;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            give_up_after: Duration::from_secs(60),
        }
    }

    /// One partition of one topic, owned under assignment `owner` (none when 0).
    struct Partition {
        owner: Cell<u64>,
        paused: Cell<bool>,
        resumed_at: RefCell<Vec<i64>>,
    }

    impl Partition {
        fn owned() -> Self {
            Self {
                owner: Cell::new(1),
                paused: Cell::new(false),
                resumed_at: RefCell::new(Vec::new()),
            }
        }
    }

    impl Partitions for Partition {
        fn group(&self) -> &str {
            "auditor"
        }
        fn ownership(&self, _: &str, _: i32) -> Option<u64> {
            Some(self.owner.get()).filter(|o| *o != 0)
        }
        fn pause(&self, _: &str, _: i32) -> Result<(), KafkaError> {
            self.paused.set(true);
            Ok(())
        }
        fn resume_at(&self, _: &str, _: i32, offset: i64) -> Result<(), KafkaError> {
            self.paused.set(false);
            self.resumed_at.borrow_mut().push(offset);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_growing_waits_until_success() {
        let (_trigger, mut shutdown) = Shutdown::new();
        let started = Instant::now();
        let calls = Cell::new(0);
        let mut waits = Vec::new();
        let outcome = attempt_in_a_row(
            &policy(),
            3,
            &mut shutdown,
            |_, _, delay| waits.push(delay),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 3 {
                        Err(HandleError::transient("store away"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert!(matches!(outcome, Attempts::Succeeded(3)));
        assert_eq!(waits.len(), 2);
        let (first, second) = (waits[0].unwrap(), waits[1].unwrap());
        assert!(first <= Duration::from_millis(100) && second >= Duration::from_millis(100));
        // The paused clock moves in whole milliseconds.
        let waited = started.elapsed();
        assert!(
            waited >= first + second && waited <= first + second + Duration::from_millis(2),
            "only the backoff waits pass: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_not_retried() {
        let (_trigger, mut shutdown) = Shutdown::new();
        let mut transient = 0;
        let outcome: Attempts<()> = attempt_in_a_row(
            &policy(),
            3,
            &mut shutdown,
            |_, _, _| transient += 1,
            || async { Err(HandleError::permanent("not an event")) },
        )
        .await;
        let Attempts::Failed { error, attempts } = outcome else {
            panic!("expected a failure");
        };
        assert_eq!((attempts, transient), (1, 0));
        assert!(!error.is_retriable());
    }

    #[tokio::test(start_paused = true)]
    async fn a_persisting_transient_failure_stops_after_the_attempts_allowed() {
        let (_trigger, mut shutdown) = Shutdown::new();
        let mut seen = Vec::new();
        let outcome: Attempts<()> = attempt_in_a_row(
            &policy(),
            3,
            &mut shutdown,
            |_, attempt, delay| seen.push((attempt, delay.is_some())),
            || async { Err(HandleError::transient("store away")) },
        )
        .await;
        assert!(matches!(outcome, Attempts::Failed { attempts: 3, .. }));
        assert_eq!(seen, [(1, true), (2, true), (3, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_the_wait_between_attempts() {
        let (trigger, mut shutdown) = Shutdown::new();
        let outcome: Attempts<()> = attempt_in_a_row(
            &policy(),
            3,
            &mut shutdown,
            |_, _, _| trigger.trigger(),
            || async { Err(HandleError::transient("store away")) },
        )
        .await;
        assert!(matches!(outcome, Attempts::Interrupted));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_partition_is_paused_resumed_at_its_record_and_released_once_handled() {
        let partition = Partition::owned();
        let mut holds = Holds::new(policy());
        let failing = record(10);
        assert_eq!(holds.attempts_in_a_row(&failing), 3);
        assert_eq!(
            holds.hold(&partition, &failing, "store away", 3),
            Hold::Held
        );
        assert!(partition.paused.get());
        // A record behind it, fetched before the pause took, waits.
        assert!(holds.is_held(&partition, &record(11)));
        // Redelivered, the held record gets one attempt per round.
        assert_eq!(holds.attempts_in_a_row(&failing), 1);

        let due = holds.next_resume().expect("a resume is planned");
        holds.resume_due(&partition);
        assert!(partition.resumed_at.borrow().is_empty(), "not due yet");
        tokio::time::sleep_until(due).await;
        holds.resume_due(&partition);
        assert_eq!(*partition.resumed_at.borrow(), [10]);
        assert!(holds.next_resume().is_none());
        assert!(!holds.is_held(&partition, &failing), "it comes again now");

        holds.release(&failing);
        assert_eq!(holds.attempts_in_a_row(&failing), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_lasting_longer_than_give_up_after_gives_up_with_every_attempt_counted() {
        let partition = Partition::owned();
        let mut holds = Holds::new(policy());
        let failing = record(5);
        assert_eq!(holds.hold(&partition, &failing, "away", 3), Hold::Held);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(holds.hold(&partition, &failing, "away", 1), Hold::Held);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(holds.hold(&partition, &failing, "away", 1), Hold::GiveUp(5));
        assert!(holds.next_resume().is_none(), "given up: no longer held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_give_up_after_gives_up_after_the_attempts_in_a_row() {
        let partition = Partition::owned();
        let mut holds = Holds::new(RetryPolicy {
            give_up_after: Duration::ZERO,
            ..policy()
        });
        assert_eq!(
            holds.hold(&partition, &record(1), "away", 3),
            Hold::GiveUp(3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_ends_when_the_partition_is_lost() {
        let partition = Partition::owned();
        let mut holds = Holds::new(policy());
        holds.hold(&partition, &record(3), "away", 3);
        // Revoked and assigned again: a new assignment starts from the
        // committed offset, unpaused.
        partition.owner.set(2);
        assert!(!holds.is_held(&partition, &record(4)));
        assert!(holds.next_resume().is_none());
        // Not ours at all: nothing is held, and nothing behind is handled.
        partition.owner.set(0);
        assert_eq!(holds.hold(&partition, &record(3), "away", 3), Hold::Held);
        assert!(holds.next_resume().is_none());
    }
}
