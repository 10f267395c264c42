//! The event schemas, one per event type, compiled into the binary from the
//! repository's `schemas/` folder.
//!
//! Several event types share the task topic. Each is registered under its
//! own subject, `<topic>-<record full name>` (Confluent's
//! `TopicRecordNameStrategy`), so each evolves on its own and a consumer
//! tells them apart by the writer schema's record name. See
//! `schemas/README.md` for why not one union subject.

use std::path::Path;
use std::sync::OnceLock;

use apache_avro::Schema;
use taskstream_domain::EventType;

/// One event type's current schema.
#[derive(Debug)]
pub struct EventSchema {
    pub event_type: EventType,
    /// The record's full name, e.g. `taskstream.events.TaskCreated`.
    pub record_name: String,
    /// The schema as written in the file (what is registered).
    pub text: String,
    pub schema: Schema,
}

/// A schema file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct SchemaFileError {
    pub file: String,
    pub message: String,
}

/// The schemas of every event type.
#[derive(Debug)]
pub struct EventSchemas {
    schemas: Vec<EventSchema>,
}

/// The file in `schemas/` holding each event type's schema.
pub fn file_name(event_type: EventType) -> &'static str {
    match event_type {
        EventType::TaskCreated => "task_created.avsc",
        EventType::TaskUpdated => "task_updated.avsc",
        EventType::TaskCompleted => "task_completed.avsc",
        EventType::TaskDeleted => "task_deleted.avsc",
    }
}

/// The subject a record is registered under on `topic`.
pub fn subject(topic: &str, record_name: &str) -> String {
    format!("{topic}-{record_name}")
}

fn embedded_text(event_type: EventType) -> &'static str {
    match event_type {
        EventType::TaskCreated => include_str!("../../../schemas/task_created.avsc"),
        EventType::TaskUpdated => include_str!("../../../schemas/task_updated.avsc"),
        EventType::TaskCompleted => include_str!("../../../schemas/task_completed.avsc"),
        EventType::TaskDeleted => include_str!("../../../schemas/task_deleted.avsc"),
    }
}

fn parse(event_type: EventType, file: &str, text: String) -> Result<EventSchema, SchemaFileError> {
    let fail = |message: String| SchemaFileError {
        file: file.to_owned(),
        message,
    };
    let schema = Schema::parse_str(&text).map_err(|e| fail(e.to_string()))?;
    let record_name = match &schema {
        Schema::Record(record) => record.name.fullname(None),
        _ => return Err(fail("the top-level schema must be a record".into())),
    };
    Ok(EventSchema {
        event_type,
        record_name,
        text,
        schema,
    })
}

impl EventSchemas {
    /// The schemas this build was compiled with.
    pub fn embedded() -> &'static EventSchemas {
        static SCHEMAS: OnceLock<EventSchemas> = OnceLock::new();
        SCHEMAS.get_or_init(|| {
            let schemas = EventType::ALL
                .into_iter()
                .map(|t| parse(t, file_name(t), embedded_text(t).to_owned()))
                .collect::<Result<Vec<_>, _>>()
                // The schema check in CI and this crate's tests parse them;
                // a build with a broken schema file never ships.
                .expect("the embedded event schemas parse");
            EventSchemas { schemas }
        })
    }

    /// Reads the schemas from a `schemas/` folder (for `taskstream schema check`).
    pub fn load_dir(dir: &Path) -> Result<EventSchemas, SchemaFileError> {
        let schemas = EventType::ALL
            .into_iter()
            .map(|t| {
                let path = dir.join(file_name(t));
                let text = std::fs::read_to_string(&path).map_err(|e| SchemaFileError {
                    file: path.display().to_string(),
                    message: e.to_string(),
                })?;
                parse(t, &path.display().to_string(), text)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EventSchemas { schemas })
    }

    /// The schema of `event_type`.
    pub fn for_type(&self, event_type: EventType) -> &EventSchema {
        self.schemas
            .iter()
            .find(|s| s.event_type == event_type)
            .expect("every event type has a schema")
    }

    /// The schema whose record has this full name.
    pub fn by_record_name(&self, record_name: &str) -> Option<&EventSchema> {
        self.schemas.iter().find(|s| s.record_name == record_name)
    }

    /// Every schema, in event-type order.
    pub fn iter(&self) -> impl Iterator<Item = &EventSchema> {
        self.schemas.iter()
    }
}
