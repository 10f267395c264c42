//! The topics this broker holds: created, loaded at start, deleted.
//!
//! Layout under the data directory:
//! `topics/<name>/topic.properties` (`id=`, `partitions=`, `config.<key>=`)
//! and `topics/<name>/<partition>/` holding that partition's segments.
//! A topic is created in a `<name>+creating-<id>` directory and renamed into
//! place, and deleted by renaming it to `<name>+deleted-<id>` first (`+`
//! cannot appear in a topic name), so a
//! crash never leaves a half-made or half-deleted topic that looks whole;
//! such leftovers are removed at start.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::watch;
use uuid::Uuid;

use crate::storage::log::sync_dir;
use crate::storage::{LogConfig, PartitionLog, Visibility};

/// Topic configs accepted (and stored) that need nothing from a single
/// node; the ones that shape the log are handled in [`log_config`].
const ACCEPTED_CONFIGS: &[&str] = &[
    "min.insync.replicas",
    "unclean.leader.election.enable",
    "flush.messages",
    "flush.ms",
    "preallocate",
    "file.delete.delay.ms",
    "segment.index.bytes",
    "segment.jitter.ms",
    "delete.retention.ms",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "min.cleanable.dirty.ratio",
];

/// Why a topic could not be created, in Kafka's terms.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TopicError {
    #[error("topic {0} already exists")]
    AlreadyExists(String),
    #[error("invalid topic name {0:?}: 1 to 249 characters of [a-zA-Z0-9._-], not . or ..")]
    InvalidName(String),
    #[error("invalid number of partitions {0}: must be 1 to 10000")]
    InvalidPartitions(i32),
    #[error("invalid replication factor {0}: a single node holds exactly one replica")]
    InvalidReplicationFactor(i16),
    #[error("invalid config {0}: {1}")]
    InvalidConfig(String, String),
    #[error("topic storage failed: {0}")]
    Io(#[from] io::Error),
}

/// One partition: its log behind a lock, and a watch that carries its next
/// offset so that waiting fetches wake when data is appended.
#[derive(Debug)]
pub(crate) struct Partition {
    log: Mutex<PartitionLog>,
    pub appended: watch::Sender<i64>,
    /// Taken by one fsync at a time ([`Partition::sync`]).
    syncing: Mutex<()>,
    /// Test hook: an fsync about to run says so on the sender, then waits
    /// for the receiver (at most 10 s).
    #[cfg(test)]
    pub hold_sync: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
}

