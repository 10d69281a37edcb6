//! The national population database (CSDLQGDC), reached through the province's LGSP gateway.
//!
//! - [`cccd`]: the 12-digit identification number and the structural checks that need no upstream call;
//! - [`matching`]: comparing submitted name, date of birth and sex with the record;
#![forbid(unsafe_code)]

pub mod cccd;
pub mod client;
pub mod matching;
pub mod simulator;
pub mod wire;
