//! The transaction coordinator: for each `transactional.id`, its producer
//! id and epoch, its state, and the partitions and offsets in its current
//! transaction.
//!
//! # State machine
//!
//! ```text
//!            InitProducerId (epoch + 1)
//!   (new) ──────────────────────────────▶ Empty
//!   Empty | CompleteCommit | CompleteAbort
//!        ── AddPartitionsToTxn / AddOffsetsToTxn ──▶ Ongoing
//!   Ongoing ── EndTxn(commit) ──▶ PrepareCommit ── markers written ──▶ CompleteCommit
//!   Ongoing ── EndTxn(abort) ───▶ PrepareAbort ─── markers written ──▶ CompleteAbort
//!   Ongoing ── timeout, InitProducerId, restart ──▶ (epoch + 1) PrepareAbort ──▶ CompleteAbort
//! ```
//!
//! InitProducerId on an open transaction answers CONCURRENT_TRANSACTIONS
//! once the abort is written, as Kafka does; the client's retry then bumps
//! the epoch again (Empty at epoch + 2).
//!
//! A request carrying an older epoch than the current one gets
//! PRODUCER_FENCED (INVALID_PRODUCER_EPOCH on Produce): bumping the epoch is
//! how a successor, a timeout or a restart fences a zombie producer. Abort
//! markers written on someone else's behalf carry the bumped epoch, so the
//! partitions refuse the old epoch from then on.
//!
//! # Persistence
//!
//! `transactions.log` in the data directory holds one JSON line per change
//! of a transactional id's record (the last line for an id wins; a torn
//! last line is ignored), fsynced before the change is answered. A line
//! that could be written only in part (a full disk) is cut off again, or,
//! if even that fails, the next line starts on a line of its own, so
//! that only the torn one is unreadable. A decision
//! (PrepareCommit/PrepareAbort) is durable before any marker is written, so
//! after a restart every transaction is completed the way it was decided,
//! and an Ongoing one is aborted with a bumped epoch. A request that finds
//! a decision it did not write itself (a retry after a failed fsync, the
//! recovery at start) writes the decision again and waits for that line's
//! fsync before any marker: after a failed fsync, a later one that
//! succeeds does not prove the earlier line reached the disk. For the
//! same reason a failed fsync fails for every line it covered, not only
//! for the request that asked for it: each request whose line it covered
//! is answered an error (nothing is reported durable that was written
//! before the failure and not written again since), and the client's
//! retry writes its change again.
//!
//! # Storage failures
//!
//! A change that could not be written or fsynced (to `transactions.log`,
//! or a marker, or a committed offset) is answered NOT_COORDINATOR, as
//! Kafka's coordinator answers a storage failure of its log
//! (`TransactionStateManager.appendTransactionToLog`), InitProducerId
//! included: clients look the coordinator up again and retry, where
//! KAFKA_STORAGE_ERROR on EndTxn is fatal to a Java producer. A decision
//! whose line could not be written leaves the transaction Ongoing; one
//! whose fsync failed leaves it Prepare*, since the line may be on the
//! disk already and the decision cannot be taken back. Either way the
//! client's retried EndTxn completes it the same way (writing the
//! decision again first). Unlike Kafka's, which forgets a decision it
//! could not store, the coordinator then refuses the opposite decision
//! (INVALID_TXN_STATE), as Kafka does for a stored one.
//!
//! # Compaction
//!
//! The file is rewritten with only the latest records once it holds many
//! stale lines. Under the lock, the records are written to
//! `transactions.tmp`, and every later line goes to both files. Without
//! the lock, the new file is fsynced while requests go on. Then, in the
//! queue of fsyncs (no line is found durable meanwhile), what was written
//! to it since is fsynced, it is renamed over `transactions.log` under the
//! lock, and the directory is fsynced. A line found durable before the
//! rename is durable in both files; one written after it is found durable
//! only once the rename is. A failure leaves `transactions.log` as it was,
//! and the next compaction waits until the file holds twice as many lines.
//!
//! # Locking
//!
//! The coordinator's lock covers the in-memory records and the writing of
//! a line (and of the records a compaction starts from), never an fsync:
//! a change is written under the lock, and the request then waits,
//! without the lock, until an fsync covers its line (requests waiting
//! together share one fsync). Markers are written and
//! fsynced without the lock too, the partitions of a transaction in
//! parallel: while they are, the transaction is Prepare*, which refuses
//! its producer's appends, and the id is marked as being completed, so
//! that another request for it answers CONCURRENT_TRANSACTIONS (as
//! Kafka's coordinator does while markers are pending) instead of writing
//! them twice. The mark is dropped however the request ends (an error, a
//! panic), so a later request completes the decision. So one
//! transactional id's commit never holds up another id's requests, nor
//! the appends of any producer.
//!
//! The Complete* record that follows the markers is written without
//! waiting for its fsync (the next fsync of the file covers it): if it is
//! lost, the restart finds the decision and completes the transaction
//! again, writing markers that no open transaction follows (which readers
//! ignore) and the same offsets. Nothing later of that id can be durable
//! without it: every later change of the id waits for an fsync.
//!
//! Committed offsets sent with a transaction (TxnOffsetCommit) are kept in
//! the record and written to the group's offsets when the commit completes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};

use crate::groups::offsets::{Committed, OffsetStore};
use crate::producer_ids::ProducerIds;
use crate::storage::segment::now_ms;
use crate::storage::AppendError;
use crate::topics::Topics;

/// Kafka's `transaction.max.timeout.ms` default (15 minutes).
pub(crate) const MAX_TIMEOUT_MS: i32 = 900_000;
const FILE: &str = "transactions.log";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

/// An offset a transaction will commit for a group when it commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Everything known about one transactional id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TxnRecord {
    pub id: String,
    pub producer_id: i64,
    pub epoch: i16,
    /// The epoch before the last bump its producer asked for (KIP-360),
    /// or -1 after a bump that fenced the producer: a retried
    /// InitProducerId carrying it gets the current epoch back.
    #[serde(default = "no_epoch")]
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// When the current transaction began (ms since the epoch).
    pub started_ms: i64,
    pub partitions: BTreeSet<(String, i32)>,
    pub groups: BTreeSet<String>,
    pub offsets: Vec<PendingOffset>,
}

fn no_epoch() -> i16 {
    -1
}

#[derive(Debug)]
struct Inner {
    txns: HashMap<String, TxnRecord>,
    out: File,
    lines: usize,
    /// A line could not be written whole, nor its start cut off again:
    /// the next one begins with a new line.
    torn: bool,
    /// Ids whose markers a request is writing now, without the lock.
    completing: HashSet<String>,
    /// The rewrite of the file under way, if any.
    compacting: Option<Compacting>,
    /// No rewrite starts before the file holds this many lines: after one
    /// failed, the next waits until the file has doubled, rather than
    /// start again with every change.
    compact_from: usize,
}

/// A rewrite of `transactions.log` under way (see "Compaction" in the
/// module docs).
#[derive(Debug)]
struct Compacting {
    /// `transactions.tmp`: the latest records, then every line written
    /// since.
    file: File,
    /// Lines in it.
    lines: usize,
    /// A line could not be written to it: the rewrite is given up.
    failed: bool,
}

/// The fsyncs of `transactions.log`, taken one at a time and shared.
#[derive(Debug)]
struct Synced {
    /// Every line up to this one (see [`Transactions::written`]) is durable.
    through: u64,
    /// Lines after `failed_after` and up to `failed_through` were
    /// written before an fsync failed: a later fsync that succeeds does not
    /// prove they reached the disk (a failed writeback may leave their
    /// pages in memory only, marked clean), so none of them is ever
    /// reported durable; their changes are written again instead.
    failed_after: u64,
    failed_through: u64,
    /// A handle on the current file.
    file: File,
    /// The directory is to be fsynced before a line of the current file
    /// is durable: the rename that made it current may not be.
    dir_unsynced: bool,
}

/// A line written to `transactions.log`, not yet known to be durable:
/// [`Transactions::sync`] waits for it.
#[must_use = "a change is answered only once it is durable"]
#[derive(Debug, Clone, Copy)]
struct Written(u64);

/// The coordinator; see the module docs.
#[derive(Debug)]
pub(crate) struct Transactions {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Lines written so far (the sequence number of the last one).
    written: AtomicU64,
    synced: Mutex<Synced>,
    /// A handle on `transactions.tmp` whose compaction is to be finished
    /// (fsynced and swapped in) by the next request that can, without
    /// the coordinator lock.
    to_compact: Mutex<Option<File>>,
    /// Stale lines the file may hold beyond four per transactional id
    /// before it is compacted.
    stale_lines: usize,
    #[cfg(test)]
    hooks: tests::Hooks,
}

/// A held coordinator lock: produce appends for a transaction happen under
/// it, so that no batch lands after the transaction's markers.
pub(crate) struct Guard<'a>(MutexGuard<'a, Inner>);

