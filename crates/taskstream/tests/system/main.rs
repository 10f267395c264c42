//! End-to-end tests: the whole system on random ports, driven over HTTP and
//! read back through the read-only views, Kafka and the store.

mod as_documented;
mod at_scale;
mod binary;
mod broker_failures;
mod brokers;
mod components;
mod contention;
mod core_loop;
mod crash;
mod crash_at_scale;
mod dead_letters;
mod debezium;
mod disk_full;
mod exclusive_data_dir;
mod faults;
mod helpers;
mod hostile_clients;
mod http_errors;
mod http_fuzz;
mod interop;
mod kafka_security;
mod kafka_tools;
mod manifests;
mod notifier_groups;
mod observability;
mod offset_resets;
mod outbox_format;
mod rebalance;
mod relay_lease;
mod restart;
mod schema_registry;
mod schemathesis;
mod shutdown;
mod unreachable_kafka;
mod webhook;
