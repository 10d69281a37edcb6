//! VNPost's public postal service (bưu chính công ích): creating and cancelling orders and reading the
//! customer-wide tracking feed (docs/PROTOCOLS.md, VNPost).
//!
//! - [`wire`]: the JSON bodies, order numbers, and the status table;
//! - [`client`]: token caching, order creation that treats "already exists" as the earlier attempt's
//!   success, cancellation, feed paging, classification of every failure;
//! - [`rules`]: the contract's request rules, written on their own, that the simulator judges by;
//! - [`simulator`]: an order book with the same duplicate rules, moving orders through the status table
//!   over (accelerable) time and publishing the feed; it refuses what a strict VNPost would refuse.
#![forbid(unsafe_code)]

pub mod client;
pub mod rules;
pub mod simulator;
pub mod wire;
