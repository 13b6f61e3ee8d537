//! All integration tests, compiled as one binary.

mod accuracy;
mod kafka;
mod properties;
mod replay;
mod restore;
mod scenario;
mod scenarios;
