//! Loading the configuration in layers: defaults < file < environment <
//! command line, merged by figment, then validated, every problem at once.
//!
//! The environment names a setting as `HERALD_<SECTION>__<KEY>`
//! (`HERALD_LIMITS__MAX_SUBSCRIPTIONS=2`); a top-level setting as
//! `HERALD_<KEY>` (`HERALD_LISTEN`); `HERALD_JWT_SECRET` is
//! `auth.jwt_secret`. Each value is read for what the setting holds (the
//! structs' schema says): a number, `true`/`false`, text, a comma-separated
//! list for a list of strings, or a TOML inline value (`[{...}]`) for
//! anything structured. Other `HERALD_` variables (`HERALD_URL`,
//! `HERALD_LOG`, ...) belong to other commands and are left alone.

use super::schema::{self, Shape};
use super::Config;
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The prefix of configuration variables.
pub const ENV_PREFIX: &str = "HERALD_";

/// Settings given on the command line: the last layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data`.
    pub data: Option<PathBuf>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Some settings are wrong; every problem found.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// One layer: a value at a path (or a whole table), named for errors.
struct Layer {
    name: String,
    path: Option<String>,
    value: toml::Value,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        match &self.path {
            Some(path) => figment::providers::Serialized::default(path, &self.value).data(),
            None => figment::providers::Serialized::defaults(&self.value).data(),
        }
    }
}

impl Config {
    /// Load the configuration: defaults, then `file` (TOML), then the
    /// `HERALD_` variables of `env`, then `overrides`; then validate it.
    /// Returns every problem found, from all layers, at once.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, LoadError> {
        let mut problems = Vec::new();
        let mut figment = Figment::new();
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
            match toml::from_str::<toml::Table>(&text) {
                Ok(table) => {
                    figment = figment.merge(Layer {
                        name: format!("{}", path.display()),
                        path: None,
                        value: toml::Value::Table(table),
                    })
                }
                Err(e) => problems.push(format!("{}: {}", path.display(), e.to_string().trim_end())),
            }
        }
        let root = schema::config_schema();
        let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        // Sorted, so that the problems come in a stable order.
        env.sort();
        for (name, value) in env {
            match env_setting(&root, &name, &value) {
                Ok(Some((path, value))) => {
                    figment =
                        figment.merge(Layer { name: format!("environment variable {name}"), path: Some(path), value })
                }
                Ok(None) => {}
                Err(problem) => problems.push(problem),
            }
        }
        if let Some(listen) = &overrides.listen {
            figment = figment.merge(Layer {
                name: "--listen".into(),
                path: Some("listen".into()),
                value: toml::Value::String(listen.clone()),
            });
        }
        if let Some(data) = &overrides.data {
            figment = figment.merge(Layer {
                name: "--data".into(),
                path: Some("data".into()),
                value: toml::Value::String(data.display().to_string()),
            });
        }
        match figment.extract::<Config>() {
            Ok(config) => {
                if let Err(more) = config.validate() {
                    problems.extend(more);
                }
                if problems.is_empty() {
                    return Ok(config);
                }
            }
            Err(errors) => problems.extend(errors.into_iter().map(|e| describe(&e))),
        }
        Err(LoadError::Invalid(problems))
    }
}

/// A figment error as `key: what (in where)`.
fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let source = e.metadata.as_ref().map(|m| format!(" (in {})", m.name)).unwrap_or_default();
    if key.is_empty() {
        format!("{}{source}", e.kind)
    } else {
        format!("{key}: {}{source}", e.kind)
    }
}

