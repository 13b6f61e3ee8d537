//! All integration tests, compiled as one binary.

mod accuracy;
mod deploy;
mod http;
mod kafka;
mod prometheus;
mod properties;
mod replay;
mod restore;
mod scenario;
mod scenarios;
mod secrets;
mod trust;
