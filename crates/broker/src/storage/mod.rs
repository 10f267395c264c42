//! The on-disk log: record batches ([`batch`]), sparse index files
//! ([`index`]), segments ([`segment`]) and one partition's log ([`log`]).

pub(crate) mod batch;
pub(crate) mod index;
pub(crate) mod log;
pub(crate) mod producers;
pub(crate) mod segment;
pub(crate) mod txn;

#[cfg(test)]
mod tests;

pub use log::{AppendError, LogConfig, PartitionLog, ReadError, Visibility};
