//! `publish`: admitted by the same checks as HTTP publish, appended in
//! order by one task per connection (as many per log commit as are
//! waiting), answered `published {id}` once durable.

use super::connection::Connection;
use crate::state::AppState;
use herald_core::event::Origin;
use herald_core::{Frame, NewEvent, Outbox};
use herald_protocol::{encode, ErrorCode, Publish, Ref, ServerMessage};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Publishes waiting for the log, per connection, before reading pauses.
const PUBLISH_QUEUE: usize = 256;

/// An event to append and the `ref` its answer echoes.
pub(super) type Publication = (NewEvent, Option<Ref>);

impl Connection {
    pub(super) async fn publish(&mut self, m: Publish) {
        let s = self.state.get();
        let mut event = NewEvent {
            exchange: m.exchange,
            routing_key: m.routing_key,
            payload: m.payload,
            acl: m.acl,
            headers: m.headers,
            origin: None,
            idempotency_key: m.idempotency_key,
        };
        if let Err(e) = crate::publishing::admit(&self.principal, &event, &s.config.limits) {
            return self.refuse(m.reference, None, e);
        }
        self.publish_seq += 1;
        event.origin = Some(Origin { peer: "ws".into(), stream: self.conn_id, seq: self.publish_seq });
        let tx = self.publisher.get_or_insert_with(|| spawn_publisher(self.state.clone(), self.outbox.clone())).clone();
        // Waiting here when the queue is full stops reading from this client:
        // backpressure, not buffering.
        let _ = tx.send((event, m.reference)).await;
    }
}

/// A per-connection task that appends this connection's publishes in order,
/// as many per log commit as are waiting.
fn spawn_publisher(state: AppState, outbox: Arc<Outbox>) -> mpsc::Sender<Publication> {
    let (tx, mut rx) = mpsc::channel::<Publication>(PUBLISH_QUEUE);
    tokio::spawn(async move {
        let mut batch: Vec<Publication> = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < PUBLISH_QUEUE {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let (events, refs): (Vec<NewEvent>, Vec<Option<Ref>>) = batch.drain(..).unzip();
            let s = state.get();
            match crate::publishing::append(&*s.log, &s.idempotency, events).await {
                Ok(ids) => {
                    s.metrics
                        .published
                        .get_or_create(&crate::metrics::Transport { transport: "ws" })
                        .inc_by(ids.len() as u64);
                    // One lock and one writer wake-up for the whole batch.
                    let answers = ids
                        .into_iter()
                        .zip(refs)
                        .map(|(id, reference)| Frame::Text(encode(&ServerMessage::Published { reference, id }).into()));
                    let _ = outbox.push_many(answers);
                }
                Err(err) => {
                    for reference in refs {
                        let msg = ServerMessage::Error {
                            reference,
                            sub: None,
                            code: ErrorCode::Unavailable,
                            message: format!("the log could not store the event: {err}"),
                        };
                        let _ = outbox.push(Frame::Text(encode(&msg).into()));
                    }
                }
            }
        }
    });
    tx
}
