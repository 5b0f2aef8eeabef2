//! The PostgreSQL source, after arvados-ws: LISTEN on a channel for
//! wake-ups, and read rows by id with a configured catch-up query, so that a
//! lost connection, a restart of Herald or PostgreSQL, or a NOTIFY payload
//! over PostgreSQL's size limit loses nothing: Herald always reads every row
//! after the last id it stored, and never emits a row twice.

mod config;
mod source;

pub use config::PostgresConfig;
pub use source::PostgresSource;
