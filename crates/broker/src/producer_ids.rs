//! Producer ids for InitProducerId, unique across restarts.
//!
//! Ids are handed out from blocks: the end of the current block is written
//! (and fsynced) to `producer-ids` before any id in it is given out, so a
//! restart starts after every id ever handed out.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const BLOCK: i64 = 1000;

#[derive(Debug)]
pub(crate) struct ProducerIds {
    file: PathBuf,
    state: Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let file = data_dir.join("producer-ids");
        let next = match fs::read_to_string(&file) {
            Ok(text) => text.trim().parse::<i64>().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", file.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Self {
            file,
            state: Mutex::new((next, next)),
        })
    }

    /// A producer id never handed out before.
    pub fn next(&self) -> io::Result<i64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (next, block_end) = *state;
        if next == block_end {
            let end = block_end + BLOCK;
            let tmp = self.file.with_extension("tmp");
            fs::write(&tmp, end.to_string())?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &self.file)?;
            // The rename itself is durable only once the directory is: a
            // crash before that could bring the previous block end back,
            // and with it ids already handed out.
            if let Some(dir) = self.file.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            *state = (next, end);
        }
        state.0 += 1;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_that_cannot_be_recorded_hands_out_no_id() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        // The temporary file cannot be written: a directory is in its way.
        fs::create_dir(dir.path().join("producer-ids.tmp")).unwrap();
        assert!(ids.next().is_err());
        fs::remove_dir(dir.path().join("producer-ids.tmp")).unwrap();
        assert_eq!(ids.next().unwrap(), 0);
    }

    #[test]
    fn ids_are_never_reused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        let first: Vec<i64> = (0..3).map(|_| ids.next().unwrap()).collect();
        assert_eq!(first, [0, 1, 2]);
        drop(ids);
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert!(ids.next().unwrap() > 2);
    }
}
