//! The status dashboard at `/` on the ops listener: server-rendered HTML, no build step, usable without
//! JavaScript (a small script only reloads it every 15 s when available), in English or Vietnamese
//! (`?lang=vi`, or `Accept-Language`).
//!
//! Shows each lane's health and depth with a chart of deliveries over the last hour, dead letters grouped
//! by reason, the dead-letter list with retry and discard buttons, and a dossier's sync state per target
//! and its jobs by code. Actions need a signed-in admin ([`super::session`]: a server-side session, an
//! Origin check on every POST); when the ops listener is not on loopback, so does reading. Everything
//! shown is escaped; payloads are never shown.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::OpsState;
use crate::api::problem::Lang;
use crate::queue::{AdminOutcome, JobFilter, JobId, JobState, Queue};
use crate::settings::Scope;

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5rem;color:#111}table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:left}th{background:#f4f4f5}.bad{color:#b91c1c;font-weight:600}.ok{color:#15803d}.msg{background:#eff6ff;padding:.5rem;border-left:3px solid #2563eb}form.inline{display:inline}nav a{margin-right:.8rem}";

/// Deliveries per minute per lane over the last hour, sampled from the store's done counters.
#[derive(Debug, Default)]
pub struct History {
    /// lane → (done count at each sample), newest last; at most 61 samples.
    samples: Mutex<BTreeMap<String, VecDeque<u64>>>,
}

impl History {
    pub async fn sample(&self, queue: &Queue) {
        let Ok(counts) = queue.counts().await else {
            return;
        };
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        for c in counts {
            let series = samples.entry(c.lane.clone()).or_default();
            series.push_back(c.done);
            while series.len() > 61 {
                series.pop_front();
            }
        }
    }

    /// Deliveries in each sampled minute (differences of the done counter; a purge never counts negative).
    fn per_minute(&self, lane: &str) -> Vec<u64> {
        let samples = self
            .samples
            .lock()
            .map(|s| s.get(lane).cloned().unwrap_or_default())
            .unwrap_or_default();
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| b.saturating_sub(*a))
            .collect()
    }
}

