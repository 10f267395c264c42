//! The assignment saga's durable state: each saga's row, its ordered
//! history, its deadline and the capacity it holds, written together with
//! the saga events (and any task change) each step publishes through the
//! outbox, in one transaction.
//!
//! The store knows no saga rules: the orchestrator (in
//! `taskstream_services::saga`) decides what a step does and hands the store
//! the whole step ([`SagaStart`], [`SagaTransition`]). What the store
//! guarantees is that a step happens at most once: a start is keyed by the
//! event that triggered it, and a transition applies only while the saga is
//! still in one of the states it expects, so a repeated or racing step
//! (a redelivered event, a timer and an accept at once, a restart) writes
//! nothing the second time.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use taskstream_domain::Task;
use uuid::Uuid;

use crate::{OutboxMessage, StoreError};

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SagaState {
    /// The assignee was asked to accept; the deadline runs.
    AwaitingAcceptance,
    /// Declined, timed out or over capacity: the compensation is due.
    Compensating,
    /// Accepted (terminal).
    Completed,
    /// Unassigned and escalated (terminal).
    Compensated,
    /// The task was reassigned, unassigned, completed or deleted by someone
    /// else while the saga waited (terminal).
    Superseded,
}

impl SagaState {
    pub const ALL: [SagaState; 5] = [
        Self::AwaitingAcceptance,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingAcceptance => "awaiting_acceptance",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Superseded => "superseded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether the saga has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Superseded)
    }
}

impl std::fmt::Display for SagaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One saga, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    pub id: Uuid,
    pub task_id: String,
    pub assignee: String,
    pub state: SagaState,
    /// Why it ended or compensates (`accepted`, `declined`, `timed_out`,
    /// `capacity_exceeded`, `reassigned`...).
    pub outcome: Option<String>,
    /// Whether it counts against the assignee's capacity.
    pub holds_capacity: bool,
    /// When the timer acts on it next; `None` once nothing is due.
    pub deadline_at: Option<DateTime<Utc>>,
    /// The task's version in the event that started it.
    pub task_version: i64,
    /// The task event that started it (at most one saga per event).
    pub trigger_event_id: Uuid,
    pub correlation_id: Option<String>,
    /// 1 when started, one more per step.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One step of a saga's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStep {
    /// 1, 2, ... in the order the steps happened.
    pub seq: i64,
    /// What happened (`started`, `acceptance_requested`, `accepted`,
    /// `unassigned`, `escalated`...).
    pub step: String,
    /// The saga's state after the step.
    pub state: SagaState,
    pub detail: Option<String>,
    /// The id of the saga event the step published.
    pub event_id: Uuid,
    /// What caused the step: the triggering task event's id, the saga event
    /// of the step before, or the request id of an accept or decline.
    pub causation_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// A step about to be recorded; its `seq` is assigned by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSagaStep {
    pub step: String,
    pub state: SagaState,
    pub detail: Option<String>,
    pub event_id: Uuid,
    pub causation_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// What a step leaves behind: the saga's new state, and the outbox rows
/// written with it (the saga's events: whoever must hear of a step, the
/// notification service tells them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaEffects {
    pub state: SagaState,
    pub outcome: Option<String>,
    pub holds_capacity: bool,
    pub deadline_at: Option<DateTime<Utc>>,
    pub steps: Vec<NewSagaStep>,
    /// Saga events (and commands) for the relay.
    pub outbox: Vec<OutboxMessage>,
}

/// A saga about to start, triggered by event `saga.trigger_event_id`,
/// which is marked processed by consumer group `group` in the same
/// transaction. The assignee's capacity is checked inside that transaction:
/// with fewer than `max_open` sagas holding capacity for the assignee, the
/// saga starts with `reserved`; otherwise with `full`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStart {
    pub group: String,
    pub id: Uuid,
    pub task_id: String,
    pub assignee: String,
    pub task_version: i64,
    pub trigger_event_id: Uuid,
    pub correlation_id: Option<String>,
    pub at: DateTime<Utc>,
    pub max_open: i64,
    pub reserved: SagaEffects,
    pub full: SagaEffects,
}

/// How [`SagaStore::start_saga`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaStarted {
    /// Capacity was reserved: the saga started with the `reserved` effects.
    Reserved,
    /// The assignee was at capacity: the saga started with the `full` effects.
    AtCapacity,
    /// The triggering event was handled before; nothing was written.
    Duplicate,
}

