//! The public-service portal protocol: the national portal (Cổng DVCQG) and the provincial portals that
//! mirror it (docs/PROTOCOLS.md, the portal). One configuration may name several targets (e.g.
//! `national` and `provincial`); each is a separate client with its own session and queue lane.
//!
//! - [`wire`]: the JSON envelope and records, `error_code` as number or string, portal dates, the local
//!   status → code table;
//! - [`client`]: session handling, `TraCuuHoSo`, `DongBoHoSoMC` with create/update recovery,
//!   `CapNhatTienDoHoSoMC` in batches of at most ten;
//! - [`rules`]: the contract's request rules, written on their own, that the simulator judges by;
//! - [`simulator`]: sessions, a dossier store and a progress log with the contract's error codes; it
//!   refuses what a strict portal would refuse.
#![forbid(unsafe_code)]

pub mod client;
pub mod rules;
pub mod simulator;
pub mod wire;