/// Samples every minute until the process ends.
pub fn spawn_sampler(
    queue: Queue,
    history: Arc<History>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => history.sample(&queue).await,
                _ = stop.changed() => {}
            }
        }
    })
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn t(lang: Lang, key: &'static str) -> &'static str {
    let vi = lang == Lang::Vi;
    match key {
        "title" => {
            if vi {
                "dvc-connector — tình trạng đồng bộ"
            } else {
                "dvc-connector — sync status"
            }
        }
        "ready" => {
            if vi {
                "Sẵn sàng"
            } else {
                "Ready"
            }
        }
        "not_ready" => {
            if vi {
                "CHƯA SẴN SÀNG"
            } else {
                "NOT READY"
            }
        }
        "store" => {
            if vi {
                "Kho lưu trữ"
            } else {
                "Store"
            }
        }
        "writable" => {
            if vi {
                "ghi được"
            } else {
                "writable"
            }
        }
        "not_writable" => {
            if vi {
                "KHÔNG GHI ĐƯỢC"
            } else {
                "NOT WRITABLE"
            }
        }
        "lanes" => {
            if vi {
                "Luồng gửi"
            } else {
                "Lanes"
            }
        }
        "lane" => {
            if vi {
                "Luồng"
            } else {
                "Lane"
            }
        }
        "state" => {
            if vi {
                "Trạng thái"
            } else {
                "State"
            }
        }
        "ready_jobs" => {
            if vi {
                "Chờ gửi"
            } else {
                "Ready"
            }
        }
        "leased" => {
            if vi {
                "Đang gửi"
            } else {
                "In progress"
            }
        }
        "dead" => {
            if vi {
                "Lỗi dừng"
            } else {
                "Dead"
            }
        }
        "blocked" => {
            if vi {
                "Chờ sau lỗi dừng"
            } else {
                "Blocked by dead"
            }
        }
        "overdue" => {
            if vi {
                "Chậm nhất"
            } else {
                "Most overdue"
            }
        }
        "last_hour" => {
            if vi {
                "Đã gửi (1 giờ qua)"
            } else {
                "Delivered (last hour)"
            }
        }
        "failures" => {
            if vi {
                "Lỗi theo nguyên nhân"
            } else {
                "Failures by reason"
            }
        }
        "reason" => {
            if vi {
                "Nguyên nhân"
            } else {
                "Reason"
            }
        }
        "error_code" => {
            if vi {
                "Mã lỗi"
            } else {
                "Error code"
            }
        }
        "dead_letters" => {
            if vi {
                "Công việc lỗi dừng"
            } else {
                "Dead letters"
            }
        }
        "none" => {
            if vi {
                "Không có."
            } else {
                "None."
            }
        }
        "job" => {
            if vi {
                "Công việc"
            } else {
                "Job"
            }
        }
        "kind" => {
            if vi {
                "Loại"
            } else {
                "Kind"
            }
        }
        "dossier" => {
            if vi {
                "Hồ sơ"
            } else {
                "Dossier"
            }
        }
        "error" => {
            if vi {
                "Lỗi gần nhất"
            } else {
                "Last error"
            }
        }
        "actions" => {
            if vi {
                "Thao tác"
            } else {
                "Actions"
            }
        }
        "retry" => {
            if vi {
                "Gửi lại"
            } else {
                "Retry"
            }
        }
        "discard" => {
            if vi {
                "Bỏ qua"
            } else {
                "Discard"
            }
        }
        "sign_in" => {
            if vi {
                "Đăng nhập quản trị (mã truy cập)"
            } else {
                "Sign in with an admin token"
            }
        }
        "signed_in" => {
            if vi {
                "Đã đăng nhập quản trị"
            } else {
                "Signed in as admin"
            }
        }
        "sign_out" => {
            if vi {
                "Đăng xuất"
            } else {
                "Sign out"
            }
        }
        "need_admin" => {
            if vi {
                "Cần đăng nhập quản trị để thao tác."
            } else {
                "Sign in with an admin token to act."
            }
        }
        "search" => {
            if vi {
                "Tra cứu hồ sơ"
            } else {
                "Find a dossier"
            }
        }
        "find" => {
            if vi {
                "Tìm"
            } else {
                "Find"
            }
        }
        "dossier_jobs" => {
            if vi {
                "Công việc của hồ sơ"
            } else {
                "Jobs of dossier"
            }
        }
        "dossier_sync" => {
            if vi {
                "Đồng bộ hồ sơ theo cổng"
            } else {
                "Sync per portal target of dossier"
            }
        }
        "sync_head" => {
            if vi {
                "Cổng|Trạng thái đã đồng bộ|Đang chờ gửi|Chờ hồ sơ|Lỗi gần nhất|Đồng bộ lúc"
            } else {
                "Target|Last synced status|Pending|Waiting for record|Last error|Synced at"
            }
        }
        "not_synced" => {
            if vi {
                "Kết nối chưa nhận hồ sơ này."
            } else {
                "The connector has not received this dossier."
            }
        }
        "bad_token" => {
            if vi {
                "Mã truy cập không hợp lệ hoặc không có quyền quản trị."
            } else {
                "That token is not valid or lacks the admin scope."
            }
        }
        "done_retry" => {
            if vi {
                "Đã đưa công việc vào hàng đợi gửi lại."
            } else {
                "The job is queued again."
            }
        }
        "done_discard" => {
            if vi {
                "Đã bỏ qua công việc."
            } else {
                "The job was discarded."
            }
        }
        "not_applied" => {
            if vi {
                "Không thực hiện được: công việc không ở trạng thái phù hợp."
            } else {
                "Not done: the job is not in a state that allows it."
            }
        }
        _ => key,
    }
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    lang: Option<String>,
    #[serde(default)]
    dossier: Option<String>,
    #[serde(default)]
    msg: Option<String>,
}

fn lang_of(q: Option<&str>, headers: &HeaderMap) -> Lang {
    match q {
        Some("vi") => Lang::Vi,
        Some("en") => Lang::En,
        _ => Lang::from_header(
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        ),
    }
}

/// A signed-in admin: a live session whose token is still configured with the admin scope.
fn is_admin(state: &OpsState, headers: &HeaderMap) -> bool {
    super::session::cookie(headers)
        .and_then(|id| state.sessions.token_name(&id))
        .and_then(|name| state.tokens.by_name(&name))
        .is_some_and(|t| t.scopes.contains(&Scope::Admin))
}

/// A sparkline of deliveries per minute.
fn chart(points: &[u64]) -> String {
    let (w, h) = (180.0, 28.0);
    if points.is_empty() {
        return format!(
            "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"no data yet\"></svg>"
        );
    }
    let max = points.iter().copied().max().unwrap_or(1).max(1) as f64;
    let step = if points.len() > 1 {
        w / (points.len() - 1) as f64
    } else {
        w
    };
    let coords: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - 2.0 - (*p as f64 / max) * (h - 4.0)
            )
        })
        .collect();
    format!(
        "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{} in the last hour\"><polyline fill=\"none\" stroke=\"#2563eb\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        points.iter().sum::<u64>(),
        coords.join(" ")
    )
}

