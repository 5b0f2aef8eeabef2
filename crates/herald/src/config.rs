//! Loading the configuration: defaults, then the file, then the command line.

use crate::cli::ServeArgs;
use anyhow::Context;
use herald_server::Config;

/// Build the configuration for `serve` and validate it.
pub(crate) fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<Config>(&text).with_context(|| format!("invalid configuration in {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(listen) = &args.listen {
        config.listen = listen.clone();
    }
    if let Some(data) = &args.data {
        config.data = data.clone();
    }
    if let Ok(secret) = std::env::var("HERALD_JWT_SECRET") {
        if !secret.is_empty() {
            config.auth.jwt_secret = Some(secret);
        }
    }
    if let Err(problems) = config.validate() {
        anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    }
    Ok(config)
}
