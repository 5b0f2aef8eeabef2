//! Rendezvous on a WebSocket: `request` (as a requester), `serve`,
//! `unserve` and `answer` (as a responder). The broker in herald-core does
//! the matching; this file turns its results into messages.

use super::connection::Connection;
use herald_core::Frame;
use herald_protocol::{encode, Answer, ErrorCode, Request, Serve, ServerMessage, Unserve};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::debug;

impl Connection {
    /// `request`: hand it to the broker; a task sends the `response` (or
    /// the error) when it comes.
    pub(super) fn request(&mut self, m: Request) {
        let s = self.state.get();
        if let Err(e) = crate::rendezvous::check_request(&self.principal, &m.service, m.body.get(), s) {
            return self.refuse(m.reference, None, e);
        }
        while self.requests.try_join_next().is_some() {}
        let most = s.config.rendezvous.max_requests_per_connection;
        if self.requests.len() >= most {
            return self.error(
                m.reference,
                None,
                ErrorCode::LimitExceeded,
                format!("{most} requests already wait for answers on this connection (rendezvous.max_requests_per_connection)"),
            );
        }
        let timeout = m.timeout_ms.map(std::time::Duration::from_millis);
        let pending = s.broker.request(&m.service, m.body, timeout);
        debug!(conn = self.conn_id, service = %m.service, request = %pending.id, "Rendezvous request.");
        let outbox = self.outbox.clone();
        let reference = m.reference;
        self.requests.spawn(async move {
            let reply = match pending.answer().await {
                Ok(body) => ServerMessage::Response { reference, body },
                Err(e) => ServerMessage::Error { reference, sub: None, code: e.code(), message: e.to_string() },
            };
            let _ = outbox.push(Frame::Text(encode(&reply).into()));
        });
    }

    /// `serve`: register this connection as a responder of the service.
    pub(super) fn serve(&mut self, m: Serve) {
        let s = self.state.get();
        if let Err(e) = crate::rendezvous::check_service(&m.service) {
            return self.refuse(m.reference, None, e);
        }
        if !self.principal.may_serve(&m.service) {
            let msg = format!("your token does not grant serving `{}`", m.service);
            return self.error(m.reference, None, ErrorCode::Forbidden, msg);
        }
        let most = s.config.rendezvous.max_concurrency;
        let concurrency = m.concurrency.unwrap_or(1);
        if concurrency == 0 || concurrency > most {
            let msg = format!("`concurrency` must be 1 to {most} (rendezvous.max_concurrency)");
            return self.error(m.reference, None, ErrorCode::BadRequest, msg);
        }
        if self.serving.contains_key(&m.service) {
            let msg = format!("this connection already serves `{}`", m.service);
            return self.error(m.reference, None, ErrorCode::Conflict, msg);
        }
        // `serving` goes out before the first `incoming`: both pass through the outbox.
        self.send(&ServerMessage::Serving { reference: m.reference, service: m.service.clone() });
        let outbox = self.outbox.clone();
        let deliver: herald_core::rendezvous::Deliver = Arc::new(move |incoming: herald_core::Incoming| {
            let msg = ServerMessage::Incoming {
                request: incoming.request.clone(),
                service: incoming.service.to_string(),
                body: incoming.body.clone(),
                deadline_ms: incoming.deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
            };
            match outbox.push(Frame::Text(encode(&msg).into())) {
                Ok(()) => Ok(()),
                Err(_) => Err(incoming),
            }
        });
        let id = s.broker.serve(&m.service, concurrency, herald_core::Sink::Stream(deliver));
        debug!(conn = self.conn_id, service = %m.service, concurrency, "Serving.");
        self.serving.insert(m.service, id);
    }

    /// `unserve`: no new requests; those already here may still be answered.
    pub(super) fn unserve(&mut self, m: Unserve) {
        match self.serving.remove(&m.service) {
            Some(id) => {
                self.state.get().broker.unserve(id);
                self.send(&ServerMessage::Unserved { reference: m.reference, service: m.service });
            }
            None => {
                let msg = format!("this connection does not serve `{}`", m.service);
                self.error(m.reference, None, ErrorCode::NotFound, msg);
            }
        }
    }

    /// `answer`: route the body back to the requester.
    pub(super) fn answer(&mut self, m: Answer) {
        let s = self.state.get();
        let max = s.config.rendezvous.max_body_bytes;
        if m.body.get().len() > max {
            let msg = format!("answer body of {} bytes exceeds rendezvous.max_body_bytes ({max})", m.body.get().len());
            return self.error(m.reference, None, ErrorCode::LimitExceeded, msg);
        }
        let principal = self.principal.clone();
        // In a cluster, a request taken by another node is answered there.
        let elsewhere = s.cluster.as_ref().and_then(|c| {
            c.rendezvous.holder_elsewhere(&m.request).map(|node| (c.rendezvous.clone(), node.to_string()))
        });
        if let Some((rdv, node)) = elsewhere {
            let outbox = self.outbox.clone();
            self.requests.spawn(async move {
                let reply = match rdv.answer_elsewhere(&node, &m.request, m.body, |svc| principal.may_serve(svc)).await
                {
                    Ok(()) => ServerMessage::Answered { reference: m.reference, request: m.request },
                    Err(e) => ServerMessage::Error {
                        reference: m.reference,
                        sub: None,
                        code: e.code(),
                        message: e.to_string(),
                    },
                };
                let _ = outbox.push(Frame::Text(encode(&reply).into()));
            });
            return;
        }
        match s.broker.answer(&m.request, m.body, |service| principal.may_serve(service)) {
            Ok(()) => self.send(&ServerMessage::Answered { reference: m.reference, request: m.request }),
            Err(e) => self.error(m.reference, None, e.code(), e.to_string()),
        }
    }

    /// The connection ended: its responders are gone (their requests fail
    /// at once) and its requests are abandoned.
    pub(super) fn finish_rendezvous(&mut self) {
        let broker = &self.state.get().broker;
        for (_, id) in self.serving.drain() {
            broker.responder_gone(id);
        }
        self.requests.abort_all();
    }
}
