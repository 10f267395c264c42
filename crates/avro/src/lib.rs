//! Task events in Avro: the schemas in `schemas/`, conversion between
//! envelopes and Avro values, the Confluent wire format, a thin Schema
//! Registry client, and the compatibility rules the registry enforces.
//!
//! The registry client is our own (about a hundred lines over `reqwest`)
//! rather than `schema_registry_converter`: we need two calls (register a
//! schema, fetch one by id) with caching and a retriable/permanent error
//! split, async, without a second TLS stack or a second copy of
//! `apache-avro` in the tree.

mod codec;
mod compat;
mod convert;
mod registry_client;
mod schemas;
mod wire;

pub use codec::{AvroDecoder, AvroEncoder, AvroError, AVRO_CONTENT_TYPE};
pub use compat::{check_compatibility, CompatibilityLevel, Incompatibility};
pub use convert::{from_avro, to_avro};
pub use registry_client::{Checked, RegistryClient, RegistryError};
pub use schemas::{subject, EventSchema, EventSchemas, SchemaFileError};
pub use wire::{frame, unframe, WireError, MAGIC_BYTE};

/// Re-exported so callers can hold parsed schemas and encode values.
pub use apache_avro::{to_avro_datum, types::Value, Schema};
