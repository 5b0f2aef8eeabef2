//! `herald token`: mint a token from the configured secret.

use crate::cli::TokenArgs;
use anyhow::{bail, Context};
use herald_core::{GrantSpec, GrantsSpec};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    groups: &'a [String],
    herald: &'a GrantsSpec,
}

/// Every grant: what `--all` and `serve --dev` hand out.
pub(crate) fn all_grants() -> GrantsSpec {
    let all = vec![GrantSpec { exchange: "*".into(), pattern: "#".into() }];
    GrantsSpec { subscribe: all.clone(), publish: all, serve: vec!["*".into()], request: vec!["*".into()], admin: true }
}

fn parse_bindings(list: &[String]) -> anyhow::Result<Vec<GrantSpec>> {
    list.iter()
        .map(|b| match b.split_once('=') {
            Some((x, p)) => Ok(GrantSpec { exchange: x.to_string(), pattern: p.to_string() }),
            None => bail!("grant `{b}` must be EXCHANGE=PATTERN (EXCHANGE may end in *)"),
        })
        .collect()
}

/// Sign an HS256 token.
pub(crate) fn mint(
    secret: &str,
    sub: &str,
    groups: &[String],
    grants: &GrantsSpec,
    ttl_s: u64,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("clock before 1970")?.as_secs();
    let claims = Claims { sub, iat: now, exp: now + ttl_s, groups, herald: grants };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?)
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match (&args.secret, &args.config) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => {
            // The configuration as `serve` would see it (file and environment).
            let config = herald_server::Config::load(Some(path), std::env::vars(), &Default::default())?;
            match config.auth.jwt_secret {
                Some(s) => s,
                None => bail!(
                    "{} has no [auth] jwt_secret (tokens for RS256/ES256 are minted by your identity provider)",
                    path.display()
                ),
            }
        }
        (None, None) => bail!("no secret: set HERALD_JWT_SECRET, or pass --secret or --config"),
    };
    let grants = if args.all {
        all_grants()
    } else {
        GrantsSpec {
            subscribe: parse_bindings(&args.subscribe)?,
            publish: parse_bindings(&args.publish)?,
            serve: args.serve.clone(),
            request: args.request.clone(),
            admin: args.admin,
        }
    };
    herald_core::Grants::compile(&grants)?;
    let ttl = humantime::parse_duration(&args.ttl).with_context(|| format!("invalid --ttl `{}`", args.ttl))?;
    println!("{}", mint(&secret, &args.sub, &args.group, &grants, ttl.as_secs())?);
    Ok(())
}
