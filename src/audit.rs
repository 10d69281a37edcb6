//! The audit log of population-DB lookups (Decree 13/2023: processing must be traceable).
//!
//! One JSON line per lookup the connector made: when, for which officer, procedure and dossier, at whose
//! request (the API token's name), the upstream request id, and the outcome — the citizen ID only as
//! HMAC-SHA256 under the audit key, so that an auditor holding the key can answer "who looked this
//! person up?" and nobody else learns whom. Lines are hash-chained: each carries the SHA-256 of the
//! previous line and its own, so `dvc-connector audit verify` finds an altered, removed or reordered
//! line. The file is only appended to, each line fsynced **before the lookup is made**: a lookup whose
//! line cannot be written is not made (the identity flow pauses its lane with `audit_unavailable`).
//!
//! **A full disk.** An append is one line written and synced; when either fails, the file is cut back
//! to where it was, so no partial line stays. A partial final line that survived anyway (a crash in
//! the middle of a write) is cut off when the log is opened, and the cut is recorded as an entry of its
//! own (`mode` `torn_line_cut`), so the chain goes on and `audit verify` reports it. `verify` hashes
//! each line's stored bytes: a field injected into a line breaks its hash like any other change.
//!
//! **Segments and retention.** The current file (`audit.path`) is sealed every `audit.rotate_every`
//! into a segment beside it, `<name>.<first sequence number>`, and the chain continues in a new
//! current file. With `audit.retention` set, segments whose newest line is older than that are removed,
//! oldest first — after a *retention line* naming the last removed entry and its hash has been appended
//! to the chain. So the chain may begin after entry 1 only where a retention line says so: removing a
//! segment by hand, from the start or the middle, is found by `verify` like any other removed line.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One lookup, as the flow reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lookup {
    pub officer: String,
    pub procedure: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dossier: Option<String>,
    pub requested_by: String,
    pub upstream_request_id: String,
    pub mode: String,
    /// `verified`, `mismatch`, `not_found`, or the error code of a failed call.
    pub outcome: String,
}

/// What a retention line declares removed: every entry up to `through`, the last of which had `hash`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Removed {
    pub through: u64,
    pub hash: String,
    /// Entries older than this were due for removal.
    pub cutoff: String,
}

/// A line of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub at: String,
    #[serde(flatten)]
    pub lookup: Lookup,
    /// HMAC-SHA256 of the citizen ID under the audit key (absent without a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub citizen: Option<String>,
    /// Set on a retention line (its lookup fields are empty, `mode` is `retention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Removed>,
    pub prev: String,
    pub hash: String,
}

/// The keyed hash of a citizen ID.
pub fn citizen_hash(key: &[u8; 32], citizen_id: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(citizen_id.trim().as_bytes());
    crate::hex::encode(&mac.finalize().into_bytes())
}

/// The chain hash of an entry: SHA-256 over `prev` and the entry's JSON with an empty `hash`.
fn chain_hash(entry: &Entry) -> String {
    let mut unsealed = entry.clone();
    unsealed.hash = String::new();
    let body = serde_json::to_vec(&unsealed).unwrap_or_default();
    digest(&entry.prev, &body)
}

fn digest(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(body);
    crate::hex::encode(&h.finalize())
}

/// The chain hash of a line as stored: its own bytes with the `hash` value emptied, so that anything
/// added to or changed in the line — a field the reader would ignore included — breaks it. `None` when
/// the line does not end in its hash as the writer puts it.
fn stored_hash(line: &str, prev: &str) -> Option<String> {
    const FIELD: &str = ",\"hash\":\"";
    let at = line.rfind(FIELD)? + FIELD.len();
    let value = line.get(at..at + 64)?;
    if line.get(at + 64..) != Some("\"}") || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let blanked = format!("{}{}", &line[..at], &line[at + 64..]);
    Some(digest(prev, blanked.as_bytes()))
}

fn now_rfc3339(now: OffsetDateTime) -> String {
    now.format(&Rfc3339).unwrap_or_default()
}

/// When segments are sealed and how long they are kept: `[audit]` in the settings.
pub use crate::settings::AuditPolicy as Policy;

#[derive(Debug)]
struct Tail {
    file: std::fs::File,
    seq: u64,
    last: String,
    /// Time of the current file's first line; `None` while it is empty.
    started: Option<OffsetDateTime>,
}

