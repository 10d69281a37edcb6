//! `dvc-connector jobs …`: the operators' command line over a running daemon's admin API. Everything it
//! prints comes from the API, which already masks personal data and never returns payloads.

use std::io::IsTerminal;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::cli::{JobFilterArgs, JobsArgs, JobsCommand, Output};

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// Calls the API; a problem+json answer becomes an error naming its code, title and fields.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let response = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .query(query)
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let mut text = format!(
            "{} ({}): {}",
            body["title"].as_str().unwrap_or(status.as_str()),
            body["code"].as_str().unwrap_or("unknown"),
            body["detail"].as_str().unwrap_or("")
        );
        for e in body["errors"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "\n  {}: {} ({})",
                e["field"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or(""),
                e["code"].as_str().unwrap_or("")
            ));
        }
        bail!(text)
    }
}

fn filters(f: &JobFilterArgs) -> Vec<(&'static str, String)> {
    [
        ("kind", &f.kind),
        ("target", &f.target),
        ("dossier_code", &f.dossier),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
    .collect()
}

/// A stopped daemon's store, opened read-only.
pub fn open_stopped_store(
    dir: &std::path::Path,
    key_files: &[std::path::PathBuf],
) -> anyhow::Result<crate::queue::Queue> {
    use std::sync::Arc;
    let mut keys = Vec::new();
    for f in key_files {
        keys.push(crate::settings::read_key(f).map_err(anyhow::Error::msg)?);
    }
    // A store whose key was generated beside it (store.encryption = "generated") opens with that key.
    let generated = dir.join(crate::settings::GENERATED_KEY);
    if keys.is_empty() && generated.is_file() {
        keys.push(crate::settings::read_key(&generated).map_err(anyhow::Error::msg)?);
    }
    let keyring = crate::queue::kv::Keyring::new(&keys).map(Arc::new);
    let store = crate::queue::KvJobStore::open_read_only(dir, crate::queue::Backend::Redb, keyring)
        .map_err(|e| match e {
            crate::queue::StoreError::Locked(_) => anyhow::anyhow!(
                "the store at {} is in use: the daemon is running; ask it instead (drop --store)",
                dir.display()
            ),
            crate::queue::StoreError::Unclean(_) => anyhow::anyhow!(
                "the store at {} was not closed cleanly (the daemon was killed or crashed). Start the daemon: it recovers the store at start, and nothing acknowledged is lost. Then ask it (drop --store), or stop it cleanly (SIGTERM) and read the store here",
                dir.display()
            ),
            other => anyhow::anyhow!("{other}"),
        })?;
    Ok(crate::queue::Queue::new(
        Arc::new(store),
        Arc::new(crate::queue::TokioClock::new()),
        Default::default(),
        std::time::Duration::from_secs(60),
    ))
}

async fn run_offline(
    args: &JobsArgs,
    dir: &std::path::Path,
    key_files: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    use crate::queue::{JobFilter, JobId, JobState};
    let queue = open_stopped_store(dir, key_files)?;
    let view = |j: &crate::queue::Job| {
        serde_json::to_value(crate::api::JobView::from(j)).unwrap_or(Value::Null)
    };
    match &args.command {
        JobsCommand::List {
            state,
            filter,
            limit,
            oldest_first,
            ..
        } => {
            let state = match state {
                None => None,
                Some(s) => Some(JobState::parse(s).with_context(|| format!("unknown state {s}"))?),
            };
            let filter = JobFilter {
                state,
                kind: filter.kind.clone(),
                lane: filter.target.clone(),
                dossier: match &filter.dossier {
                    Some(code) => Some(crate::flows::identity::dossier_jobs(&queue, code).await?),
                    None => None,
                },
                newest_first: !oldest_first,
            };
            let jobs: Vec<Value> = queue
                .list(filter, None, *limit)
                .await?
                .iter()
                .map(view)
                .collect();
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&jobs)?),
                Output::Table => print_table(&jobs),
            }
        }
        JobsCommand::Show { id, .. } => {
            let id = JobId::from_string(id).context("not a job id")?;
            let job = queue.get(id).await?.context("no such job")?;
            print_job(&view(&job), args.output)?;
        }
        // Only `list` and `show` take --store; `run` sends nothing else here.
        _ => bail!("only list and show read a stopped daemon's store"),
    }
    Ok(())
}

pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    if let JobsCommand::List { offline, .. } | JobsCommand::Show { offline, .. } = &args.command
        && let Some(dir) = &offline.store
    {
        return run_offline(&args, dir, &offline.key_file).await;
    }
    let token = args
        .token
        .clone()
        .context("no token: set DVC_CONNECTOR_TOKEN to a token with the admin scope")?;
    let api = Api {
        base: args.api.clone(),
        token,
        http: args.tls.client()?,
    };
    match &args.command {
        JobsCommand::List {
            state,
            filter,
            limit,
            oldest_first,
            ..
        } => {
            let mut query = filters(filter);
            if let Some(s) = state {
                query.push(("state", s.clone()));
            }
            let order = if *oldest_first { "oldest" } else { "newest" };
            query.push(("order", order.into()));
            let jobs = list(&api, query, *limit).await?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&jobs)?),
                Output::Table => print_table(&jobs),
            }
        }
        JobsCommand::Show { id, .. } => {
            let job = api
                .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), &[])
                .await?;
            print_job(&job, args.output)?;
        }
        JobsCommand::Retry { id } | JobsCommand::Discard { id } => {
            let action = if matches!(args.command, JobsCommand::Retry { .. }) {
                "retry"
            } else {
                "discard"
            };
            let job = api
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/jobs/{id}/{action}"),
                    &[],
                )
                .await?;
            print_job(&job, args.output)?;
        }
        JobsCommand::Replay { filter, yes } => replay(&api, filter, *yes, args.output).await?,
    }
    Ok(())
}

/// Follows pages until `limit` jobs or the end.
async fn list(
    api: &Api,
    query: Vec<(&'static str, String)>,
    limit: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    while jobs.len() < limit {
        let mut q = query.clone();
        q.push(("limit", (limit - jobs.len()).min(500).to_string()));
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page = api.call(reqwest::Method::GET, "/v1/jobs", &q).await?;
        jobs.extend(page["jobs"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    Ok(jobs)
}

async fn replay(
    api: &Api,
    filter: &JobFilterArgs,
    yes: bool,
    output: Output,
) -> anyhow::Result<()> {
    let mut query = filters(filter);
    query.push(("state", "dead".into()));
    let dead = list(api, query, usize::MAX).await?;
    if dead.is_empty() {
        println!("no dead jobs match");
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("{} dead jobs match; pass --yes to replay them", dead.len());
        }
        eprint!("replay {} dead jobs? [y/N] ", dead.len());
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !answer.trim().eq_ignore_ascii_case("y") {
            bail!("nothing replayed");
        }
    }
    let bar = if output == Output::Table && std::io::stderr().is_terminal() {
        ProgressBar::new(dead.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut requeued, mut failed) = (0usize, Vec::new());
    for job in &dead {
        let id = job["id"].as_str().unwrap_or_default();
        match api
            .call(reqwest::Method::POST, &format!("/v1/jobs/{id}/retry"), &[])
            .await
        {
            Ok(_) => requeued += 1,
            Err(e) => failed.push((id.to_owned(), e.to_string())),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "requeued": requeued, "failed": failed.iter().map(|(id, e)| serde_json::json!({"id": id, "error": e})).collect::<Vec<_>>() })
        ),
        Output::Table => {
            println!("requeued {requeued} of {} dead jobs", dead.len());
            for (id, e) in &failed {
                println!("  {id}: {e}");
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} jobs could not be replayed", failed.len())
    }
}

fn print_table(jobs: &[Value]) {
    let mut table = crate::table::new([
        "ID",
        "STATE",
        "KIND",
        "TARGET",
        "DOSSIER",
        "TRY",
        "LAST ERROR",
    ]);
    for j in jobs {
        let s = |k: &str| j[k].as_str().unwrap_or("").to_owned();
        table.add_row(vec![
            s("id"),
            s("state"),
            s("kind"),
            s("target"),
            s("dossier_code"),
            j["attempts"].as_u64().unwrap_or(0).to_string(),
            j["last_error"]["code"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    crate::table::right_align(&mut table, &[5]);
    println!("{table}");
    println!("{} jobs", jobs.len());
}

fn print_job(job: &Value, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(job)?);
        return Ok(());
    }
    for key in [
        "id",
        "state",
        "kind",
        "target",
        "dossier_code",
        "attempts",
        "next_attempt_at",
        "dead_reason",
        "created_at",
        "updated_at",
        "finished_at",
    ] {
        if let Some(v) = job.get(key).filter(|v| !v.is_null()) {
            println!(
                "{key:<16} {}",
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            );
        }
    }
    if let Some(e) = job.get("last_error").filter(|v| !v.is_null()) {
        println!(
            "{:<16} [{}] {} — {} (at {})",
            "last_error",
            e["class"].as_str().unwrap_or(""),
            e["code"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or(""),
            e["at"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
