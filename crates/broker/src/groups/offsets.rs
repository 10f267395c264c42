//! Committed offsets, kept per group in an append-only file so that they
//! survive a restart, and each group's protocol type, so that a restarted
//! broker still lists and describes the group (as Empty) before any member
//! rejoins, as Kafka does from its group metadata records.
//!
//! `groups/<hex of the group id>.offsets` holds one line per committed
//! partition: `topic \t partition \t offset \t leader epoch \t metadata`
//! (metadata hex-encoded, `-` when null). The last line for a partition
//! wins; a line without its newline (a torn write) is ignored. Each commit
//! is written with one `write` and fsynced before it is acknowledged. A file
//! is rewritten with only the latest lines once it holds many stale ones.
//!
//! `groups/<hex of the group id>.group` holds the protocol type of the
//! group's members (`consumer` for consumer groups), replaced atomically
//! when it changes.
//!
//! What is stored is also kept in memory, under a lock that is never held
//! across file I/O: JoinGroup, ListGroups and DescribeGroups read it on the
//! async workers. Writes to a group's files take that group's own writer
//! lock across the write and its fsync, so that the file and the memory
//! change in the same order, and groups do not wait for each other.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// One partition's committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

type GroupOffsets = BTreeMap<(String, i32), Committed>;

#[derive(Debug, Default)]
struct GroupFile {
    offsets: GroupOffsets,
    lines: usize,
    /// The protocol type its members joined with, once any did.
    protocol_type: Option<String>,
}

