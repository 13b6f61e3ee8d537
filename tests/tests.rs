//! All integration tests, compiled as one binary.

mod accuracy;
mod properties;
mod replay;
mod scenario;
mod scenarios;
