//! dvc-connector: a durable sidecar between a provincial public-service portal and the systems it must
//! reach (population DB, VNPost, the national portal).
#![forbid(unsafe_code)]

pub mod queue;
