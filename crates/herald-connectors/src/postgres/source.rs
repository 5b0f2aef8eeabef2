//! The connector itself.

use super::config::PostgresConfig;
use crate::peer::PeerStats;
use crate::{BoxFuture, Connector, Control, Host};
use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use herald_core::event::Origin;
use herald_core::NewEvent;
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row};

/// A PostgreSQL source peer.
pub struct PostgresSource {
    peer: String,
    config: PostgresConfig,
    stats: Arc<PeerStats>,
    session: Option<(Client, mpsc::Receiver<()>)>,
    /// The last row id stored, once read back from the log.
    last_id: Option<i64>,
}

impl PostgresSource {
    /// A source for peer `peer`.
    pub fn new(peer: String, config: PostgresConfig, stats: Arc<PeerStats>) -> PostgresSource {
        PostgresSource { peer, config, stats, session: None, last_id: None }
    }

    async fn open(&self) -> anyhow::Result<(Client, mpsc::Receiver<()>)> {
        let (client, mut connection) = tokio_postgres::connect(&self.config.url, NoTls).await.context("connecting")?;
        // The connection object carries notifications; forward them as wake-ups.
        // The channel closes when the connection ends, which ends `run`.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let channel = self.config.channel.replace('"', "\"\"");
        client.batch_execute(&format!("LISTEN \"{channel}\"")).await.context("LISTEN")?;
        PeerStats::add(&self.stats.send, 1);
        Ok((client, rx))
    }

    fn event(&self, row: &Row) -> anyhow::Result<(i64, NewEvent)> {
        let id: i64 = row.try_get("id").context("the query must return a bigint `id` column")?;
        let payload = match row.try_get::<_, Value>("payload") {
            Ok(v) => v,
            Err(_) => {
                let text: String = row.try_get("payload").context("the query must return a `payload` column")?;
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
        };
        let routing_key: Option<String> = row.try_get("routing_key").ok().flatten();
        let mut acl = Vec::new();
        if let Ok(Some(user)) = row.try_get::<_, Option<String>>("acl_user") {
            acl.push(format!("user:{user}"));
        }
        if let Ok(Some(group)) = row.try_get::<_, Option<String>>("acl_group") {
            acl.push(format!("group:{group}"));
        }
        let event = NewEvent {
            exchange: self.config.exchange.clone(),
            routing_key: routing_key.unwrap_or_default(),
            payload: RawValue::from_string(payload.to_string())?,
            acl: (!acl.is_empty()).then_some(acl),
            headers: None,
            origin: Some(Origin { peer: self.peer.clone(), stream: 0, seq: id as u64 }),
            // A row is stored once even when two nodes briefly both read it
            // (a cluster leader that lost its lease with a batch in hand):
            // the log drops the repeat (JetStream's `Nats-Msg-Id`).
            idempotency_key: Some(row_key(&self.peer, id)),
        };
        Ok((id, event))
    }

    /// Read and store every row after the last id.
    async fn catch_up(&mut self, client: &Client, host: &dyn Host) -> anyhow::Result<()> {
        let stmt = client.prepare(&self.config.query).await.context("preparing the query")?;
        loop {
            let last = self.last_id.unwrap_or(0);
            let rows =
                client.query(&stmt, &[&last, &i64::from(self.config.batch)]).await.context("running the query")?;
            PeerStats::add(&self.stats.recv, rows.len() as u64);
            PeerStats::add(&self.stats.r#in, rows.len() as u64);
            let mut events = Vec::with_capacity(rows.len());
            let mut max = last;
            for row in &rows {
                let (id, event) = self.event(row)?;
                if id <= max {
                    return Err(anyhow!(
                        "the query returned id {id} after {max}: it must return ids above $1 in order"
                    ));
                }
                max = id;
                events.push(event);
            }
            if !events.is_empty() {
                let n = events.len() as u64;
                host.append(events).await.context("the log did not store the rows")?;
                PeerStats::add(&self.stats.out, n);
                self.last_id = Some(max);
            }
            if rows.len() < self.config.batch as usize {
                return Ok(());
            }
        }
    }
}

/// The idempotency key of row `id` of peer `peer`: `pg:<peer>:<id>`, the
/// peer hashed when the key would be longer than 128 bytes.
fn row_key(peer: &str, id: i64) -> String {
    let key = format!("pg:{peer}:{id}");
    if key.len() <= 128 {
        key
    } else {
        format!("pg:sha256:{}:{id}", &herald_core::session::hash_secret(peer)[..32])
    }
}

impl Connector for PostgresSource {
    fn connect(&mut self, _attempt: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.session = None;
            self.session = Some(self.open().await?);
            Ok(())
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        // Dropping the client ends the connection (and its LISTEN).
        Box::pin(async move {
            self.session = None;
        })
    }

    fn run<'a>(
        &'a mut self,
        host: &'a dyn Host,
        mut control: tokio::sync::watch::Receiver<Control>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let Some((client, mut wake)) = self.session.take() else { return Err(anyhow!("not connected")) };
            if self.last_id.is_none() {
                // Where we stopped: the newest row this peer stored, read from the log.
                let seq = host.last_origin_seq(&self.peer, std::slice::from_ref(&self.config.exchange)).await?;
                self.last_id = Some(seq.map_or(0, |s| s as i64));
            }
            let poll = Duration::from_secs(self.config.poll_interval_s);
            loop {
                // Paused: read nothing; the table keeps the rows.
                if !crate::runnable(&mut control).await {
                    return Ok(());
                }
                // LISTEN is in place before this read, so no row can slip between.
                self.catch_up(&client, host).await?;
                tokio::select! {
                    r = control.changed() => if r.is_err() { return Ok(()) },
                    w = wake.recv() => if w.is_none() { return Err(anyhow!("the PostgreSQL connection was lost")) },
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::row_key;

    #[test]
    fn row_keys_are_per_peer_and_short() {
        assert_eq!(row_key("pg", 7), "pg:pg:7");
        assert_ne!(row_key("a", 7), row_key("b", 7));
        let long = "p".repeat(200);
        assert!(row_key(&long, i64::MAX).len() <= 128);
        assert_ne!(row_key(&long, 1), row_key(&"q".repeat(200), 1));
    }
}
