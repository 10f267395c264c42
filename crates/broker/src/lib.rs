//! taskstream's own single-node broker speaking the Kafka wire protocol,
//! meant to replace librdkafka's mock cluster as `taskstream up`'s dev broker.
//!
//! ```no_run
//! let broker = taskstream_broker::Broker::start(
//!     taskstream_broker::BrokerConfig::new("/var/lib/taskstream/broker"),
//! ).unwrap();
//! println!("bootstrap.servers={}", broker.addr());
//! broker.stop();
//! ```
//!
//! # Files
//!
//! Under the data directory: `lock` (an exclusive `flock` held while the broker
//! runs, so a second broker on the same directory is refused), `cluster.id`,
//! `producer-ids` (see `producer_ids`), `groups/` (committed offsets), and
//! `topics/<name>/topic.properties` with one directory per partition. A
//! partition is a run of segments, each three files named after its base offset
//! (`00000000000000000000.log`, `.index`, `.timeindex`). The `.log` holds
//! record batches byte for byte as produced, except that the broker writes the
//! assigned `baseOffset` (and a leader epoch of 0) into the header; both fields
//! lie outside the batch CRC, which covers the bytes from `attributes` on, so
//! nothing is re-encoded. The `.index` maps a relative offset to a file
//! position every `index.interval.bytes` (4 KiB); the `.timeindex` maps the
//! running maximum timestamp to a position at the same points, plus a closing
//! entry when a segment is rolled. Lookups binary-search the files with
//! positioned reads; only a small struct per segment stays in memory,
//! whatever the size of the log. Each segment keeps its three files open,
//! so file descriptors grow with the number of segments (opening sealed
//! segments lazily is left for later).
//!
//! # Recovery
//!
//! On start, every partition's last segment is scanned: each batch's length,
//! magic, CRC (crc32c) and increasing offsets are checked, anything after
//! the last valid batch (a torn write, a corrupt tail) is cut off and
//! fsynced, and both indexes are rebuilt. Earlier segments were fsynced
//! (log and indexes) when they were rolled and are trusted. Half-created or
//! half-deleted topic directories are removed.
//!
//! # Flush policy
//!
//! A produce is acknowledged only after its batches are written to the segment
//! file, so an acknowledged write (acks=1 or acks=all) survives the broker
//! process dying, SIGKILL included: the data is in the page cache.
//! (`tests/sigkill.rs` kills a broker process right after its acknowledgements
//! and reads everything back.) Surviving a power loss needs fsync, set by
//! [`FlushPolicy`]: the default, [`FlushPolicy::Interval`] (1 s), fsyncs
//! written partitions in the background and may lose up to that much
//! acknowledged data on power loss (Kafka's default likewise leaves flushing to
//! the OS), and readers see records before they are fsynced;
//! [`FlushPolicy::BeforeAcknowledge`] fsyncs before each acknowledgement
//! and shows readers only what is fsynced: Fetch, the high watermark, the
//! last stable offset and ListOffsets stop at the partition's durable
//! offset, so no consumer reads, or commits past, a record a power loss
//! could take back. Rolling a segment, and stopping, fsync too.
//!
//! # Retention
//!
//! Segments roll at `segment.bytes` (default 128 MiB) or `segment.ms`
//! (7 days). A background pass (every 5 minutes) deletes whole rolled
//! segments whose newest record is older than `retention.ms` (default
//! 7 days) or, oldest first, while the log exceeds `retention.bytes`
//! (default unlimited), moving the log start offset to the next segment.
//!
//! # Protocol
//!
//! ApiVersions advertises only what is served: Produce v3–12, Fetch v4–12
//! (long polls that wake when a watched partition is appended to, honouring
//! `max_wait_ms`, `min_bytes`, partition and response byte limits, and
//! returning whole batches), ListOffsets v1–6 (earliest, latest, by
//! timestamp), Metadata v0–12 (auto-creating topics when allowed),
//! CreateTopics v2–7, DeleteTopics v1–5, DescribeConfigs v1–4 (topic
//! configs set, then the enforced defaults), DeleteRecords v0–2 (the new
//! log start is kept in the partition's `log-start-offset` file),
//! InitProducerId v0–4, the transaction APIs AddPartitionsToTxn v0–3,
//! AddOffsetsToTxn v0–3, TxnOffsetCommit v0–3 and EndTxn v0–3 (see
//! `transactions`), and the classic group protocol: FindCoordinator v0–4
//! (groups and transactions), JoinGroup v0–5, SyncGroup
//! v0–4, Heartbeat v0–4, LeaveGroup v0–4, OffsetCommit v2–8, OffsetFetch
//! v1–7, ListGroups v0–4, DescribeGroups v0–5 (see `groups`: the broker
//! relays the leader's assignment, enforces 6 s–30 min session timeouts
//! and rebalance timeouts, implements static membership (KIP-345:
//! `group.instance.id` from JoinGroup v5, SyncGroup and Heartbeat v3,
//! LeaveGroup v3, OffsetCommit v7, TxnOffsetCommit v3, DescribeGroups
//! v4), and persists committed offsets with their
//! metadata in `groups/<hex group id>.offsets`, fsynced per commit). A
//! malformed request, or one for an API or version not listed, closes its
//! connection. A request larger than `max_request_bytes` (Kafka's
//! `socket.request.max.bytes`, 100 MiB by default) is refused from its size
//! prefix, and decoding one allocates at most a small multiple of its size
//! whatever lengths it declares: `kafka-protocol` 0.18 reserved arrays by
//! their declared length, so a few bytes declaring 2^31 elements aborted
//! the process; the workspace uses a patched copy
//! (`vendor/kafka-protocol/PATCHED.md`).
//!
//! # Transactions
//!
//! The coordinator (`transactions`) keeps each transactional id's producer
//! id, epoch, state, partitions and pending offsets in `transactions.log`,
//! fsynced per change. EndTxn writes a control batch (commit or abort
//! marker) to every partition of the transaction. Each partition tracks its
//! open transactions and thereby its last stable offset (LSO), and lists
//! its aborted transactions in `aborted-transactions` (see
//! `storage::txn`): `read_committed` fetches stop at the LSO and carry the
//! aborted transactions they overlap, and ListOffsets for the latest offset
//! answers the LSO to them. A new InitProducerId for the id, a transaction
//! timeout, or a restart aborts an open transaction with a bumped epoch,
//! fencing the old producer (PRODUCER_FENCED, or INVALID_PRODUCER_EPOCH on
//! Produce).
//!
//! # Idempotent producers
//!
//! Each partition remembers, per producer id, its epoch and its last five
//! batches' sequence ranges (see `storage::producers`): a retried batch is
//! answered with its first offset and not appended again, a gap is refused
//! with OUT_OF_ORDER_SEQUENCE_NUMBER and an older epoch with
//! INVALID_PRODUCER_EPOCH. The state is rebuilt from the last segment on
//! start, so only a retry of a batch in an older segment could be appended
//! twice after a restart.
//!
//! # Conformance
//!
//! The broker is a target of `crates/testkit/tests/conformance.rs`
//! (`own_broker::*`), held to every check as Apache Kafka is, with no list
//! of differences.
//!
//! # Not implemented yet
//!
//! Transaction protocol version 2 (KIP-890: AddPartitionsToTxn v4+ and
//! EndTxn v4+), group membership across restarts (members rejoin;
//! committed offsets stay), the KIP-848 consumer protocol,
//! compaction (a `compact`-only topic is accepted and keeps its whole log),
//! fetch sessions (clients fall back to full fetches), ListOffsets by max
//! timestamp, LogAppendTime, TLS/SASL and quotas. Compressed batches are
//! stored as they come, but only gzip is decoded, so ListOffsets by time
//! inside a snappy, lz4 or zstd batch answers the batch's first offset.
//! Aborted-transaction lists are kept in memory per partition: one small
//! entry per abort still in the log (retention and DeleteRecords drop the
//! older ones).

#[cfg(test)]
mod alloc_meter;
mod api;
mod broker;
mod config;
mod groups;
mod producer_ids;
mod server;
mod storage;
mod topics;
mod transactions;

pub use broker::{Broker, RunningBroker, StartError};
pub use config::{BrokerConfig, ConfigError, FlushPolicy};
pub use storage::LogConfig;
