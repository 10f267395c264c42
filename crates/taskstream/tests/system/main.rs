//! End-to-end tests: the whole system on random ports, driven over HTTP and
//! read back through the read-only views, Kafka and the store.

mod at_scale;
mod binary;
mod core_loop;
mod crash;
mod crash_at_scale;
mod dead_letters;
mod disk_full;
mod faults;
mod helpers;
mod http_errors;
mod http_fuzz;
mod interop;
mod kafka_security;
mod manifests;
mod observability;
mod offset_resets;
mod rebalance;
mod restart;
mod schema_registry;
mod shutdown;
mod webhook;
