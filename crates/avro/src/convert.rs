//! Envelopes to Avro values and back. Values are built by field name and
//! then resolved against the target schema, so the same code writes every
//! version of a record (fields a version lacks are left out, fields it adds
//! take their defaults).

use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, TimeZone, Utc};
use taskstream_domain::{
    Assignee, Description, EventEnvelope, EventId, EventType, Priority, Task, TaskEventData,
    TaskId, TaskStatus, TaskTitle,
};

fn micros(t: &DateTime<Utc>) -> Value {
    Value::TimestampMicros(t.timestamp_micros())
}

fn optional(v: Option<Value>) -> Value {
    match v {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn string(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn task_value(t: &Task) -> Value {
    Value::Record(vec![
        ("id".into(), string(t.id.to_string())),
        ("title".into(), string(t.title.as_str())),
        (
            "description".into(),
            optional(t.description.as_ref().map(|d| string(d.as_str()))),
        ),
        (
            "priority".into(),
            Value::Enum(priority_index(t.priority), t.priority.as_str().to_owned()),
        ),
        (
            "status".into(),
            Value::Enum(status_index(t.status), t.status.as_str().to_owned()),
        ),
        ("due_at".into(), optional(t.due_at.as_ref().map(micros))),
        (
            "assignee".into(),
            optional(t.assignee.as_ref().map(|a| string(a.as_str()))),
        ),
        ("version".into(), Value::Long(t.version)),
        ("created_at".into(), micros(&t.created_at)),
        ("updated_at".into(), micros(&t.updated_at)),
        (
            "completed_at".into(),
            optional(t.completed_at.as_ref().map(micros)),
        ),
    ])
}

fn priority_index(p: Priority) -> u32 {
    match p {
        Priority::Low => 0,
        Priority::Medium => 1,
        Priority::High => 2,
    }
}

fn status_index(s: TaskStatus) -> u32 {
    match s {
        TaskStatus::Open => 0,
        TaskStatus::Completed => 1,
        TaskStatus::Deleted => 2,
    }
}

/// The envelope as a value of `schema` (any version of its record).
pub fn to_avro(e: &EventEnvelope, schema: &Schema) -> Result<Value, String> {
    let value = Value::Record(vec![
        ("id".into(), string(e.id.to_string())),
        ("type".into(), string(e.event_type.as_str())),
        ("source".into(), string(e.source.clone())),
        ("time".into(), micros(&e.time)),
        ("subject".into(), string(e.subject.clone())),
        (
            "correlation_id".into(),
            optional(e.correlation_id.clone().map(string)),
        ),
        (
            "causation_id".into(),
            optional(e.causation_id.clone().map(string)),
        ),
        ("schema_version".into(), Value::Int(e.schema_version as i32)),
        (
            "data".into(),
            Value::Record(vec![
                ("task".into(), task_value(&e.data.task)),
                (
                    "changed_fields".into(),
                    Value::Array(e.data.changed_fields.iter().cloned().map(string).collect()),
                ),
            ]),
        ),
        (
            "traceparent".into(),
            optional(e.traceparent.clone().map(string)),
        ),
    ]);
    value
        .resolve(schema)
        .map_err(|err| format!("event {} does not fit its schema: {err}", e.id))
}

/// The fields of a record value, by name.
struct Fields(HashMap<String, Value>);

impl Fields {
    fn of(value: Value, what: &str) -> Result<Self, String> {
        match value {
            Value::Record(fields) => Ok(Self(fields.into_iter().collect())),
            other => Err(format!("{what} is not a record: {other:?}")),
        }
    }

    fn take(&mut self, name: &str) -> Result<Value, String> {
        let value = self
            .0
            .remove(name)
            .ok_or_else(|| format!("field `{name}` is missing"))?;
        // Optional fields arrive wrapped in their union branch.
        Ok(match value {
            Value::Union(_, inner) => *inner,
            other => other,
        })
    }

    fn string(&mut self, name: &str) -> Result<String, String> {
        match self.take(name)? {
            Value::String(s) | Value::Enum(_, s) => Ok(s),
            Value::Uuid(u) => Ok(u.to_string()),
            other => Err(format!("field `{name}` is not a string: {other:?}")),
        }
    }

    fn opt_string(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.0.contains_key(name) {
            false => Ok(None),
            true => match self.take(name)? {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s)),
                other => Err(format!(
                    "field `{name}` is not an optional string: {other:?}"
                )),
            },
        }
    }

    fn time(&mut self, name: &str) -> Result<DateTime<Utc>, String> {
        match self.take(name)? {
            Value::TimestampMicros(us) | Value::Long(us) => Utc
                .timestamp_micros(us)
                .single()
                .ok_or_else(|| format!("field `{name}` is out of range")),
            Value::TimestampMillis(ms) => Utc
                .timestamp_millis_opt(ms)
                .single()
                .ok_or_else(|| format!("field `{name}` is out of range")),
            other => Err(format!("field `{name}` is not a timestamp: {other:?}")),
        }
    }

    fn opt_time(&mut self, name: &str) -> Result<Option<DateTime<Utc>>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Union(_, inner)) if **inner == Value::Null => Ok(None),
            Some(_) => self.time(name).map(Some),
        }
    }

    fn long(&mut self, name: &str) -> Result<i64, String> {
        match self.take(name)? {
            Value::Long(v) => Ok(v),
            Value::Int(v) => Ok(i64::from(v)),
            other => Err(format!("field `{name}` is not a number: {other:?}")),
        }
    }
}