#[derive(Debug)]
pub(crate) struct OffsetStore {
    dir: PathBuf,
    /// The stored state in memory; never held across file I/O.
    groups: Mutex<HashMap<String, GroupFile>>,
    /// Per group, held across a write to its files and the fsync.
    writers: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Test hook: a commit about to fsync says so on the sender, then
    /// waits for the receiver (at most 10 s).
    #[cfg(test)]
    pub hold_sync: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn line(topic: &str, partition: i32, c: &Committed) -> String {
    let metadata = c
        .metadata
        .as_deref()
        .map_or_else(|| "-".to_owned(), |m| hex(m.as_bytes()));
    format!(
        "{topic}\t{partition}\t{}\t{}\t{metadata}\n",
        c.offset, c.leader_epoch
    )
}

fn parse(line: &str) -> Option<((String, i32), Committed)> {
    let mut fields = line.split('\t');
    let topic = fields.next()?.to_owned();
    let partition = fields.next()?.parse().ok()?;
    let offset = fields.next()?.parse().ok()?;
    let leader_epoch = fields.next()?.parse().ok()?;
    let metadata = match fields.next()? {
        "-" => None,
        h => Some(String::from_utf8(unhex(h)?).ok()?),
    };
    Some((
        (topic, partition),
        Committed {
            offset,
            leader_epoch,
            metadata,
        },
    ))
}

impl OffsetStore {
    /// Loads every group's offsets from `data_dir/groups`.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("groups");
        fs::create_dir_all(&dir)?;
        let mut groups: HashMap<String, GroupFile> = HashMap::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let group_of = |suffix: &str| {
                name.strip_suffix(suffix)
                    .and_then(unhex)
                    .and_then(|g| String::from_utf8(g).ok())
            };
            if let Some(group) = group_of(".group") {
                let protocol_type = fs::read_to_string(&path)?;
                groups.entry(group).or_default().protocol_type = Some(protocol_type);
                continue;
            }
            let Some(group) = group_of(".offsets") else {
                continue;
            };
            let text = fs::read_to_string(&path)?;
            let file = groups.entry(group).or_default();
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            if complete.len() + 1 != text.len() && !text.is_empty() {
                // Cut the torn line so the next append starts on a fresh one.
                let keep = text.rfind('\n').map_or(0, |end| end + 1) as u64;
                OpenOptions::new().write(true).open(&path)?.set_len(keep)?;
            }
            for l in complete.lines() {
                if let Some((key, committed)) = parse(l) {
                    file.offsets.insert(key, committed);
                    file.lines += 1;
                }
            }
        }
        Ok(Self {
            dir,
            groups: Mutex::new(groups),
            writers: Mutex::default(),
            #[cfg(test)]
            hold_sync: Mutex::default(),
        })
    }

    fn path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{}.offsets", hex(group.as_bytes())))
    }

    /// The writer lock of a group's files.
    fn writer(&self, group: &str) -> Arc<Mutex<()>> {
        Arc::clone(relock(&self.writers).entry(group.to_owned()).or_default())
    }

    /// Stores a group's commits durably, then in memory.
    pub fn commit(&self, group: &str, commits: &[(String, i32, Committed)]) -> io::Result<()> {
        let writer = self.writer(group);
        let _writing = relock(&writer);
        let text: String = commits.iter().map(|(t, p, c)| line(t, *p, c)).collect();
        let path = self.path(group);
        let mut out = OpenOptions::new().create(true).append(true).open(&path)?;
        out.write_all(text.as_bytes())?;
        #[cfg(test)]
        if let Some((reached, release)) = relock(&self.hold_sync).take() {
            let _ = reached.send(());
            let _ = release.recv_timeout(std::time::Duration::from_secs(10));
        }
        out.sync_data()?;
        let compacted = {
            let mut groups = relock(&self.groups);
            let file = groups.entry(group.to_owned()).or_default();
            for (topic, partition, committed) in commits {
                file.offsets
                    .insert((topic.clone(), *partition), committed.clone());
            }
            file.lines += commits.len();
            (file.lines > 4 * file.offsets.len() + 1000).then(|| {
                let latest: String = file
                    .offsets
                    .iter()
                    .map(|((t, p), c)| line(t, *p, c))
                    .collect();
                (latest, file.offsets.len())
            })
        };
        if let Some((latest, lines)) = compacted {
            // The writer lock keeps other commits of this group out until
            // the file is replaced.
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, latest)?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()?;
            if let Some(file) = relock(&self.groups).get_mut(group) {
                file.lines = lines;
            }
        }
        Ok(())
    }

    /// A group's committed offsets.
    pub fn fetch(&self, group: &str) -> GroupOffsets {
        relock(&self.groups)
            .get(group)
            .map(|f| f.offsets.clone())
            .unwrap_or_default()
    }

    /// Groups with committed offsets or a known protocol type, each with
    /// its protocol type (empty if no member ever joined).
    pub fn groups(&self) -> Vec<(String, String)> {
        relock(&self.groups)
            .iter()
            .map(|(id, f)| (id.clone(), f.protocol_type.clone().unwrap_or_default()))
            .collect()
    }

    /// The protocol type stored for a group, if any.
    pub fn protocol_type(&self, group: &str) -> Option<String> {
        relock(&self.groups)
            .get(group)
            .and_then(|f| f.protocol_type.clone())
    }

    /// Stores durably the protocol type a group's members joined with.
    pub fn remember_protocol_type(&self, group: &str, protocol_type: &str) -> io::Result<()> {
        let writer = self.writer(group);
        let _writing = relock(&writer);
        if self.protocol_type(group).as_deref() == Some(protocol_type) {
            return Ok(());
        }
        let path = self.dir.join(format!("{}.group", hex(group.as_bytes())));
        let tmp = path.with_extension("group-tmp");
        fs::write(&tmp, protocol_type)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        relock(&self.groups)
            .entry(group.to_owned())
            .or_default()
            .protocol_type = Some(protocol_type.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_survive_a_reopen_the_last_one_wins_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        let c = |offset, metadata: Option<&str>| Committed {
            offset,
            leader_epoch: 0,
            metadata: metadata.map(str::to_owned),
        };
        store
            .commit(
                "g\t1",
                &[
                    ("t".into(), 0, c(5, Some("tab\there"))),
                    ("t".into(), 1, c(7, None)),
                ],
            )
            .unwrap();
        store
            .commit("g\t1", &[("t".into(), 0, c(9, Some("later")))])
            .unwrap();
        let path = store.path("g\t1");
        drop(store);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"t\t1\t99").unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        let offsets = store.fetch("g\t1");
        assert_eq!(offsets[&("t".to_owned(), 0)], c(9, Some("later")));
        assert_eq!(offsets[&("t".to_owned(), 1)], c(7, None));
    }
}
