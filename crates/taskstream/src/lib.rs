//! The `taskstream` binary's library: starting each component on its own
//! ([`components`]) or all of them in one process ([`system`]), and the
//! command line that chooses between them ([`cli`]). Tests drive the same
//! functions the binary calls.

pub mod bench;
pub mod cli;
pub mod components;
pub mod data_dir_lock;
pub mod dlq;
pub mod lag;
pub mod schema;
pub mod shutdown_guard;
pub mod system;
pub mod telemetry;
