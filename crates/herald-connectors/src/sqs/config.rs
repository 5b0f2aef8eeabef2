//! `[peer.config]` of an `sqs` peer.

use serde::{Deserialize, Serialize};

/// Settings of the SQS rendezvous peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// The broker queue's name; created if missing.
    pub queue: String,
    /// The rendezvous service requests from this queue are for.
    pub service: String,
    /// AWS region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint URL for an SQS-compatible server (absent: AWS's own).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Reply queues are `<reply_prefix>-client-<ClientID>` (default: the queue name).
    #[serde(default)]
    pub reply_prefix: Option<String>,
    /// Access key id (absent: `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key (absent: `AWS_SECRET_ACCESS_KEY`).
    #[serde(default)]
    #[schemars(extend("x-secret" = true))]
    pub secret_access_key: Option<String>,
    /// Long-poll wait of each receive, 1 to 20 seconds.
    #[serde(default = "default_wait")]
    pub wait_time_s: u32,
    /// Requests handled at once; receiving pauses at this many.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Reply queues not modified for this long are deleted.
    #[serde(default = "default_max_age")]
    pub reply_queue_max_age_s: u64,
    /// How often to look for stale reply queues.
    #[serde(default = "default_cleanup")]
    pub cleanup_interval_s: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_wait() -> u32 {
    20
}

fn default_in_flight() -> usize {
    100
}

fn default_max_age() -> u64 {
    120
}

fn default_cleanup() -> u64 {
    30
}

impl SqsConfig {
    /// The reply queue prefix in force.
    pub fn prefix(&self) -> &str {
        self.reply_prefix.as_deref().unwrap_or(&self.queue)
    }

    /// Check the settings; returns every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let name_ok = |n: &str, max: usize| {
            !n.is_empty() && n.len() <= max && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.queue, 80) {
            p.push("queue must be 1 to 80 characters of A-Z, a-z, 0-9, - and _".to_string());
        }
        // Reply queue names (prefix, "-client-", ClientID) must fit SQS's 80 characters.
        if let Some(prefix) = &self.reply_prefix {
            if !name_ok(prefix, 40) {
                p.push("reply_prefix must be 1 to 40 characters of A-Z, a-z, 0-9, - and _".to_string());
            }
        } else if self.queue.len() > 40 {
            p.push("set reply_prefix (1 to 40 characters): the queue name is too long to prefix reply queues".into());
        }
        if self.service.is_empty() || self.service.len() > 255 {
            p.push("service must be 1 to 255 bytes".to_string());
        }
        if !(1..=20).contains(&self.wait_time_s) {
            p.push("wait_time_s must be 1 to 20".to_string());
        }
        if self.max_in_flight == 0 {
            p.push("max_in_flight must be at least 1".to_string());
        }
        if self.reply_queue_max_age_s == 0 || self.cleanup_interval_s == 0 {
            p.push("reply_queue_max_age_s and cleanup_interval_s must be at least 1".to_string());
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            p.push("set both access_key_id and secret_access_key, or neither".to_string());
        }
        p
    }
}
