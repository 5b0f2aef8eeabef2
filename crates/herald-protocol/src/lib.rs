//! Herald wire protocol v1.
//!
//! A pure codec: message types, their JSON encoding and decoding, and the
//! stable error and close codes. No I/O and no async here, so that the same
//! crate serves the server, the CLI, the benchmark and the fuzz targets.
//!
//! `docs/protocol.md` in the repository is the normative specification; the
//! names here follow it exactly.

mod client;
mod codes;
mod decode;
mod server;

pub use client::{
    encode_client, Ack, Answer, Binding, ClientMessage, Hello, Ping, Publish, Ref, Request, Serve, SessionCredentials,
    Since, SubOnly, Subscribe, Unserve,
};
pub use codes::{CloseCode, ErrorCode};
pub use decode::{decode_client, DecodeError, MAX_NUMBER};
pub use server::{
    decode_server, encode, event_frame_prefix, EventBody, Limits, ServerEvent, ServerFrame, ServerInfo, ServerMessage,
    SessionInfo, StatusState,
};
