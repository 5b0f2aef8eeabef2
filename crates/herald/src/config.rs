//! Loading the configuration (`serve`) and `herald config`.

use crate::cli::{ConfigAction, ServeArgs};
use herald_server::config::Overrides;
use herald_server::Config;
use std::path::Path;

/// Build the configuration for `serve` and validate it.
pub(crate) fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    load_from(args.config.as_deref(), Overrides { listen: args.listen.clone(), data: args.data.clone() })
}

fn load_from(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Config> {
    Ok(Config::load(file, std::env::vars(), &overrides)?)
}

/// `herald config check|default|schema`.
pub(crate) fn run(action: ConfigAction) -> anyhow::Result<()> {
    match action {
        ConfigAction::Check(a) => {
            let config = load_from(a.config.as_deref(), Overrides { listen: a.listen, data: a.data })?;
            print!("{}", herald_server::config::effective_toml(&config));
            eprintln!("herald: the configuration is valid");
        }
        ConfigAction::Default => print!("{}", herald_server::config::default_toml()),
        ConfigAction::Schema => println!("{:#}", herald_server::config::config_schema()),
    }
    Ok(())
}