pub async fn page(
    State(state): State<OpsState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    let lang = lang_of(q.lang.as_deref(), &headers);
    let admin = is_admin(&state, &headers);
    if state.public && !admin {
        return sign_in_only(lang, q.msg.as_deref());
    }
    let writable = state.queue.expire_leases(0).await.is_ok();
    let counts = state.queue.counts().await.unwrap_or_default();
    let board = state.board.snapshot();
    let dead = state
        .queue
        .list(
            JobFilter {
                state: Some(JobState::Dead),
                ..Default::default()
            },
            None,
            200,
        )
        .await
        .unwrap_or_default();

    let mut html = String::new();
    let l = |k| t(lang, k);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"{}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{}</style></head><body>",
        if lang == Lang::Vi { "vi" } else { "en" },
        esc(l("title")),
        STYLE
    );
    let _ = write!(
        html,
        "<nav><a href=\"/?lang=en\">English</a><a href=\"/?lang=vi\">Tiếng Việt</a></nav><h1>{}</h1><p id=\"readiness\" class=\"{}\">{} · {} {} {}</p>",
        esc(l("title")),
        if writable { "ok" } else { "bad" },
        esc(if writable { l("ready") } else { l("not_ready") }),
        esc(l("store")),
        esc(state.queue.store().backend()),
        esc(if writable {
            l("writable")
        } else {
            l("not_writable")
        }),
    );
    if let Some(msg) = &q.msg {
        let key = match msg.as_str() {
            "bad_token" => "bad_token",
            "retried" => "done_retry",
            "discarded" => "done_discard",
            "not_applied" => "not_applied",
            _ => "",
        };
        if !key.is_empty() {
            let _ = write!(html, "<p class=\"msg\" id=\"message\">{}</p>", esc(l(key)));
        }
    }

    // Lanes.
    let _ = write!(
        html,
        "<h2>{}</h2><table id=\"lanes\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        esc(l("lanes")),
        esc(l("lane")),
        esc(l("state")),
        esc(l("ready_jobs")),
        esc(l("leased")),
        esc(l("dead")),
        esc(l("blocked")),
        esc(l("overdue")),
        esc(l("last_hour"))
    );
    let mut lanes: BTreeMap<String, ()> = counts.iter().map(|c| (c.lane.clone(), ())).collect();
    lanes.extend(board.keys().map(|k| (k.clone(), ())));
    for lane in lanes.keys() {
        let c = counts
            .iter()
            .find(|c| &c.lane == lane)
            .cloned()
            .unwrap_or_default();
        let status = board.get(lane);
        let state_text = status.map_or("—".to_owned(), |s| match &s.reason {
            Some(r) => format!("{} ({r})", s.state.as_str()),
            None => s.state.as_str().to_owned(),
        });
        // No worker for the lane in this process: neutral; running: green; anything else: red.
        let class = match status.map(|s| s.state) {
            None => "",
            Some(crate::queue::worker::LaneState::Running) => "ok",
            Some(_) => "bad",
        };
        let overdue = state.queue.overdue(lane).await.unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"{}\" data-blocked-keys=\"{}\">{} / {}</td><td>{}s</td><td>{}</td></tr>",
            esc(lane),
            class,
            esc(&state_text),
            c.ready,
            c.leased,
            if c.dead > 0 { "bad" } else { "" },
            c.dead,
            if c.blocked_jobs > 0 { "bad" } else { "" },
            c.blocked_keys,
            c.blocked_jobs,
            c.blocked_keys,
            overdue.as_secs(),
            chart(&state.history.per_minute(lane))
        );
    }
    html.push_str("</table>");

    // Failures grouped by reason.
    let mut groups: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for j in &dead {
        let reason = j.dead_reason.map_or("", |r| r.as_str()).to_owned();
        let code = j
            .last_error
            .as_ref()
            .map(|e| e.code.clone())
            .unwrap_or_default();
        *groups.entry((j.lane.clone(), reason, code)).or_default() += 1;
    }
    let _ = write!(html, "<h2>{}</h2>", esc(l("failures")));
    if groups.is_empty() {
        let _ = write!(html, "<p>{}</p>", esc(l("none")));
    } else {
        let _ = write!(
            html,
            "<table id=\"failures\"><tr><th>{}</th><th>{}</th><th>{}</th><th>#</th></tr>",
            esc(l("lane")),
            esc(l("reason")),
            esc(l("error_code"))
        );
        for ((lane, reason, code), n) in &groups {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{n}</td></tr>",
                esc(lane),
                esc(reason),
                esc(code)
            );
        }
        html.push_str("</table>");
    }

    // Sign-in.
    if admin {
        let _ = write!(
            html,
            "<p>{} <form class=\"inline\" method=\"post\" action=\"/logout\"><button id=\"sign-out\">{}</button></form></p>",
            esc(l("signed_in")),
            esc(l("sign_out"))
        );
    } else {
        let _ = write!(
            html,
            "<form id=\"login\" method=\"post\" action=\"/login\"><label for=\"token\">{}</label> <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\"> <button id=\"sign-in\">OK</button></form>",
            esc(l("sign_in"))
        );
    }

    // Dead letters.
    let _ = write!(html, "<h2>{}</h2>", esc(l("dead_letters")));
    if dead.is_empty() {
        let _ = write!(html, "<p id=\"no-dead-letters\">{}</p>", esc(l("none")));
    } else {
        if !admin {
            let _ = write!(html, "<p>{}</p>", esc(l("need_admin")));
        }
        let _ = write!(
            html,
            "<table id=\"dead-letters\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            esc(l("job")),
            esc(l("lane")),
            esc(l("kind")),
            esc(l("dossier")),
            esc(l("error")),
            esc(l("actions"))
        );
        let disabled = if admin { "" } else { " disabled" };
        for j in &dead {
            let id = j.id.to_string();
            let error = j
                .last_error
                .as_ref()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.code,
                        dvc_upstream::http::mask_digit_runs(&e.message)
                    )
                })
                .unwrap_or_default();
            let _ = write!(
                html,
                "<tr id=\"job-{id}\"><td><code>{id}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><form class=\"inline\" method=\"post\" action=\"/jobs/{id}/retry\"><button id=\"retry-{id}\"{disabled}>{}</button></form> <form class=\"inline\" method=\"post\" action=\"/jobs/{id}/discard\"><button id=\"discard-{id}\"{disabled}>{}</button></form></td></tr>",
                esc(&j.lane),
                esc(&j.kind),
                esc(&j.ordering_key),
                esc(&error),
                esc(l("retry")),
                esc(l("discard"))
            );
        }
        html.push_str("</table>");
    }

    // Dossier search.
    let dossier = q
        .dossier
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let _ = write!(
        html,
        "<h2>{}</h2><form id=\"search\" method=\"get\" action=\"/\"><input name=\"dossier\" id=\"dossier\" value=\"{}\"> <button>{}</button></form>",
        esc(l("search")),
        esc(dossier.unwrap_or("")),
        esc(l("find"))
    );
    if let (Some(code), Some(flows)) = (dossier, &state.flows) {
        match crate::flows::dossier::view(flows, code).await {
            Ok(Some(targets)) => {
                let _ = write!(
                    html,
                    "<h3>{} {}</h3><table id=\"dossier-sync\"><tr>",
                    esc(l("dossier_sync")),
                    esc(code)
                );
                for h in l("sync_head").split('|') {
                    let _ = write!(html, "<th>{}</th>", esc(h));
                }
                html.push_str("</tr>");
                for t in targets {
                    let _ = write!(
                        html,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&t.target),
                        t.last_synced_status
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                        t.pending,
                        t.waiting_for_record,
                        esc(t.last_error.as_deref().unwrap_or("")),
                        esc(t.synced_at.as_deref().unwrap_or(""))
                    );
                }
                html.push_str("</table>");
            }
            Ok(None) => {
                let _ = write!(html, "<p id=\"dossier-sync\">{}</p>", esc(l("not_synced")));
            }
            Err(error) => tracing::warn!(%error, "dossier sync state unavailable"),
        }
    }
    if let Some(code) = dossier {
        let jobs = state
            .queue
            .list(
                JobFilter {
                    dossier: Some(
                        crate::flows::identity::dossier_jobs(&state.queue, code)
                            .await
                            .unwrap_or_else(|_| crate::queue::DossierJobs::new(code)),
                    ),
                    ..Default::default()
                },
                None,
                200,
            )
            .await
            .unwrap_or_default();
        let _ = write!(
            html,
            "<h3>{} {}</h3><table id=\"dossier-jobs\">",
            esc(l("dossier_jobs")),
            esc(code)
        );
        for j in &jobs {
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                j.id,
                esc(&j.lane),
                esc(&j.kind),
                esc(j.state.as_str()),
                esc(&crate::timefmt::rfc3339(j.updated_at))
            );
        }
        html.push_str("</table>");
    }
    let _ = write!(
        html,
        "<script>{}</script></body></html>",
        super::session::RELOAD_SCRIPT
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

/// The page for a listener that is not on loopback, before sign-in: the form and nothing else.
fn sign_in_only(lang: Lang, msg: Option<&str>) -> Response {
    let l = |k| t(lang, k);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"{}\"><head><meta charset=\"utf-8\"><title>{}</title><style>{}</style></head><body><h1>{}</h1>",
        if lang == Lang::Vi { "vi" } else { "en" },
        esc(l("title")),
        STYLE,
        esc(l("title"))
    );
    if msg == Some("bad_token") {
        let _ = write!(
            html,
            "<p class=\"msg\" id=\"message\">{}</p>",
            esc(l("bad_token"))
        );
    }
    let _ = write!(
        html,
        "<form id=\"login\" method=\"post\" action=\"/login\"><label for=\"token\">{}</label> <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\"> <button id=\"sign-in\">OK</button></form></body></html>",
        esc(l("sign_in"))
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

/// The client's address, when the listener recorded it.
fn client(request: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    request
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

fn cross_origin() -> Response {
    (
        StatusCode::FORBIDDEN,
        "cross-origin request refused: use the dashboard itself",
    )
        .into_response()
}

pub async fn login(
    State(state): State<OpsState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    if !super::session::same_origin(&headers) {
        return cross_origin();
    }
    let ip = client(&extensions);
    if let Some(ip) = ip
        && let Err(wait) = state.auth_failures.check(ip)
    {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            "too many failed sign-ins from this address; wait and try again",
        )
            .into_response();
    }
    let token = state
        .tokens
        .authenticate(Some(&format!("Bearer {}", form.token.trim())))
        .filter(|t| t.scopes.contains(&Scope::Admin));
    let Some(token) = token else {
        if let Some(ip) = ip {
            state.auth_failures.failed(ip);
        }
        return Redirect::to("/?msg=bad_token").into_response();
    };
    let id = state.sessions.open(&token.name);
    tracing::info!(token = %token.name, "dashboard sign-in");
    (
        [(
            header::SET_COOKIE,
            super::session::set_cookie(Some(&id), state.secure),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

pub async fn logout(State(state): State<OpsState>, headers: HeaderMap) -> Response {
    if !super::session::same_origin(&headers) {
        return cross_origin();
    }
    if let Some(id) = super::session::cookie(&headers) {
        state.sessions.close(&id);
    }
    (
        [(
            header::SET_COOKIE,
            super::session::set_cookie(None, state.secure),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

pub async fn act(
    State(state): State<OpsState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    if !super::session::same_origin(&headers) {
        return cross_origin();
    }
    if !is_admin(&state, &headers) {
        return (StatusCode::FORBIDDEN, "an admin token is required").into_response();
    }
    let Ok(id) = JobId::from_string(&id) else {
        return (StatusCode::BAD_REQUEST, "not a job id").into_response();
    };
    let outcome = match action.as_str() {
        "retry" => state.queue.retry(id).await,
        "discard" => state.queue.discard(id).await,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match outcome {
        Ok(AdminOutcome::Applied) => {
            tracing::info!(job_id = %id, action = %action, "operator action from the dashboard");
            Redirect::to(if action == "retry" {
                "/?msg=retried"
            } else {
                "/?msg=discarded"
            })
            .into_response()
        }
        Ok(_) => Redirect::to("/?msg=not_applied").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard action failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}
