//! End-to-end tests: a real `herald` process, real sockets.
#![allow(missing_docs, unreachable_pub)]

#[path = "../support/amqp.rs"]
mod amqp_support;
mod common;

mod amqp;
mod auth;
mod cli;
mod durability;
mod limits;
mod ops;
mod protocol;
mod proxies;
mod publish;
mod rendezvous;
mod replay;
mod sessions;
mod slow;
mod sse;
mod subscribe;
