//! Command-line interface.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Herald: a real-time event gateway.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Publish one event (or one per stdin line) over WebSocket; prints each id.
    Publish(PublishArgs),
    /// Subscribe and print events as JSON lines.
    Tail(TailArgs),
    /// Measure a gateway: fan-out, publish, replay and memory per idle connection.
    Bench(herald_bench::BenchArgs),
    /// Mint a token (HS256) from the configured secret, with the grants given.
    Token(TokenArgs),
    /// Send a rendezvous request and print the answer (over WebSocket, HTTP or SQS).
    Rendezvous(RendezvousArgs),
    /// Check the configuration, or print a complete default one.
    #[command(subcommand)]
    Config(ConfigAction),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigAction {
    /// Validate the configuration (defaults < file < HERALD_<SECTION>__<KEY>
    /// variables < command line) and print the effective one, secrets masked.
    Check(ConfigCheckArgs),
    /// Print every setting with its description and default, as a TOML file.
    Default,
    /// Print the configuration's JSON Schema (for editors and linters).
    Schema,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigCheckArgs {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', env = "HERALD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// As `serve --listen`.
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// As `serve --data`.
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct RendezvousArgs {
    #[command(subcommand)]
    pub(crate) action: Option<RendezvousAction>,
    /// The service to ask.
    #[arg(long)]
    pub(crate) service: Option<String>,
    /// The request body (default: standard input).
    #[arg(long)]
    pub(crate) body: Option<String>,
    /// The body is JSON (default: it is sent as a string).
    #[arg(long)]
    pub(crate) json: bool,
    /// Gateway URL: ws(s)://HOST[/v1/ws] for WebSocket, http(s)://HOST for HTTP.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:7070")]
    pub(crate) url: String,
    /// Bearer token (WebSocket and HTTP).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// How long to wait for the answer (each attempt, over SQS).
    #[arg(long, default_value = "30s")]
    pub(crate) timeout: String,
    /// Rendezvous over SQS instead: the broker queue's URL.
    #[arg(long, requires = "sqs_creds")]
    pub(crate) sqs_queue: Option<String>,
    /// Base64 of {"aws-access-key-id": ..., "aws-secret-key": ...} (see `encode-creds`).
    #[arg(long, env = "HERALD_SQS_CREDS", hide_env_values = true)]
    pub(crate) sqs_creds: Option<String>,
    /// Reply queues are `<prefix>-client-<ClientID>` (default: the broker queue's name).
    #[arg(long)]
    pub(crate) sqs_reply_prefix: Option<String>,
    /// Region when the queue URL does not name one.
    #[arg(long, default_value = "us-east-1")]
    pub(crate) sqs_region: String,
    /// Attempts over SQS, each with a fresh ClientID.
    #[arg(long, default_value_t = 3)]
    pub(crate) sqs_attempts: u32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RendezvousAction {
    /// Print the encoded credentials `--sqs-creds` takes.
    EncodeCreds {
        /// AWS access key id.
        #[arg(long)]
        access_key_id: String,
        /// AWS secret access key.
        #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
        secret_key: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The user (`sub` claim).
    #[arg(long)]
    pub(crate) sub: String,
    /// A group the user belongs to; repeat for several.
    #[arg(long)]
    pub(crate) group: Vec<String>,
    /// Subscribe grant EXCHANGE=PATTERN (EXCHANGE may end in `*`); repeat for several.
    #[arg(long)]
    pub(crate) subscribe: Vec<String>,
    /// Publish grant EXCHANGE=PATTERN; repeat for several.
    #[arg(long)]
    pub(crate) publish: Vec<String>,
    /// Rendezvous service the user may serve; repeat for several.
    #[arg(long)]
    pub(crate) serve: Vec<String>,
    /// Rendezvous service the user may request; repeat for several.
    #[arg(long)]
    pub(crate) request: Vec<String>,
    /// May operate the gateway (pause and resume peers).
    #[arg(long)]
    pub(crate) admin: bool,
    /// Grant everything.
    #[arg(long)]
    pub(crate) all: bool,
    /// Lifetime, e.g. 15m, 12h, 30d.
    #[arg(long, default_value = "1h")]
    pub(crate) ttl: String,
    /// Read `[auth] jwt_secret` from this configuration file.
    #[arg(long, short = 'c', env = "HERALD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The secret itself.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (TOML). Settings not in it take their defaults.
    #[arg(long, short = 'c', env = "HERALD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`), e.g. 0.0.0.0:7070; port 0 picks a free port.
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// Data directory (overrides `data`).
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Development mode: verbose logs and ready-to-use URLs printed at start.
    #[arg(long)]
    pub(crate) dev: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "HERALD_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "HERALD_URL")]
    pub(crate) url: String,
    /// Exchange name.
    pub(crate) exchange: String,
    /// Routing key.
    pub(crate) routing_key: String,
    /// JSON payload; omit to read one payload per line from standard input.
    pub(crate) payload: Option<String>,
    /// ACL entry (`user:NAME` or `group:NAME`); repeat for several.
    #[arg(long)]
    pub(crate) acl: Vec<String>,
    /// Bearer token.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Gateway base URL (http:// or ws://).
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "HERALD_URL")]
    pub(crate) url: String,
    /// Binding as EXCHANGE=PATTERN (for example `orders=eu.#`); repeat for several.
    #[arg(long = "bind", short = 'b', required = true)]
    pub(crate) bindings: Vec<String>,
    /// Start after this event id (replays everything newer).
    #[arg(long, conflicts_with_all = ["last", "since_time"])]
    pub(crate) since: Option<u64>,
    /// Start with the N most recent matching events.
    #[arg(long, conflicts_with = "since_time")]
    pub(crate) last: Option<u64>,
    /// Start at this RFC 3339 time.
    #[arg(long)]
    pub(crate) since_time: Option<String>,
    /// Filter as JSON, e.g. '["payload/status","=","done"]'; repeat for several.
    #[arg(long)]
    pub(crate) filter: Vec<String>,
    /// Exit after printing this many events.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Bearer token.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

pub(crate) async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => crate::serve::run(a).await,
        Command::Publish(a) => crate::publish::run(a).await,
        Command::Tail(a) => crate::tail::run(a).await,
        Command::Bench(a) => herald_bench::run(a).await,
        Command::Token(a) => crate::token::run(a),
        Command::Rendezvous(a) => crate::rendezvous::run(a).await,
        Command::Config(a) => crate::config::run(a),
    }
}