/// A task change made by a saga step: the task at its new version, the
/// version it must still be at, and its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaTaskWrite {
    pub task: Task,
    pub expected_version: i64,
    pub event: OutboxMessage,
}

/// The task a saga is about, as it is now, and the version its current
/// assignee (or lack of one) dates from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaTask {
    pub task: Task,
    /// The version at which the assignee was last set or cleared; `None`
    /// only for a task that was never assigned (tasks assigned before the
    /// column existed got a version by migration: their latest saga's for
    /// the current assignee, else their version then).
    pub assigned_version: Option<i64>,
}

impl SagaTask {
    /// Whether the task is still `saga`'s: open, assigned to the saga's
    /// assignee, and not assigned again since the saga started (an
    /// unassignment and a new assignment to the same person start a new
    /// saga; the old one no longer speaks for the task).
    pub fn is_assignment_of(&self, saga: &Saga) -> bool {
        self.task.status == taskstream_domain::TaskStatus::Open
            && self.task.assignee.as_ref().map(|a| a.as_str()) == Some(saga.assignee.as_str())
            && self
                .assigned_version
                .is_none_or(|since| since <= saga.task_version)
    }
}

/// The assignment a step applies to: task `task_id` still open, assigned to
/// `assignee`, and not assigned again after version `since_version` (see
/// [`SagaTask::is_assignment_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaAssignment {
    pub task_id: Uuid,
    pub assignee: String,
    pub since_version: i64,
}

impl SagaAssignment {
    /// The assignment `saga` started from; `None` if its task id is not one.
    pub fn of(saga: &Saga) -> Option<Self> {
        Some(Self {
            task_id: Uuid::parse_str(&saga.task_id).ok()?,
            assignee: saga.assignee.clone(),
            since_version: saga.task_version,
        })
    }
}

/// One step of saga `saga_id`, applied only while it is in one of `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaTransition {
    pub saga_id: Uuid,
    pub from: Vec<SagaState>,
    /// Applies only while the saga still holds capacity (a release that
    /// must not happen twice).
    pub only_while_holding: bool,
    /// Applies only while the task is still this assignment's (an answer
    /// of the assignee): checked in the step's transaction, holding the
    /// task's row until it commits, so a reassignment racing the step
    /// lands before or after it, never in between.
    pub only_while_assigned: Option<SagaAssignment>,
    pub effects: SagaEffects,
    /// Task changes written in the same transaction; if a task moved past
    /// its expected version, nothing is written and
    /// [`StoreError::VersionConflict`] is returned.
    pub task_writes: Vec<SagaTaskWrite>,
    /// Marks this event processed by this consumer group, in the same
    /// transaction (when the step is caused by a consumed event).
    pub processed: Option<(String, Uuid)>,
}

/// The sagas' memory.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Starts a saga (see [`SagaStart`]) atomically with its first steps,
    /// outbox rows and the trigger's processed mark.
    async fn start_saga(&self, start: &SagaStart) -> Result<SagaStarted, StoreError>;

    /// Applies a step atomically. `Ok(None)` (writing nothing, not even the
    /// processed mark) when the saga is unknown or no longer in one of
    /// `from`, or when the task is no longer `only_while_assigned`'s;
    /// otherwise the saga as it is now.
    async fn transition_saga(&self, t: &SagaTransition) -> Result<Option<Saga>, StoreError>;

    /// Task `task_id` (a saga's `task_id`) and the version its assignment
    /// dates from; `None` if there is no such task.
    async fn saga_task(&self, task_id: &str) -> Result<Option<SagaTask>, StoreError>;

    async fn saga(&self, id: Uuid) -> Result<Option<Saga>, StoreError>;

    /// The saga's steps in order.
    async fn saga_history(&self, id: Uuid) -> Result<Vec<SagaStep>, StoreError>;

    /// The task's most recent saga.
    async fn latest_saga_for_task(&self, task_id: &str) -> Result<Option<Saga>, StoreError>;

    /// The task's sagas that have not ended or still hold capacity, oldest first.
    async fn open_sagas_for_task(&self, task_id: &str) -> Result<Vec<Saga>, StoreError>;

    /// Sagas whose deadline is at or before `now`, earliest first.
    async fn due_sagas(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Saga>, StoreError>;

    /// How many sagas hold capacity for `assignee`.
    async fn held_capacity(&self, assignee: &str) -> Result<i64, StoreError>;
}

