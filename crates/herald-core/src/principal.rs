//! [`Principal`]: who a client is and what it may see.
//!
//! Until authentication is configured every client is anonymous with grants
//! that cover everything; an event with an `acl` is still shown only to the
//! principals it names.

use crate::event::Event;

/// The identity and rights of a connected client.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    /// The user (`sub` claim), if authenticated.
    pub user: Option<String>,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
}

impl Principal {
    /// An anonymous principal.
    pub fn anonymous() -> Principal {
        Principal::default()
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
}
