//! The components around the Task API: the outbox relay that publishes task
//! events, and the two services that consume them independently, each in its
//! own consumer group: the notification service and the audit-log service.

pub mod agent;
mod auditor;
mod backoff;
mod consumer;
pub mod dead_letter;
mod encoding;
mod notifier;
pub mod offset_resets;
pub mod processor;
mod relay;
pub mod saga;
mod shutdown;
pub mod topics;
mod webhook;

pub use auditor::{AuditHandler, AUDITOR_GROUP};
pub use backoff::Backoff;
pub use consumer::{
    record_value, BoxError, ConsumedEvent, ConsumerService, Deduplicated, Delivery, EventHandler,
    HandleError, Handled, Inbox, ProcessedEvents, RecordDecoder, RetryPolicy,
};
pub use dead_letter::{dead_letter_topic, DeadLetterPublisher, ErrorClass};
pub use encoding::{EncodingError, EventDecoder, EventEncoding, EventRecord};
pub use notifier::{
    DelayedSink, LogSink, NotificationHandler, NotificationSink, NotifierDecoder, NotifierEvent,
    NOTIFIER_GROUP,
};
pub use offset_resets::{GapRepair, OffsetResets, OutboxRepair, Repair, ReportedReset};
pub use processor::{ProcessorError, ProcessorSettings, WorkloadProcessor};
pub use relay::{
    OutboxRelay, ProducerFactory, RelayDelivery, RelayError, RelayPublisher, RelaySettings,
    RELAY_TRANSACTIONAL_ID,
};
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use webhook::WebhookSink;
