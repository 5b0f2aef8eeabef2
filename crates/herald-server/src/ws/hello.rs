//! `hello`: authenticate, then start a session or resume one (taking it
//! over from any other connection that still holds it).

use super::connection::{Connection, Held};
use crate::subscription::{spawn_catch_up, truncated_message};
use herald_core::fanout::Registration;
use herald_core::{FrameFormat, ResumeError, Session, Start};
use herald_protocol::{encode, CloseCode, ErrorCode, Hello, Ref, ServerMessage, SessionInfo};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{debug, info, warn};

impl Connection {
    pub(super) async fn hello(&mut self, h: Hello) -> ControlFlow<()> {
        let s = self.state.get();
        match s.auth.authenticate(h.token.as_deref()) {
            Ok(p) => {
                if let Some(user) = &p.user {
                    if self.slot.claim_user(user).is_err() {
                        let msg = "too many connections for this user (limits.max_connections_per_user)";
                        return self.fatal(h.reference, ErrorCode::LimitExceeded, msg, CloseCode::Limits);
                    }
                }
                // Closed by the sweeper once expired (with the same leeway as at hello).
                let leeway = s.config.auth.leeway.as_secs();
                self.handle.expires_at.store(p.expires_at.map_or(0, |e| e + leeway), Ordering::Relaxed);
                *self.handle.principal.lock() = Some(p.clone());
                // A revocation between the check above and the line before
                // did not see this connection: check once more.
                if s.auth.revoked.refuses(&p) {
                    let msg = "the token has been revoked";
                    return self.fatal(h.reference, ErrorCode::Unauthorized, msg, CloseCode::Unauthorized);
                }
                self.principal = p;
                self.owner = herald_core::owner_key(self.principal.user.as_deref(), Some(self.peer.ip()));
                self.replay = s.replays.permits(&self.owner);
            }
            Err(e) => {
                s.metrics.auth_failures.inc();
                return self.fatal(h.reference, e.code, &e.message, CloseCode::Unauthorized);
            }
        }
        // From the welcome on, messages may share frames.
        self.batch.store(h.batch, Ordering::Relaxed);
        let user = self.principal.user.clone();
        if let Some(creds) = h.session {
            let mut found = s.sessions.find(&creds.id, &creds.secret, user.as_deref());
            if matches!(found, Err(ResumeError::NotFound)) && s.config.cluster.is_some() {
                // Held by another node, or by one that died: load it from the
                // shared store, and take it over from there.
                // Once more after a short pause if the store does not
                // answer: a client whose node just died comes here, when
                // NATS may be busy electing and a resume lost to one slow
                // read would make the client start afresh.
                let mut looked_up = s.store.get(&creds.id).await;
                if let Err(e) = &looked_up {
                    warn!(conn = self.conn_id, error = %e, "Could not look the session up in the cluster; trying again.");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    looked_up = s.store.get(&creds.id).await;
                }
                match looked_up {
                    Ok(Some(stored)) => {
                        let restored = s.sessions.restore(vec![stored], |b| crate::peers::lease(&s.peers, b));
                        if restored.sessions == 1 {
                            debug!(conn = self.conn_id, "Session loaded from the cluster for a resume.");
                        } else {
                            info!(
                                conn = self.conn_id,
                                expired = restored.expired.len(),
                                "A session found in the cluster could not be restored."
                            );
                        }
                        found = s.sessions.find(&creds.id, &creds.secret, user.as_deref());
                    }
                    Ok(None) => info!(conn = self.conn_id, "A session to resume is not in the cluster's store."),
                    Err(e) => warn!(conn = self.conn_id, error = %e, "Could not look the session up in the cluster."),
                }
            }
            match found {
                Ok(session) => return self.resume_session(h.reference, session, creds.secret).await,
                Err(ResumeError::Mismatch) => {
                    warn!(conn = self.conn_id, session = %creds.id.chars().take(64).collect::<String>(), "Refused a session resume with wrong credentials.");
                    return self.fatal(
                        h.reference,
                        ErrorCode::Unauthorized,
                        "session credentials do not match",
                        CloseCode::Unauthorized,
                    );
                }
                Err(ResumeError::NotFound) => {
                    // Expired or unknown: start afresh; `resumed: false` tells the
                    // client to subscribe again from its own last ids.
                    debug!(conn = self.conn_id, "Resume of an unknown or expired session; starting a new one.");
                }
            }
        }
        self.start_session(h.reference)
    }

