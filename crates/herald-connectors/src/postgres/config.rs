//! `[peer.config]` of a `postgres` peer.

use serde::{Deserialize, Serialize};

/// Settings of the PostgreSQL source.
///
/// `query` takes two parameters, `$1` (the last id stored, bigint) and `$2`
/// (the batch size, bigint), and returns rows ordered by id with these
/// columns: `id` (bigint, required), `payload` (json, jsonb or text;
/// required), and optionally `routing_key` (text), `acl_user` and
/// `acl_group` (text: the event's ACL becomes `user:<acl_user>` and
/// `group:<acl_group>`). Map your table's columns with SQL aliases, e.g.
/// `SELECT id, to_jsonb(l) AS payload, event_type AS routing_key,
/// owner_uuid AS acl_user FROM logs l WHERE id > $1 ORDER BY id LIMIT $2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string (`host=... user=... dbname=...` or `postgresql://...`).
    pub url: String,
    /// LISTEN channel; a NOTIFY on it (any payload: the row, its id, or
    /// nothing) wakes the source up to run the query.
    pub channel: String,
    /// The catch-up query (see above).
    pub query: String,
    /// The exchange every event of this peer is published to.
    pub exchange: String,
    /// Rows per query.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Seconds between safety polls when no NOTIFY arrives.
    #[serde(default = "default_poll")]
    pub poll_interval_s: u64,
}

fn default_batch() -> u32 {
    500
}

fn default_poll() -> u64 {
    5
}

impl PostgresConfig {
    /// Check the settings; returns every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.url.is_empty() {
            p.push("url must not be empty".to_string());
        }
        if self.channel.is_empty() || self.channel.len() > 63 {
            p.push("channel must be 1 to 63 bytes".to_string());
        }
        if !self.query.contains("$1") || !self.query.contains("$2") {
            p.push("query must use $1 (last id) and $2 (batch size)".to_string());
        }
        if self.exchange.is_empty() || self.exchange.len() > 255 {
            p.push("exchange must be 1 to 255 bytes".to_string());
        }
        if self.batch == 0 {
            p.push("batch must be at least 1".to_string());
        }
        if self.poll_interval_s == 0 {
            p.push("poll_interval_s must be at least 1".to_string());
        }
        p
    }
}
