//! Authentication: bearer tokens (JWT) to [`Principal`]s.
//!
//! HS256 with a shared secret, or RS256/ES256 with a public key file.
//! `exp` is required and, like `nbf`, checked with the configured leeway.
//! Claims: `sub` (the user), `groups`, and `herald` (the grants).

use crate::config::AuthConfig;
use herald_core::{Grants, GrantsSpec, Principal};
use herald_protocol::ErrorCode;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The claims Herald reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    herald: GrantsSpec,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
}

/// Why a client was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct AuthError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

fn unauthorized(message: impl Into<String>) -> AuthError {
    AuthError { code: ErrorCode::Unauthorized, message: message.into() }
}

/// Turns tokens into principals.
pub(crate) struct Authenticator {
    key: Option<(DecodingKey, Validation)>,
    anonymous: Option<Arc<Principal>>,
    /// Tokens revoked before their expiry.
    pub(crate) revoked: Arc<crate::revocation::Revocations>,
    /// Grants compiled, by their specification (see [`Authenticator::grants`]).
    compiled: Mutex<HashMap<GrantsSpec, Arc<Grants>>>,
}

impl Authenticator {
    /// Build from the configuration. Fails on an unreadable or invalid key.
    pub(crate) fn new(
        config: &AuthConfig,
        revoked: Arc<crate::revocation::Revocations>,
    ) -> Result<Authenticator, String> {
        let key = if let Some(secret) = &config.jwt_secret {
            Some((DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256))
        } else if let Some(path) = &config.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let (key, alg) = match config.jwt_algorithm.as_deref() {
                Some("ES256") => (DecodingKey::from_ec_pem(&pem), Algorithm::ES256),
                _ => (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256),
            };
            Some((key.map_err(|e| format!("invalid public key in {}: {e}", path.display()))?, alg))
        } else {
            None
        };
        let key = key.map(|(key, alg)| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway.as_secs();
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp", "sub"]);
            (key, v)
        });
        let anonymous = match (&config.anonymous, key.is_some()) {
            (Some(spec), _) => {
                let grants = Grants::compile(spec).map_err(|e| format!("auth.anonymous: {e}"))?;
                Some(Arc::new(Principal { grants: Arc::new(grants), ..Principal::anonymous() }))
            }
            (None, false) => Some(Arc::new(Principal::open())),
            (None, true) => None,
        };
        Ok(Authenticator { key, anonymous, revoked, compiled: Mutex::new(HashMap::new()) })
    }

    /// Whether anyone may do anything without a token.
    pub(crate) fn is_open(&self) -> bool {
        self.key.is_none() && self.anonymous.as_ref().is_some_and(|p| *p.grants == Grants::all())
    }

    /// Authenticate a client from its token, if any.
    pub(crate) fn authenticate(&self, token: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return self.anonymous.clone().ok_or_else(|| unauthorized("a token is required"));
        };
        let Some((key, validation)) = &self.key else {
            return Err(unauthorized("this server verifies no tokens (no [auth] key configured)"));
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => unauthorized("the token has expired"),
                ErrorKind::ImmatureSignature => unauthorized("the token is not valid yet (nbf)"),
                ErrorKind::InvalidSignature => unauthorized("the token signature is invalid"),
                ErrorKind::InvalidAlgorithm => unauthorized("the token uses an algorithm this server does not accept"),
                ErrorKind::MissingRequiredClaim(c) => unauthorized(format!("the token lacks the `{c}` claim")),
                _ => unauthorized(format!("invalid token: {e}")),
            }
        })?;
        let c = data.claims;
        let grants = self.grants(c.herald)?;
        let principal = Principal {
            user: Some(c.sub),
            groups: c.groups,
            grants,
            expires_at: Some(c.exp),
            token_id: c.jti,
            issued_at: c.iat,
        };
        if self.revoked.refuses(&principal) {
            return Err(unauthorized("the token has been revoked"));
        }
        Ok(Arc::new(principal))
    }
}

impl Authenticator {
    /// The compiled form of a token's grants, shared by every token with
    /// the same grants (a role's users): one copy in memory, not one per
    /// connection.
    fn grants(&self, spec: GrantsSpec) -> Result<Arc<Grants>, AuthError> {
        if let Some(g) = self.compiled.lock().get(&spec) {
            return Ok(g.clone());
        }
        let grants =
            Arc::new(Grants::compile(&spec).map_err(|e| unauthorized(format!("invalid grants in token: {e}")))?);
        let mut compiled = self.compiled.lock();
        // Bounded: tokens minted with grants of their own (one per user)
        // would otherwise grow it without end.
        if compiled.len() >= MAX_COMPILED_GRANTS {
            compiled.clear();
        }
        compiled.insert(spec, grants.clone());
        Ok(grants)
    }
}

/// How many distinct grant sets [`Authenticator`] keeps compiled.
const MAX_COMPILED_GRANTS: usize = 4096;

/// The bearer token of an HTTP request: the `Authorization: Bearer` header,
/// else (for EventSource, which cannot set headers) the `token` query parameter.
pub(crate) fn bearer(headers: &axum::http::HeaderMap, query_token: Option<&str>) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string())
        .or_else(|| query_token.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(secret: &str, sub: &str, pattern: &str) -> String {
        let claims = serde_json::json!({
            "sub": sub,
            "exp": 4_000_000_000u64,
            "herald": {"subscribe": [{"exchange": "x", "pattern": pattern}]},
        });
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token")
    }

    #[test]
    fn tokens_with_the_same_grants_share_one_compiled_copy() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = "0123456789abcdef0123456789abcdef";
        let config = AuthConfig { jwt_secret: Some(secret.into()), ..AuthConfig::default() };
        let revoked = Arc::new(crate::revocation::Revocations::open(dir.path()).expect("revocations"));
        let auth = Authenticator::new(&config, revoked).expect("authenticator");
        let a = auth.authenticate(Some(&token(secret, "ann", "a.#"))).expect("ann");
        let b = auth.authenticate(Some(&token(secret, "bob", "a.#"))).expect("bob");
        let c = auth.authenticate(Some(&token(secret, "cat", "c.*"))).expect("cat");
        assert!(Arc::ptr_eq(&a.grants, &b.grants), "same grants, one copy");
        assert!(!Arc::ptr_eq(&a.grants, &c.grants));
        assert_eq!(c.grants.subscribe[0].pattern.as_str(), "c.*");
        assert_eq!(a.user.as_deref(), Some("ann"));
        assert_eq!(b.user.as_deref(), Some("bob"));
        let bad = token(secret, "dan", "a.#.#.#".repeat(100).as_str());
        assert!(auth.authenticate(Some(&bad)).is_err(), "a grant that does not compile is refused, not cached");
    }
}
