//! What the consumer layers' and handlers' unit tests share: an event, the
//! record it came in, and their delivery to a group.

use taskstream_domain::{Cause, EventEnvelope, NewTask, Priority, Task, TaskTitle};
use taskstream_kafka::InboundRecord;

use super::Delivery;

/// The `task.created` event of a new task titled `title`.
pub(crate) fn event(title: &str) -> EventEnvelope {
    let new = NewTask {
        title: TaskTitle::parse(title).unwrap(),
        description: None,
        priority: Priority::Medium,
        due_at: None,
        assignee: None,
    };
    Task::create(new, taskstream_domain::now(), Cause::default()).event
}

/// A record of `task-events` partition 0 at `offset`, with no payload.
pub(crate) fn record(offset: i64) -> InboundRecord {
    InboundRecord {
        topic: "task-events".into(),
        partition: 0,
        offset,
        key: None,
        payload: None,
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

/// `event`, read from `record`, delivered to `group`.
pub(crate) fn delivery<'a>(
    group: &'a str,
    record: &'a InboundRecord,
    event: &'a EventEnvelope,
) -> Delivery<'a> {
    Delivery {
        group,
        record,
        event,
        span: tracing::Span::none(),
    }
}