fn parse_task(value: Value) -> Result<Task, String> {
    let mut f = Fields::of(value, "data.task")?;
    let bad = |field: &str, e: &dyn std::fmt::Display| format!("data.task.{field}: {e}");
    let id = f.string("id")?;
    let priority = f.string("priority")?;
    let status = f.string("status")?;
    Ok(Task {
        id: id.parse::<TaskId>().map_err(|e| bad("id", &e))?,
        title: TaskTitle::parse(&f.string("title")?).map_err(|e| bad("title", &e))?,
        description: f
            .opt_string("description")?
            .map(|d| Description::parse(&d))
            .transpose()
            .map_err(|e| bad("description", &e))?,
        priority: Priority::parse(&priority).ok_or_else(|| bad("priority", &priority))?,
        status: TaskStatus::parse(&status).ok_or_else(|| bad("status", &status))?,
        due_at: f.opt_time("due_at")?,
        assignee: f
            .opt_string("assignee")?
            .map(|a| Assignee::parse(&a))
            .transpose()
            .map_err(|e| bad("assignee", &e))?,
        version: f.long("version")?,
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
        completed_at: f.opt_time("completed_at")?,
    })
}

/// An envelope from a value already resolved to one of our schemas.
pub fn from_avro(value: Value) -> Result<EventEnvelope, String> {
    let mut f = Fields::of(value, "event")?;
    let id = f.string("id")?;
    let event_type = f.string("type")?;
    let mut data = Fields::of(f.take("data")?, "data")?;
    let changed_fields = match data.take("changed_fields")? {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(format!("data.changed_fields holds {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(format!("data.changed_fields is not an array: {other:?}")),
    };
    Ok(EventEnvelope {
        id: id.parse::<EventId>().map_err(|e| format!("id: {e}"))?,
        event_type: event_type.parse::<EventType>().map_err(|e| e.to_string())?,
        source: f.string("source")?,
        time: f.time("time")?,
        subject: f.string("subject")?,
        correlation_id: f.opt_string("correlation_id")?,
        causation_id: f.opt_string("causation_id")?,
        schema_version: u32::try_from(f.long("schema_version")?)
            .map_err(|e| format!("schema_version: {e}"))?,
        data: TaskEventData {
            task: parse_task(data.take("task")?)?,
            changed_fields,
        },
        traceparent: f.opt_string("traceparent")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventSchemas;
    use apache_avro::{from_avro_datum, to_avro_datum};
    use taskstream_domain::{Cause, NewTask};

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn every_event_type() -> Vec<EventEnvelope> {
        let now = taskstream_domain::now();
        let cause = Cause {
            correlation_id: Some("req-1"),
            traceparent: Some(TRACE),
        };
        let new = NewTask {
            title: TaskTitle::parse("Write the chapter").unwrap(),
            description: Some(Description::parse("events, not commands").unwrap()),
            priority: Priority::High,
            due_at: Some(now),
            assignee: Some(Assignee::parse("ana").unwrap()),
        };
        let created = Task::create(new, now, cause);
        let patch = taskstream_domain::TaskPatch {
            assignee: Some(None),
            ..Default::default()
        };
        let updated = created.task.update(patch, now, cause).unwrap().unwrap();
        let completed = updated.task.complete(now, cause).unwrap();
        let deleted = completed.task.delete(now, cause).unwrap();
        vec![created.event, updated.event, completed.event, deleted.event]
    }

    fn v1_task_created() -> Schema {
        Schema::parse_str(include_str!("../../../schemas/history/TaskCreated/v1.avsc")).unwrap()
    }

    #[test]
    fn every_event_type_round_trips_through_its_schema() {
        for event in every_event_type() {
            let schema = &EventSchemas::embedded().for_type(event.event_type).schema;
            let body = to_avro_datum(schema, to_avro(&event, schema).unwrap()).unwrap();
            let back =
                from_avro(from_avro_datum(schema, &mut &body[..], Some(schema)).unwrap()).unwrap();
            let mut expected = event.clone();
            if event.event_type != EventType::TaskCreated {
                // Only TaskCreated has reached version 2, which carries it.
                expected.traceparent = None;
            }
            assert_eq!(back, expected, "{}", event.event_type);
        }
    }

    #[test]
    fn a_v1_reader_reads_v2_data_and_a_v2_reader_sees_the_default_in_v1_data() {
        let event = every_event_type().remove(0);
        let v2 = &EventSchemas::embedded()
            .for_type(EventType::TaskCreated)
            .schema;
        let v1 = v1_task_created();

        let v2_body = to_avro_datum(v2, to_avro(&event, v2).unwrap()).unwrap();
        let read_by_v1 =
            from_avro(from_avro_datum(v2, &mut &v2_body[..], Some(&v1)).unwrap()).unwrap();
        assert_eq!(
            read_by_v1.traceparent, None,
            "a v1 consumer does not know the field"
        );
        assert_eq!(read_by_v1.data, event.data);

        let v1_body = to_avro_datum(&v1, to_avro(&event, &v1).unwrap()).unwrap();
        let read_by_v2 =
            from_avro(from_avro_datum(&v1, &mut &v1_body[..], Some(v2)).unwrap()).unwrap();
        assert_eq!(
            read_by_v2.traceparent, None,
            "the default fills the field v1 lacked"
        );
        assert_eq!(read_by_v2.id, event.id);
        assert_eq!(
            from_avro(from_avro_datum(v2, &mut &v2_body[..], Some(v2)).unwrap())
                .unwrap()
                .traceparent
                .as_deref(),
            Some(TRACE)
        );
    }
}
