//! `ack`: the client has every event of a subscription up to an id. Kept
//! in memory at once; written to the session store coalesced (at most every
//! `session.ack_flush`, and when the connection detaches).

use super::connection::Connection;
use herald_core::SubError;
use herald_protocol::{Ack, ErrorCode};

impl Connection {
    pub(super) fn ack(&self, m: Ack) {
        let Some(held) = &self.session else { return };
        match held.session.ack(&held.att, &m.sub, m.id) {
            Ok(()) | Err(SubError::NotAttached) => {}
            Err(_) => self.error(None, Some(m.sub), ErrorCode::NotFound, "ack for an unknown subscription"),
        }
    }
}