    /// A new session for this connection.
    fn start_session(&mut self, reference: Option<Ref>) -> ControlFlow<()> {
        let s = self.state.get();
        let user = self.principal.user.clone();
        // A session without subscriptions is not stored until it has one:
        // losing it in a crash loses nothing, and a storm of `hello`s costs
        // no disk writes.
        let (session, att, secret) = match s.sessions.create(user, self.owner.clone(), self.outbox.clone()) {
            Ok(created) => created,
            Err(e) => {
                s.metrics
                    .limit_refusals
                    .get_or_create(&crate::metrics::LimitLabel { limit: "sessions_per_user" })
                    .inc();
                return self.fatal(reference, ErrorCode::LimitExceeded, &e.to_string(), CloseCode::Limits);
            }
        };
        debug!(conn = self.conn_id, session = %session.id(), "Session started.");
        self.welcome(reference, &session, &secret, false);
        self.stream_started(&session, false);
        self.session = Some(Held { session, att });
        ControlFlow::Continue(())
    }

    fn welcome(&self, reference: Option<Ref>, session: &Session, secret: &str, resumed: bool) {
        let s = self.state.get();
        self.send(&ServerMessage::Welcome {
            reference,
            session: SessionInfo { id: session.id().to_string(), secret: secret.to_string() },
            resumed,
            heartbeat_ms: s.config.heartbeat.as_millis() as u64,
            limits: s.limits(),
            server: crate::state::SERVER_INFO,
            batch: self.batch.load(Ordering::Relaxed),
        });
    }

    fn stream_started(&self, session: &Session, resumed: bool) {
        let detail = serde_json::json!({
            "session": session.id(),
            "resumed": resumed,
            "user": self.principal.user,
            "remote": self.peer.ip().to_string(),
        });
        crate::streams::publish(&self.state, "ws", "start", self.conn_id, detail);
    }

    /// Take the session over, drop what the new grants no longer allow,
    /// take missing leases again, store the attachment, then register every
    /// subscription from its acknowledged id.
    async fn resume_session(
        &mut self,
        reference: Option<Ref>,
        session: Arc<Session>,
        secret: String,
    ) -> ControlFlow<()> {
        let s = self.state.get();
        let closing = encode(&ServerMessage::Closing {
            reason: "session resumed on another connection".into(),
            retry_after_ms: 0,
        });
        let Some(att) = session.attach(self.outbox.clone(), closing.into()) else {
            // Ended or expired since it was found: start afresh, as for an unknown session.
            info!(conn = self.conn_id, session = %session.id(), "The session ended while it was being resumed; starting a new one.");
            return self.start_session(reference);
        };
        // The client may come back with other grants: a subscription they no
        // longer allow is dropped, and the client told.
        let principal = self.principal.clone();
        let mut removed: Vec<(String, ErrorCode, String)> = session
            .retain_subs(&att, |spec| spec.bindings.iter().all(|(x, p)| principal.may_bind(x, p)))
            .unwrap_or_default()
            .into_iter()
            .map(|sub| {
                (sub, ErrorCode::Forbidden, "your grants no longer allow this subscription; it was removed".to_string())
            })
            .collect();
        let peers = &s.peers;
        removed.extend(
            session
                .retake_leases(&att, |bindings| crate::peers::lease(peers, bindings))
                .unwrap_or_default()
                .into_iter()
                .map(|(sub, why)| {
                    let msg = format!("its upstream binding could not be taken again ({why}); it was removed");
                    (sub, ErrorCode::LimitExceeded, msg)
                }),
        );
        if let Err(e) = self.persist(&session).await {
            // Still resumable in memory; after a crash it may expire early.
            debug!(conn = self.conn_id, error = %e, "Resumed without storing the attachment.");
        }
        if !session.holds(&att) {
            // Taken over again while the store wrote: the newer connection has it.
            return ControlFlow::Break(());
        }
        self.welcome(reference, &session, &secret, true);
        for (sub, code, why) in removed {
            self.error(None, Some(sub), code, why);
        }
        let first = s.log.bounds().first;
        let registered = session.register_all(&att, |sub, spec, acked, paused| {
            let reg = Registration {
                sub: Arc::from(sub),
                spec: spec.clone(),
                principal: self.principal.clone(),
                outbox: self.outbox.clone(),
                format: FrameFormat::WebSocket,
                replay: self.replay.clone(),
            };
            let start = if paused { Start::Paused(acked) } else { Start::CatchUp(acked) };
            let recovered = acked.saturating_add(1) >= first;
            let (entry, _) = s.fanout.register(reg, start, |head| {
                self.send(&ServerMessage::Subscribed {
                    reference: None,
                    sub: sub.to_string(),
                    head,
                    recovered,
                    history: None,
                });
                if !recovered {
                    self.error(
                        None,
                        Some(sub.to_string()),
                        ErrorCode::HistoryTruncated,
                        truncated_message(acked, first),
                    );
                }
            });
            entry
        });
        let Ok(catch_up) = registered else {
            return ControlFlow::Break(());
        };
        info!(conn = self.conn_id, session = %session.id(), subscriptions = catch_up.len(), "Session resumed.");
        self.stream_started(&session, true);
        self.session = Some(Held { session, att });
        for entry in catch_up {
            spawn_catch_up(self.state.clone(), entry);
        }
        ControlFlow::Continue(())
    }
}
