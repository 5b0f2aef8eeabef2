//! `pause` and `resume` of one subscription. The paused flag is stored
//! with the session before the answer, so a session resumed after a
//! restart stays paused.

use super::connection::Connection;
use super::subscribe::sub_error;
use crate::subscription::spawn_catch_up;
use herald_protocol::{ServerMessage, SubOnly};

impl Connection {
    pub(super) async fn pause(&self, m: SubOnly) {
        let Some(held) = &self.session else { return };
        if let Err(e) = held.session.pause(&held.att, &m.sub) {
            return self.refuse(m.reference, Some(m.sub), sub_error(e));
        }
        if let Err(e) = self.persist(&held.session).await {
            return self.refuse(m.reference, Some(m.sub), e);
        }
        self.send(&ServerMessage::Paused { reference: m.reference, sub: m.sub });
    }

    pub(super) async fn resume(&self, m: SubOnly) {
        let Some(held) = &self.session else { return };
        let restart = match held.session.resume(&held.att, &m.sub) {
            Ok(restart) => restart,
            Err(e) => return self.refuse(m.reference, Some(m.sub), sub_error(e)),
        };
        if let Err(e) = self.persist(&held.session).await {
            return self.refuse(m.reference, Some(m.sub), e);
        }
        // `resumed` before the first replayed event: both go through the outbox.
        self.send(&ServerMessage::Resumed { reference: m.reference, sub: m.sub });
        if let Some(entry) = restart {
            spawn_catch_up(self.state.clone(), entry);
        }
    }
}
