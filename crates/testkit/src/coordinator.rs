//! Which partition of Kafka's internal topics holds a group's offsets or a
//! transactional id's state: the leader of that partition is the group's (or
//! the transaction's) coordinator.

/// The partition of `__consumer_offsets` (for a group id) or of
/// `__transaction_state` (for a transactional id) that `key` maps to, as
/// Kafka computes it: `Utils.abs(key.hashCode()) % partitions`.
pub(crate) fn partition_for(key: &str, partitions: i32) -> i32 {
    let hash = java_string_hash(key);
    // Kafka's Utils.abs maps i32::MIN to 0 instead of overflowing.
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

/// `java.lang.String.hashCode()`: over UTF-16 code units, wrapping.
fn java_string_hash(key: &str) -> i32 {
    key.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_hashes_match_java() {
        // Values from `"...".hashCode()` in a JVM.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("notifier"), 1_585_363_366);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(java_string_hash("é😀"), 1_996_812);
    }

    #[test]
    fn the_minimum_hash_maps_to_partition_zero() {
        assert_eq!(partition_for("polygenelubricants", 10), 0);
        assert_eq!(partition_for("a", 10), 7);
    }
}
