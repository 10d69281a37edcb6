//! `dvc-connector audit`: the operator's commands over the audit log of population-DB lookups
//! ([`crate::audit`]): verify the hash chain, find a citizen's lookups.

use crate::audit;
use crate::cli::{AuditArgs, AuditCommand};

/// `dvc-connector audit …`.
pub fn run(args: AuditArgs) -> anyhow::Result<bool> {
    match args.command {
        AuditCommand::Verify { file } => match audit::verify(&file) {
            Ok(v) => {
                let removed = match v.removed_through {
                    None => String::new(),
                    Some(n) => format!("; entries 1–{n} removed by retention"),
                };
                println!(
                    "{}: {} entries in {} file(s), chain intact{removed}",
                    file.display(),
                    v.entries,
                    v.files
                );
                if !v.cuts.is_empty() {
                    let seqs: Vec<String> = v.cuts.iter().map(u64::to_string).collect();
                    println!(
                        "partial lines cut off at open (a full disk or a crash mid-write), recorded as entries {}",
                        seqs.join(", ")
                    );
                }
                println!(
                    "head: entry {} hash {} (keep it where the log cannot reach: a later verify that ends elsewhere means entries were removed)",
                    v.entries_through, v.last
                );
                Ok(true)
            }
            Err(e) => {
                println!("{e}");
                Ok(false)
            }
        },
        AuditCommand::Search {
            file,
            key_file,
            citizen_id,
        } => {
            let key = crate::settings::read_key(&key_file).map_err(anyhow::Error::msg)?;
            let found = audit::search(&file, &key, &citizen_id)?;
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
