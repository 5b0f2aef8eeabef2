//! `[peer.config]` of an `amqp` peer.

use serde::{Deserialize, Serialize};

/// One binding of the node's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpBinding {
    /// A topic exchange.
    pub exchange: String,
    /// Binding key (topic pattern).
    pub pattern: String,
}

/// Settings of the RabbitMQ source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// AMQP URL, e.g. `amqp://user:pass@host:5672/vhost`.
    pub url: String,
    /// The node's durable queue (one per Herald node, shared by all its clients).
    pub queue: String,
    /// Bindings of the queue.
    pub bindings: Vec<AmqpBinding>,
    /// Unacknowledged messages RabbitMQ may send at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Queue length cap (`x-max-length`); publishers are refused beyond it.
    #[serde(default = "default_max_queue_length")]
    pub max_queue_length: u32,
    /// Declare the bound exchanges (durable topic exchanges) if missing.
    #[serde(default)]
    pub declare_exchanges: bool,
    /// 0 turns `message_id` deduplication off; any other value keeps it on.
    /// (It used to count remembered ids; the window is now the gateway's
    /// `publish.idempotency_window`, shared with every publish path.)
    #[serde(default = "default_dedupe_window")]
    pub dedupe_window: usize,
    /// Exchanges (exact, or a prefix ending in `*`) that clients may make
    /// this peer bind on demand by subscribing to them.
    #[serde(default)]
    pub dynamic_exchanges: Vec<String>,
    /// Most dynamic bindings at once.
    #[serde(default = "default_max_dynamic")]
    pub max_dynamic_bindings: usize,
}

fn default_max_dynamic() -> usize {
    100
}

fn default_dedupe_window() -> usize {
    100_000
}

fn default_prefetch() -> u16 {
    256
}

fn default_max_queue_length() -> u32 {
    1_000_000
}

impl AmqpConfig {
    /// Check the settings; returns every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            p.push("url must start with amqp:// or amqps://".to_string());
        }
        if self.queue.is_empty() || self.queue.len() > 255 {
            p.push("queue must be 1 to 255 bytes".to_string());
        }
        if self.bindings.is_empty() {
            p.push("bindings must list at least one {exchange, pattern}".to_string());
        }
        if self.prefetch == 0 {
            p.push("prefetch must be at least 1".to_string());
        }
        p
    }
}
