//! VNPost's public postal service (bưu chính công ích): creating and cancelling orders and reading the
//! customer-wide tracking feed (`shared/spec/upstreams.md` §2).
//!
//! - [`wire`]: the JSON bodies, order numbers, and the status table;
//! - [`client`]: token caching, order creation that treats "already exists" as the earlier attempt's
//!   success, cancellation, feed paging, classification of every failure;
//! - [`simulator`]: an order book with the same duplicate rules, moving orders through the status table
//!   over (accelerable) time and publishing the feed.
#![forbid(unsafe_code)]

pub mod client;
pub mod simulator;
pub mod wire;
