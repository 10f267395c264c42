//! The `taskstream` binary's library: the components as a library
//! ([`components`]), all of them in one process ([`system`]) or one per
//! process ([`processes`]), the operator's commands ([`ops`]), and the
//! command line ([`cli`], parsing only; [`commands`] runs what it parsed).
//! Tests drive the same functions the binary calls.

pub mod cli;
pub mod commands;
pub mod components;
pub mod config;
pub mod data_dir_lock;
pub mod ops;
pub mod processes;
pub mod schema;
pub mod shutdown_guard;
pub mod system;
pub mod telemetry;
