//! The Kafka runtime: against a real broker, and fault injection on librdkafka's mock cluster.

mod catchup;
mod demo;
mod durable;
mod faults;
mod live;
pub(crate) mod slack;
pub(crate) mod support;
