//! Token revocation before expiry: by token id (`jti`) or by user.
//!
//! An operator revokes with `POST /v1/admin/revoke` (admin token). A
//! revoked token is refused at every authentication (`unauthorized`), and
//! live connections authenticated with it are closed with 4401. Revocations
//! are kept in `<data>/revocations.json` (mode 0600, rewritten atomically)
//! until the tokens they name would have expired, so a restart or crash
//! does not bring a revoked token back.
//!
//! - By `jti`: that token, until its `exp` (given in the request, else
//!   `auth.revocation_ttl` from now).
//! - By `user`: every token of the user issued (`iat`) at or before the
//!   revocation, and every token without `iat`, for `auth.revocation_ttl`
//!   (issue tokens that live shorter than that). Tokens issued later work.

use herald_core::Principal;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Revocation {
    /// The token id, when revoking one token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) jti: Option<String>,
    /// The user, when revoking all of a user's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
    /// Unix seconds when it was revoked.
    pub(crate) revoked_at: u64,
    /// Unix seconds after which it is forgotten (the tokens have expired).
    pub(crate) until: u64,
}

impl Revocation {
    /// Whether it refuses `p`'s token.
    pub(crate) fn refuses(&self, p: &Principal) -> bool {
        let by_id = self.jti.is_some() && self.jti == p.token_id;
        let by_user =
            self.user.is_some() && self.user == p.user && p.issued_at.is_none_or(|iat| iat <= self.revoked_at);
        by_id || by_user
    }
}

/// The revocations in force, with their file.
#[derive(Debug)]
pub(crate) struct Revocations {
    path: PathBuf,
    list: Mutex<Vec<Revocation>>,
    /// Held by the one writer at a time (across its fsync).
    writing: Mutex<()>,
}

fn now_s() -> u64 {
    herald_core::event::now_us() / 1_000_000
}

impl Revocations {
    /// Load `<dir>/revocations.json` (absent: none), dropping lapsed ones.
    pub(crate) fn open(dir: &std::path::Path) -> Result<Revocations, String> {
        let path = dir.join("revocations.json");
        let list: Vec<Revocation> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let now = now_s();
        let list = list.into_iter().filter(|r| r.until > now).collect();
        Ok(Revocations { path, list: Mutex::new(list), writing: Mutex::new(()) })
    }

    /// Whether `p`'s token is revoked.
    pub(crate) fn refuses(&self, p: &Principal) -> bool {
        if p.token_id.is_none() && p.user.is_none() {
            return false;
        }
        let now = now_s();
        self.list.lock().iter().any(|r| r.until > now && r.refuses(p))
    }

    /// Add a revocation and write the file (durable before this returns).
    /// Writers take turns on their own lock; the list that every
    /// authentication reads is only locked to copy it and to swap in the
    /// new one, never across the fsync.
    pub(crate) fn add(&self, r: Revocation) -> std::io::Result<()> {
        let _writer = self.writing.lock();
        let now = now_s();
        let mut next: Vec<Revocation> = self.list.lock().iter().filter(|old| old.until > now).cloned().collect();
        next.push(r);
        let path = &self.path;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the directory is synced.
        std::fs::File::open(&dir)?.sync_all()?;
        *self.list.lock() = next;
        Ok(())
    }

    /// Revocations in force now.
    pub(crate) fn len(&self) -> usize {
        let now = now_s();
        self.list.lock().iter().filter(|r| r.until > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(user: &str, jti: Option<&str>, iat: Option<u64>) -> Principal {
        Principal {
            user: Some(user.into()),
            token_id: jti.map(str::to_string),
            issued_at: iat,
            ..Principal::anonymous()
        }
    }

    #[test]
    fn by_id_and_by_user_and_they_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Revocations::open(dir.path()).expect("open");
        let now = now_s();
        r.add(Revocation { jti: Some("t1".into()), user: None, revoked_at: now, until: now + 60 }).expect("add");
        r.add(Revocation { jti: None, user: Some("bob".into()), revoked_at: now, until: now + 60 }).expect("add");
        r.add(Revocation { jti: Some("old".into()), user: None, revoked_at: now - 100, until: now - 1 }).expect("add");
        assert!(r.refuses(&principal("alice", Some("t1"), None)));
        assert!(!r.refuses(&principal("alice", Some("t2"), None)));
        assert!(r.refuses(&principal("bob", None, Some(now - 5))), "issued before");
        assert!(r.refuses(&principal("bob", None, None)), "no iat: refused while the revocation lasts");
        assert!(!r.refuses(&principal("bob", None, Some(now + 5))), "issued after");
        assert!(!r.refuses(&principal("carol", Some("old"), None)), "lapsed");
        let again = Revocations::open(dir.path()).expect("reopen");
        assert_eq!(again.len(), 2);
        assert!(again.refuses(&principal("alice", Some("t1"), None)));
    }
}
