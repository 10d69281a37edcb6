//! The VNPost client. Order numbers are deterministic, so a create that is retried — by us or by the
//! portal — collides with its first attempt; VNPost answers that with 409 and an "already exists" status,
//! which is the earlier attempt's success and carries its tracking code.

use std::sync::Arc;
use std::time::Duration;

use dvc_upstream::UpstreamError;
use dvc_upstream::http::{self, HttpOptions};
use dvc_upstream::token::{Answer, TokenSource};
use reqwest::header;

use crate::wire::{CreateOrder, OrderResult, StatusTable, TrackingPage, is_feed_id};

/// What deployments vary on; the defaults are the spec's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub token_path: String,
    pub order_path: String,
    pub cancel_path: String,
    pub tracking_path: String,
    /// `Status` of a successful create or cancel.
    pub success_status: i64,
    /// `Status` values meaning "this OrderNumber already exists for this customer".
    pub already_exists_statuses: Vec<i64>,
    pub status_table: StatusTable,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            token_path: "/token".into(),
            order_path: "/order/post".into(),
            cancel_path: "/order/cancel".into(),
            tracking_path: "/order/tracking".into(),
            success_status: 100,
            already_exists_statuses: vec![101],
            status_table: StatusTable::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PostalConfig {
    pub base_url: String,
    pub customer_code: String,
    pub customer_key: String,
    pub secret_key: dvc_upstream::Secret,
    pub profile: Profile,
    pub http: HttpOptions,
    pub token_margin: Duration,
    pub max_response_bytes: usize,
}

impl PostalConfig {
    pub fn new(
        base_url: impl Into<String>,
        customer_code: impl Into<String>,
        customer_key: impl Into<String>,
        secret_key: impl Into<dvc_upstream::Secret>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            customer_code: customer_code.into(),
            customer_key: customer_key.into(),
            secret_key: secret_key.into(),
            profile: Profile::default(),
            http: HttpOptions::default(),
            token_margin: Duration::from_secs(60),
            max_response_bytes: 4 << 20,
        }
    }

    /// Where an endpoint is: a path on `base_url`, or a whole URL of its own.
    fn url(&self, path: &str) -> String {
        if path.starts_with("https://") || path.starts_with("http://") {
            return path.to_owned();
        }
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }
}

/// A created (or already existing) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub item_code: String,
    /// True when VNPost already had this order number: an earlier attempt created it.
    pub already_existed: bool,
}

#[derive(Debug, Clone)]
pub struct PostalClient {
    http: reqwest::Client,
    config: Arc<PostalConfig>,
    token: Arc<TokenSource>,
    observer: Option<Arc<dyn dvc_upstream::Observer>>,
}

impl PostalClient {
    pub fn new(config: PostalConfig) -> Result<Self, http::ClientBuildError> {
        Ok(Self {
            http: http::client(&config.http)?,
            token: Arc::new(TokenSource::new(
                config.url(&config.profile.token_path),
                config.customer_key.clone(),
                config.secret_key.clone(),
                config.token_margin,
            )),
            config: Arc::new(config),
            observer: None,
        })
    }

