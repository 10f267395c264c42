//! What a consumer group reports about its records: the
//! `taskstream_consumer_*` metrics and the span each event is handled in.

use std::sync::Arc;

use taskstream_domain::headers;
use taskstream_kafka::{InboundRecord, OffsetReset};
use taskstream_telemetry::{GroupLabels, Metrics, TraceParent};

use super::{ConsumedEvent, Handled};

/// One group's view of the process's metrics.
pub(crate) struct GroupMetrics {
    metrics: Arc<Metrics>,
    group: String,
}

impl GroupMetrics {
    pub(crate) fn new(metrics: Arc<Metrics>, group: &str) -> Self {
        Self {
            metrics,
            group: group.to_owned(),
        }
    }

    /// An event handled (applied or found a duplicate) in `seconds`.
    pub(crate) fn handled(&self, event: &impl ConsumedEvent, handled: Handled, seconds: f64) {
        let outcome = match handled {
            Handled::Applied => "ok",
            Handled::Duplicate => "duplicate",
        };
        self.metrics
            .handled(&self.group, event.event_type(), outcome);
        self.metrics
            .handler_duration
            .get_or_create(&self.labels())
            .observe(seconds);
    }

    /// A failed attempt that will be tried again (or held).
    pub(crate) fn retried(&self, event_type: &str) {
        self.metrics.handled(&self.group, event_type, "retried");
    }

    /// A record parked on the dead-letter topic.
    pub(crate) fn dead_lettered(&self, event_type: &str) {
        self.metrics
            .handled(&self.group, event_type, "dead_lettered");
    }

    /// Records deleted before the group read them.
    pub(crate) fn offset_reset(&self, reset: &OffsetReset) {
        self.metrics.offset_reset(
            &self.group,
            &reset.topic,
            reset.partition,
            reset.skipped() as u64,
        );
    }

    /// Events requeued in the outbox to repair an offset reset.
    pub(crate) fn republished(&self, requeued: u64) {
        self.metrics
            .consumer_republished_events
            .get_or_create(&self.labels())
            .inc_by(requeued);
    }

    fn labels(&self) -> GroupLabels {
        GroupLabels {
            group: self.group.clone(),
        }
    }
}

/// The span an event is handled in: its ids, type and trace id.
pub(crate) fn event_span(
    group: &str,
    record: &InboundRecord,
    event: &impl ConsumedEvent,
) -> tracing::Span {
    let trace_id = record
        .header_str(headers::TRACEPARENT)
        .and_then(TraceParent::parse)
        .map(|tp| tp.trace_id)
        .unwrap_or_default();
    tracing::info_span!(
        "event",
        group,
        event_id = %event.event_id(),
        event_type = event.event_type(),
        task_id = event.subject(),
        trace_id,
        correlation_id = event.correlation_id().unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use taskstream_domain::{Cause, NewTask, Priority, Task, TaskTitle};

    use super::*;

    fn line_with<'a>(scraped: &'a str, parts: &[&str]) -> Option<&'a str> {
        scraped
            .lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
    }

    #[test]
    fn outcomes_are_counted_by_group_type_and_outcome() {
        let metrics = Metrics::new();
        let group = GroupMetrics::new(Arc::clone(&metrics), "notifier-second");
        let new = NewTask {
            title: TaskTitle::parse("count me").unwrap(),
            description: None,
            priority: Priority::Medium,
            due_at: None,
            assignee: None,
        };
        let event = Task::create(new, taskstream_domain::now(), Cause::default()).event;
        group.handled(&event, Handled::Applied, 0.01);
        group.handled(&event, Handled::Duplicate, 0.01);
        group.retried("task.created");
        group.retried("task.created");
        group.dead_lettered("no.such.type");
        group.republished(5);
        let scraped = metrics.render();
        let g = "group=\"notifier-second\"";
        for (outcome, count) in [("ok", 1), ("duplicate", 1), ("retried", 2)] {
            let outcome = format!("outcome=\"{outcome}\"");
            let line = line_with(&scraped, &[g, "event_type=\"task.created\"", &outcome])
                .unwrap_or_else(|| panic!("{outcome} in {scraped}"));
            assert!(line.ends_with(&format!(" {count}")), "{line}");
        }
        assert!(
            line_with(
                &scraped,
                &[g, "event_type=\"other\"", "outcome=\"dead_lettered\""]
            )
            .is_some(),
            "{scraped}"
        );
        let republished = line_with(&scraped, &["republished", g]).expect("republished");
        assert!(republished.ends_with(" 5"), "{republished}");
        let durations = line_with(&scraped, &["handler_duration", "_count", g]).expect("durations");
        assert!(durations.ends_with(" 2"), "{durations}");
    }
}
