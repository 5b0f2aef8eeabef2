//! [`Principal`] and [`Grants`]: who a client is and what it may do.
//!
//! A client never receives an event unless both its grants and the event's
//! `acl` allow it: a subscription binding must overlap a subscribe grant,
//! and then each event is checked against the grants (unless every binding
//! lies wholly inside one grant) and against its `acl`.

use crate::event::Event;
use crate::pattern::{Pattern, PatternError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How a grant names exchanges: exactly, or by a prefix (written `prefix*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeMatch {
    /// This exchange only.
    Exact(String),
    /// Every exchange starting with this prefix (`*` alone: every exchange).
    Prefix(String),
}

impl ExchangeMatch {
    /// Parse `name` or `prefix*`.
    pub fn parse(s: &str) -> ExchangeMatch {
        match s.strip_suffix('*') {
            Some(prefix) => ExchangeMatch::Prefix(prefix.to_string()),
            None => ExchangeMatch::Exact(s.to_string()),
        }
    }

    /// Whether the exchange is named by this grant.
    pub fn matches(&self, exchange: &str) -> bool {
        match self {
            ExchangeMatch::Exact(x) => x == exchange,
            ExchangeMatch::Prefix(p) => exchange.starts_with(p.as_str()),
        }
    }
}

/// The wire and configuration form of one grant: `{exchange, pattern}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    /// Exact exchange name, or a prefix ending in `*`.
    pub exchange: String,
    /// Topic pattern of the routing keys granted.
    pub pattern: String,
}

/// The claims' `herald` object and the `[auth.anonymous]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct GrantsSpec {
    /// What may be subscribed to.
    pub subscribe: Vec<GrantSpec>,
    /// What may be published.
    pub publish: Vec<GrantSpec>,
    /// Rendezvous services this client may answer.
    pub serve: Vec<String>,
    /// Rendezvous services this client may call.
    pub request: Vec<String>,
    /// May operate the gateway (pause and resume peers).
    pub admin: bool,
}

/// One compiled grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Exchanges covered.
    pub exchange: ExchangeMatch,
    /// Routing keys covered.
    pub pattern: Pattern,
}

impl Grant {
    /// Whether the event's exchange and routing key are covered.
    pub fn covers(&self, exchange: &str, routing_key: &str) -> bool {
        self.exchange.matches(exchange) && self.pattern.matches(routing_key)
    }

    /// Whether some key of the binding is covered.
    pub fn overlaps(&self, exchange: &str, pattern: &Pattern) -> bool {
        self.exchange.matches(exchange) && self.pattern.overlaps(pattern)
    }

    /// Whether every key of the binding is covered (cheap sufficient test:
    /// the grant's pattern is `#` or the very same pattern).
    pub fn contains(&self, exchange: &str, pattern: &Pattern) -> bool {
        self.exchange.matches(exchange) && (self.pattern.is_match_all() || self.pattern == *pattern)
    }
}

/// Compiled grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Subscribe grants.
    pub subscribe: Vec<Grant>,
    /// Publish grants.
    pub publish: Vec<Grant>,
    /// Services this client may serve.
    pub serve: Vec<String>,
    /// Services this client may request.
    pub request: Vec<String>,
    /// May operate the gateway.
    pub admin: bool,
}

/// A grant that could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid grant pattern `{pattern}`: {source}")]
pub struct GrantError {
    /// The pattern.
    pub pattern: String,
    /// Why.
    pub source: PatternError,
}

impl Grants {
    /// Everything: every exchange, every key, every service.
    pub fn all() -> Grants {
        let all = || vec![Grant { exchange: ExchangeMatch::Prefix(String::new()), pattern: hash() }];
        Grants { subscribe: all(), publish: all(), serve: vec!["*".into()], request: vec!["*".into()], admin: true }
    }

    /// Compile grants from their specification.
    pub fn compile(spec: &GrantsSpec) -> Result<Grants, GrantError> {
        let compile = |list: &[GrantSpec]| -> Result<Vec<Grant>, GrantError> {
            list.iter()
                .map(|g| {
                    let pattern = Pattern::parse(&g.pattern)
                        .map_err(|source| GrantError { pattern: g.pattern.clone(), source })?;
                    Ok(Grant { exchange: ExchangeMatch::parse(&g.exchange), pattern })
                })
                .collect()
        };
        Ok(Grants {
            subscribe: compile(&spec.subscribe)?,
            publish: compile(&spec.publish)?,
            serve: spec.serve.clone(),
            request: spec.request.clone(),
            admin: spec.admin,
        })
    }

    /// Whether a service name is in a list (`*` grants every service).
    pub fn service_allowed(list: &[String], service: &str) -> bool {
        list.iter().any(|s| s == "*" || s == service)
    }
}

fn hash() -> Pattern {
    // "#" always parses.
    Pattern::parse("#").unwrap_or_else(|_| unreachable!("`#` is a valid pattern"))
}

