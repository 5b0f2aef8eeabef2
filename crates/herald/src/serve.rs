//! `herald serve`.

use crate::cli::{LogFormat, ServeArgs};
use herald_server::Server;
use tracing_subscriber::EnvFilter;

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let default_level = if args.dev { "info,herald_server=debug" } else { "info" };
    let filter = EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // Many idle WebSocket connections need many descriptors.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "Could not raise the open-file limit.");
    }
    let mut config = crate::config::load(&args)?;
    // --dev: a token for the inspector and the CLI, from the configured
    // secret or one made up for this run (anonymous access stays as configured).
    let dev_token = if args.dev {
        if config.auth.jwt_secret.is_none() && config.auth.jwt_public_key_file.is_none() {
            config.auth.jwt_secret = Some(dev_secret());
            if config.auth.anonymous.is_none() {
                config.auth.anonymous = Some(crate::token::all_grants());
            }
        }
        match &config.auth.jwt_secret {
            Some(secret) => Some(crate::token::mint(secret, "dev", &[], &crate::token::all_grants(), 24 * 3600)?),
            None => None,
        }
    } else {
        None
    };
    let server = Server::start(config).await?;
    let addr = server.local_addr().ok_or_else(|| anyhow::anyhow!("no local address"))?;
    // The first stdout line is machine-readable: tests and `herald bench` wait for it.
    let scheme = if server.is_tls() { "https" } else { "http" };
    println!("herald listening on {scheme}://{addr}");
    if args.dev {
        if let Some(token) = &dev_token {
            println!("  Token (user `dev`, every grant, 24h):\n    {token}");
        }
        match &dev_token {
            // The token rides in the fragment: browsers never send it to the server or in a Referer.
            Some(token) => println!("  Inspector:  {scheme}://{addr}/inspector/#token={token}"),
            None => println!("  Inspector:  {scheme}://{addr}/inspector/"),
        }
        println!("  WebSocket:  ws://{addr}/v1/ws");
        println!("  Publish:    curl -d '{{\"exchange\":\"demo\",\"routing_key\":\"a.b\",\"payload\":{{}}}}' http://{addr}/v1/publish");
        println!("  Tail:       herald tail --url http://{addr} --bind 'demo=#'");
    }
    server.run(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A random secret for a `--dev` run.
fn dev_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    // Two independently seeded SipHash states give 128 unpredictable bits
    // without another dependency; good enough for a throwaway dev secret.
    (0..4)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}
