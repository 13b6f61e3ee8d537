//! The Kafka shell around the pure engine: clients, the live service, and what it
//! decides without a broker (commit positions, record layouts), kept apart so that it
//! is tested exhaustively without one.

mod assignment;
pub mod changelog;
pub mod client;
pub mod journal;
pub mod lag;
pub mod offsets;
pub mod produce;
pub mod records;
pub mod runtime;
pub(crate) mod sync;
pub mod topics;
mod worker;

pub use runtime::{run, Report, RunError, Service, StartOptions, Status};
