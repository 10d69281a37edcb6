//! The sidecar API the portal calls (`shared/spec/sidecar-api.md`). Its endpoints arrive with the flows;
//! until then every path answers a problem+json 404, so a client never sees an HTML error page.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

pub(crate) fn router() -> Router {
    Router::new().fallback(not_found)
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/problem+json")],
        r#"{"type":"about:blank","title":"Not Found","status":404,"code":"not_found","detail":"No such endpoint."}"#,
    )
}
