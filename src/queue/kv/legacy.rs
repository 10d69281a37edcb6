//! Upgrading a store written by format 2–4, which kept a write-ahead log of its own in front of redb
//! (`queue.wal`, `queue.1.wal`): the batches the log holds and redb does not are written into redb,
//! then the log files are removed. Nothing here writes a log; it only reads the old one once.
//!
//! The old log's record: `[len u32][crc32 u32][lsn u64][count u32]`, then per write
//! `[table u8][0 put / 1 delete][key len u32][key]([value len u32][value])`, little-endian; the
//! checksum covers everything after it. Each file holds, from offset 0, records with consecutive LSNs;
//! what follows them is an earlier use of the file or a torn tail. redb holds every batch through the
//! LSN under `wal_lsn` in `meta`, so the batches to write are those from `wal_lsn + 1` on, taken in
//! LSN order from both files while consecutive. A record is a batch's absolute writes (put key =
//! value, delete key): writing it again over a state that already holds it changes nothing, so an
//! upgrade interrupted by a crash is simply done again at the next start.

use std::collections::BTreeMap;
use std::path::Path;

use super::keys::Table;
use super::{KvEngine, StoreError};
use crate::queue::cursor::Cursor;

const FILES: [&str; 2] = ["queue.wal", "queue.1.wal"];
const WAL_LSN_KEY: &[u8] = b"wal_lsn";

type Write = (Table, Vec<u8>, Option<Vec<u8>>);

struct Record {
    lsn: u64,
    writes: Vec<Write>,
    len: usize,
}

/// The record at the start of `bytes`; None for zeros, a torn or a corrupt record.
fn decode(bytes: &[u8]) -> Option<Record> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(8..8 + len).filter(|_| len >= 12)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut r = Cursor::new(body);
    let lsn = r.u64()?;
    let count = r.u32()? as usize;
    let mut writes = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let table = *Table::ALL.get(r.u8()? as usize)?;
        let delete = r.u8()? == 1;
        let key = r.sized()?.to_vec();
        let value = if delete {
            None
        } else {
            Some(r.sized()?.to_vec())
        };
        writes.push((table, key, value));
    }
    Some(Record {
        lsn,
        writes,
        len: 8 + len,
    })
}

/// Whether `dir` holds an old log file.
pub(crate) fn has_log(dir: &Path) -> bool {
    FILES.iter().any(|name| dir.join(name).exists())
}

/// Writes into `engine` (the bare redb engine, under the sealing layer: the log holds sealed values)
/// the logged batches it lacks, in one durable commit that also drops `wal_lsn`, then removes the log
/// files. Answers how many batches were written.
pub(crate) fn upgrade(dir: &Path, engine: &dyn KvEngine) -> Result<usize, StoreError> {
    let mut files = Vec::new();
    for name in FILES {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => files.push(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io(format!("{}: {e}", path.display()))),
        }
    }
    let mut applied = 0;
    engine.read(&mut |tx| {
        if let Some(bytes) = tx.get(Table::Meta, WAL_LSN_KEY)? {
            applied = bytes
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("wal_lsn".into()))?;
        }
        Ok(())
    })?;
    let mut by_lsn = BTreeMap::new();
    for bytes in &files {
        let (mut pos, mut previous) = (0, None::<u64>);
        while let Some(record) = bytes.get(pos..).and_then(decode) {
            if previous.is_some_and(|p| record.lsn != p + 1) {
                break;
            }
            previous = Some(record.lsn);
            pos += record.len;
            if record.lsn > applied {
                by_lsn.insert(record.lsn, record);
            }
        }
    }
    let mut replay = Vec::new();
    while let Some(record) = by_lsn.remove(&(applied + 1 + replay.len() as u64)) {
        replay.push(record);
    }
    engine.write(&mut |tx| {
        for (table, key, value) in replay.iter().flat_map(|r| &r.writes) {
            match value {
                Some(value) => tx.put(*table, key, value)?,
                None => tx.delete(*table, key)?,
            }
        }
        tx.delete(Table::Meta, WAL_LSN_KEY)
    })?;
    for name in FILES {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io(format!("{}: {e}", dir.join(name).display()))),
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
    Ok(replay.len())
}
