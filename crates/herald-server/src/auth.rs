//! Authentication: bearer tokens (JWT) to [`Principal`]s.
//!
//! HS256 with a shared secret, or RS256/ES256 with a public key file.
//! `exp` is required and, like `nbf`, checked with the configured leeway.
//! Claims: `sub` (the user), `groups`, and `herald` (the grants).

use crate::config::AuthConfig;
use herald_core::{Grants, GrantsSpec, Principal};
use herald_protocol::ErrorCode;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
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
                Some(Arc::new(Principal { grants, ..Principal::anonymous() }))
            }
            (None, false) => Some(Arc::new(Principal::open())),
            (None, true) => None,
        };
        Ok(Authenticator { key, anonymous, revoked })
    }

    /// Whether anyone may do anything without a token.
    pub(crate) fn is_open(&self) -> bool {
        self.key.is_none() && self.anonymous.as_ref().is_some_and(|p| p.grants == Grants::all())
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
        let grants = Grants::compile(&c.herald).map_err(|e| unauthorized(format!("invalid grants in token: {e}")))?;
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
