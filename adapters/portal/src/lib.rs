//! The public-service portal protocol: the national portal (Cổng DVCQG) and the provincial portals that
//! mirror it (`shared/spec/upstreams.md` §3). One configuration may name several targets (e.g.
//! `national` and `provincial`); each is a separate client with its own session and queue lane.
//!
//! - [`wire`]: the JSON envelope and records, `error_code` as number or string, portal dates, the local
//!   status → code table;
//! - [`client`]: session handling, `TraCuuHoSo`, `DongBoHoSoMC` with create/update recovery,
//!   `CapNhatTienDoHoSoMC` in batches of at most ten;
//! - [`simulator`]: sessions, a dossier store and a progress log with the spec's error codes.
#![forbid(unsafe_code)]

pub mod client;
pub mod simulator;
pub mod wire;
