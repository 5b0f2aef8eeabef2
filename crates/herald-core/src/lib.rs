//! Herald's heart: events, AMQP topic patterns and the index over them,
//! subscription filters, per-connection outboxes, the fan-out that moves
//! committed events to subscribers, and sessions with the store trait
//! that keeps them.
//!
//! Data flows one way: the log hands committed batches to [`FanOut`], which
//! matches them against the [`PatternIndex`] and pushes pre-encoded frames
//! into each subscriber's [`Outbox`]. Nothing here does I/O.

pub mod event;
pub mod fanout;
pub mod filter;
pub mod idempotency;
pub mod index;
pub mod outbox;
pub mod pattern;
pub mod principal;
pub mod rendezvous;
pub mod replay;
pub mod session;

pub use event::{Event, EventError, NewEvent, Origin};
pub use fanout::{FanOut, FrameFormat, GoLive, Mode, Registration, Start, SubEntry, SubSpec};
pub use filter::{Filter, FilterError};
pub use idempotency::{Claim, IdempotencyWindow};
pub use index::PatternIndex;
pub use outbox::{Frame, Outbox, Overflow};
pub use pattern::{Pattern, PatternError};
pub use principal::{ExchangeMatch, Grant, GrantSpec, Grants, GrantsSpec, Principal};
pub use rendezvous::{AnswerError, Broker, BrokerLimits, Incoming, Pending, RendezvousError, Sink};
pub use replay::{ReadTurn, ReplayPermits, ReplayStats};
pub use session::{
    owner_key, Attachment, Budgets, CreateError, Lease, Leases, MemoryStore, NewSub, Restored, ResumeError, Session,
    SessionStore, SessionTable, StoreError, StoreOp, StoredSession, StoredSub, SubError,
};