/// The identity and rights of a connected client.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    /// The user (`sub` claim), if authenticated.
    pub user: Option<String>,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
    /// What it may do (shared: tokens with the same grants hold one copy).
    pub grants: Arc<Grants>,
    /// Token expiry, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// The token's id (`jti` claim), for revocation.
    pub token_id: Option<String>,
    /// When the token was issued (`iat`), seconds since the Unix epoch.
    pub issued_at: Option<u64>,
}

impl Principal {
    /// May this client answer requests for `service`?
    pub fn may_serve(&self, service: &str) -> bool {
        Grants::service_allowed(&self.grants.serve, service)
    }

    /// May this client make requests of `service`?
    pub fn may_request(&self, service: &str) -> bool {
        Grants::service_allowed(&self.grants.request, service)
    }

    /// An anonymous principal with no grants.
    pub fn anonymous() -> Principal {
        Principal::default()
    }

    /// An anonymous principal with every grant (open mode).
    pub fn open() -> Principal {
        Principal { grants: Arc::new(Grants::all()), ..Principal::default() }
    }

    /// Whether a subscription binding overlaps some subscribe grant.
    pub fn may_bind(&self, exchange: &str, pattern: &Pattern) -> bool {
        self.grants.subscribe.iter().any(|g| g.overlaps(exchange, pattern))
    }

    /// Whether every binding lies wholly inside one grant, so that events
    /// matched by the bindings need no per-event grant check.
    pub fn contains_all(&self, bindings: &[(String, Pattern)]) -> bool {
        bindings.iter().all(|(x, p)| self.grants.subscribe.iter().any(|g| g.contains(x, p)))
    }

    /// Whether a subscribe grant covers the event.
    pub fn granted(&self, event: &Event) -> bool {
        event.routing_keys().any(|k| self.grants.subscribe.iter().any(|g| g.covers(&event.exchange, k)))
    }

    /// Whether the principal may publish to this exchange and routing key.
    pub fn may_publish(&self, exchange: &str, routing_key: &str) -> bool {
        self.grants.publish.iter().any(|g| g.covers(exchange, routing_key))
    }

    /// Whether the event's ACL admits this principal (no ACL admits everyone).
    pub fn admitted_by_acl(&self, event: &Event) -> bool {
        let Some(acl) = &event.acl else { return true };
        acl.iter().any(|entry| match entry.split_once(':') {
            Some(("user", name)) => self.user.as_deref() == Some(name),
            Some(("group", name)) => self.groups.iter().any(|g| g == name),
            _ => false,
        })
    }

    /// Grants and ACL both allow the event.
    pub fn may_see(&self, event: &Event) -> bool {
        self.granted(event) && self.admitted_by_acl(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NewEvent;
    use serde_json::value::RawValue;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).expect("pattern")
    }

    fn principal(subscribe: &[(&str, &str)]) -> Principal {
        let spec = GrantsSpec {
            subscribe: subscribe
                .iter()
                .map(|(x, p)| GrantSpec { exchange: x.to_string(), pattern: p.to_string() })
                .collect(),
            ..GrantsSpec::default()
        };
        Principal {
            user: Some("alice".into()),
            groups: vec!["ops".into()],
            grants: Arc::new(Grants::compile(&spec).expect("grants")),
            expires_at: None,
            token_id: None,
            issued_at: None,
        }
    }

    fn event(exchange: &str, rk: &str, acl: Option<Vec<&str>>) -> Event {
        Event::commit(
            1,
            1,
            NewEvent {
                exchange: exchange.into(),
                routing_key: rk.into(),
                payload: RawValue::from_string("1".into()).expect("raw"),
                acl: acl.map(|a| a.into_iter().map(String::from).collect()),
                headers: None,
                origin: None,
                idempotency_key: None,
            },
        )
    }

    #[test]
    fn grants_bound_bindings_and_events() {
        let a = principal(&[("exchanges/team/*", "eu.#"), ("audit", "#")]);
        assert!(a.may_bind("exchanges/team/orders", &p("#")), "overlaps eu.#");
        assert!(a.may_bind("exchanges/team/orders", &p("*.created")));
        assert!(!a.may_bind("exchanges/team/orders", &p("us.#")));
        assert!(!a.may_bind("exchanges/other", &p("#")));
        assert!(!a.contains_all(&[("exchanges/team/orders".into(), p("#"))]));
        assert!(a.contains_all(&[("audit".into(), p("a.b"))]));
        assert!(a.granted(&event("exchanges/team/orders", "eu.x", None)));
        assert!(!a.granted(&event("exchanges/team/orders", "us.x", None)));
    }

    #[test]
    fn acl_admits_named_users_and_groups() {
        let a = principal(&[("*", "#")]);
        assert!(a.may_see(&event("x", "k", None)));
        assert!(a.may_see(&event("x", "k", Some(vec!["user:alice"]))));
        assert!(a.may_see(&event("x", "k", Some(vec!["user:bob", "group:ops"]))));
        assert!(!a.may_see(&event("x", "k", Some(vec!["user:bob", "group:dev"]))));
        assert!(!Principal::open().may_see(&event("x", "k", Some(vec!["user:alice"]))));
        assert!(!Principal::anonymous().may_see(&event("x", "k", None)));
    }
}
