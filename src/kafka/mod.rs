//! The Kafka shell's pure parts: what it decides without talking to a broker, kept here
//! so that it is tested exhaustively without one. The rdkafka consumer, producer and
//! their loop build on these.

pub mod offsets;
pub mod records;
