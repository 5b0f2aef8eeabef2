//! Rendezvous over Amazon SQS, after Snowflake's broker: requesters send to
//! a broker queue with a `ClientID` message attribute; Herald hands each
//! request to a responder through the rendezvous broker and sends the
//! answer to the reply queue `<reply_prefix>-client-<ClientID>`, which it
//! creates. Unlike Snowflake's broker it checks every SQS call, deletes a
//! request only once its answer was sent (or it was definitively
//! rejected), and removes reply queues nobody touched for a while.

mod client;
mod config;
mod rendezvous;

pub use client::{client, endpoint_and_region, reply_queue_name, valid_client_id, Credentials, STATUS_ATTRIBUTE};
pub use config::SqsConfig;
pub use rendezvous::SqsRendezvous;