impl Guard<'_> {
    /// Whether `producer_id` at `epoch` may append to `topic`/`partition`
    /// for `transactional_id` now.
    pub fn verify_produce(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), ResponseError> {
        let txn = self
            .0
            .txns
            .get(transactional_id)
            .filter(|t| t.producer_id == producer_id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if epoch != txn.epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if txn.state != TxnState::Ongoing
            || !txn.partitions.contains(&(topic.to_owned(), partition))
        {
            return Err(ResponseError::InvalidTxnState);
        }
        Ok(())
    }
}

/// A transactional id claimed in [`Inner::completing`], released when
/// dropped: neither an error, nor a panic, nor an early return while its
/// markers are written leaves the id answering CONCURRENT_TRANSACTIONS
/// until a restart. Made once the coordinator lock is released (its drop
/// takes the lock).
struct Claim<'a> {
    txns: &'a Transactions,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.txns.lock().completing.remove(&self.id);
    }
}

/// What the coordinator needs to write markers and offsets.
pub(crate) struct Stores<'a> {
    pub topics: &'a Topics,
    pub offsets: &'a OffsetStore,
}

impl Transactions {
    /// Loads `data_dir/transactions.log`.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let path = data_dir.join(FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let complete = text.rfind('\n').map_or(0, |end| end + 1);
        let mut txns = HashMap::new();
        let mut lines = 0;
        for line in text[..complete].lines() {
            match serde_json::from_str::<TxnRecord>(line) {
                Ok(record) => {
                    txns.insert(record.id.clone(), record);
                    lines += 1;
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable transaction record"),
            }
        }
        let out = OpenOptions::new().create(true).append(true).open(&path)?;
        if complete != text.len() {
            out.set_len(complete as u64)?;
        }
        let synced = Synced {
            through: 0,
            failed_after: 0,
            failed_through: 0,
            file: out.try_clone()?,
            dir_unsynced: false,
        };
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                txns,
                out,
                lines,
                torn: false,
                completing: HashSet::new(),
                compacting: None,
                compact_from: 0,
            }),
            written: AtomicU64::new(0),
            synced: Mutex::new(synced),
            to_compact: Mutex::new(None),
            stale_lines: 1000,
            #[cfg(test)]
            hooks: tests::Hooks::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the coordinator lock (see [`Guard`]).
    pub fn guard(&self) -> Guard<'_> {
        Guard(self.lock())
    }

    /// Writes a record and keeps it in memory; durable once
    /// [`Transactions::sync`] returned for the answer. May start a
    /// compaction, which a later [`Transactions::finish_compaction`]
    /// finishes.
    fn save(&self, inner: &mut Inner, record: TxnRecord) -> io::Result<Written> {
        let mut line = serde_json::to_string(&record).map_err(io::Error::other)?;
        line.push('\n');
        // After an unreadable fragment, on a line of its own.
        let after_fragment;
        let bytes = if inner.torn {
            after_fragment = format!("\n{line}");
            after_fragment.as_bytes()
        } else {
            line.as_bytes()
        };
        let len = inner.out.metadata()?.len();
        if let Err(e) = self.write_line(&mut inner.out, bytes) {
            // A part of the line may be written (the disk is full): it is
            // cut off, else the next line would be appended to it, and
            // both be unreadable.
            if let Err(cut) = self.truncate(&inner.out, len) {
                tracing::warn!(error = %cut, "cutting off a torn line of transactions.log failed");
                inner.torn = true;
            }
            return Err(e);
        }
        inner.torn = false;
        // Into the compacted file too, before the line is counted: an
        // fsync of that file covers every line counted before it began.
        if let Some(compacting) = inner.compacting.as_mut().filter(|c| !c.failed) {
            match compacting.file.write_all(line.as_bytes()) {
                Ok(()) => compacting.lines += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "compacting transactions.log failed");
                    compacting.failed = true;
                }
            }
        }
        let written = Written(self.written.fetch_add(1, Ordering::SeqCst) + 1);
        inner.lines += 1;
        inner.txns.insert(record.id.clone(), record);
        if inner.compacting.is_none()
            && inner.lines > 4 * inner.txns.len() + self.stale_lines
            && inner.lines >= inner.compact_from
        {
            if let Err(e) = self.start_compaction(inner) {
                self.compaction_failed(inner, &e);
            }
        }
        Ok(written)
    }

    /// Writes `line` to `out`.
    fn write_line(&self, out: &mut File, line: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(part) = self.hooks.short_write() {
            out.write_all(&line[..part.min(line.len())])?;
            return Err(io::Error::other("injected short write"));
        }
        out.write_all(line)
    }

    /// Cuts `out` back to `len` bytes, where the next write goes (the
    /// file a compaction wrote is not opened to append).
    fn truncate(&self, mut out: &File, len: u64) -> io::Result<()> {
        #[cfg(test)]
        self.hooks.truncate()?;
        out.set_len(len)?;
        out.seek(SeekFrom::Start(len)).map(|_| ())
    }

    /// Writes the latest records to `transactions.tmp`, which from now on
    /// gets every line `transactions.log` gets. Under the lock; no fsync.
    fn start_compaction(&self, inner: &mut Inner) -> io::Result<()> {
        let mut text = String::new();
        for record in inner.txns.values() {
            text.push_str(&serde_json::to_string(record).map_err(io::Error::other)?);
            text.push('\n');
        }
        let mut file = File::create(self.path.with_extension("tmp"))?;
        file.write_all(text.as_bytes())?;
        let to_sync = file.try_clone()?;
        inner.compacting = Some(Compacting {
            file,
            lines: inner.txns.len(),
            failed: false,
        });
        *self.to_compact.lock().unwrap_or_else(|e| e.into_inner()) = Some(to_sync);
        Ok(())
    }

    /// Finishes a compaction started by [`Transactions::save`], if any:
    /// called without the coordinator lock. A failure keeps
    /// `transactions.log` as it is.
    fn finish_compaction(&self) {
        let Some(file) = self
            .to_compact
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        if let Err(e) = self.swap_compacted(file) {
            self.compaction_failed(&mut self.lock(), &e);
        }
    }

    /// Gives a compaction up: under the lock, so that the file removed is
    /// not that of a compaction started since. The next one waits until
    /// the file has doubled.
    fn compaction_failed(&self, inner: &mut Inner, e: &io::Error) {
        tracing::warn!(error = %e, "compacting transactions.log failed");
        inner.compacting = None;
        inner.compact_from = inner.lines.saturating_mul(2);
        let _ = fs::remove_file(self.path.with_extension("tmp"));
    }

    /// fsyncs the compacted file without any lock (the other requests
    /// go on writing lines to both files and having the current one
    /// fsynced); then, holding the fsyncs' lock so that no line is found
    /// durable meanwhile, fsyncs what was written to it since, renames it
    /// over `transactions.log` under the coordinator lock, and fsyncs the
    /// directory. Every line found durable before the rename is durable
    /// in both files, so whichever the directory names after a crash
    /// holds it; a line written later is found durable only once the
    /// rename is (if the directory's fsync fails, by the next fsync that
    /// gets it done).
    fn swap_compacted(&self, file: File) -> io::Result<()> {
        #[cfg(test)]
        self.hooks.compaction_fsync()?;
        file.sync_data()?;
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let target = self.written.load(Ordering::SeqCst);
        file.sync_data()?;
        let mut inner = self.lock();
        if inner.compacting.as_ref().is_none_or(|c| c.failed) {
            return Err(io::Error::other(
                "a line could not be written to the compacted file",
            ));
        }
        fs::rename(self.path.with_extension("tmp"), &self.path)?;
        let compacting = inner.compacting.take().expect("checked above");
        inner.out = compacting.file;
        inner.lines = compacting.lines;
        drop(inner);
        synced.file = file;
        synced.dir_unsynced = true;
        match self.sync_dir(&mut synced) {
            // Every line written before `target` is in the new file, fsynced.
            Ok(()) => synced.through = synced.through.max(target),
            // The rename may be lost, and those lines with it (only the
            // ones found durable before it are in the old file for sure):
            // the next fsync tries again before it finds one durable.
            Err(e) => tracing::warn!(error = %e, "fsyncing the data directory failed"),
        }
        Ok(())
    }

    /// Waits, without the coordinator lock, until an fsync covers
    /// `written`: one fsync at a time, and one covers every line written
    /// before it began.
    ///
    /// An fsync that fails fails for every line it covers, whoever asked
    /// for it: the line of each request waiting meanwhile is reported
    /// lost (see [`Synced::failed_through`]), and its change is to be
    /// written again, in a new line, before it is answered.
    fn sync(&self, written: Written) -> io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if synced.failed_after < written.0 && written.0 <= synced.failed_through {
            return Err(io::Error::other(
                "an fsync of transactions.log failed after this change was written",
            ));
        }
        if synced.through >= written.0 {
            return Ok(());
        }
        #[cfg(test)]
        self.hooks.before_fsync();
        let target = self.written.load(Ordering::SeqCst);
        #[cfg(test)]
        let fsynced = self.hooks.fsync().and_then(|()| synced.file.sync_data());
        #[cfg(not(test))]
        let fsynced = synced.file.sync_data();
        if let Err(e) = fsynced {
            if synced.failed_through == 0 {
                synced.failed_after = synced.through;
            }
            // Lines written while it ran too: the failed writeback may
            // have taken their pages.
            let written = self.written.load(Ordering::SeqCst);
            synced.failed_through = synced.failed_through.max(written);
            return Err(e);
        }
        self.sync_dir(&mut synced)?;
        synced.through = synced.through.max(target);
        Ok(())
    }

    /// fsyncs the directory of `transactions.log` if a rename in it may
    /// not be durable yet.
    fn sync_dir(&self, synced: &mut Synced) -> io::Result<()> {
        if synced.dir_unsynced {
            #[cfg(test)]
            self.hooks.dir_fsync()?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            synced.dir_unsynced = false;
        }
        Ok(())
    }

    /// Saves `record` and waits until it is durable, releasing `inner`
    /// first.
    fn save_durably(&self, mut inner: MutexGuard<'_, Inner>, record: TxnRecord) -> io::Result<()> {
        let written = self.save(&mut inner, record)?;
        drop(inner);
        let synced = self.sync(written);
        self.finish_compaction();
        synced
    }

    /// Completes every transaction left unfinished by the last run:
    /// decided ones the way they were decided, open ones by an abort with
    /// a bumped epoch. Called once at start.
    pub fn recover(&self, stores: &Stores<'_>) -> io::Result<usize> {
        let unfinished: Vec<TxnRecord> = self
            .lock()
            .txns
            .values()
            .filter(|t| {
                matches!(
                    t.state,
                    TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort
                )
            })
            .cloned()
            .collect();
        let count = unfinished.len();
        for txn in unfinished {
            let inner = self.lock();
            let done = if txn.state == TxnState::Ongoing {
                tracing::info!(
                    transactional_id = txn.id,
                    "aborting a transaction left open by the last run"
                );
                self.fence_and_abort(inner, txn, stores)
            } else {
                self.claim_and_complete(inner, txn, None, stores)
            };
            done.map_err(|e| io::Error::other(format!("{e:?}")))?;
        }
        Ok(count)
    }

    /// Fences the producer of an open transaction and aborts it: the epoch
    /// is bumped (forgetting the previous one, so that the fenced producer
    /// cannot claim it back through KIP-360), the decision stored, then the
    /// abort markers written with the new epoch. Releases `inner`.
    fn fence_and_abort(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        mut txn: TxnRecord,
        stores: &Stores<'_>,
    ) -> Result<(), ResponseError> {
        txn.epoch = txn.epoch.saturating_add(1);
        txn.last_epoch = no_epoch();
        txn.state = TxnState::PrepareAbort;
        let decided = self.save(&mut inner, txn.clone()).map_err(storage_error)?;
        self.claim_and_complete(inner, txn, Some(decided), stores)
    }

    /// Completes a prepared transaction unless another request is doing so
    /// (then CONCURRENT_TRANSACTIONS): claims it under `inner`, releases
    /// the lock, waits for the decision to be durable, and writes the
    /// markers and offsets (see [`Transactions::complete`]).
    ///
    /// `decided` is the decision's line when the caller just wrote it.
    /// Without it (a retried EndTxn or InitProducerId after a failure, a
    /// restart), nothing says the decision is durable: its fsync may have
    /// failed, and a second fsync is no proof, since a failed writeback
    /// may leave the line in memory only, marked clean. So the decision
    /// is written again and that line waited for; if it cannot be made
    /// durable, the answer is an error and no marker is written.
    fn claim_and_complete(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        txn: TxnRecord,
        decided: Option<Written>,
        stores: &Stores<'_>,
    ) -> Result<(), ResponseError> {
        if inner.completing.contains(&txn.id) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        let decided = match decided {
            Some(decided) => decided,
            None => self.save(&mut inner, txn.clone()).map_err(storage_error)?,
        };
        inner.completing.insert(txn.id.clone());
        drop(inner);
        let claimed = Claim {
            txns: self,
            id: txn.id.clone(),
        };
        let done = self
            .sync(decided)
            .map_err(storage_error)
            .and_then(|()| self.complete(txn, stores));
        drop(claimed);
        self.finish_compaction();
        done
    }

    /// Writes a prepared transaction's markers (and, for a commit, its
    /// offsets) and records it complete. Runs without the coordinator
    /// lock, for an id claimed in [`Inner::completing`].
    fn complete(&self, mut txn: TxnRecord, stores: &Stores<'_>) -> Result<(), ResponseError> {
        let commit = match txn.state {
            TxnState::PrepareCommit => true,
            TxnState::PrepareAbort => false,
            _ => return Ok(()),
        };
        #[cfg(test)]
        self.hooks.completing();
        let began = Instant::now();
        let mut marked = Vec::with_capacity(txn.partitions.len());
        for (name, p) in &txn.partitions {
            let Some(topic) = stores.topics.get(name) else {
                continue; // deleted since
            };
            if topic.partition(*p).is_none() {
                continue;
            }
            let partition = topic.partition(*p).expect("checked above");
            let appended = {
                let mut log = partition.log();
                log.append_marker(txn.producer_id, txn.epoch, commit)
                    .map(|_| log.next_offset())
            };
            match appended {
                Ok(next_offset) => {
                    partition.appended.send_replace(next_offset);
                    marked.push((topic, *p));
                }
                Err(e) => return Err(marker_failed(&txn.id, e)),
            }
        }
        let appended_us = began.elapsed().as_micros() as u64;
        // The markers are fsynced before the transaction is recorded
        // complete, whatever the flush policy: once the coordinator says
        // complete it never writes the marker again, so a marker lost to
        // a power failure would leave the partition's transaction open for
        // good. Readers may see them before the fsync: the decision they
        // carry is already durable, and is written again after a crash.
        // The partitions' fsyncs run side by side.
        let synced = std::thread::scope(|scope| {
            let handles: Vec<_> = marked
                .iter()
                .skip(1)
                .map(|(topic, p)| scope.spawn(move || topic.partition(*p).expect("marked").sync()))
                .collect();
            let first = marked.first().map_or(Ok(()), |(topic, p)| {
                topic.partition(*p).expect("marked").sync()
            });
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("fsync panicked")))
                })
                .fold(first, |all, one| all.and(one))
        });
        if let Err(e) = synced {
            return Err(marker_failed(&txn.id, AppendError::Io(e)));
        }
        let markers_us = began.elapsed().as_micros() as u64;
        if commit {
            let mut by_group: BTreeMap<&str, Vec<(String, i32, Committed)>> = BTreeMap::new();
            for o in &txn.offsets {
                by_group.entry(&o.group).or_default().push((
                    o.topic.clone(),
                    o.partition,
                    Committed {
                        offset: o.offset,
                        leader_epoch: o.leader_epoch,
                        metadata: o.metadata.clone(),
                    },
                ));
            }
            for (group, commits) in by_group {
                stores.offsets.commit(group, &commits).map_err(|e| {
                    tracing::error!(group, error = %e, "storing transactional offsets failed");
                    ResponseError::NotCoordinator
                })?;
            }
        }
        tracing::debug!(
            transactional_id = txn.id,
            commit,
            partitions = marked.len(),
            groups = txn.groups.len(),
            appended_us,
            markers_synced_us = markers_us,
            total_us = began.elapsed().as_micros() as u64,
            "transaction markers written"
        );
        txn.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        txn.partitions.clear();
        txn.groups.clear();
        txn.offsets.clear();
        // Not waited for: see "Locking" in the module docs.
        let mut inner = self.lock();
        self.save(&mut inner, txn)
            .map(|_unsynced| ())
            .map_err(storage_error)
    }

    /// InitProducerId for a transactional id: a producer id and a new
    /// epoch, fencing any earlier producer with this id.
    ///
    /// While a transaction of this id is open, its producer is fenced (the
    /// epoch bumped), the transaction aborted (markers written) and the
    /// answer is CONCURRENT_TRANSACTIONS, as from Kafka: clients retry, and
    /// the retry gets the next epoch. So is it while another request writes
    /// the markers of this id's transaction.
    ///
    /// With `expected` (KIP-360, InitProducerId v3+), a producer bumps its
    /// own epoch: it must hold the current one, or the one before its last
    /// bump (a retry whose answer was lost gets the current epoch, not
    /// bumped again), else it is fenced. A producer whose transaction was
    /// aborted on timeout or by a restart was fenced by that bump, and stays
    /// fenced, as in Kafka (`TransactionMetadata.prepareIncrementProducerEpoch`
    /// after an epoch fence, which forgets the last epoch).
    ///
    /// A failure to store the state answers NOT_COORDINATOR, as from
    /// Kafka (see "Storage failures" in the module docs).
    pub fn init_producer_id(
        &self,
        stores: &Stores<'_>,
        producer_ids: &ProducerIds,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let mut inner = self.lock();
        let Some(txn) = inner.txns.get(id).cloned() else {
            let producer_id = producer_ids.next().map_err(storage_error)?;
            let txn = TxnRecord {
                id: id.to_owned(),
                producer_id,
                epoch: 0,
                last_epoch: no_epoch(),
                timeout_ms,
                state: TxnState::Empty,
                started_ms: 0,
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                offsets: Vec::new(),
            };
            self.save_durably(inner, txn).map_err(storage_error)?;
            return Ok((producer_id, 0));
        };
        if expected.is_some_and(|(pid, _)| pid != txn.producer_id) {
            return Err(ResponseError::ProducerFenced);
        }
        if inner.completing.contains(id) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        match txn.state {
            TxnState::Ongoing => {
                // As Kafka's coordinator does (`prepareInitProducerIdTransit`):
                // fence the open transaction's producer with a bumped epoch,
                // abort the transaction, and have the caller retry; the
                // retry bumps the epoch a second time (or rotates the
                // producer id once the epochs are exhausted).
                self.fence_and_abort(inner, txn, stores)?;
                return Err(ResponseError::ConcurrentTransactions);
            }
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                // Markers whose writing failed earlier: Kafka answers
                // CONCURRENT_TRANSACTIONS until they are written; here
                // they are written now. A failure to write them is the
                // storage's, and answered NOT_COORDINATOR.
                self.claim_and_complete(inner, txn, None, stores)?;
                inner = self.lock();
            }
            _ => {}
        }
        let Some(mut txn) = inner.txns.get(id).cloned() else {
            return Err(ResponseError::ConcurrentTransactions);
        };
        if txn.state != TxnState::Empty
            && !matches!(
                txn.state,
                TxnState::CompleteCommit | TxnState::CompleteAbort
            )
        {
            // Another request changed it meanwhile: ask again.
            return Err(ResponseError::ConcurrentTransactions);
        }
        // A retry of the bump that made the current epoch.
        let retry = expected.is_some_and(|(_, epoch)| {
            epoch != txn.epoch && epoch == txn.last_epoch && txn.last_epoch >= 0
        });
        if expected.is_some_and(|(_, epoch)| epoch != txn.epoch && !retry) {
            return Err(ResponseError::ProducerFenced);
        }
        if retry {
            // Answered with the current epoch, not bumped again.
        } else if txn.epoch >= i16::MAX - 1 {
            txn.producer_id = producer_ids.next().map_err(storage_error)?;
            txn.epoch = 0;
            txn.last_epoch = no_epoch();
        } else {
            // Only a producer bumping its own epoch may retry the bump.
            txn.last_epoch = match expected {
                Some(_) => txn.epoch,
                None => no_epoch(),
            };
            txn.epoch += 1;
        }
        txn.timeout_ms = timeout_ms;
        txn.state = TxnState::Empty;
        let answer = (txn.producer_id, txn.epoch);
        self.save_durably(inner, txn).map_err(storage_error)?;
        Ok(answer)
    }

    /// Checks a request's producer id and epoch against the transactional
    /// id's, and that no decision is half-written.
    fn check<'a>(
        inner: &'a mut Inner,
        id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<&'a mut TxnRecord, ResponseError> {
        let txn = inner
            .txns
            .get_mut(id)
            .filter(|t| t.producer_id == producer_id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if epoch != txn.epoch {
            return Err(ResponseError::ProducerFenced);
        }
        if matches!(txn.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(txn)
    }

    /// Starts the transaction if none is open.
    fn begin(txn: &mut TxnRecord) {
        if txn.state != TxnState::Ongoing {
            txn.state = TxnState::Ongoing;
            txn.started_ms = now_ms();
            txn.partitions.clear();
            txn.groups.clear();
            txn.offsets.clear();
        }
    }

    /// AddPartitionsToTxn: every partition must exist, else none is added.
    /// Answered once the record is durable, even if it held them all.
    pub fn add_partitions(
        &self,
        topics: &Topics,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<(), PartitionErrors> {
        let unknown: Vec<&(String, i32)> = partitions
            .iter()
            .filter(|(t, p)| {
                topics
                    .get(t)
                    .is_none_or(|topic| topic.partition(*p).is_none())
            })
            .collect();
        let mut inner = self.lock();
        let mut txn = Self::check(&mut inner, id, producer_id, epoch)
            .map_err(PartitionErrors::All)?
            .clone();
        if !unknown.is_empty() {
            return Err(PartitionErrors::Each(
                partitions
                    .iter()
                    .map(|tp| {
                        let code = if unknown.contains(&tp) {
                            ResponseError::UnknownTopicOrPartition
                        } else {
                            ResponseError::OperationNotAttempted
                        };
                        (tp.clone(), code)
                    })
                    .collect(),
            ));
        }
        Self::begin(&mut txn);
        txn.partitions.extend(partitions.iter().cloned());
        // Written and waited for even when nothing is new: the memory
        // holds a change before it is durable, so partitions found there
        // may be those of an earlier request whose fsync failed, which
        // this one retries.
        self.save_durably(inner, txn)
            .map_err(|e| PartitionErrors::All(storage_error(e)))
    }

    /// AddOffsetsToTxn: the transaction will commit offsets for `group`.
    pub fn add_offsets(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<(), ResponseError> {
        let mut inner = self.lock();
        let mut txn = Self::check(&mut inner, id, producer_id, epoch)?.clone();
        Self::begin(&mut txn);
        txn.groups.insert(group.to_owned());
        self.save_durably(inner, txn).map_err(storage_error)
    }

    /// TxnOffsetCommit: offsets committed for `group` if, and when, the
    /// transaction commits.
    pub fn txn_offset_commit(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        offsets: Vec<PendingOffset>,
    ) -> Result<(), ResponseError> {
        let mut inner = self.lock();
        let mut txn = Self::check(&mut inner, id, producer_id, epoch)?.clone();
        if txn.state != TxnState::Ongoing || !offsets.iter().all(|o| txn.groups.contains(&o.group))
        {
            return Err(ResponseError::InvalidTxnState);
        }
        for o in offsets {
            txn.offsets
                .retain(|p| (&p.group, &p.topic, p.partition) != (&o.group, &o.topic, o.partition));
            txn.offsets.push(o);
        }
        self.save_durably(inner, txn).map_err(storage_error)
    }

    /// EndTxn: commits or aborts the open transaction. Repeating the
    /// decision of a completed transaction succeeds (a retried EndTxn);
    /// repeating it while another request writes its markers answers
    /// CONCURRENT_TRANSACTIONS.
    pub fn end(
        &self,
        stores: &Stores<'_>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), ResponseError> {
        let began = Instant::now();
        let mut inner = self.lock();
        let txn = inner
            .txns
            .get(id)
            .filter(|t| t.producer_id == producer_id)
            .cloned()
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if epoch != txn.epoch {
            return Err(ResponseError::ProducerFenced);
        }
        let mut txn = txn;
        let ended = match (txn.state, commit) {
            (TxnState::Ongoing, _) => {
                txn.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                let decided = self.save(&mut inner, txn.clone()).map_err(storage_error)?;
                self.claim_and_complete(inner, txn, Some(decided), stores)
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                self.claim_and_complete(inner, txn, None, stores)
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(()),
            _ => Err(ResponseError::InvalidTxnState),
        };
        tracing::debug!(
            transactional_id = id,
            commit,
            ok = ended.is_ok(),
            elapsed_us = began.elapsed().as_micros() as u64,
            "EndTxn answered"
        );
        ended
    }

    /// Aborts, with a bumped epoch, every transaction open longer than its
    /// timeout. Returns the transactional ids aborted.
    pub fn expire(&self, stores: &Stores<'_>, now_ms: i64) -> Vec<String> {
        let expired: Vec<TxnRecord> = self
            .lock()
            .txns
            .values()
            .filter(|t| {
                t.state == TxnState::Ongoing && now_ms - t.started_ms > i64::from(t.timeout_ms)
            })
            .cloned()
            .collect();
        let mut aborted = Vec::new();
        for txn in expired {
            let inner = self.lock();
            // Still the same open transaction?
            if inner.txns.get(&txn.id) != Some(&txn) {
                continue;
            }
            tracing::info!(
                transactional_id = txn.id,
                timeout_ms = txn.timeout_ms,
                "aborting a transaction open longer than its timeout"
            );
            let id = txn.id.clone();
            match self.fence_and_abort(inner, txn, stores) {
                Ok(()) => aborted.push(id),
                Err(e) => tracing::error!(transactional_id = id, error = ?e, "aborting failed"),
            }
        }
        aborted
    }

    /// Whether an open transaction will commit an offset for this group's partition.
    pub fn has_pending_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.lock().txns.values().any(|t| {
            t.state == TxnState::Ongoing
                && t.offsets
                    .iter()
                    .any(|o| o.group == group && o.topic == topic && o.partition == partition)
        })
    }

    #[cfg(test)]
    pub fn get(&self, id: &str) -> Option<TxnRecord> {
        self.lock().txns.get(id).cloned()
    }
}

/// The answer to a marker that could not be written: a storage failure
/// is answered as [`storage_error`] answers it.
fn marker_failed(id: &str, e: AppendError) -> ResponseError {
    tracing::error!(transactional_id = id, error = %e, "writing a transaction marker failed");
    match e {
        AppendError::Io(_) => ResponseError::NotCoordinator,
        _ => ResponseError::UnknownServerError,
    }
}

/// Errors of AddPartitionsToTxn: one for all partitions, or one each.
#[derive(Debug)]
pub(crate) enum PartitionErrors {
    All(ResponseError),
    Each(Vec<((String, i32), ResponseError)>),
}

/// The answer to a change the coordinator could not store (see "Storage
/// failures" in the module docs): NOT_COORDINATOR, as from Kafka's
/// coordinator (`TransactionStateManager.appendTransactionToLog` answers a
/// KAFKA_STORAGE_ERROR of its log so), which every client retries, where
/// KAFKA_STORAGE_ERROR on EndTxn is fatal to a Java producer.
fn storage_error(e: io::Error) -> ResponseError {
    tracing::error!(error = %e, "transaction state storage failed");
    ResponseError::NotCoordinator
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::storage::LogConfig;

    /// Faults the tests inject into the coordinator.
    #[derive(Debug, Default)]
    pub(super) struct Hooks {
        /// How many of the next fsyncs of `transactions.log` fail.
        pub fail_syncs: AtomicUsize,
        /// How many of the next completions panic before their markers.
        pub panic_completions: AtomicUsize,
        /// The next compaction's fsync says so on the sender, then waits
        /// for the receiver (at most 120 s: longer than a test waits for
        /// what goes on meanwhile).
        pub hold_compaction: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
        /// The next fsync of `transactions.log` says so on the sender,
        /// then waits for the receiver (at most 30 s) before it sees
        /// which lines it covers.
        pub hold_fsync: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
        /// The same, once it has seen which lines it covers.
        pub hold_running_fsync: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
        /// How many of the next fsyncs of the data directory fail.
        pub fail_dir_syncs: AtomicUsize,
        /// The next line written to `transactions.log` fails after this
        /// many of its bytes.
        pub short_write: Mutex<Option<usize>>,
        /// How many of the next truncations of `transactions.log` fail.
        pub fail_truncates: AtomicUsize,
        /// Compactions that reached their fsync.
        pub compactions: AtomicUsize,
        /// How many of the next compactions fail at their fsync.
        pub fail_compactions: AtomicUsize,
    }

    /// Takes one from `n` if it is not 0.
    fn take_one(n: &AtomicUsize) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Says so on the sender of a held hook, if any, then waits for its
    /// receiver.
    fn hold(hook: &Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>, wait: Duration) {
        let held = hook.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((reached, release)) = held {
            let _ = reached.send(());
            let _ = release.recv_timeout(wait);
        }
    }

    impl Hooks {
        /// Called as an fsync of `transactions.log` begins, before it
        /// sees which lines it covers.
        pub fn before_fsync(&self) {
            hold(&self.hold_fsync, Duration::from_secs(30));
        }

        /// Called before each fsync of `transactions.log`.
        pub fn fsync(&self) -> io::Result<()> {
            hold(&self.hold_running_fsync, Duration::from_secs(30));
            match take_one(&self.fail_syncs) {
                true => Err(io::Error::other("injected fsync failure")),
                false => Ok(()),
            }
        }

        /// Called before a line is written to `transactions.log`: how many
        /// of its bytes to write before failing, if it is to fail.
        pub fn short_write(&self) -> Option<usize> {
            self.short_write
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
        }

        /// Called before `transactions.log` is truncated.
        pub fn truncate(&self) -> io::Result<()> {
            match take_one(&self.fail_truncates) {
                true => Err(io::Error::other("injected truncation failure")),
                false => Ok(()),
            }
        }

        /// Called before each fsync of the data directory.
        pub fn dir_fsync(&self) -> io::Result<()> {
            match take_one(&self.fail_dir_syncs) {
                true => Err(io::Error::other("injected directory fsync failure")),
                false => Ok(()),
            }
        }

        /// Called before a compacted file is fsynced.
        pub fn compaction_fsync(&self) -> io::Result<()> {
            self.compactions.fetch_add(1, Ordering::SeqCst);
            hold(&self.hold_compaction, Duration::from_secs(120));
            match take_one(&self.fail_compactions) {
                true => Err(io::Error::other("injected compaction failure")),
                false => Ok(()),
            }
        }

        /// Called as a transaction's completion begins.
        pub fn completing(&self) {
            if take_one(&self.panic_completions) {
                panic!("injected panic while completing a transaction");
            }
        }
    }

    struct World {
        dir: tempfile::TempDir,
        topics: Topics,
        offsets: OffsetStore,
        ids: ProducerIds,
    }

    impl World {
        fn open(dir: tempfile::TempDir) -> Self {
            let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
            let offsets = OffsetStore::open(dir.path()).unwrap();
            let ids = ProducerIds::open(dir.path()).unwrap();
            Self {
                dir,
                topics,
                offsets,
                ids,
            }
        }

        fn stores(&self) -> Stores<'_> {
            Stores {
                topics: &self.topics,
                offsets: &self.offsets,
            }
        }

        fn next_offset(&self, topic: &str) -> (i64, i64) {
            let topic = self.topics.get(topic).unwrap();
            let log = topic.partitions[0].log();
            (log.last_stable_offset(), log.next_offset())
        }
    }

    pub(crate) fn transactional_batch(producer_id: i64, epoch: i16) -> Vec<u8> {
        let mut batch = crate::storage::batch::tests::encode_batch(&["v"], 1_000);
        batch[21..23].copy_from_slice(&crate::storage::txn::TRANSACTIONAL_FLAG.to_be_bytes());
        batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
        batch[51..53].copy_from_slice(&epoch.to_be_bytes());
        batch[53..57].copy_from_slice(&0i32.to_be_bytes());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    #[test]
    fn a_transaction_open_at_a_restart_is_aborted_its_epoch_bumped_and_its_offsets_dropped() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        assert_eq!(epoch, 0);
        txns.add_partitions(&world.topics, "tx", pid, 0, &[("t".into(), 0)])
            .unwrap();
        txns.add_offsets("tx", pid, 0, "g").unwrap();
        txns.txn_offset_commit(
            "tx",
            pid,
            0,
            vec![PendingOffset {
                group: "g".into(),
                topic: "t".into(),
                partition: 0,
                offset: 5,
                leader_epoch: -1,
                metadata: None,
            }],
        )
        .unwrap();
        {
            let guard = txns.guard();
            guard.verify_produce("tx", pid, 0, "t", 0).unwrap();
            let topic = world.topics.get("t").unwrap();
            topic.partitions[0]
                .log()
                .append(&mut transactional_batch(pid, 0))
                .unwrap();
        }
        assert_eq!(
            world.next_offset("t"),
            (0, 1),
            "the open transaction holds the LSO"
        );
        drop(txns);
        let World { dir, .. } = world;

        // The broker restarts.
        let world = World::open(dir);
        let txns = Transactions::open(world.dir.path()).unwrap();
        assert_eq!(world.next_offset("t"), (0, 1), "still open before recovery");
        assert_eq!(txns.recover(&world.stores()).unwrap(), 1);
        let record = txns.get("tx").unwrap();
        assert_eq!(
            (record.producer_id, record.epoch, record.state),
            (pid, 1, TxnState::CompleteAbort)
        );
        assert_eq!(world.next_offset("t"), (2, 2), "an abort marker ends it");
        assert!(
            world.offsets.fetch("g").is_empty(),
            "its offsets are not committed"
        );
        assert_eq!(
            txns.end(&world.stores(), "tx", pid, 0, true),
            Err(ResponseError::ProducerFenced),
            "the producer from before the restart is fenced"
        );
        let (again, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        assert_eq!((again, epoch), (pid, 2));
        drop(txns);
        let txns = Transactions::open(world.dir.path()).unwrap();
        assert_eq!(
            txns.get("tx").unwrap().epoch,
            2,
            "the state survives a restart"
        );
    }

    #[test]
    fn init_producer_id_on_an_open_transaction_aborts_it_then_answers_concurrent_transactions_and_the_retry_gets_the_next_epoch(
    ) {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let init =
            |expected| txns.init_producer_id(&world.stores(), &world.ids, "tx", 60_000, expected);
        let (pid, epoch) = init(None).unwrap();
        txns.add_partitions(&world.topics, "tx", pid, epoch, &[("t".into(), 0)])
            .unwrap();
        {
            let guard = txns.guard();
            guard.verify_produce("tx", pid, epoch, "t", 0).unwrap();
            let topic = world.topics.get("t").unwrap();
            topic.partitions[0]
                .log()
                .append(&mut transactional_batch(pid, epoch))
                .unwrap();
        }
        assert_eq!(world.next_offset("t"), (0, 1));

        // Another producer with the same transactional id starts.
        assert_eq!(init(None), Err(ResponseError::ConcurrentTransactions));
        assert_eq!(
            world.next_offset("t"),
            (2, 2),
            "the abort marker is written before the answer"
        );
        let record = txns.get("tx").unwrap();
        assert_eq!(
            (record.epoch, record.state),
            (epoch + 1, TxnState::CompleteAbort)
        );
        assert_eq!(
            txns.end(&world.stores(), "tx", pid, epoch, true),
            Err(ResponseError::ProducerFenced),
            "the first producer is fenced"
        );
        assert_eq!(
            init(None),
            Ok((pid, epoch + 2)),
            "the retry gets the next epoch"
        );

        // KIP-360: a producer bumping its own epoch while its transaction
        // is open is fenced the same way, and stays fenced on its retry.
        let current = epoch + 2;
        txns.add_partitions(&world.topics, "tx", pid, current, &[("t".into(), 0)])
            .unwrap();
        assert_eq!(
            init(Some((pid, current))),
            Err(ResponseError::ConcurrentTransactions)
        );
        assert_eq!(
            init(Some((pid, current))),
            Err(ResponseError::ProducerFenced)
        );
        assert_eq!(init(None), Ok((pid, current + 2)));
    }

    #[test]
    fn a_committed_transaction_commits_its_offsets_and_a_retried_end_succeeds() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        assert_eq!(
            txns.end(&world.stores(), "tx", pid, epoch, true),
            Err(ResponseError::InvalidTxnState),
            "nothing to commit"
        );
        txns.add_offsets("tx", pid, epoch, "g").unwrap();
        let offset = PendingOffset {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            offset: 7,
            leader_epoch: -1,
            metadata: Some("m".into()),
        };
        txns.txn_offset_commit("tx", pid, epoch, vec![offset])
            .unwrap();
        assert!(txns.has_pending_offset("g", "t", 0));
        txns.end(&world.stores(), "tx", pid, epoch, true).unwrap();
        txns.end(&world.stores(), "tx", pid, epoch, true).unwrap();
        assert!(!txns.has_pending_offset("g", "t", 0));
        assert_eq!(world.offsets.fetch("g")[&("t".to_owned(), 0)].offset, 7);
        assert_eq!(
            txns.end(&world.stores(), "tx", pid, epoch, false),
            Err(ResponseError::InvalidTxnState)
        );
    }

    #[test]
    fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 1_000, None)
            .unwrap();
        txns.add_partitions(&world.topics, "tx", pid, epoch, &[("t".into(), 0)])
            .unwrap();
        let started = txns.get("tx").unwrap().started_ms;
        assert!(txns.expire(&world.stores(), started + 1_000).is_empty());
        assert_eq!(txns.expire(&world.stores(), started + 1_001), ["tx"]);
        assert_eq!(txns.get("tx").unwrap().state, TxnState::CompleteAbort);
        assert_eq!(
            txns.add_partitions(&world.topics, "tx", pid, epoch, &[("t".into(), 0)])
                .map_err(|e| format!("{e:?}")),
            Err(format!(
                "{:?}",
                PartitionErrors::All(ResponseError::ProducerFenced)
            ))
        );
        assert_eq!(
            txns.init_producer_id(&world.stores(), &world.ids, "tx", 0, None),
            Err(ResponseError::InvalidTransactionTimeout)
        );
    }

    #[test]
    fn the_markers_of_a_transaction_are_fsynced_before_it_is_recorded_complete() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        for (id, commit) in [("committer", true), ("aborter", false)] {
            let (pid, epoch) = txns
                .init_producer_id(&world.stores(), &world.ids, id, 60_000, None)
                .unwrap();
            txns.add_partitions(&world.topics, id, pid, epoch, &[("t".into(), 0)])
                .unwrap();
            txns.end(&world.stores(), id, pid, epoch, commit).unwrap();
            let topic = world.topics.get("t").unwrap();
            assert!(
                !topic.partitions[0].log().has_unsynced(),
                "the {id}'s marker awaits the next flush"
            );
        }
    }

    #[test]
    fn a_retried_epoch_bump_gets_the_current_epoch_and_a_fenced_producer_stays_fenced() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let init =
            |expected| txns.init_producer_id(&world.stores(), &world.ids, "tx", 1_000, expected);
        let (pid, first) = init(None).unwrap();

        // KIP-360: the producer bumps its own epoch; the answer is lost and
        // it asks again with the epoch it still holds.
        let (_, bumped) = init(Some((pid, first))).unwrap();
        assert_eq!(bumped, first + 1);
        assert_eq!(
            init(Some((pid, first))),
            Ok((pid, bumped)),
            "the retry is answered with the current epoch, not bumped again"
        );
        assert_eq!(init(Some((pid, bumped))), Ok((pid, bumped + 1)));
        let current = bumped + 1;
        assert_eq!(
            init(Some((pid, first))),
            Err(ResponseError::ProducerFenced),
            "only the last bump may be retried"
        );
        assert_eq!(
            init(Some((pid + 1, current))),
            Err(ResponseError::ProducerFenced),
            "another producer id is fenced"
        );

        // A transaction aborted on timeout fenced its producer by bumping
        // the epoch; as in Kafka, it cannot take that epoch back.
        txns.add_partitions(&world.topics, "tx", pid, current, &[("t".into(), 0)])
            .unwrap();
        let started = txns.get("tx").unwrap().started_ms;
        assert_eq!(txns.expire(&world.stores(), started + 1_001), ["tx"]);
        assert_eq!(
            init(Some((pid, current))),
            Err(ResponseError::ProducerFenced)
        );
        assert_eq!(
            init(None),
            Ok((pid, current + 2)),
            "a new producer bumps past the fencing epoch"
        );
    }

    #[test]
    fn a_transaction_whose_markers_are_being_fsynced_holds_up_no_other_transactional_id() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        world.topics.create("u", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let stores = world.stores();
        let (a, a_epoch) = txns
            .init_producer_id(&stores, &world.ids, "a", 60_000, None)
            .unwrap();
        txns.add_partitions(&world.topics, "a", a, a_epoch, &[("t".into(), 0)])
            .unwrap();
        let (reached, reached_rx) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel();
        *world.topics.get("t").unwrap().partitions[0]
            .hold_sync
            .lock()
            .unwrap() = Some((reached, released));
        std::thread::scope(|scope| {
            let committing = scope.spawn(|| txns.end(&stores, "a", a, a_epoch, true));
            reached_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the commit reaches its marker's fsync");
            let (done, done_rx) = std::sync::mpsc::channel();
            let (txns, stores, world) = (&txns, &stores, &world);
            let other = scope.spawn(move || {
                let (b, b_epoch) = txns
                    .init_producer_id(stores, &world.ids, "b", 60_000, None)
                    .unwrap();
                txns.add_partitions(&world.topics, "b", b, b_epoch, &[("u".into(), 0)])
                    .unwrap();
                txns.guard()
                    .verify_produce("b", b, b_epoch, "u", 0)
                    .unwrap();
                let _ = done.send(());
            });
            let proceeded = done_rx.recv_timeout(std::time::Duration::from_secs(5));
            assert_eq!(
                txns.end(stores, "a", a, a_epoch, true),
                Err(ResponseError::ConcurrentTransactions),
                "a retried EndTxn waits for the markers being written"
            );
            release.send(()).unwrap();
            other.join().unwrap();
            committing.join().unwrap().unwrap();
            assert!(
                proceeded.is_ok(),
                "another transactional id waited for this one's fsync"
            );
        });
        assert_eq!(txns.get("a").unwrap().state, TxnState::CompleteCommit);
        txns.end(&stores, "a", a, a_epoch, true).unwrap();
    }

    #[test]
    fn init_producer_id_answers_not_coordinator_when_the_markers_it_must_finish_cannot_be_stored() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let init = || txns.init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None);
        let (pid, epoch) = init().unwrap();
        txns.add_partitions(&world.topics, "tx", pid, epoch, &[("t".into(), 0)])
            .unwrap();
        txns.add_offsets("tx", pid, epoch, "g").unwrap();
        let offset = PendingOffset {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            offset: 3,
            leader_epoch: -1,
            metadata: None,
        };
        txns.txn_offset_commit("tx", pid, epoch, vec![offset])
            .unwrap();
        // The group's offsets file cannot be written: a directory is where
        // it goes.
        let blocker = world.dir.path().join("groups").join("67.offsets");
        fs::create_dir_all(&blocker).unwrap();
        assert_eq!(
            txns.end(&world.stores(), "tx", pid, epoch, true),
            Err(ResponseError::NotCoordinator)
        );
        assert_eq!(txns.get("tx").unwrap().state, TxnState::PrepareCommit);
        assert_eq!(
            init(),
            Err(ResponseError::NotCoordinator),
            "a storage failure is not a transaction in progress"
        );
        fs::remove_dir(&blocker).unwrap();
        assert_eq!(init(), Ok((pid, epoch + 1)), "the commit is finished first");
        assert_eq!(world.offsets.fetch("g")[&("t".to_owned(), 0)].offset, 3);
    }

    #[test]
    fn a_decision_whose_fsync_failed_writes_no_marker_until_a_retry_makes_it_durable() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        txns.add_partitions(&world.topics, "tx", pid, epoch, &[("t".into(), 0)])
            .unwrap();
        {
            let guard = txns.guard();
            guard.verify_produce("tx", pid, epoch, "t", 0).unwrap();
            let topic = world.topics.get("t").unwrap();
            topic.partitions[0]
                .log()
                .append(&mut transactional_batch(pid, epoch))
                .unwrap();
        }
        let end = || txns.end(&world.stores(), "tx", pid, epoch, true);

        // The disk refuses the fsyncs of the commit decision, of the
        // retried EndTxn's and of InitProducerId's.
        txns.hooks.fail_syncs.store(3, Ordering::SeqCst);
        assert_eq!(end(), Err(ResponseError::NotCoordinator));
        assert_eq!(txns.get("tx").unwrap().state, TxnState::PrepareCommit);
        assert_eq!(
            end(),
            Err(ResponseError::NotCoordinator),
            "a retry cannot write markers for a decision that is not durable"
        );
        assert_eq!(
            world.next_offset("t"),
            (0, 1),
            "no marker for a decision that may be lost"
        );
        assert_eq!(
            txns.init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None),
            Err(ResponseError::NotCoordinator),
            "nor for InitProducerId, which finishes the transaction first"
        );
        assert_eq!(world.next_offset("t"), (0, 1));

        // The disk works again: the retry makes the decision durable, then
        // writes the marker.
        txns.hooks.fail_syncs.store(0, Ordering::SeqCst);
        end().unwrap();
        assert_eq!(world.next_offset("t"), (2, 2), "the commit marker");
        assert_eq!(txns.get("tx").unwrap().state, TxnState::CompleteCommit);
    }

    #[test]
    fn the_recovery_at_start_writes_no_marker_for_a_decision_it_cannot_make_durable() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        txns.add_partitions(&world.topics, "tx", pid, epoch, &[("t".into(), 0)])
            .unwrap();
        {
            let guard = txns.guard();
            guard.verify_produce("tx", pid, epoch, "t", 0).unwrap();
            let topic = world.topics.get("t").unwrap();
            topic.partitions[0]
                .log()
                .append(&mut transactional_batch(pid, epoch))
                .unwrap();
        }
        txns.hooks.fail_syncs.store(1, Ordering::SeqCst);
        assert_eq!(
            txns.end(&world.stores(), "tx", pid, epoch, true),
            Err(ResponseError::NotCoordinator)
        );
        drop(txns);

        // The broker restarts; the decision line is in the file, perhaps
        // not on the disk.
        let txns = Transactions::open(world.dir.path()).unwrap();
        assert_eq!(txns.get("tx").unwrap().state, TxnState::PrepareCommit);
        txns.hooks.fail_syncs.store(1, Ordering::SeqCst);
        assert!(txns.recover(&world.stores()).is_err());
        assert_eq!(world.next_offset("t"), (0, 1), "no marker");
        assert_eq!(txns.recover(&world.stores()).unwrap(), 1);
        assert_eq!(world.next_offset("t"), (2, 2), "the commit marker");
        assert_eq!(txns.get("tx").unwrap().state, TxnState::CompleteCommit);
    }

    #[test]
    fn a_completion_that_panics_leaves_the_transactional_id_to_the_next_request() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let init = || txns.init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None);
        let (pid, epoch) = init().unwrap();
        let open_transaction = |epoch| {
            txns.add_partitions(&world.topics, "tx", pid, epoch, &[("t".into(), 0)])
                .unwrap();
            let guard = txns.guard();
            guard.verify_produce("tx", pid, epoch, "t", 0).unwrap();
            let topic = world.topics.get("t").unwrap();
            topic.partitions[0]
                .log()
                .append(&mut transactional_batch(pid, epoch))
                .unwrap();
        };
        let end_panicking = |epoch, commit| {
            txns.hooks.panic_completions.store(1, Ordering::SeqCst);
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                txns.end(&world.stores(), "tx", pid, epoch, commit)
            }));
            assert!(ended.is_err(), "the completion panicked");
        };

        open_transaction(epoch);
        end_panicking(epoch, true);
        assert_eq!(txns.get("tx").unwrap().state, TxnState::PrepareCommit);
        assert_eq!(world.next_offset("t"), (0, 1), "no marker yet");
        assert_eq!(
            txns.end(&world.stores(), "tx", pid, epoch, true),
            Ok(()),
            "the retried EndTxn completes the commit"
        );
        assert_eq!(world.next_offset("t"), (2, 2));

        open_transaction(epoch);
        end_panicking(epoch, false);
        assert_eq!(txns.get("tx").unwrap().state, TxnState::PrepareAbort);
        let (_, next) = world.next_offset("t");
        assert_eq!(
            init(),
            Ok((pid, epoch + 1)),
            "InitProducerId completes the abort, then bumps the epoch"
        );
        assert_eq!(
            world.next_offset("t"),
            (next + 1, next + 1),
            "the abort marker"
        );
    }

    #[test]
    fn compacting_the_log_holds_up_no_other_transactional_id_and_loses_no_change_made_meanwhile() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("u", 1, 1, BTreeMap::new()).unwrap();
        let mut txns = Transactions::open(world.dir.path()).unwrap();
        txns.stale_lines = 10;
        let stores = world.stores();
        let (a, a_epoch) = txns
            .init_producer_id(&stores, &world.ids, "a", 60_000, None)
            .unwrap();
        let (reached, reached_rx) = mpsc::channel();
        let (release, released) = mpsc::channel();
        *txns.hooks.hold_compaction.lock().unwrap() = Some((reached, released));
        let (txns, stores, world) = (&txns, &stores, &world);
        std::thread::scope(|scope| {
            // Each AddOffsetsToTxn writes a line: enough of them to compact.
            let writing = scope.spawn(move || {
                for group in 0..30 {
                    txns.add_offsets("a", a, a_epoch, &format!("g{group}"))
                        .unwrap();
                }
            });
            reached_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("a compaction reaches its fsync");
            let (done, done_rx) = mpsc::channel();
            let other = scope.spawn(move || {
                let (b, b_epoch) = txns
                    .init_producer_id(stores, &world.ids, "b", 60_000, None)
                    .unwrap();
                txns.add_partitions(&world.topics, "b", b, b_epoch, &[("u".into(), 0)])
                    .unwrap();
                txns.guard()
                    .verify_produce("b", b, b_epoch, "u", 0)
                    .unwrap();
                let _ = done.send(());
            });
            // A liveness bound, shorter than the compaction is held.
            let proceeded = done_rx.recv_timeout(Duration::from_secs(30));
            release.send(()).unwrap();
            other.join().unwrap();
            writing.join().unwrap();
            assert!(
                proceeded.is_ok(),
                "another transactional id waited for the compaction's fsync"
            );
        });

        // 33 lines were written; the file holds fewer, and every change,
        // those made during the compaction's fsync included.
        let text = fs::read_to_string(world.dir.path().join(FILE)).unwrap();
        assert!(text.lines().count() < 33, "compacted:\n{text}");
        let reopened = Transactions::open(world.dir.path()).unwrap();
        for id in ["a", "b"] {
            assert_eq!(reopened.get(id), txns.get(id), "{id}");
        }
        assert_eq!(reopened.get("a").unwrap().groups.len(), 30);
        assert_eq!(reopened.get("b").unwrap().state, TxnState::Ongoing);
    }

    /// Waits until `done` holds: a liveness bound, not a timing claim.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    type Hold = Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>;

    #[test]
    fn a_failed_fsync_fails_for_every_change_it_covered_not_only_for_the_request_that_asked_for_it()
    {
        a_failed_fsync_fails_for_a_change_written_while_it_is(|hooks| &hooks.hold_fsync);
    }

    #[test]
    fn a_failed_fsync_fails_for_every_change_written_while_it_ran() {
        a_failed_fsync_fails_for_a_change_written_while_it_is(|hooks| &hooks.hold_running_fsync);
    }

    /// B's fsync is held at `hold` while A's decision is written, then
    /// fails: A's decision is not found durable by the next fsync.
    fn a_failed_fsync_fails_for_a_change_written_while_it_is(hold: fn(&Hooks) -> &Hold) {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let stores = world.stores();
        let (a, a_epoch) = txns
            .init_producer_id(&stores, &world.ids, "a", 60_000, None)
            .unwrap();
        let (b, b_epoch) = txns
            .init_producer_id(&stores, &world.ids, "b", 60_000, None)
            .unwrap();
        txns.add_partitions(&world.topics, "a", a, a_epoch, &[("t".into(), 0)])
            .unwrap();
        {
            let guard = txns.guard();
            guard.verify_produce("a", a, a_epoch, "t", 0).unwrap();
            let topic = world.topics.get("t").unwrap();
            topic.partitions[0]
                .log()
                .append(&mut transactional_batch(a, a_epoch))
                .unwrap();
        }
        let (reached, reached_rx) = mpsc::channel();
        let (release, released) = mpsc::channel();
        *hold(&txns.hooks).lock().unwrap() = Some((reached, released));
        txns.hooks.fail_syncs.store(1, Ordering::SeqCst);
        let (txns, stores) = (&txns, &stores);
        std::thread::scope(|scope| {
            // B's change starts an fsync, which will fail...
            let b_adds = scope.spawn(move || txns.add_offsets("b", b, b_epoch, "g"));
            reached_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("B's fsync begins");
            // ...once A's commit decision is written.
            let a_ends = scope.spawn(move || txns.end(stores, "a", a, a_epoch, true));
            wait_until("A's decision is written", || {
                txns.get("a").unwrap().state == TxnState::PrepareCommit
            });
            release.send(()).unwrap();
            assert_eq!(b_adds.join().unwrap(), Err(ResponseError::NotCoordinator));
            assert_eq!(
                a_ends.join().unwrap(),
                Err(ResponseError::NotCoordinator),
                "A's decision may not be on the disk: the fsync that failed may have covered it"
            );
        });
        assert_eq!(world.next_offset("t"), (0, 1), "no marker");

        // The retry writes the decision again, and that line is durable.
        txns.end(stores, "a", a, a_epoch, true).unwrap();
        assert_eq!(world.next_offset("t"), (2, 2), "the commit marker");
        txns.add_offsets("b", b, b_epoch, "g").unwrap();
    }

    #[test]
    fn a_line_of_the_compacted_file_is_not_found_durable_while_its_rename_may_be_lost() {
        let world = World::open(tempfile::tempdir().unwrap());
        let mut txns = Transactions::open(world.dir.path()).unwrap();
        txns.stale_lines = 0;
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        for group in ["g0", "g1", "g2"] {
            txns.add_offsets("tx", pid, epoch, group).unwrap();
        }
        // The fifth line of one transactional id starts a compaction; it
        // is renamed in before that line's request waits for its fsync.
        let mut record = txns.get("tx").unwrap();
        record.groups.insert("g3".into());
        let written = txns.save(&mut txns.lock(), record).unwrap();
        assert!(txns.lock().compacting.is_some(), "a compaction started");
        txns.hooks.fail_dir_syncs.store(1, Ordering::SeqCst);
        txns.finish_compaction();
        assert!(
            !txns.path.with_extension("tmp").exists(),
            "renamed over transactions.log"
        );
        txns.hooks.fail_dir_syncs.store(1, Ordering::SeqCst);
        assert!(
            txns.sync(written).is_err(),
            "the line is in the renamed file only, and the rename may be lost"
        );
        txns.sync(written).unwrap();
        let reopened = Transactions::open(world.dir.path()).unwrap();
        assert_eq!(reopened.get("tx"), txns.get("tx"));
    }

    #[test]
    fn a_retried_add_partitions_is_answered_only_once_the_partitions_are_durable() {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        let add = || {
            txns.add_partitions(&world.topics, "tx", pid, epoch, &[("t".into(), 0)])
                .map_err(|e| format!("{e:?}"))
        };
        let refused = Err(format!(
            "{:?}",
            PartitionErrors::All(ResponseError::NotCoordinator)
        ));
        txns.hooks.fail_syncs.store(2, Ordering::SeqCst);
        assert_eq!(add(), refused);
        assert_eq!(
            add(),
            refused,
            "the retry finds the partition in memory, not on the disk"
        );
        assert_eq!(add(), Ok(()));
    }

    #[test]
    fn a_line_written_in_part_leaves_the_next_one_readable() {
        let world = World::open(tempfile::tempdir().unwrap());
        let txns = Transactions::open(world.dir.path()).unwrap();
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        // The disk fills up in the middle of a line: it is cut off.
        *txns.hooks.short_write.lock().unwrap() = Some(10);
        assert_eq!(
            txns.add_offsets("tx", pid, epoch, "g0"),
            Err(ResponseError::NotCoordinator)
        );
        txns.add_offsets("tx", pid, epoch, "g1").unwrap();
        let reopened = Transactions::open(world.dir.path()).unwrap();
        assert_eq!(reopened.get("tx"), txns.get("tx"));
        assert_eq!(
            reopened.get("tx").unwrap().groups,
            BTreeSet::from(["g1".to_owned()])
        );

        // If it cannot be cut off, the next line begins on a line of its own.
        *txns.hooks.short_write.lock().unwrap() = Some(10);
        txns.hooks.fail_truncates.store(1, Ordering::SeqCst);
        assert_eq!(
            txns.add_offsets("tx", pid, epoch, "g2"),
            Err(ResponseError::NotCoordinator)
        );
        txns.add_offsets("tx", pid, epoch, "g3").unwrap();
        let reopened = Transactions::open(world.dir.path()).unwrap();
        assert_eq!(reopened.get("tx"), txns.get("tx"));
        assert!(reopened.get("tx").unwrap().groups.contains("g3"));
    }

    #[test]
    fn a_decision_that_could_not_be_stored_is_answered_not_coordinator_and_the_retry_completes_it()
    {
        let world = World::open(tempfile::tempdir().unwrap());
        world.topics.create("t", 1, 1, BTreeMap::new()).unwrap();
        let txns = Transactions::open(world.dir.path()).unwrap();
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        let open = |epoch| {
            txns.add_partitions(&world.topics, "tx", pid, epoch, &[("t".into(), 0)])
                .unwrap();
            let _guard = txns.guard();
            let topic = world.topics.get("t").unwrap();
            topic.partitions[0]
                .log()
                .append(&mut transactional_batch(pid, epoch))
                .unwrap();
        };
        let end = |commit| txns.end(&world.stores(), "tx", pid, epoch, commit);

        // The decision's line cannot be written: nothing is decided.
        open(epoch);
        *txns.hooks.short_write.lock().unwrap() = Some(0);
        assert_eq!(end(true), Err(ResponseError::NotCoordinator));
        assert_eq!(txns.get("tx").unwrap().state, TxnState::Ongoing);
        assert_eq!(end(true), Ok(()), "the retry commits");
        assert_eq!(world.next_offset("t"), (2, 2), "the commit marker");

        // Its fsync fails: the decision may be on the disk, and stands.
        open(epoch);
        let (_, next) = world.next_offset("t");
        txns.hooks.fail_syncs.store(1, Ordering::SeqCst);
        assert_eq!(end(false), Err(ResponseError::NotCoordinator));
        assert_eq!(txns.get("tx").unwrap().state, TxnState::PrepareAbort);
        assert_eq!(end(true), Err(ResponseError::InvalidTxnState));
        assert_eq!(end(false), Ok(()), "the retry aborts");
        assert_eq!(
            world.next_offset("t"),
            (next + 1, next + 1),
            "the abort marker"
        );
        assert_eq!(txns.get("tx").unwrap().state, TxnState::CompleteAbort);

        // InitProducerId answers the same.
        txns.hooks.fail_syncs.store(1, Ordering::SeqCst);
        assert_eq!(
            txns.init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None),
            Err(ResponseError::NotCoordinator)
        );
        assert_eq!(
            txns.add_offsets("tx", pid, epoch, "g"),
            Err(ResponseError::ProducerFenced),
            "the bump is kept: it may be on the disk"
        );
    }

    #[test]
    fn after_a_failed_compaction_the_next_waits_until_the_file_has_doubled() {
        let world = World::open(tempfile::tempdir().unwrap());
        let mut txns = Transactions::open(world.dir.path()).unwrap();
        txns.stale_lines = 0;
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        let compactions = || txns.hooks.compactions.load(Ordering::SeqCst);
        let add = |group: usize| {
            txns.add_offsets("tx", pid, epoch, &format!("g{group}"))
                .unwrap()
        };
        for group in 1..4 {
            add(group);
        }
        assert_eq!(compactions(), 0);
        // The fifth line of one transactional id starts a compaction.
        txns.hooks.fail_compactions.store(1, Ordering::SeqCst);
        add(4);
        assert_eq!(compactions(), 1);
        assert!(!txns.path.with_extension("tmp").exists());
        for group in 5..9 {
            add(group);
        }
        assert_eq!(compactions(), 1, "none again before 10 lines");
        add(9);
        assert_eq!(compactions(), 2);
        let text = fs::read_to_string(&txns.path).unwrap();
        assert_eq!(text.lines().count(), 1, "compacted:\n{text}");
        let reopened = Transactions::open(world.dir.path()).unwrap();
        assert_eq!(reopened.get("tx"), txns.get("tx"));
    }

    #[test]
    fn a_line_written_in_part_to_a_compacted_file_leaves_the_next_one_readable() {
        let world = World::open(tempfile::tempdir().unwrap());
        let mut txns = Transactions::open(world.dir.path()).unwrap();
        txns.stale_lines = 0;
        let (pid, epoch) = txns
            .init_producer_id(&world.stores(), &world.ids, "tx", 60_000, None)
            .unwrap();
        for group in 1..5 {
            txns.add_offsets("tx", pid, epoch, &format!("g{group}"))
                .unwrap();
        }
        let text = fs::read_to_string(&txns.path).unwrap();
        assert_eq!(text.lines().count(), 1, "compacted:\n{text}");
        // The file written by the compaction is the one the next line
        // goes to, in part.
        *txns.hooks.short_write.lock().unwrap() = Some(10);
        assert_eq!(
            txns.add_offsets("tx", pid, epoch, "g5"),
            Err(ResponseError::NotCoordinator)
        );
        txns.add_offsets("tx", pid, epoch, "g6").unwrap();
        let reopened = Transactions::open(world.dir.path()).unwrap();
        assert_eq!(reopened.get("tx"), txns.get("tx"));
        assert!(reopened.get("tx").unwrap().groups.contains("g6"));
        let text = fs::read_to_string(&txns.path).unwrap();
        assert!(!text.contains('\0'), "no hole:\n{text:?}");
    }
}
