//! Idempotent-producer state of one partition: for each producer id, its
//! epoch and its last five batches' sequence ranges, so that a retried
//! batch is answered with its original offset instead of being appended
//! twice, and a gap in sequences is refused.
//!
//! The state is rebuilt on start from the last segment's batches only, so
//! a retry of a batch written to an older segment before a restart would
//! be appended again. At most [`MAX_PRODUCERS`] producers are tracked per
//! partition; the least recently seen is forgotten first.

use std::collections::{HashMap, VecDeque};

use super::batch::BatchHeader;

const BATCHES_KEPT: usize = 5;
/// Producers remembered per partition.
pub(crate) const MAX_PRODUCERS: usize = 10_000;

#[derive(Debug, Clone)]
struct Producer {
    epoch: i16,
    /// `(first sequence, last sequence, base offset)`, oldest first.
    batches: VecDeque<(i32, i32, i64)>,
    last_used: u64,
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sequenced {
    Append,
    /// Already in the log at this base offset.
    Duplicate(i64),
    OutOfOrder,
    FencedEpoch,
}

#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, Producer>,
    clock: u64,
}

impl ProducerStates {
    /// Decides what to do with `batch`, given the producers' state with
    /// `pending` (batches accepted earlier in the same request) applied.
    pub fn check(&self, batch: &BatchHeader, pending: &[BatchHeader]) -> Sequenced {
        if batch.producer_id < 0 {
            return Sequenced::Append;
        }
        let mut known = self.producers.get(&batch.producer_id).cloned();
        for p in pending
            .iter()
            .filter(|p| p.producer_id == batch.producer_id)
        {
            Self::apply(&mut known, p, 0);
        }
        let Some(producer) = known else {
            return Sequenced::Append;
        };
        if batch.producer_epoch < producer.epoch {
            return Sequenced::FencedEpoch;
        }
        if batch.producer_epoch > producer.epoch {
            return if batch.base_sequence == 0 {
                Sequenced::Append
            } else {
                Sequenced::OutOfOrder
            };
        }
        let range = (batch.base_sequence, batch.last_sequence());
        if let Some((_, _, offset)) = producer
            .batches
            .iter()
            .find(|(first, last, _)| (*first, *last) == range)
        {
            return Sequenced::Duplicate(*offset);
        }
        let expected = producer
            .batches
            .back()
            .map_or(batch.base_sequence, |(_, last, _)| {
                last.checked_add(1).unwrap_or(0)
            });
        if batch.base_sequence == expected {
            Sequenced::Append
        } else {
            Sequenced::OutOfOrder
        }
    }

    fn apply(known: &mut Option<Producer>, batch: &BatchHeader, now: u64) {
        let producer = known.get_or_insert_with(|| Producer {
            epoch: batch.producer_epoch,
            batches: VecDeque::new(),
            last_used: now,
        });
        if producer.epoch != batch.producer_epoch {
            producer.epoch = batch.producer_epoch;
            producer.batches.clear();
        }
        producer.batches.push_back((
            batch.base_sequence,
            batch.last_sequence(),
            batch.base_offset,
        ));
        if producer.batches.len() > BATCHES_KEPT {
            producer.batches.pop_front();
        }
        producer.last_used = now;
    }

    /// Records a transaction marker written for `producer_id` at `epoch`:
    /// a newer epoch (a fenced producer's transaction aborted by its
    /// successor or by a timeout) replaces the old one, so that the old
    /// epoch's batches are refused from then on; sequences are kept.
    pub fn record_marker(&mut self, producer_id: i64, epoch: i16) {
        self.clock += 1;
        let producer = self.producers.entry(producer_id).or_insert(Producer {
            epoch,
            batches: VecDeque::new(),
            last_used: self.clock,
        });
        if epoch > producer.epoch {
            producer.epoch = epoch;
            producer.batches.clear();
        }
        producer.last_used = self.clock;
    }

    /// Records a batch now in the log (its base offset assigned).
    pub fn record(&mut self, batch: &BatchHeader) {
        if batch.producer_id < 0 {
            return;
        }
        self.clock += 1;
        let mut known = self.producers.remove(&batch.producer_id);
        Self::apply(&mut known, batch, self.clock);
        self.producers
            .insert(batch.producer_id, known.expect("just applied"));
        if self.producers.len() > MAX_PRODUCERS {
            if let Some(oldest) = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(id, _)| *id)
            {
                self.producers.remove(&oldest);
            }
        }
    }
}