/// The setting a `HERALD_` variable names and its value, `None` for a
/// variable that is not configuration.
fn env_setting(root: &Value, name: &str, value: &str) -> Result<Option<(String, toml::Value)>, String> {
    let rest = &name[ENV_PREFIX.len()..];
    let path: Vec<String> = if rest == "JWT_SECRET" {
        if value.is_empty() {
            return Ok(None);
        }
        vec!["auth".into(), "jwt_secret".into()]
    } else if rest.contains("__") {
        rest.split("__").map(str::to_ascii_lowercase).collect()
    } else {
        let key = rest.to_ascii_lowercase();
        match schema::lookup(root, &[key.as_str()]) {
            // A top-level setting that is not a section: `HERALD_LISTEN`.
            Some(s) if schema::shape(root, s) != Shape::Object => vec![key],
            // `HERALD_LOG`, `HERALD_URL`, `HERALD_TOKEN`...: other commands'.
            _ => return Ok(None),
        }
    };
    let keys: Vec<&str> = path.iter().map(String::as_str).collect();
    let dotted = keys.join(".");
    let Some(setting) = schema::lookup(root, &keys) else {
        return Err(format!("{name}: there is no setting `{dotted}` (`herald config default` lists them all)"));
    };
    let parsed = match schema::shape(root, setting) {
        Shape::Object => {
            return Err(format!("{name}: `{dotted}` is a section; name one of its settings, as {name}__<KEY>"));
        }
        Shape::String => toml::Value::String(value.to_string()),
        Shape::Integer => match value.trim().parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => return Err(format!("{name}: `{value}` is not a whole number")),
        },
        Shape::Number => match value.trim().parse::<f64>() {
            Ok(n) => toml::Value::Float(n),
            Err(_) => return Err(format!("{name}: `{value}` is not a number")),
        },
        Shape::Boolean => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(format!("{name}: `{value}` is not true or false")),
        },
        Shape::StringList if !value.trim_start().starts_with('[') => toml::Value::Array(
            value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| toml::Value::String(s.into())).collect(),
        ),
        Shape::StringList | Shape::List | Shape::Any => inline_toml(value).map_err(|e| {
            format!("{name}: not a TOML inline value such as [{{ exchange = \"demo\", pattern = \"#\" }}]: {e}")
        })?,
    };
    Ok(Some((dotted, parsed)))
}

