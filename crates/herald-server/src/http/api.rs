//! The bodies the HTTP endpoints answer with. The handlers build these
//! types, and the OpenAPI document (`GET /v1/openapi.json`) is generated
//! from the same types, so the two cannot disagree.

use herald_protocol::ErrorCode;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Every error answer: `{"error": {"code": ..., "message": ...}}`; the
/// status follows the code (docs/protocol.md, "Error codes").
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// The error.
    pub(crate) error: ErrorDetail,
}

/// The code and a message for people.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// The documented code (`bad_request`, `unauthorized`, ...).
    pub(crate) code: ErrorCode,
    /// What went wrong, for people; not a contract.
    pub(crate) message: String,
}

/// The body of `POST /v1/publish`: one event, or an array of them (all or
/// nothing). The handler reads the text itself, to say which event of an
/// array is wrong.
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub(crate) enum PublishBody {
    /// One event.
    One(herald_core::NewEvent),
    /// Several, stored in this order with ascending ids.
    Many(Vec<herald_core::NewEvent>),
}

/// The answer to `POST /v1/publish`, once every event is durable.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Published {
    /// One event was published (the body was an object).
    One {
        /// Its id.
        id: u64,
    },
    /// An array was published.
    Many {
        /// Their ids, in the order of the array.
        ids: Vec<u64>,
    },
}

/// One page of `GET /v1/history`. The handler writes this shape itself
/// from each event's pre-encoded JSON (no decode and re-encode per event);
/// the OpenAPI conformance test holds it to this type.
#[allow(dead_code)]
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryPage {
    /// Matching events the caller may see, oldest first.
    pub(crate) events: Vec<herald_protocol::EventBody<'static>>,
    /// Pass back as `after` for the next page; `null` once the page reached the head.
    pub(crate) next_after: Option<u64>,
    /// The newest id in the log when the page was read.
    pub(crate) head: u64,
    /// Whether events after `after` were already removed by retention.
    pub(crate) truncated: bool,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Liveness {
    /// Always `ok`.
    pub(crate) status: &'static str,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// `ready`; `degraded` (200: a peer is down or the disk is full);
    /// `draining` or `failed` (503).
    pub(crate) status: &'static str,
    /// The newest id in the log.
    pub(crate) log_head: u64,
    /// Whether the log takes writes.
    pub(crate) log: LogHealth,
    /// Each peer's health (absent when `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peers: Option<BTreeMap<String, PeerHealth>>,
}

/// The log's part of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogHealth {
    /// Whether publishes are stored.
    pub(crate) writable: bool,
    /// Set when the disk is full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) full: Option<bool>,
    /// Why it is not writable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

/// A peer's part of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PeerHealth {
    /// The connector (`amqp`, `postgres`, `sqs`).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// Whether it is connected upstream.
    pub(crate) up: bool,
    /// Its last state change, for people.
    pub(crate) detail: String,
}

/// One peer in `GET /v1/peers`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PeerStatus {
    /// The connector (`amqp`, `postgres`, `sqs`).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// Whether it is connected upstream.
    pub(crate) up: bool,
    /// Its last state change, for people.
    pub(crate) detail: String,
    /// `running`, `paused` or `draining`.
    pub(crate) control: &'static str,
    /// `running`; in a cluster, `leader` or `standby` for sources that run on one node at a time.
    pub(crate) role: String,
    /// Messages received from upstream.
    #[serde(rename = "in")]
    pub(crate) received: u64,
    /// Events appended to the log.
    pub(crate) out: u64,
    /// Messages rejected.
    pub(crate) err: u64,
    /// Upstream protocol operations sent.
    pub(crate) send: u64,
    /// Upstream protocol operations received.
    pub(crate) recv: u64,
    /// Bindings made on demand for subscribers.
    pub(crate) dynamic_bindings: usize,
}

/// The answer to pausing or resuming a peer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PeerControl {
    /// The peer.
    pub(crate) peer: String,
    /// `paused` or `running`.
    pub(crate) control: &'static str,
}

/// A request handed to an HTTP responder by `POST /v1/rendezvous/{service}/poll`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Incoming {
    /// The request id, to answer with `POST /v1/rendezvous/answer/{request}`.
    pub(crate) request: String,
    /// The service asked.
    pub(crate) service: String,
    /// The request body (any JSON value; a string for non-JSON bodies).
    #[schema(value_type = Value)]
    pub(crate) body: Box<serde_json::value::RawValue>,
    /// Milliseconds left to answer.
    pub(crate) deadline_ms: u64,
}

/// The answer to `POST /v1/rendezvous/answer/{request}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Delivered {
    /// The request answered.
    pub(crate) request: String,
    /// Always `true`: the answer reached the requester's node.
    pub(crate) delivered: bool,
}

/// The answer to `POST /v1/admin/revoke`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Revoked {
    /// What is revoked, and until when.
    pub(crate) revoked: crate::revocation::Revocation,
    /// Live connections closed (4401) because of it.
    pub(crate) closed: usize,
}
