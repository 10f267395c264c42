//! The business of the workload processor, free of Kafka: from task events,
//! each assignee's open and overdue task counts, and an alert when an
//! assignee becomes overloaded.
//!
//! Every count is a pure function of the events applied so far: a task is
//! *overdue* when it is open and its due time is before the time of the
//! event being applied (event time, not the clock), so processing the same
//! events again gives the same outputs — which is what lets a
//! `read_committed` reader check them one for one.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use taskstream_domain::{EventEnvelope, TaskStatus};

/// What the processor remembers about one task: the record it keeps, per
/// task id, in its compacted state topic, from which it is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedTask {
    pub assignee: Option<String>,
    pub open: bool,
    pub due_at: Option<DateTime<Utc>>,
    /// The task version last applied; older or repeated events are ignored.
    pub version: i64,
}

/// One assignee's workload as of an event: the value of the compacted
/// workload topic, keyed by assignee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssigneeWorkload {
    pub assignee: String,
    pub open_tasks: u32,
    pub overdue_tasks: u32,
    /// The time of the event these counts follow.
    pub as_of: DateTime<Utc>,
}

/// An assignee went from fewer than `max_open_tasks` open tasks to that
/// many: the value of the alert topic, keyed by assignee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverloadAlert {
    pub assignee: String,
    pub open_tasks: u32,
    pub overdue_tasks: u32,
    pub max_open_tasks: u32,
    pub as_of: DateTime<Utc>,
}

/// Everything one event changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The task's new tracked state, for the state topic.
    pub task_id: String,
    pub task: TrackedTask,
    /// The workload of every assignee the event touched (the old and the
    /// new one when a task changed hands).
    pub workloads: Vec<AssigneeWorkload>,
    pub alerts: Vec<OverloadAlert>,
}

/// Every task's tracked state, and the open tasks of each assignee.
#[derive(Debug, Default)]
pub struct Workload {
    max_open_tasks: u32,
    tasks: HashMap<String, TrackedTask>,
    /// Assignee → how many open tasks they hold.
    open_by_assignee: HashMap<String, u32>,
    /// Assignee → their open tasks that have a due date, earliest first:
    /// the overdue ones as of any time are a prefix, so counting them does
    /// not visit the assignee's other open tasks (an event costs the same
    /// with 10 or 100,000 of them).
    due_by_assignee: HashMap<String, BTreeSet<(DateTime<Utc>, String)>>,
}

impl Workload {
    /// An empty workload that alerts at `max_open_tasks` open tasks.
    pub fn new(max_open_tasks: u32) -> Self {
        Self {
            max_open_tasks,
            ..Self::default()
        }
    }

    /// Restores one task's state as read back from the state topic.
    pub fn restore(&mut self, task_id: &str, task: TrackedTask) {
        self.put(task_id, task);
    }

    /// The number of tasks tracked.
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Applies one event. `None` when it changes nothing: an event for a
    /// version already applied (a redelivered or repeated event).
    pub fn apply(&mut self, event: &EventEnvelope) -> Option<Changes> {
        let task = &event.data.task;
        let task_id = task.id.to_string();
        let previous = self.tasks.get(&task_id).cloned();
        if previous.as_ref().is_some_and(|p| p.version >= task.version) {
            return None;
        }
        let tracked = TrackedTask {
            assignee: task.assignee.as_ref().map(|a| a.as_str().to_owned()),
            open: task.status == TaskStatus::Open,
            due_at: task.due_at,
            version: task.version,
        };
        let mut touched: Vec<String> = Vec::new();
        for assignee in [
            previous.as_ref().and_then(|p| p.assignee.clone()),
            tracked.assignee.clone(),
        ]
        .into_iter()
        .flatten()
        {
            if !touched.contains(&assignee) {
                touched.push(assignee);
            }
        }
        let before: Vec<u32> = touched.iter().map(|a| self.open_count(a)).collect();
        self.put(&task_id, tracked.clone());
        let mut workloads = Vec::new();
        let mut alerts = Vec::new();
        for (assignee, open_before) in touched.into_iter().zip(before) {
            let workload = self.workload_of(&assignee, event.time);
            if open_before < self.max_open_tasks && workload.open_tasks >= self.max_open_tasks {
                alerts.push(OverloadAlert {
                    assignee: assignee.clone(),
                    open_tasks: workload.open_tasks,
                    overdue_tasks: workload.overdue_tasks,
                    max_open_tasks: self.max_open_tasks,
                    as_of: event.time,
                });
            }
            workloads.push(workload);
        }
        Some(Changes {
            task_id,
            task: tracked,
            workloads,
            alerts,
        })
    }

