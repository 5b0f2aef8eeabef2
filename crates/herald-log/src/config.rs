//! Embedded log settings.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the embedded log (the `[log]` table; the directory comes from `--data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The folder holding the segments (`<data>/log`).
    #[serde(skip)]
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Call `fdatasync` before acknowledging a write. Turning it off keeps
    /// acknowledged events safe from a process crash but not from power loss.
    pub fsync: bool,
    /// Remove events older than this (`None`: keep regardless of age).
    #[serde(with = "opt_duration")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub max_age: Option<Duration>,
    /// Keep about this many events at most (`None`: no count limit).
    pub max_events: Option<u64>,
    /// Keep the log below this size on disk (`None`: no size limit).
    pub max_bytes: Option<u64>,
    /// Most bytes one group commit writes before it fsyncs.
    pub max_batch_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: PathBuf::from("herald-data/log"),
            segment_bytes: 64 << 20,
            fsync: true,
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_events: None,
            max_bytes: Some(10 << 30),
            max_batch_bytes: 4 << 20,
        }
    }
}

impl LogConfig {
    /// Check the settings; returns every problem found.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.segment_bytes < 4096 {
            problems.push("log.segment_bytes must be at least 4096".to_string());
        }
        if self.segment_bytes > u32::MAX as u64 {
            problems.push("log.segment_bytes must be below 4 GiB".to_string());
        }
        if self.max_batch_bytes < 4096 {
            problems.push("log.max_batch_bytes must be at least 4096".to_string());
        }
        if self.max_events == Some(0) {
            problems.push("log.max_events must be at least 1 (omit it for no limit)".to_string());
        }
        if self.max_age == Some(Duration::ZERO) {
            problems.push("log.max_age must be positive (omit it for no limit)".to_string());
        }
        problems
    }
}

/// `Option<Duration>` as a humantime string (`"7d"`, `"90s"`, `"1h 30m"`).
/// `Duration` as a humantime string (`"15s"`, `"2m"`), for `#[serde(with)]`.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialize as a humantime string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Deserialize from a humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e} (use e.g. 15s, 2m, 1h)")))
    }
}

/// `Option<Duration>` as a humantime string or none, for `#[serde(with)]`.
pub mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialize as a humantime string, or none.
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    /// Deserialize from a humantime string; `"none"` or `""` mean no limit.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref() {
            None | Some("none") | Some("") => Ok(None),
            Some(s) => humantime::parse_duration(s).map(Some).map_err(|e| {
                serde::de::Error::custom(format!("invalid duration `{s}`: {e} (use e.g. 90s, 15m, 12h, 7d)"))
            }),
        }
    }
}