/// The open log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    key: Option<[u8; 32]>,
    policy: Policy,
    tail: Mutex<Tail>,
    /// Whether the last append succeeded (for `/readyz`).
    writable: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    fault: Mutex<Option<Fault>>,
}

/// How a test's disk fails an append.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Nothing is written.
    Full,
    /// Half the line is written, then the disk is full.
    Torn,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path} line {line}: {message}")]
    Broken {
        path: String,
        line: u64,
        message: String,
    },
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |e| AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The sealed segments beside the current file `path`, oldest first.
fn segments(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.");
    let mut found = Vec::new();
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir)(e)),
    };
    for item in listing {
        let item = item.map_err(io_error(dir))?;
        let file_name = item.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if let Ok(first) = rest.parse::<u64>() {
            found.push((first, item.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

fn segment_name(path: &Path, first_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{first_seq:012}"));
    PathBuf::from(name)
}

/// The last line of a file, read from its end.
fn last_entry(path: &Path) -> Result<Option<Entry>, AuditError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let len = file.metadata().map_err(io_error(path))?.len();
    let window = len.min(256 * 1024);
    file.seek(SeekFrom::Start(len - window))
        .map_err(io_error(path))?;
    let mut tail = Vec::with_capacity(window as usize);
    file.read_to_end(&mut tail).map_err(io_error(path))?;
    let text = String::from_utf8_lossy(&tail);
    Ok(text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok()))
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
}

/// Cuts a partial last line off the current file (one that does not end in a newline, as an
/// interrupted append leaves it). Answers how many bytes were cut.
fn cut_torn_tail(path: &Path) -> Result<Option<u64>, AuditError> {
    let io = io_error(path);
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(&io)?.len();
    if len == 0 {
        return Ok(None);
    }
    let window = len.min(1 << 20);
    file.seek(SeekFrom::Start(len - window)).map_err(&io)?;
    let mut tail = Vec::with_capacity(window as usize);
    file.read_to_end(&mut tail).map_err(&io)?;
    if tail.last() == Some(&b'\n') {
        return Ok(None);
    }
    let keep = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => len - window + i as u64 + 1,
        None if window == len => 0,
        // A "line" over a mebibyte is no line of ours: leave it for verify to report.
        None => return Ok(None),
    };
    file.set_len(keep).map_err(&io)?;
    file.sync_all().map_err(&io)?;
    Ok(Some(len - keep))
}

impl AuditLog {
    /// Opens (creating) the log with the default policy.
    pub fn open(path: &Path, key: Option<[u8; 32]>) -> Result<AuditLog, AuditError> {
        Self::open_with(path, key, Policy::default())
    }

    /// Opens (creating) the log and finds where the chain ends; a broken chain refuses to open.
    pub fn open_with(
        path: &Path,
        key: Option<[u8; 32]>,
        policy: Policy,
    ) -> Result<AuditLog, AuditError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error(path))?;
        }
        let cut = cut_torn_tail(path)?;
        let v = verify(path)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error(path))?;
        let log = AuditLog {
            path: path.to_owned(),
            key,
            policy,
            tail: Mutex::new(Tail {
                file,
                seq: v.entries_through,
                last: v.last,
                started: v.current_started,
            }),
            writable: std::sync::atomic::AtomicBool::new(true),
            #[cfg(test)]
            fault: Mutex::new(None),
        };
        if let Some(bytes) = cut {
            tracing::warn!(path = %path.display(), bytes, "audit log: a partial last line was cut off; the cut is recorded in the chain");
            let lookup = Lookup {
                mode: "torn_line_cut".into(),
                outcome: format!("a partial last line of {bytes} bytes was cut off at open"),
                ..Lookup::default()
            };
            let mut tail = log.tail.lock().unwrap_or_else(|p| p.into_inner());
            log.append(
                &mut tail,
                lookup,
                None,
                None,
                now_rfc3339(OffsetDateTime::now_utc()),
            )?;
        }
        Ok(log)
    }

    /// Whether the last append succeeded.
    pub fn writable(&self) -> bool {
        self.writable.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn set_fault(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one lookup, durably.
    pub fn record(&self, lookup: Lookup, citizen_id: &str, at: String) -> Result<(), AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let citizen = self.key.as_ref().map(|k| citizen_hash(k, citizen_id));
        self.append(&mut tail, lookup, citizen, None, at)
    }

    fn append(
        &self,
        tail: &mut Tail,
        lookup: Lookup,
        citizen: Option<String>,
        removed: Option<Removed>,
        at: String,
    ) -> Result<(), AuditError> {
        let mut entry = Entry {
            seq: tail.seq + 1,
            at,
            lookup,
            citizen,
            removed,
            prev: tail.last.clone(),
            hash: String::new(),
        };
        entry.hash = chain_hash(&entry);
        let mut line = serde_json::to_vec(&entry).unwrap_or_default();
        line.push(b'\n');
        let io = io_error(&self.path);
        let before = tail.file.metadata().map_err(&io)?.len();
        if let Err(e) = self.write_line(&mut tail.file, &line) {
            // Cut back to where the file was: no partial line stays behind to break the chain.
            let _ = tail.file.set_len(before);
            let _ = tail.file.sync_data();
            self.writable
                .store(false, std::sync::atomic::Ordering::Relaxed);
            return Err(io(e));
        }
        self.writable
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if tail.started.is_none() {
            tail.started = Some(
                OffsetDateTime::parse(&entry.at, &Rfc3339).unwrap_or(OffsetDateTime::now_utc()),
            );
        }
        tail.seq = entry.seq;
        tail.last = entry.hash;
        Ok(())
    }

    /// Writes and syncs one line (where a test's disk may fail it).
    fn write_line(&self, file: &mut std::fs::File, line: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        {
            let fault = *self.fault.lock().unwrap_or_else(|p| p.into_inner());
            let full = || std::io::Error::from_raw_os_error(28);
            match fault {
                Some(Fault::Full) => return Err(full()),
                Some(Fault::Torn) => {
                    file.write_all(&line[..line.len() / 2])?;
                    return Err(full());
                }
                None => {}
            }
        }
        file.write_all(line)?;
        file.sync_data()
    }

    /// Seals the current file into a segment when it is `rotate_every` old, and removes the segments
    /// past `retention` (after recording their removal in the chain). The daemon calls it at start and
    /// then hourly; it returns how many segments it removed.
    pub fn maintain(&self, now: OffsetDateTime) -> Result<usize, AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(started) = tail.started
            && now - started >= self.policy.rotate_every
        {
            let sealed = segment_name(&self.path, self.first_seq_of_current(&tail));
            let io = io_error(&self.path);
            tail.file.sync_all().map_err(&io)?;
            std::fs::rename(&self.path, &sealed).map_err(&io)?;
            tail.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(&io)?;
            sync_dir(&self.path);
            tail.started = None;
        }
        let Some(retention) = self.policy.retention else {
            return Ok(0);
        };
        let cutoff = now - retention;
        let mut due = Vec::new();
        let mut through = None;
        for segment in segments(&self.path)? {
            let Some(last) = last_entry(&segment)? else {
                break;
            };
            let at = OffsetDateTime::parse(&last.at, &Rfc3339).unwrap_or(now);
            if at >= cutoff {
                break;
            }
            through = Some((last.seq, last.hash));
            due.push(segment);
        }
        let Some((seq, hash)) = through else {
            return Ok(0);
        };
        // First the declaration, durably; then the removal. A crash between the two leaves files
        // the chain already declares removable; the next run removes them.
        let lookup = Lookup {
            mode: "retention".into(),
            outcome: format!("removed entries through {seq}"),
            ..Lookup::default()
        };
        let removed = Removed {
            through: seq,
            hash,
            cutoff: now_rfc3339(cutoff),
        };
        self.append(&mut tail, lookup, None, Some(removed), now_rfc3339(now))?;
        for segment in &due {
            std::fs::remove_file(segment).map_err(io_error(segment))?;
        }
        sync_dir(&self.path);
        Ok(due.len())
    }

    /// The sequence number the current file starts with (it is not empty when this is asked).
    fn first_seq_of_current(&self, tail: &Tail) -> u64 {
        std::fs::File::open(&self.path)
            .ok()
            .and_then(|f| BufReader::new(f).lines().next())
            .and_then(|l| l.ok())
            .and_then(|l| serde_json::from_str::<Entry>(&l).ok())
            .map_or(tail.seq, |e| e.seq)
    }
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Lines present, in every file.
    pub entries: u64,
    /// Sequence number of the last line (entries removed by retention included).
    pub entries_through: u64,
    pub last: String,
    /// Files read: the segments, then the current file.
    pub files: usize,
    /// Entries 1..=n removed under a retention line.
    pub removed_through: Option<u64>,
    /// Entries recording a partial line cut off at open.
    pub cuts: Vec<u64>,
    current_started: Option<OffsetDateTime>,
}