/// A TOML inline value (`[1, 2]`, `{ a = 1 }`).
fn inline_toml(value: &str) -> Result<toml::Value, String> {
    let mut table: toml::Table = toml::from_str(&format!("v = {value}")).map_err(|e| e.message().to_string())?;
    table.remove("v").ok_or_else(|| "no value".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn problems(r: Result<Config, LoadError>) -> Vec<String> {
        match r {
            Err(LoadError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn environment_names_settings_by_section_and_key() {
        let c = Config::load(
            None,
            env(&[
                ("HERALD_LIMITS__MAX_SUBSCRIPTIONS", "2"),
                ("HERALD_SESSION__TTL", "30s"),
                ("HERALD_SESSION__STORE", "memory"),
                ("HERALD_CLUSTER__NATS_URLS", "nats://a:4222, nats://b:4222"),
                ("HERALD_CLUSTER__NODE", "n1"),
                ("HERALD_STREAM_EVENTS", "true"),
                ("HERALD_AUTH__ALLOWED_ORIGINS", "https://a.example,https://b.example"),
                ("HERALD_AUTH__ANONYMOUS__SUBSCRIBE", r##"[{ exchange = "demo", pattern = "#" }]"##),
                ("HERALD_LOG__MAX_AGE", "none"),
            ]),
            &Overrides::default(),
        )
        .expect("valid");
        assert_eq!(c.limits.max_subscriptions, 2);
        assert_eq!(c.session.ttl, Duration::from_secs(30));
        assert_eq!(c.session.store, super::super::SessionStoreKind::Memory);
        let cluster = c.cluster.expect("cluster section from the environment");
        assert_eq!(cluster.nats_urls, vec!["nats://a:4222", "nats://b:4222"]);
        assert_eq!(cluster.node, "n1");
        assert_eq!(cluster.replicas, 3, "the rest of the section keeps its defaults");
        assert!(c.stream_events);
        assert_eq!(c.auth.allowed_origins.len(), 2);
        let anon = c.auth.anonymous.expect("anonymous grants");
        assert_eq!(anon.subscribe[0].exchange, "demo");
        assert_eq!(c.log.max_age, None);
        // Untouched settings keep their defaults.
        assert_eq!(c.limits.max_bindings, Config::default().limits.max_bindings);
    }

    #[test]
    fn layers_are_defaults_file_environment_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1111\"\ndata = \"/from/file\"\n[limits]\nmax_subscriptions = 5\nmax_bindings = 7\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&file),
            env(&[("HERALD_LIMITS__MAX_SUBSCRIPTIONS", "3"), ("HERALD_LISTEN", "127.0.0.1:2222")]),
            &Overrides { listen: Some("127.0.0.1:3333".into()), data: None },
        )
        .expect("valid");
        assert_eq!(c.limits.max_subscriptions, 3, "environment over file");
        assert_eq!(c.limits.max_bindings, 7, "file over defaults");
        assert_eq!(c.listen, "127.0.0.1:3333", "command line over environment");
        assert_eq!(c.data, PathBuf::from("/from/file"));
    }

    #[test]
    fn secrets_and_other_commands_variables() {
        let c = Config::load(
            None,
            env(&[
                ("HERALD_JWT_SECRET", "12345678901234567890"),
                ("HERALD_URL", "http://elsewhere"),
                ("HERALD_LOG", "debug"),
                ("HERALD_TOKEN", "t"),
                ("PATH", "/bin"),
            ]),
            &Overrides::default(),
        )
        .expect("valid");
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("12345678901234567890"), "digits stay text");
    }

    #[test]
    fn every_problem_of_every_layer_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, "[limits]\nmax_frame_bytes = 10\n").expect("write");
        let p = problems(Config::load(
            Some(&file),
            env(&[
                ("HERALD_LIMITS__MAX_SUBSCRIPTIONS", "lots"),
                ("HERALD_LIMITS__NO_SUCH_LIMIT", "1"),
                ("HERALD_LIMITS", "1"),
                ("HERALD_SESSION__TTL", "soon"),
            ]),
            &Overrides::default(),
        ));
        let all = p.join("\n");
        assert!(all.contains("HERALD_LIMITS__MAX_SUBSCRIPTIONS: `lots` is not a whole number"), "{all}");
        assert!(all.contains("HERALD_LIMITS__NO_SUCH_LIMIT: there is no setting `limits.no_such_limit`"), "{all}");
        assert!(all.contains("session.ttl: invalid duration `soon`"), "{all}");
        assert!(all.contains("environment variable HERALD_SESSION__TTL"), "names the source: {all}");
        // `HERALD_LIMITS` alone is a section, not a setting: not configuration.
        assert!(!all.contains("HERALD_LIMITS:"), "{all}");
    }

    #[test]
    fn validation_problems_come_with_the_layers_problems() {
        let p = problems(Config::load(
            None,
            env(&[
                ("HERALD_LIMITS__MAX_FRAME_BYTES", "10"),
                ("HERALD_HEARTBEAT__X", "1"),
                ("HERALD_AUTH__JWT_SECRET", "short"),
            ]),
            &Overrides::default(),
        ));
        let all = p.join("\n");
        assert!(all.contains("HERALD_HEARTBEAT__X: there is no setting `heartbeat.x`"), "{all}");
        // The environment's mistake does not hide the others: the rest
        // still loads and is validated.
        assert!(all.contains("limits.max_frame_bytes must be at least 1024"), "{all}");
        assert!(all.contains("auth.jwt_secret must be at least 16 bytes"), "{all}");
    }

    #[test]
    fn a_file_that_is_not_toml_says_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, "[limits\n").expect("write");
        let p =
            problems(Config::load(Some(&file), env(&[("HERALD_LIMITS__MAX_BINDINGS", "x")]), &Overrides::default()));
        assert!(p[0].contains("herald.toml") && p[0].contains("line 1"), "{p:?}");
        assert!(p.iter().any(|l| l.contains("HERALD_LIMITS__MAX_BINDINGS")), "{p:?}");
        assert!(matches!(
            Config::load(Some(&dir.path().join("missing.toml")), env(&[]), &Overrides::default()),
            Err(LoadError::Read { .. })
        ));
    }
}