impl Partition {
    /// Locks the log. A panic while it was held cannot leave the files
    /// inconsistent beyond what recovery repairs, so poisoning is ignored.
    pub fn log(&self) -> MutexGuard<'_, PartitionLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// fsyncs everything appended to the log so far, without holding the
    /// log's lock while the disk works: appends, fetches and ListOffsets of
    /// the partition go on meanwhile. Callers queue for one fsync at a
    /// time, and one that finds its appends covered by the fsync before it
    /// returns at once, so concurrent producers share fsyncs.
    pub fn sync(&self) -> io::Result<()> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pending) = self.log().begin_sync()? else {
            return Ok(());
        };
        #[cfg(test)]
        if let Some((reached, release)) = self
            .hold_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = reached.send(());
            let _ = release.recv_timeout(std::time::Duration::from_secs(10));
        }
        pending.run()?;
        let mut log = self.log();
        log.finish_sync(&pending);
        if log.visibility() == Visibility::Durable {
            // The fsync is what makes the records visible: wake the
            // fetches waiting for them.
            let visible = log.high_watermark();
            drop(log);
            self.appended.send_replace(visible);
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct Topic {
    pub name: String,
    pub id: Uuid,
    /// Configs set on the topic (the rest are the broker's defaults).
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<Partition>,
}

impl Topic {
    /// The partition numbered `index`, if the topic has it.
    pub fn partition(&self, index: i32) -> Option<&Partition> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// Every topic, by name.
#[derive(Debug)]
pub(crate) struct Topics {
    dir: PathBuf,
    defaults: LogConfig,
    /// What every partition's readers are shown.
    visibility: Visibility,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The log settings a topic's configs give, over the broker's defaults.
pub(crate) fn log_config(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<LogConfig, TopicError> {
    let mut config = *defaults;
    for (key, value) in configs {
        let invalid = |why: &str| TopicError::InvalidConfig(key.clone(), why.to_owned());
        let number = |min: i64, max: i64| -> Result<i64, TopicError> {
            value
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| invalid(&format!("{value:?} is not a number from {min} to {max}")))
        };
        match key.as_str() {
            "cleanup.policy" => {
                let policies: Vec<&str> = value.split(',').map(str::trim).collect();
                if policies.is_empty()
                    || !policies.iter().all(|p| *p == "delete" || *p == "compact")
                {
                    return Err(invalid("must be delete, compact or both"));
                }
            }
            "retention.ms" => config.retention_ms = number(-1, i64::MAX)?,
            "retention.bytes" => config.retention_bytes = number(-1, i64::MAX)?,
            "segment.bytes" => config.segment_bytes = number(14, i64::from(i32::MAX))? as u64,
            "segment.ms" => config.segment_ms = number(1, i64::MAX)?,
            "max.message.bytes" => {
                config.max_message_bytes = number(0, i64::from(i32::MAX))? as usize
            }
            "index.interval.bytes" => {
                config.index_interval_bytes = number(0, i64::from(i32::MAX))? as u64
            }
            k if ACCEPTED_CONFIGS.contains(&k) => {}
            _ => return Err(invalid("not a topic config this broker knows")),
        }
    }
    // Compaction is not implemented: a compact-only topic keeps its whole
    // log, which still holds every key's latest value.
    if configs
        .get("cleanup.policy")
        .is_some_and(|p| !p.contains("delete"))
    {
        config.retention_ms = -1;
        config.retention_bytes = -1;
    }
    Ok(config)
}

impl Topics {
    /// Loads every topic under `data_dir/topics`, recovering each
    /// partition; readers see everything written ([`Visibility::Written`]).
    #[cfg(test)]
    pub fn open(data_dir: &Path, defaults: LogConfig) -> io::Result<Self> {
        Self::open_with_visibility(data_dir, defaults, Visibility::Written)
    }

    /// Like [`Self::open`], showing readers of every partition what
    /// `visibility` says.
    pub fn open_with_visibility(
        data_dir: &Path,
        defaults: LogConfig,
        visibility: Visibility,
    ) -> io::Result<Self> {
        let dir = data_dir.join("topics");
        fs::create_dir_all(&dir)?;
        let mut topics = BTreeMap::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains('+') {
                fs::remove_dir_all(entry.path())?;
                continue;
            }
            let topic = load_topic(&entry.path(), &name, &defaults, visibility)?;
            topics.insert(name, Arc::new(topic));
        }
        Ok(Self {
            dir,
            defaults,
            visibility,
            topics: RwLock::new(topics),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn defaults(&self) -> &LogConfig {
        &self.defaults
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Checks a topic could be created, without creating it.
    pub fn validate(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), TopicError> {
        if !valid_name(name) {
            return Err(TopicError::InvalidName(name.to_owned()));
        }
        if !(1..=10_000).contains(&partitions) {
            return Err(TopicError::InvalidPartitions(partitions));
        }
        if replication_factor != 1 && replication_factor != -1 {
            return Err(TopicError::InvalidReplicationFactor(replication_factor));
        }
        log_config(&self.defaults, configs)?;
        if self.get(name).is_some() {
            return Err(TopicError::AlreadyExists(name.to_owned()));
        }
        Ok(())
    }

    /// Creates a topic durably (files synced) and returns it.
    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, TopicError> {
        self.validate(name, partitions, replication_factor, &configs)?;
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if topics.contains_key(name) {
            return Err(TopicError::AlreadyExists(name.to_owned()));
        }
        let id = Uuid::new_v4();
        let staging = self.dir.join(format!("{name}+creating-{}", id.simple()));
        fs::create_dir_all(&staging)?;
        let mut properties = format!("id={id}\npartitions={partitions}\n");
        for (key, value) in &configs {
            properties.push_str(&format!("config.{key}={}\n", value.replace('\n', " ")));
        }
        let file = staging.join("topic.properties");
        fs::write(&file, properties)?;
        fs::File::open(&file)?.sync_all()?;
        for p in 0..partitions {
            fs::create_dir(staging.join(p.to_string()))?;
        }
        sync_dir(&staging)?;
        let path = self.dir.join(name);
        fs::rename(&staging, &path)?;
        sync_dir(&self.dir)?;
        let topic = Arc::new(load_topic(&path, name, &self.defaults, self.visibility)?);
        topics.insert(name.to_owned(), Arc::clone(&topic));
        Ok(topic)
    }

    /// Deletes a topic and its data; `false` when there was no such topic.
    pub fn delete(&self, name: &str) -> io::Result<bool> {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let Some(topic) = topics.remove(name) else {
            return Ok(false);
        };
        let doomed = self
            .dir
            .join(format!("{name}+deleted-{}", topic.id.simple()));
        fs::rename(self.dir.join(name), &doomed)?;
        sync_dir(&self.dir)?;
        drop(topics);
        fs::remove_dir_all(&doomed)?;
        Ok(true)
    }
}

fn load_topic(
    path: &Path,
    name: &str,
    defaults: &LogConfig,
    visibility: Visibility,
) -> io::Result<Topic> {
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let text = fs::read_to_string(path.join("topic.properties"))?;
    let mut id = None;
    let mut partitions = None;
    let mut configs = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("line {line:?} is not key=value")))?;
        match key {
            "id" => id = Some(value.parse::<Uuid>().map_err(|e| bad(e.to_string()))?),
            "partitions" => {
                partitions = Some(value.parse::<i32>().map_err(|e| bad(e.to_string()))?)
            }
            _ => {
                if let Some(config) = key.strip_prefix("config.") {
                    configs.insert(config.to_owned(), value.to_owned());
                }
            }
        }
    }
    let id = id.ok_or_else(|| bad("no id".into()))?;
    let count = partitions.ok_or_else(|| bad("no partitions".into()))?;
    let config = log_config(defaults, &configs).map_err(|e| bad(e.to_string()))?;
    let mut partitions = Vec::new();
    for p in 0..count {
        let (mut log, report) = PartitionLog::open(&path.join(p.to_string()), config)?;
        log.set_visibility(visibility);
        if report.truncated_bytes > 0 {
            tracing::warn!(
                topic = name,
                partition = p,
                truncated_bytes = report.truncated_bytes,
                "recovery cut a torn or corrupt tail off the log"
            );
        }
        let (appended, _) = watch::channel(log.high_watermark());
        partitions.push(Partition {
            log: Mutex::new(log),
            appended,
            syncing: Mutex::new(()),
            #[cfg(test)]
            hold_sync: Mutex::default(),
        });
    }
    Ok(Topic {
        name: name.to_owned(),
        id,
        configs,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_named_like_leftovers_survive_a_restart_and_real_leftovers_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
        for name in ["orders.deleted-1", "x.creating-2"] {
            topics.create(name, 1, 1, BTreeMap::new()).unwrap();
        }
        let leftover = dir.path().join("topics").join("gone+deleted-abc");
        fs::create_dir_all(leftover.join("0")).unwrap();
        drop(topics);
        let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
        let names: Vec<String> = topics.all().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, ["orders.deleted-1", "x.creating-2"]);
        assert!(!leftover.exists());
    }

    #[test]
    fn invalid_names_partitions_replication_and_configs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
        let none = BTreeMap::new();
        assert!(matches!(
            topics.create("a/b", 1, 1, none.clone()),
            Err(TopicError::InvalidName(_))
        ));
        assert!(matches!(
            topics.create("..", 1, 1, none.clone()),
            Err(TopicError::InvalidName(_))
        ));
        assert!(matches!(
            topics.create("t", 0, 1, none.clone()),
            Err(TopicError::InvalidPartitions(0))
        ));
        assert!(matches!(
            topics.create("t", 1, 2, none.clone()),
            Err(TopicError::InvalidReplicationFactor(2))
        ));
        let bad = BTreeMap::from([("retention.ms".to_owned(), "soon".to_owned())]);
        assert!(matches!(
            topics.create("t", 1, 1, bad),
            Err(TopicError::InvalidConfig(..))
        ));
        assert!(topics.all().is_empty());
    }
}
