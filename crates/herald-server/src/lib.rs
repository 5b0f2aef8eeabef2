//! Herald's network front: the axum application with the WebSocket protocol
//! (`/v1/ws`), HTTP publish, health endpoints, and the tasks that connect the
//! log to the fan-out.
//!
//! [`Server::start`] opens the log, starts the background tasks and binds the
//! listener; [`app`] builds the router so tests can drive it directly.

mod admission;
mod app;
mod auth;
mod client_addr;
mod cluster;
pub mod config;
mod connections;
mod dispatch;
mod error;
mod http;
#[cfg(test)]
mod in_process_tests;
mod metrics;
mod peers;
mod publishing;
mod rendezvous;
mod replays;
mod revocation;
mod state;
mod streams;
mod subscription;
mod writers;
mod ws;

pub use app::{app, Server, ServerError};
pub use config::Config;
pub use state::AppState;
/// The WebSocket writer's frame encoder, public for its criterion bench
/// (`cargo bench -p herald-server`); nothing else outside the crate uses it.
#[doc(hidden)]
pub use ws::wire::Encoder;
