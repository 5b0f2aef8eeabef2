//! Herald's Rust client, on tokio and herald-protocol's message types.
//!
//! It adds what every application would otherwise write itself:
//! reconnects with backoff, session resume, and delivery of every event
//! **once and in order** across reconnects (a subscription remembers the
//! last id it handed out, drops what a resume repeats, and subscribes again
//! after it when the session is gone). The same guarantees as the
//! JavaScript and Python clients (`clients/js`, `clients/python`).
//!
//! # Subscribe and publish
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let config = herald_server::Config { listen: "127.0.0.1:0".into(), data: dir.path().into(), ..Default::default() };
//! # let server = herald_server::Server::start(config).await?;
//! # let base = format!("http://{}", server.local_addr().expect("bound"));
//! # tokio::spawn(server.run(std::future::pending()));
//! # let url = base.as_str();
//! use herald_client::{Client, ClientConfig, NewEvent, SubscribeOptions};
//! use serde_json::json;
//!
//! let client = Client::connect(ClientConfig::new(url)).await?;      // url: "http://127.0.0.1:7070"
//! let mut orders = client
//!     .subscribe(SubscribeOptions::new("orders", "eu.#").filter(json!(["payload/total", ">", 100])))
//!     .await?;
//! let id = client.publish(NewEvent::new("orders", "eu.created", &json!({"total": 120}))?).await?;
//! client.publish(NewEvent::new("orders", "eu.created", &json!({"total": 5}))?).await?; // filtered out
//!
//! let event = orders.next().await.expect("an event")?;
//! assert_eq!(event.id, id);
//! assert_eq!(event.routing_key, "eu.created");
//! let payload: serde_json::Value = serde_json::from_str(event.payload.get())?;
//! assert_eq!(payload["total"], 120);
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Replay, manual acks, pause
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let config = herald_server::Config { listen: "127.0.0.1:0".into(), data: dir.path().into(), ..Default::default() };
//! # let server = herald_server::Server::start(config).await?;
//! # let base = format!("http://{}", server.local_addr().expect("bound"));
//! # tokio::spawn(server.run(std::future::pending()));
//! # let url = base.as_str();
//! use herald_client::{Client, ClientConfig, NewEvent, SubscribeOptions};
//!
//! let client = Client::connect(ClientConfig::new(url).with_auto_ack(false)).await?;
//! for n in 0..3 {
//!     client.publish(NewEvent::new("audit", "login", &n)?).await?;
//! }
//! // The last two stored events first, then live ones.
//! let mut audit = client.subscribe(SubscribeOptions::new("audit", "#").last(2)).await?;
//! let first = audit.next().await.expect("an event")?;
//! assert_eq!(first.id, 2);
//! audit.ack(first.id); // a resume restarts after the highest acknowledged id
//! audit.pause().await?; // nothing delivered until resume; nothing lost either
//! audit.resume().await?;
//! assert_eq!(audit.next().await.expect("an event")?.id, 3);
//! # Ok(())
//! # }
//! ```
//!
//! # Rendezvous
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let config = herald_server::Config { listen: "127.0.0.1:0".into(), data: dir.path().into(), ..Default::default() };
//! # let server = herald_server::Server::start(config).await?;
//! # let base = format!("http://{}", server.local_addr().expect("bound"));
//! # tokio::spawn(server.run(std::future::pending()));
//! # let url = base.as_str();
//! use herald_client::{Client, ClientConfig};
//! use serde_json::value::to_raw_value;
//!
//! let responder_side = Client::connect(ClientConfig::new(url)).await?;
//! let mut responder = responder_side.serve("echo", 4).await?;
//! tokio::spawn(async move {
//!     while let Some(request) = responder.next().await {
//!         let body = request.body.clone();
//!         let _ = request.answer(body).await;
//!     }
//! });
//! let client = Client::connect(ClientConfig::new(url)).await?;
//! let answer = client.request("echo", to_raw_value(&"hello")?, None).await?;
//! assert_eq!(answer.get(), r#""hello""#);
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! - Backoff: a random delay up to `initial_delay · 2^attempt`, capped at
//!   `max_delay`, reset at each `welcome`; each attempt tries the next URL.
//! - Close codes 4400, 4401, 4403, 4409, 1002, 1007 and 1009 end the client
//!   ([`Error::Refused`]); with a token function, a 4401 on an accepted
//!   connection (the token expired) gets one more try with a fresh token.
//! - While disconnected, `subscribe`, `pause`, `resume` and `unsubscribe`
//!   are recorded and applied at the next connection; `publish`,
//!   `request` and `ping` wait for it (at most 1,000). A call whose
//!   connection is lost after it was sent fails with
//!   [`Error::Disconnected`]: publish with an idempotency key to retry safely.
//! - A subscription buffers `max_buffered` events; when the application
//!   does not keep up the client stops reading and the gateway serves it
//!   from the log at that pace. Read every subscription of a client.
//! - Upstream `status` and `closing` messages are logged with `tracing`.

mod config;
mod connection;
mod error;
mod handle;
pub mod wire;

pub use config::{websocket_url, ClientConfig, Token, TokenFn};
pub use error::Error;
pub use handle::{Client, ClientStats, IncomingRequest, NewEvent, Responder, SubscribeOptions, Subscription};
/// An event as delivered: `sub`, `id`, `exchange`, `routing_key`, `time`,
/// `payload` (JSON text; parse with `serde_json::from_str(event.payload.get())`), `headers`.
pub use herald_protocol::ServerEvent as Event;
pub use herald_protocol::{Binding, ErrorCode, Since};