/// A `sagas` row.
pub(crate) fn saga_row(row: &impl crate::rows::StoredRow) -> Result<Saga, StoreError> {
    const T: &str = "sagas";
    let state = row.text("state")?;
    Ok(Saga {
        id: row.uuid(T, "id")?,
        task_id: row.text("task_id")?,
        assignee: row.text("assignee")?,
        state: SagaState::parse(&state)
            .ok_or_else(|| crate::rows::corrupt(T, format!("unknown state {state:?}")))?,
        outcome: row.opt_text("outcome")?,
        holds_capacity: row.int32("holds_capacity")? == 1,
        deadline_at: row.opt_time(T, "deadline_at")?,
        task_version: row.int("task_version")?,
        trigger_event_id: row.uuid(T, "trigger_event_id")?,
        correlation_id: row.opt_text("correlation_id")?,
        version: row.int("version")?,
        created_at: row.time(T, "created_at")?,
        updated_at: row.time(T, "updated_at")?,
    })
}

/// A `saga_history` row.
pub(crate) fn step_row(row: &impl crate::rows::StoredRow) -> Result<SagaStep, StoreError> {
    const T: &str = "saga_history";
    let state = row.text("state")?;
    Ok(SagaStep {
        seq: row.int("seq")?,
        step: row.text("step")?,
        state: SagaState::parse(&state)
            .ok_or_else(|| crate::rows::corrupt(T, format!("unknown state {state:?}")))?,
        detail: row.opt_text("detail")?,
        event_id: row.uuid(T, "event_id")?,
        causation_id: row.opt_text("causation_id")?,
        at: row.time(T, "at")?,
    })
}

/// A `tasks` row, with the version its assignment dates from.
pub(crate) fn saga_task_row(row: &impl crate::rows::StoredRow) -> Result<SagaTask, StoreError> {
    Ok(SagaTask {
        task: crate::rows::task(row)?,
        assigned_version: row.opt_int("assigned_version")?,
    })
}

/// Matches the task's row only while it is still the assignment
/// `($2, since $3)`'s (see [`SagaTask::is_assignment_of`]), and locks it.
pub(crate) const HOLD_ASSIGNMENT: &str = "UPDATE tasks SET version = version
     WHERE id = $1 AND status = 'open' AND assignee = $2
       AND (assigned_version IS NULL OR assigned_version <= $3)";

pub(crate) const SAGA_COLUMNS: &str = "id, task_id, assignee, state, outcome, holds_capacity, deadline_at, task_version, trigger_event_id, correlation_id, version, created_at, updated_at";

pub(crate) const INSERT_SAGA: &str = "INSERT INTO sagas (id, task_id, assignee, state, outcome, holds_capacity, deadline_at, task_version, trigger_event_id, correlation_id, version, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $12)";

pub(crate) const INSERT_STEP: &str = "INSERT INTO saga_history (saga_id, seq, step, state, detail, event_id, causation_id, at)
     VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM saga_history WHERE saga_id = $2), $3, $4, $5, $6, $7, $8)";

pub(crate) const HELD_CAPACITY: &str =
    "SELECT COUNT(*) AS held FROM sagas WHERE assignee = $1 AND holds_capacity = 1";

