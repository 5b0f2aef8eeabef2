//! `subscribe` and `unsubscribe`.
//!
//! A new subscription is checked (id, bindings, filters, grants, limits),
//! takes the dynamic upstream bindings it needs, is stored in the session
//! (durably) at a lower bound of its starting point, and only then goes into
//! the fan-out and is announced with `subscribed`. Every step after an await
//! presents the connection's [`Attachment`](herald_core::Attachment): if
//! another connection took the session over meanwhile, the step is refused
//! and nothing is left registered against this (closed) connection.

use super::connection::Connection;
use crate::error::ClientError;
use crate::subscription::{compile_spec, open};
use herald_core::fanout::Registration;
use herald_core::{FrameFormat, NewSub, SubError, SubSpec};
use herald_protocol::{ErrorCode, ServerMessage, StatusState, SubOnly, Subscribe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::debug;

/// Longest subscription id, in bytes.
const MAX_SUB_ID_BYTES: usize = 128;

/// The budget a refusal names, for `herald_budget_refusals_total`.
pub(super) fn budget_of(e: &SubError) -> Option<&'static str> {
    match e {
        SubError::OwnerSubscriptions(_) => Some("subscriptions_per_user"),
        SubError::OwnerBindings(_) => Some("bindings_per_user"),
        SubError::NodeBytes(_) => Some("subscription_bytes_per_node"),
        _ => None,
    }
}

/// The client's error for a refused session change.
pub(super) fn sub_error(e: SubError) -> ClientError {
    let code = match e {
        SubError::NotAttached => ErrorCode::Conflict,
        SubError::NotFound => ErrorCode::NotFound,
        SubError::Exists => ErrorCode::Conflict,
        SubError::TooMany(_) | SubError::OwnerSubscriptions(_) | SubError::OwnerBindings(_) => ErrorCode::LimitExceeded,
        // The node, not the client, is at capacity.
        SubError::NodeBytes(_) => ErrorCode::Unavailable,
    };
    ClientError::new(code, e.to_string())
}

impl Connection {
    fn validate_subscribe(&self, m: &Subscribe) -> Result<SubSpec, ClientError> {
        if m.sub.is_empty() || m.sub.len() > MAX_SUB_ID_BYTES {
            return Err(ClientError::new(
                ErrorCode::BadRequest,
                format!("`sub` must be 1 to {MAX_SUB_ID_BYTES} bytes"),
            ));
        }
        compile_spec(&self.state.get().config.limits, &self.principal, &m.bindings, &m.filters)
    }

    pub(super) async fn subscribe(&self, m: Subscribe) {
        let s = self.state.get();
        let Some(held) = &self.session else { return };
        let (session, att) = (held.session.clone(), &held.att);
        let spec = match self.validate_subscribe(&m) {
            Ok(spec) => Arc::new(spec),
            Err(e) => return self.refuse(m.reference, Some(m.sub), e),
        };
        let max = s.config.limits.max_subscriptions;
        if let Err(e) = session.check_new_sub(att, &m.sub, spec.bindings.len(), max) {
            if let Some(limit) = budget_of(&e) {
                s.metrics.limit_refusals.get_or_create(&crate::metrics::LimitLabel { limit }).inc();
            }
            return self.refuse(m.reference, Some(m.sub), sub_error(e));
        }
        // Exchanges a peer binds on demand: history starts now for those.
        let leases = match crate::peers::lease(&s.peers, &m.bindings) {
            Ok(leases) => leases,
            Err(msg) => return self.error(m.reference, Some(m.sub), ErrorCode::LimitExceeded, msg),
        };
        let history = (!leases.is_empty()).then_some(std::borrow::Cow::Borrowed("from_now"));
        let reg = Registration {
            sub: Arc::from(m.sub.as_str()),
            spec: spec.clone(),
            principal: self.principal.clone(),
            outbox: self.outbox.clone(),
            format: FrameFormat::WebSocket,
            replay: self.replay.clone(),
        };
        let record = NewSub { spec, filters: m.filters, acked: 0, leases };
        let inserted = AtomicBool::new(false);
        let this = self;
        let persist = |cursor: u64| {
            let session = session.clone();
            let (sub, inserted) = (m.sub.as_str(), &inserted);
            async move {
                session.insert_sub(att, sub, NewSub { acked: cursor, ..record }, max).map_err(sub_error)?;
                inserted.store(true, Ordering::Relaxed);
                this.persist(&session).await
            }
        };
        let (reference, sub) = (m.reference.clone(), m.sub.clone());
        let opened = open(&self.state, reg, m.since, persist, |a| {
            self.send(&ServerMessage::Subscribed {
                reference,
                sub: sub.clone(),
                head: a.head,
                recovered: a.recovered,
                history,
            });
            if let Some(msg) = a.truncated {
                self.error(None, Some(sub), ErrorCode::HistoryTruncated, msg);
            }
        })
        .await;
        match opened {
            Ok((entry, cursor)) => {
                let exchanges = entry.spec.exchanges();
                if let Err(e) = session.set_entry(att, &m.sub, entry, cursor) {
                    // Taken over while we awaited: the new holder serves it.
                    debug!(conn = self.conn_id, sub = %m.sub, error = %e, "Subscription not registered here.");
                    return;
                }
                // Tell the client at once about any source feeding it that is down.
                for (id, rt) in s.peers.iter() {
                    let (up, detail) = rt.health.lock().clone();
                    if !up && rt.exchanges.iter().any(|x| exchanges.contains(x)) {
                        self.send(&ServerMessage::Status {
                            source: id.clone(),
                            state: StatusState::Down,
                            detail,
                            node: s.host.node.clone(),
                        });
                    }
                }
            }
            Err(e) => {
                if inserted.load(Ordering::Relaxed) && session.remove_sub(att, &m.sub).is_ok() {
                    let _ = self.persist(&session).await;
                }
                self.refuse(m.reference, Some(m.sub), e);
            }
        }
    }

    pub(super) async fn unsubscribe(&self, m: SubOnly) {
        let Some(held) = &self.session else { return };
        let session = held.session.clone();
        // The leases go with the record: the last one unbinds upstream.
        if let Err(e) = session.remove_sub(&held.att, &m.sub) {
            return self.refuse(m.reference, Some(m.sub), sub_error(e));
        }
        if let Err(e) = self.persist(&session).await {
            return self.refuse(m.reference, Some(m.sub), e);
        }
        self.send(&ServerMessage::Unsubscribed { reference: m.reference, sub: m.sub });
    }
}
