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
        let persisted = self.persist(&held.session).await;
        match &persisted {
            // `resumed` before the first replayed event: both go through the outbox.
            Ok(()) => self.send(&ServerMessage::Resumed { reference: m.reference.clone(), sub: m.sub.clone() }),
            Err(e) => self.refuse(m.reference.clone(), Some(m.sub.clone()), e.clone()),
        }
        // The fan-out already resumed it: without its catch-up task it would
        // never deliver again, so start it whether or not the store took the
        // change (a failed write only means a crash may bring the pause back).
        if let Some(entry) = restart {
            spawn_catch_up(self.state.clone(), entry);
        }
    }
}