/// Checks the whole chain across the segments and the current file `path`: sequence numbers without
/// gaps, each `prev` the previous `hash`, each `hash` recomputed, and a chain that does not start at
/// entry 1 only where a retention line declares the entries before it removed.
pub fn verify(path: &Path) -> Result<Verified, AuditError> {
    let mut files = segments(path)?;
    files.push(path.to_owned());
    let mut last = GENESIS.to_owned();
    let mut n = 0u64;
    let mut present = 0u64;
    let mut start: Option<(String, u64, u64, String)> = None;
    let mut declared: Vec<(u64, String)> = Vec::new();
    let mut current_started = None;
    let mut read = 0usize;
    let mut cuts = Vec::new();
    for (index, file_path) in files.iter().enumerate() {
        let display = file_path.display().to_string();
        let file = match std::fs::File::open(file_path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && index + 1 == files.len() => {
                continue;
            }
            Err(e) => return Err(io_error(file_path)(e)),
        };
        read += 1;
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line_no = i as u64 + 1;
            let broken = |message: String| AuditError::Broken {
                path: display.clone(),
                line: line_no,
                message,
            };
            let line = line.map_err(|e| broken(e.to_string()))?;
            let entry: Entry =
                serde_json::from_str(&line).map_err(|e| broken(format!("not an entry: {e}")))?;
            if stored_hash(&line, &entry.prev).as_deref() != Some(entry.hash.as_str()) {
                return Err(broken(
                    "altered: its hash does not match its content".into(),
                ));
            }
            if entry.lookup.mode == "torn_line_cut" {
                cuts.push(entry.seq);
            }
            if present == 0 && entry.seq != 1 {
                // The chain starts later: fine only if a retention line declares what came before.
                start = Some((display.clone(), line_no, entry.seq - 1, entry.prev.clone()));
            } else {
                if entry.seq != n + 1 {
                    return Err(broken(format!(
                        "sequence {} where {} was expected: a line is missing or moved",
                        entry.seq,
                        n + 1
                    )));
                }
                if entry.prev != last {
                    return Err(broken("does not follow the previous line".into()));
                }
            }
            if let Some(r) = &entry.removed {
                declared.push((r.through, r.hash.clone()));
            }
            if index + 1 == files.len() && current_started.is_none() {
                current_started = OffsetDateTime::parse(&entry.at, &Rfc3339).ok();
            }
            last = entry.hash;
            n = entry.seq;
            present += 1;
        }
    }
    let removed_through = match start {
        None => None,
        Some((file, line, before, prev)) => {
            if !declared.contains(&(before, prev)) {
                return Err(AuditError::Broken {
                    path: file,
                    line,
                    message: format!(
                        "the chain starts at entry {}, and no retention line declares entries 1–{before} removed",
                        before + 1
                    ),
                });
            }
            Some(before)
        }
    };
    Ok(Verified {
        entries: present,
        entries_through: n,
        last,
        files: read,
        removed_through,
        cuts,
        current_started,
    })
}