/// Implements [`SagaStore`] for `$store` over database `$db`, writing through
/// the pool in field `$writer` and reading through `$reader`; `$lock` is
/// an async fn `(conn, assignee)` serialising capacity checks for one
/// assignee across processes. Uses the backend module's `id`, `at` and
/// `enqueue`.
macro_rules! saga_stores {
    ($store:ty, $db:ty, writer = $writer:ident, reader = $reader:ident, lock = $lock:path) => {
        /// Writes a step's effects (everything but the saga row itself).
        async fn write_saga_effects(
            tx: &mut sqlx::Transaction<'_, $db>,
            saga_id: uuid::Uuid,
            effects: &$crate::sagas::SagaEffects,
        ) -> Result<(), $crate::StoreError> {
            for s in &effects.steps {
                sqlx::query($crate::sagas::INSERT_STEP)
                    .bind(id(saga_id))
                    .bind(id(saga_id))
                    .bind(&s.step)
                    .bind(s.state.as_str())
                    .bind(&s.detail)
                    .bind(id(s.event_id))
                    .bind(&s.causation_id)
                    .bind(at(&s.at))
                    .execute(&mut **tx)
                    .await?;
            }
            for m in &effects.outbox {
                enqueue(tx, m).await?;
            }
            Ok(())
        }

        #[async_trait::async_trait]
        impl $crate::SagaStore for $store {
            async fn start_saga(
                &self,
                start: &$crate::SagaStart,
            ) -> Result<$crate::SagaStarted, $crate::StoreError> {
                let mut tx = self.$writer.begin().await?;
                let marked = sqlx::query($crate::sql::MARK_PROCESSED)
                    .bind(&start.group)
                    .bind(id(start.trigger_event_id))
                    .bind(at(&start.at))
                    .execute(&mut *tx)
                    .await?;
                let known: Option<(i64,)> =
                    sqlx::query_as("SELECT version FROM sagas WHERE trigger_event_id = $1")
                        .bind(id(start.trigger_event_id))
                        .fetch_optional(&mut *tx)
                        .await?;
                if marked.rows_affected() == 0 || known.is_some() {
                    return Ok($crate::SagaStarted::Duplicate);
                }
                $lock(&mut tx, &start.assignee).await?;
                let (held,): (i64,) = sqlx::query_as($crate::sagas::HELD_CAPACITY)
                    .bind(&start.assignee)
                    .fetch_one(&mut *tx)
                    .await?;
                let (outcome, effects) = if held < start.max_open {
                    ($crate::SagaStarted::Reserved, &start.reserved)
                } else {
                    ($crate::SagaStarted::AtCapacity, &start.full)
                };
                sqlx::query($crate::sagas::INSERT_SAGA)
                    .bind(id(start.id))
                    .bind(&start.task_id)
                    .bind(&start.assignee)
                    .bind(effects.state.as_str())
                    .bind(&effects.outcome)
                    .bind(i32::from(effects.holds_capacity))
                    .bind(effects.deadline_at.as_ref().map(at))
                    .bind(start.task_version)
                    .bind(id(start.trigger_event_id))
                    .bind(&start.correlation_id)
                    .bind(at(&start.at))
                    .bind(at(&start.at))
                    .execute(&mut *tx)
                    .await?;
                write_saga_effects(&mut tx, start.id, effects).await?;
                tx.commit().await?;
                Ok(outcome)
            }

            async fn transition_saga(
                &self,
                t: &$crate::SagaTransition,
            ) -> Result<Option<$crate::Saga>, $crate::StoreError> {
                let mut tx = self.$writer.begin().await?;
                let e = &t.effects;
                let now = e.steps.last().map_or_else(taskstream_domain::now, |s| s.at);
                let mut sql = sqlx::QueryBuilder::<$db>::new("UPDATE sagas SET state = ");
                sql.push_bind(e.state.as_str())
                    .push(", outcome = ")
                    .push_bind(e.outcome.clone())
                    .push(", holds_capacity = ")
                    .push_bind(i32::from(e.holds_capacity))
                    .push(", deadline_at = ")
                    .push_bind(e.deadline_at.as_ref().map(at))
                    .push(", version = version + 1, updated_at = ")
                    .push_bind(at(&now))
                    .push(" WHERE id = ")
                    .push_bind(id(t.saga_id))
                    .push(" AND state IN (");
                let mut states = sql.separated(", ");
                for s in &t.from {
                    states.push_bind(s.as_str());
                }
                sql.push(")");
                if t.only_while_holding {
                    sql.push(" AND holds_capacity = 1");
                }
                sql.push(" RETURNING ")
                    .push($crate::sagas::SAGA_COLUMNS);
                let Some(row) = sql.build().fetch_optional(&mut *tx).await? else {
                    return Ok(None);
                };
                let saga = $crate::sagas::saga_row(&row)?;
                if let Some(a) = &t.only_while_assigned {
                    // Changes nothing but takes the task's row lock: a
                    // reassignment waits for this step, or this step sees it
                    // (and the saga's update above is rolled back). Taken
                    // after the saga's row, as a compensation takes them,
                    // so that the two never wait on each other.
                    let current = sqlx::query($crate::sagas::HOLD_ASSIGNMENT)
                        .bind(id(a.task_id))
                        .bind(&a.assignee)
                        .bind(a.since_version)
                        .execute(&mut *tx)
                        .await?;
                    if current.rows_affected() != 1 {
                        return Ok(None);
                    }
                }
                for w in &t.task_writes {
                    let task = &w.task;
                    let updated = sqlx::query($crate::sql::UPDATE_TASK)
                        .bind(task.title.as_str())
                        .bind(task.description.as_ref().map(|d| d.as_str()))
                        .bind(task.priority.as_str())
                        .bind(task.status.as_str())
                        .bind(task.due_at.as_ref().map(at))
                        .bind(task.assignee.as_ref().map(|a| a.as_str()))
                        .bind(task.version)
                        .bind(at(&task.updated_at))
                        .bind(task.completed_at.as_ref().map(at))
                        .bind(id(task.id.as_uuid()))
                        .bind(w.expected_version)
                        .execute(&mut *tx)
                        .await?;
                    if updated.rows_affected() != 1 {
                        return Err($crate::StoreError::VersionConflict {
                            task_id: task.id.to_string(),
                            expected: w.expected_version,
                        });
                    }
                    enqueue(&mut tx, &w.event).await?;
                }
                if let Some((group, event_id)) = &t.processed {
                    sqlx::query($crate::sql::MARK_PROCESSED)
                        .bind(group)
                        .bind(id(*event_id))
                        .bind(at(&now))
                        .execute(&mut *tx)
                        .await?;
                }
                write_saga_effects(&mut tx, t.saga_id, e).await?;
                tx.commit().await?;
                Ok(Some(saga))
            }

            async fn saga_task(
                &self,
                task_id: &str,
            ) -> Result<Option<$crate::sagas::SagaTask>, $crate::StoreError> {
                let Ok(task_id) = uuid::Uuid::parse_str(task_id) else {
                    return Ok(None);
                };
                let row = sqlx::query($crate::sql::TASK_BY_ID)
                    .bind(id(task_id))
                    .fetch_optional(&self.$writer)
                    .await?;
                row.as_ref().map($crate::sagas::saga_task_row).transpose()
            }

            async fn saga(
                &self,
                saga_id: uuid::Uuid,
            ) -> Result<Option<$crate::Saga>, $crate::StoreError> {
                let row = sqlx::query(&format!(
                    "SELECT {} FROM sagas WHERE id = $1",
                    $crate::sagas::SAGA_COLUMNS
                ))
                .bind(id(saga_id))
                .fetch_optional(&self.$reader)
                .await?;
                row.as_ref().map($crate::sagas::saga_row).transpose()
            }

            async fn saga_history(
                &self,
                saga_id: uuid::Uuid,
            ) -> Result<Vec<$crate::SagaStep>, $crate::StoreError> {
                let rows = sqlx::query("SELECT * FROM saga_history WHERE saga_id = $1 ORDER BY seq")
                    .bind(id(saga_id))
                    .fetch_all(&self.$reader)
                    .await?;
                rows.iter().map($crate::sagas::step_row).collect()
            }

            async fn latest_saga_for_task(
                &self,
                task_id: &str,
            ) -> Result<Option<$crate::Saga>, $crate::StoreError> {
                let row = sqlx::query(&format!(
                    "SELECT {} FROM sagas WHERE task_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
                    $crate::sagas::SAGA_COLUMNS
                ))
                .bind(task_id)
                .fetch_optional(&self.$reader)
                .await?;
                row.as_ref().map($crate::sagas::saga_row).transpose()
            }

            async fn open_sagas_for_task(
                &self,
                task_id: &str,
            ) -> Result<Vec<$crate::Saga>, $crate::StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {} FROM sagas WHERE task_id = $1
                       AND (holds_capacity = 1 OR state IN ('awaiting_acceptance', 'compensating'))
                     ORDER BY created_at, id",
                    $crate::sagas::SAGA_COLUMNS
                ))
                .bind(task_id)
                .fetch_all(&self.$writer)
                .await?;
                rows.iter().map($crate::sagas::saga_row).collect()
            }

            async fn due_sagas(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::Saga>, $crate::StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {} FROM sagas WHERE deadline_at IS NOT NULL AND deadline_at <= $1
                     ORDER BY deadline_at, id LIMIT $2",
                    $crate::sagas::SAGA_COLUMNS
                ))
                .bind(at(&now))
                .bind(i64::from(limit))
                .fetch_all(&self.$writer)
                .await?;
                rows.iter().map($crate::sagas::saga_row).collect()
            }

            async fn held_capacity(&self, assignee: &str) -> Result<i64, $crate::StoreError> {
                let (held,): (i64,) = sqlx::query_as($crate::sagas::HELD_CAPACITY)
                    .bind(assignee)
                    .fetch_one(&self.$reader)
                    .await?;
                Ok(held)
            }
        }
    };
}

pub(crate) use saga_stores;
