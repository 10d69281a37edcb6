//! The national population database (CSDLQGDC), reached through the province's LGSP gateway.
//!
//! - [`cccd`]: the 12-digit identification number and the structural checks that need no upstream call;
//! - [`matching`]: comparing submitted name, date of birth and sex with the record;
//! - [`wire`] and [`client`]: the SOAP messages and the gateway client;
//! - [`rules`]: the contract's request rules, written on their own, that the [`simulator`] judges by.
#![forbid(unsafe_code)]

pub mod cccd;
pub mod client;
pub mod matching;
pub mod rules;
pub mod simulator;
pub mod wire;
