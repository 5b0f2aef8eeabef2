//! The RabbitMQ source: one durable queue per Herald node, bound to the
//! configured `{exchange, pattern}` bindings; each message becomes an event
//! with the same exchange, routing key and headers, and is acknowledged to
//! RabbitMQ only after the event is durable in the log. While Herald is down
//! the queue buffers; a bounded queue length (`x-max-length` with
//! `reject-publish`) and a bounded prefetch keep Herald from overloading
//! RabbitMQ and RabbitMQ from overloading Herald.

mod config;
mod source;

pub use config::AmqpConfig;
pub use source::AmqpSource;