/// The entries about one citizen, in every file (the chain is verified first).
pub fn search(path: &Path, key: &[u8; 32], citizen_id: &str) -> Result<Vec<Entry>, AuditError> {
    verify(path)?;
    let wanted = citizen_hash(key, citizen_id);
    let mut files = segments(path)?;
    files.push(path.to_owned());
    let mut found = Vec::new();
    for file_path in files {
        let Ok(file) = std::fs::File::open(&file_path) else {
            continue;
        };
        found.extend(
            BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| serde_json::from_str::<Entry>(&l).ok())
                .filter(|e| e.citizen.as_deref() == Some(wanted.as_str())),
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lookup(n: u32) -> Lookup {
        Lookup {
            officer: "CB-01".into(),
            procedure: "1.001612".into(),
            dossier: Some(format!("H-{n}")),
            requested_by: "portal".into(),
            upstream_request_id: format!("R{n}"),
            mode: "full".into(),
            outcome: "verified".into(),
        }
    }

    fn log_of(n: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, Some([9; 32])).expect("open");
        for i in 1..=n {
            let citizen = if i % 2 == 0 {
                "083173316997"
            } else {
                "075160213922"
            };
            log.record(lookup(i), citizen, format!("2026-11-27T00:00:0{i}Z"))
                .expect("record");
        }
        (dir, path)
    }

    #[test]
    fn an_intact_chain_verifies_and_reopening_continues_it() {
        let (_dir, path) = log_of(4);
        assert_eq!(verify(&path).expect("intact").entries, 4);
        let log = AuditLog::open(&path, Some([9; 32])).expect("reopen");
        log.record(lookup(5), "083173316997", "t".into())
            .expect("record");
        assert_eq!(verify(&path).expect("intact").entries, 5);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("083173316997"), "the ID is only hashed");
    }

    #[test]
    fn an_altered_removed_or_reordered_line_is_found() {
        let (_dir, path) = log_of(4);
        let lines: Vec<String> = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect();
        let write = |ls: &[String]| std::fs::write(&path, ls.join("\n") + "\n").expect("write");
        let mut altered = lines.clone();
        altered[1] = altered[1].replace("\"verified\"", "\"not_found\"");
        write(&altered);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 2, .. })
        ));
        let mut removed = lines.clone();
        removed.remove(2);
        write(&removed);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 3, .. })
        ));
        let mut swapped = lines.clone();
        swapped.swap(0, 1);
        write(&swapped);
        assert!(verify(&path).is_err());
        write(&lines);
        assert!(verify(&path).is_ok());
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn day(n: f64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("time") + DAY.mul_f64(n)
    }

    fn record_at(log: &AuditLog, n: u32, when: OffsetDateTime) {
        log.record(lookup(n), "083173316997", now_rfc3339(when))
            .expect("record");
    }

    #[test]
    fn the_current_file_is_sealed_into_segments_and_the_chain_runs_across_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let policy = Policy {
            rotate_every: DAY,
            retention: None,
        };
        let log = AuditLog::open_with(&path, Some([9; 32]), policy).expect("open");
        assert_eq!(log.maintain(day(0.0)).expect("nothing to seal"), 0);
        for n in 1..=3 {
            record_at(&log, n, day(0.0));
        }
        log.maintain(day(0.5)).expect("not due yet");
        assert!(segments(&path).expect("list").is_empty());
        log.maintain(day(1.0)).expect("seal");
        assert_eq!(
            segments(&path).expect("list"),
            vec![dir.path().join("audit.log.000000000001")]
        );
        log.maintain(day(1.1))
            .expect("an empty current file is not sealed");
        assert_eq!(segments(&path).expect("list").len(), 1);
        record_at(&log, 4, day(1.2));
        let v = verify(&path).expect("intact across files");
        assert_eq!((v.entries, v.files, v.removed_through), (4, 2, None));
        let seqs: Vec<u64> = search(&path, &[9; 32], "083173316997")
            .expect("search")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4], "search reads the segments too");
        drop(log);
        let reopened = AuditLog::open_with(&path, Some([9; 32]), policy).expect("reopen");
        record_at(&reopened, 5, day(1.3));
        assert_eq!(verify(&path).expect("intact").entries_through, 5);
    }

    #[test]
    fn retention_removes_old_segments_only_after_declaring_them_in_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let policy = Policy {
            rotate_every: DAY,
            retention: Some(DAY * 3),
        };
        let log = AuditLog::open_with(&path, None, policy).expect("open");
        for n in 1..=3 {
            record_at(&log, n, day(0.0));
        }
        log.maintain(day(1.5)).expect("seal 1-3");
        record_at(&log, 4, day(2.0));
        record_at(&log, 5, day(2.0));
        assert_eq!(
            log.maintain(day(3.0)).expect("seal 4-5"),
            0,
            "nothing old enough"
        );
        let first = dir.path().join("audit.log.000000000001");
        let saved = std::fs::read(&first).expect("first segment");

        // Day 4: entries 1-3 (day 0) are past three days; 4-5 (day 2) are not.
        assert_eq!(log.maintain(day(4.0)).expect("prune"), 1);
        assert!(!first.exists());
        let v = verify(&path).expect("a declared start is accepted");
        assert_eq!(
            (v.entries, v.removed_through),
            (3, Some(3)),
            "4, 5 and the retention line"
        );
        let text = std::fs::read_to_string(&path).expect("current");
        let line: Entry = serde_json::from_str(text.lines().last().expect("line")).expect("entry");
        assert_eq!(line.removed.as_ref().map(|r| r.through), Some(3));

        // A crash between the declaration and the removal leaves the file: still a valid chain, and
        // the next run removes it.
        std::fs::write(&first, &saved).expect("restore");
        assert_eq!(
            verify(&path).expect("declared but present").removed_through,
            None
        );
        assert_eq!(log.maintain(day(4.1)).expect("prune again"), 1);
        assert!(!first.exists());
        assert!(verify(&path).is_ok());
    }

    #[test]
    fn a_segment_removed_by_hand_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let policy = Policy {
            rotate_every: DAY,
            retention: None,
        };
        let log = AuditLog::open_with(&path, None, policy).expect("open");
        for (n, at) in [(1, 0.0), (2, 1.0), (3, 2.0), (4, 3.0)] {
            record_at(&log, n, day(at));
            log.maintain(day(at + 1.0)).expect("seal");
        }
        assert_eq!(segments(&path).expect("list").len(), 4);
        assert!(verify(&path).is_ok());

        let second = dir.path().join("audit.log.000000000002");
        let kept = std::fs::read(&second).expect("read");
        std::fs::remove_file(&second).expect("remove");
        let error = verify(&path).expect_err("a gap in the middle");
        assert!(error.to_string().contains("sequence 3 where 2"), "{error}");
        std::fs::write(&second, kept).expect("restore");

        std::fs::remove_file(dir.path().join("audit.log.000000000001")).expect("remove");
        let error = verify(&path).expect_err("the start removed without a retention line");
        assert!(
            error
                .to_string()
                .contains("no retention line declares entries 1–1"),
            "{error}"
        );
        assert!(
            AuditLog::open_with(&path, None, policy).is_err(),
            "the daemon refuses to continue a broken chain"
        );
    }

    #[test]
    fn a_field_injected_into_a_line_breaks_its_hash() {
        let (_dir, path) = log_of(3);
        let text = std::fs::read_to_string(&path).expect("read");
        let injected = text.replacen("{\"seq\":2,", "{\"seq\":2,\"note\":\"added later\",", 1);
        assert_ne!(injected, text);
        std::fs::write(&path, injected).expect("write");
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 2, .. })
        ));
    }

    #[test]
    fn a_failed_append_leaves_no_partial_line_and_the_chain_goes_on() {
        let (_dir, path) = log_of(2);
        let log = AuditLog::open(&path, Some([9; 32])).expect("open");
        let before = std::fs::read(&path).expect("read");
        for fault in [Fault::Full, Fault::Torn] {
            log.set_fault(Some(fault));
            assert!(log.record(lookup(9), "083173316997", "t".into()).is_err());
            assert!(!log.writable());
            assert_eq!(
                std::fs::read(&path).expect("read"),
                before,
                "{fault:?}: cut back"
            );
        }
        log.set_fault(None);
        log.record(lookup(3), "083173316997", "t".into())
            .expect("space is back");
        assert!(log.writable());
        assert_eq!(verify(&path).expect("intact").entries, 3);
    }

    #[test]
    fn a_torn_last_line_is_cut_at_open_and_the_cut_is_recorded() {
        let (_dir, path) = log_of(2);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.write_all(b"{\"seq\":3,\"at\":\"2026-11-27T00:00")
            .expect("torn");
        drop(file);
        assert!(verify(&path).is_err(), "a torn line is not an entry");
        let log = AuditLog::open(&path, Some([9; 32])).expect("opens anyway");
        log.record(lookup(4), "083173316997", "t".into())
            .expect("record");
        let v = verify(&path).expect("the chain goes on");
        assert_eq!(v.entries, 4, "two, the cut, and the next lookup");
        assert_eq!(v.cuts, vec![3]);
    }

    #[test]
    fn the_key_holder_finds_a_citizens_lookups_and_a_wrong_key_finds_none() {
        let (_dir, path) = log_of(4);
        let found = search(&path, &[9; 32], "083173316997").expect("search");
        assert_eq!(found.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 4]);
        assert!(
            search(&path, &[8; 32], "083173316997")
                .expect("search")
                .is_empty()
        );
    }
}