    fn open_count(&self, assignee: &str) -> u32 {
        self.open_by_assignee.get(assignee).copied().unwrap_or(0)
    }

    /// `assignee`'s counts as of `now` (an event's time).
    fn workload_of(&self, assignee: &str, now: DateTime<Utc>) -> AssigneeWorkload {
        // Every (due, id) below (now, "") is due before now.
        let overdue = self
            .due_by_assignee
            .get(assignee)
            .map_or(0, |due| due.range(..(now, String::new())).count());
        AssigneeWorkload {
            assignee: assignee.to_owned(),
            open_tasks: self.open_count(assignee),
            overdue_tasks: u32::try_from(overdue).unwrap_or(u32::MAX),
            as_of: now,
        }
    }

    /// Replaces a task's state, keeping the per-assignee indexes in step.
    fn put(&mut self, task_id: &str, task: TrackedTask) {
        if let Some(old) = self.tasks.get(task_id) {
            if let (true, Some(assignee)) = (old.open, &old.assignee) {
                if let Some(open) = self.open_by_assignee.get_mut(assignee) {
                    *open -= 1;
                    if *open == 0 {
                        self.open_by_assignee.remove(assignee);
                    }
                }
                if let (Some(due_at), Some(due)) =
                    (old.due_at, self.due_by_assignee.get_mut(assignee))
                {
                    due.remove(&(due_at, task_id.to_owned()));
                    if due.is_empty() {
                        self.due_by_assignee.remove(assignee);
                    }
                }
            }
        }
        if let (true, Some(assignee)) = (task.open, &task.assignee) {
            *self.open_by_assignee.entry(assignee.clone()).or_default() += 1;
            if let Some(due_at) = task.due_at {
                self.due_by_assignee
                    .entry(assignee.clone())
                    .or_default()
                    .insert((due_at, task_id.to_owned()));
            }
        }
        self.tasks.insert(task_id.to_owned(), task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use taskstream_domain::{Assignee, Cause, NewTask, Priority, Task, TaskPatch, TaskTitle};

    fn create(
        assignee: &str,
        due_in_minutes: i64,
        now: DateTime<Utc>,
    ) -> taskstream_domain::TaskChange {
        let new = NewTask {
            title: TaskTitle::parse("t").unwrap(),
            description: None,
            priority: Priority::Medium,
            due_at: Some(now + Duration::minutes(due_in_minutes)),
            assignee: Some(Assignee::parse(assignee).unwrap()),
        };
        Task::create(new, now, Cause::default())
    }

    #[test]
    fn an_assignee_reaching_the_limit_is_alerted_once_and_counts_follow_each_event() {
        let now = taskstream_domain::now();
        let mut workload = Workload::new(2);
        let first = create("ada", 60, now);
        let changes = workload.apply(&first.event).unwrap();
        assert_eq!(changes.workloads[0].open_tasks, 1);
        assert!(changes.alerts.is_empty());
        let second = create("ada", -60, now);
        let changes = workload.apply(&second.event).unwrap();
        assert_eq!(changes.workloads[0].open_tasks, 2);
        assert_eq!(changes.workloads[0].overdue_tasks, 1);
        assert_eq!(changes.alerts.len(), 1);
        let third = create("ada", 60, now);
        let changes = workload.apply(&third.event).unwrap();
        assert!(
            changes.alerts.is_empty(),
            "already overloaded: no new alert"
        );
        assert_eq!(changes.workloads[0].open_tasks, 3);
    }

    #[test]
    fn a_task_changing_hands_updates_both_assignees_and_a_repeated_event_changes_nothing() {
        let now = taskstream_domain::now();
        let mut workload = Workload::new(10);
        let created = create("ada", 60, now);
        workload.apply(&created.event).unwrap();
        assert!(
            workload.apply(&created.event).is_none(),
            "same version again"
        );
        let patch = TaskPatch {
            assignee: Some(Some(Assignee::parse("grace").unwrap())),
            ..TaskPatch::default()
        };
        let moved = created
            .task
            .update(patch, now, Cause::default())
            .unwrap()
            .unwrap();
        let changes = workload.apply(&moved.event).unwrap();
        let counts: Vec<(&str, u32)> = changes
            .workloads
            .iter()
            .map(|w| (w.assignee.as_str(), w.open_tasks))
            .collect();
        assert_eq!(counts, [("ada", 0), ("grace", 1)]);
    }

    /// The overdue count follows due dates moved, tasks completed and
    /// tasks handed over, and time passing, with no other index than the
    /// assignee's due dates.
    #[test]
    fn overdue_tasks_follow_due_dates_completions_hand_overs_and_time() {
        let now = taskstream_domain::now();
        let mut workload = Workload::new(100);
        let late = create("ada", -30, now);
        let soon = create("ada", 30, now);
        workload.apply(&late.event).unwrap();
        let counts = workload.apply(&soon.event).unwrap().workloads;
        assert_eq!((counts[0].open_tasks, counts[0].overdue_tasks), (2, 1));
        // An hour later both are overdue.
        assert_eq!(
            workload
                .workload_of("ada", now + Duration::hours(1))
                .overdue_tasks,
            2
        );
        // The late one's due date moves into the future: not overdue now.
        let patch = TaskPatch {
            due_at: Some(Some(now + Duration::hours(2))),
            ..TaskPatch::default()
        };
        let moved = late
            .task
            .update(patch, now, Cause::default())
            .unwrap()
            .unwrap();
        let counts = workload.apply(&moved.event).unwrap().workloads;
        assert_eq!((counts[0].open_tasks, counts[0].overdue_tasks), (2, 0));
        // Completed: neither open nor overdue, even after its due date.
        let done = moved.task.complete(now, Cause::default()).unwrap();
        workload.apply(&done.event).unwrap();
        let later = workload.workload_of("ada", now + Duration::hours(3));
        assert_eq!((later.open_tasks, later.overdue_tasks), (1, 1));
        // Handed to grace: ada has nothing left; grace's is overdue later.
        let patch = TaskPatch {
            assignee: Some(Some(Assignee::parse("grace").unwrap())),
            ..TaskPatch::default()
        };
        let handed = soon
            .task
            .update(patch, now, Cause::default())
            .unwrap()
            .unwrap();
        workload.apply(&handed.event).unwrap();
        let ada = workload.workload_of("ada", now + Duration::hours(3));
        assert_eq!((ada.open_tasks, ada.overdue_tasks), (0, 0));
        let grace = workload.workload_of("grace", now + Duration::hours(3));
        assert_eq!((grace.open_tasks, grace.overdue_tasks), (1, 1));
        assert!(!workload.due_by_assignee.contains_key("ada"));
        assert!(!workload.open_by_assignee.contains_key("ada"));
    }

    #[test]
    fn a_restored_workload_counts_as_the_one_that_wrote_the_state() {
        let now = taskstream_domain::now();
        let mut original = Workload::new(3);
        let mut changes = Vec::new();
        for due in [-5, 5, -5] {
            changes.push(original.apply(&create("ada", due, now).event).unwrap());
        }
        let mut restored = Workload::new(3);
        for c in &changes {
            restored.restore(&c.task_id, c.task.clone());
        }
        let next = create("ada", 5, now);
        assert_eq!(original.apply(&next.event), restored.apply(&next.event));
    }
}