    /// Reports every call to `observer` (latency and outcome, for metrics).
    pub fn with_observer(mut self, observer: Arc<dyn dvc_upstream::Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn status_table(&self) -> &StatusTable {
        &self.config.profile.status_table
    }

    pub async fn create_order(&self, order: &CreateOrder) -> Result<Created, UpstreamError> {
        dvc_upstream::observed(
            self.observer.as_ref(),
            "postal",
            "create_order",
            self.create_unobserved(order),
        )
        .await
    }

    async fn create_unobserved(&self, order: &CreateOrder) -> Result<Created, UpstreamError> {
        let url = self.config.url(&self.config.profile.order_path);
        let answer = self
            .token
            .send(
                &self.http,
                self.config.max_response_bytes,
                |authorization| {
                    self.http
                        .post(&url)
                        .header(header::AUTHORIZATION, authorization)
                        .json(order)
                },
            )
            .await?;
        read_create_answer(&answer, &self.config.profile)
    }

    /// Cancels an order. Cancelling one already delivered is refused for good.
    pub async fn cancel_order(&self, order_number: &str) -> Result<(), UpstreamError> {
        dvc_upstream::observed(
            self.observer.as_ref(),
            "postal",
            "cancel_order",
            self.cancel_unobserved(order_number),
        )
        .await
    }

    async fn cancel_unobserved(&self, order_number: &str) -> Result<(), UpstreamError> {
        let url = self.config.url(&self.config.profile.cancel_path);
        let query = [
            ("CustomerCode", self.config.customer_code.as_str()),
            ("OrderNumber", order_number),
        ];
        let answer = self
            .token
            .send(
                &self.http,
                self.config.max_response_bytes,
                |authorization| {
                    self.http
                        .get(&url)
                        .header(header::AUTHORIZATION, authorization)
                        .query(&query)
                },
            )
            .await?;
        match answer.status {
            200 | 201 | 400 | 409 | 422 => {
                let result = parse_result(&answer)?;
                if (200..300).contains(&answer.status)
                    && result.status == self.config.profile.success_status
                {
                    Ok(())
                } else {
                    Err(business(&result))
                }
            }
            status => Err(UpstreamError::from_status(
                status,
                answer.retry_after.as_deref(),
                "cancel order",
            )),
        }
    }

    /// The page of the customer-wide feed after `last_id` (24 zeros for the beginning).
    pub async fn tracking(
        &self,
        last_id: &str,
        page_size: u32,
    ) -> Result<TrackingPage, UpstreamError> {
        dvc_upstream::observed(
            self.observer.as_ref(),
            "postal",
            "tracking",
            self.tracking_unobserved(last_id, page_size),
        )
        .await
    }

    async fn tracking_unobserved(
        &self,
        last_id: &str,
        page_size: u32,
    ) -> Result<TrackingPage, UpstreamError> {
        let url = self.config.url(&self.config.profile.tracking_path);
        let size = page_size.clamp(1, 1000).to_string();
        let query = [("pagesize", size.as_str()), ("lastId", last_id)];
        let answer = self
            .token
            .send(
                &self.http,
                self.config.max_response_bytes,
                |authorization| {
                    self.http
                        .get(&url)
                        .header(header::AUTHORIZATION, authorization)
                        .query(&query)
                },
            )
            .await?;
        if answer.status != 200 {
            return Err(UpstreamError::from_status(
                answer.status,
                answer.retry_after.as_deref(),
                "tracking feed",
            ));
        }
        let page: TrackingPage = serde_json::from_slice(&answer.body).map_err(|e| {
            UpstreamError::retryable("json_malformed", http::mask_digit_runs(&e.to_string()))
        })?;
        // The cursor is only safe to advance over a well-formed, ascending page.
        let mut previous = last_id.to_ascii_lowercase();
        for event in &page.embedded.docs {
            let id = event.id.oid.to_ascii_lowercase();
            if !is_feed_id(&id) || id <= previous {
                return Err(UpstreamError::retryable(
                    "feed_out_of_order",
                    format!(
                        "event id {} is not a 24-hex id after {previous}",
                        event.id.oid
                    ),
                ));
            }
            previous = id;
        }
        Ok(page)
    }
}

/// What a create-order answer means (pure: the fuzz target `client_answers` feeds it any status and
/// bytes). Every answer with a body is read: the body's `Status` decides, even on a 200 or 201.
pub fn read_create_answer(answer: &Answer, p: &Profile) -> Result<Created, UpstreamError> {
    match answer.status {
        200 | 201 | 400 | 409 | 422 => {
            let result = parse_result(answer)?;
            if (200..300).contains(&answer.status) && result.status == p.success_status {
                Ok(Created {
                    item_code: result.item_code,
                    already_existed: false,
                })
            } else if p.already_exists_statuses.contains(&result.status)
                && !result.item_code.is_empty()
            {
                Ok(Created {
                    item_code: result.item_code,
                    already_existed: true,
                })
            } else {
                Err(business(&result))
            }
        }
        status => Err(UpstreamError::from_status(
            status,
            answer.retry_after.as_deref(),
            "create order",
        )),
    }
}

fn parse_result(answer: &Answer) -> Result<OrderResult, UpstreamError> {
    serde_json::from_slice(&answer.body).map_err(|e| {
        UpstreamError::retryable(
            "json_malformed",
            format!(
                "HTTP {}: {}",
                answer.status,
                http::mask_digit_runs(&e.to_string())
            ),
        )
    })
}

/// A business refusal: VNPost will not accept this as it is.
fn business(result: &OrderResult) -> UpstreamError {
    UpstreamError::permanent(
        format!("vnpost_{}", result.status),
        http::mask_digit_runs(&result.message),
    )
}
