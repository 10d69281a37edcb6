//! The audit log of population-DB lookups (Decree 13/2023: processing must be traceable).
//!
//! One JSON line per lookup the connector made: when, for which officer, procedure and dossier, at whose
//! request (the API token's name), the upstream request id, and the outcome — the citizen ID only as
//! HMAC-SHA256 under the audit key, so that an auditor holding the key can answer "who looked this
//! person up?" and nobody else learns whom. Lines are hash-chained: each carries the SHA-256 of the
//! previous line and its own, so `dvc-connector audit verify` finds an altered, removed or reordered
//! line. The file is only appended to, each line fsynced before the lookup's verdict is recorded.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    pub prev: String,
    pub hash: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The keyed hash of a citizen ID.
pub fn citizen_hash(key: &[u8; 32], citizen_id: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(citizen_id.trim().as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// The chain hash of an entry: SHA-256 over `prev` and the entry's JSON without its `hash`.
fn chain_hash(entry: &Entry) -> String {
    let mut unsealed = entry.clone();
    unsealed.hash = String::new();
    let body = serde_json::to_vec(&unsealed).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(entry.prev.as_bytes());
    h.update(&body);
    hex(&h.finalize())
}

#[derive(Debug)]
struct Tail {
    file: std::fs::File,
    seq: u64,
    last: String,
}

/// The open log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    key: Option<[u8; 32]>,
    tail: Mutex<Tail>,
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

impl AuditLog {
    /// Opens (creating) the log and finds where the chain ends; a broken chain refuses to open.
    pub fn open(path: &Path, key: Option<[u8; 32]>) -> Result<AuditLog, AuditError> {
        let io = |e: std::io::Error| AuditError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let (seq, last) = if path.exists() {
            let v = verify(path)?;
            (v.entries, v.last)
        } else {
            (0, GENESIS.to_owned())
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(AuditLog {
            path: path.to_owned(),
            key,
            tail: Mutex::new(Tail { file, seq, last }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one lookup, durably.
    pub fn record(&self, lookup: Lookup, citizen_id: &str, at: String) -> Result<(), AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let mut entry = Entry {
            seq: tail.seq + 1,
            at,
            lookup,
            citizen: self.key.as_ref().map(|k| citizen_hash(k, citizen_id)),
            prev: tail.last.clone(),
            hash: String::new(),
        };
        entry.hash = chain_hash(&entry);
        let mut line = serde_json::to_vec(&entry).unwrap_or_default();
        line.push(b'\n');
        let io = |e: std::io::Error| AuditError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        tail.file.write_all(&line).map_err(io)?;
        tail.file.sync_data().map_err(io)?;
        tail.seq = entry.seq;
        tail.last = entry.hash;
        Ok(())
    }
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    pub last: String,
}

/// Checks the whole chain: sequence numbers without gaps, each `prev` the previous `hash`, each
/// `hash` recomputed.
pub fn verify(path: &Path) -> Result<Verified, AuditError> {
    let display = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| AuditError::Io {
        path: display.clone(),
        message: e.to_string(),
    })?;
    let mut last = GENESIS.to_owned();
    let mut n = 0u64;
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
        if chain_hash(&entry) != entry.hash {
            return Err(broken(
                "altered: its hash does not match its content".into(),
            ));
        }
        last = entry.hash;
        n += 1;
    }
    Ok(Verified { entries: n, last })
}

/// The entries about one citizen (the chain is verified first).
pub fn search(path: &Path, key: &[u8; 32], citizen_id: &str) -> Result<Vec<Entry>, AuditError> {
    verify(path)?;
    let wanted = citizen_hash(key, citizen_id);
    let file = std::fs::File::open(path).map_err(|e| AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Entry>(&l).ok())
        .filter(|e| e.citizen.as_deref() == Some(wanted.as_str()))
        .collect())
}

/// `dvc-connector audit …`.
pub fn run(args: crate::cli::AuditArgs) -> anyhow::Result<bool> {
    match args.command {
        crate::cli::AuditCommand::Verify { file } => match verify(&file) {
            Ok(v) => {
                println!("{}: {} entries, chain intact", file.display(), v.entries);
                Ok(true)
            }
            Err(e) => {
                println!("{e}");
                Ok(false)
            }
        },
        crate::cli::AuditCommand::Search {
            file,
            key_file,
            citizen_id,
        } => {
            let key = crate::settings::read_key(&key_file).map_err(anyhow::Error::msg)?;
            let found = search(&file, &key, &citizen_id)?;
            for e in &found {
                println!(
                    "{}  officer {}  procedure {}  dossier {}  by {}  {}  upstream request {}",
                    e.at,
                    e.lookup.officer,
                    e.lookup.procedure,
                    e.lookup.dossier.as_deref().unwrap_or("-"),
                    e.lookup.requested_by,
                    e.lookup.outcome,
                    e.lookup.upstream_request_id
                );
            }
            println!("{} lookup(s) of this citizen", found.len());
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
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
