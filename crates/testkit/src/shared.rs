//! One cluster per test binary, started by the first test that asks for it
//! and stopped when the binary exits.

use std::sync::OnceLock;

use crate::process;
use crate::{KafkaCluster, Shape};

/// When set to `1`, a test that cannot start Kafka fails instead of skipping.
pub const REQUIRE_KAFKA_ENV: &str = "TASKSTREAM_REQUIRE_KAFKA";

/// The process's cluster of `shape`, started on first use. The same cluster
/// (or the same start-up error) is returned to every later caller. Its JVMs
/// die with the process, and its directory is deleted when the process
/// exits — kept, with its path printed, if any test panicked.
pub fn shared_cluster(shape: Shape) -> Result<&'static KafkaCluster, String> {
    static SINGLE: OnceLock<Result<KafkaCluster, String>> = OnceLock::new();
    static THREE: OnceLock<Result<KafkaCluster, String>> = OnceLock::new();
    let cell = match shape {
        Shape::SingleNode => &SINGLE,
        Shape::ThreeNodes => &THREE,
    };
    cell.get_or_init(|| {
        process::watch_panics();
        let started = KafkaCluster::start(shape).map_err(|e| e.to_string());
        if started.is_ok() {
            process::at_exit(move || {
                if let Some(Ok(cluster)) = cell.get() {
                    cluster.stop_in_place(process::panicked());
                }
            });
        }
        started
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The shared cluster of `shape` for a test, or `None` after printing
/// `SKIPPED: <reason>` when Kafka cannot be started here. Panics instead of
/// skipping when `TASKSTREAM_REQUIRE_KAFKA=1` (CI), so that the suite cannot
/// pass there without running.
pub fn kafka_or_skip(shape: Shape, what: &str) -> Option<&'static KafkaCluster> {
    match shared_cluster(shape) {
        Ok(cluster) => Some(cluster),
        Err(why) => {
            skip_or_fail(what, &why);
            None
        }
    }
}

/// Reports that `what` cannot run against Apache Kafka because of `why`:
/// prints `SKIPPED: ...`, or panics when `TASKSTREAM_REQUIRE_KAFKA=1`.
pub fn skip_or_fail(what: &str, why: &str) {
    if std::env::var(REQUIRE_KAFKA_ENV).as_deref() == Ok("1") {
        panic!("{REQUIRE_KAFKA_ENV}=1 but Apache Kafka cannot be started: {why}");
    }
    eprintln!(
        "SKIPPED: {what} against Apache Kafka — {why} (needs Java 17+ and Maven; or run .ci/run)"
    );
}
