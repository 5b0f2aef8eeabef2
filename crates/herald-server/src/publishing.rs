//! Publishing: the checks every publish path shares (HTTP `POST
//! /v1/publish` and the WebSocket `publish`), so that the same event gets
//! the same answer whichever way it comes, and the append through the
//! idempotency window (shared with the connectors).

use crate::config::LimitsConfig;
use crate::error::ClientError;
use herald_core::event::now_us;
use herald_core::{Claim, EventError, IdempotencyWindow, NewEvent, Principal};
use herald_log::{EventLog, LogError, ReadQuery};
use herald_protocol::ErrorCode;

/// Check an event before it is appended: names, payload size and ACL
/// entries (`bad_request`, or `limit_exceeded` for the payload), then the
/// principal's publish grants (`forbidden`).
pub(crate) fn admit(principal: &Principal, event: &NewEvent, limits: &LimitsConfig) -> Result<(), ClientError> {
    if let Err(e) = event.validate(limits.max_payload_bytes) {
        let code = if matches!(e, EventError::PayloadTooLarge { .. }) {
            ErrorCode::LimitExceeded
        } else {
            ErrorCode::BadRequest
        };
        return Err(ClientError::new(code, e.to_string()));
    }
    if !principal.may_publish(&event.exchange, &event.routing_key) {
        let msg = format!("publishing to {} {} is outside your publish grants", event.exchange, event.routing_key);
        return Err(ClientError::new(ErrorCode::Forbidden, msg));
    }
    Ok(())
}

fn now_ms() -> u64 {
    now_us() / 1000
}

/// Append `events` in order and return their ids. An event whose
/// `idempotency_key` (with its exchange) was stored within the window is not
/// stored again: its id is the first one's. A repeat that arrives while the
/// first is being appended waits for it; repeats inside one batch share one
/// event.
pub(crate) async fn append(
    log: &dyn EventLog,
    window: &IdempotencyWindow,
    events: Vec<NewEvent>,
) -> Result<Vec<u64>, LogError> {
    let n = events.len();
    loop {
        let mut ids: Vec<Option<u64>> = vec![None; n];
        // Per event: append it, or take the id of an earlier one in this batch.
        let mut fresh = vec![false; n];
        let mut same_as: Vec<Option<usize>> = vec![None; n];
        let mut claimed: Vec<usize> = Vec::new();
        let mut busy = None;
        for (i, e) in events.iter().enumerate() {
            let Some(key) = &e.idempotency_key else {
                fresh[i] = true;
                continue;
            };
            let earlier = claimed.iter().copied().find(|&j| {
                events[j].exchange == e.exchange && events[j].idempotency_key.as_deref() == Some(key.as_str())
            });
            if let Some(j) = earlier {
                same_as[i] = Some(j);
                continue;
            }
            match window.claim(&e.exchange, key, now_ms()) {
                Claim::Fresh => {
                    fresh[i] = true;
                    claimed.push(i);
                }
                Claim::Stored(id) => ids[i] = Some(id),
                Claim::InFlight(rx) => {
                    busy = Some(rx);
                    break;
                }
            }
        }
        if let Some(mut rx) = busy {
            // Give our claims back before waiting, so that two batches
            // waiting on each other's keys cannot deadlock; then start over.
            for &j in &claimed {
                settle(window, &events[j], None);
            }
            let _ = rx.changed().await;
            continue;
        }
        let keys: Vec<(usize, String, String)> = claimed
            .iter()
            .filter_map(|&j| events[j].idempotency_key.clone().map(|k| (j, events[j].exchange.clone(), k)))
            .collect();
        let positions: Vec<usize> = (0..n).filter(|&i| fresh[i]).collect();
        let to_append: Vec<NewEvent> = events.into_iter().zip(&fresh).filter(|(_, f)| **f).map(|(e, _)| e).collect();
        let committed = if to_append.is_empty() { Ok(Vec::new()) } else { log.append(to_append).await };
        return match committed {
            Ok(committed) => {
                for (pos, e) in positions.iter().zip(&committed) {
                    ids[*pos] = Some(e.id);
                }
                for (j, exchange, key) in &keys {
                    window.settle(exchange, key, ids[*j], now_ms());
                }
                for i in 0..n {
                    if let Some(j) = same_as[i] {
                        ids[i] = ids[j];
                        window.duplicates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Ok(ids.into_iter().map(|id| id.unwrap_or(0)).collect())
            }
            Err(e) => {
                for (_, exchange, key) in &keys {
                    window.settle(exchange, key, None, now_ms());
                }
                Err(e)
            }
        };
    }
}

/// [`append`] in a task of its own, for callers that may be dropped
/// mid-way (an HTTP handler whose client hung up): the append and the
/// settling of its idempotency keys always finish, so a key is never left
/// in flight and a retry never waits forever.
pub(crate) async fn append_detached(
    log: std::sync::Arc<dyn EventLog>,
    window: std::sync::Arc<IdempotencyWindow>,
    events: Vec<NewEvent>,
) -> Result<Vec<u64>, LogError> {
    tokio::spawn(async move { append(&*log, &window, events).await }).await.map_err(|_| LogError::Closed)?
}

fn settle(window: &IdempotencyWindow, e: &NewEvent, id: Option<u64>) {
    if let Some(key) = &e.idempotency_key {
        window.settle(&e.exchange, key, id, now_ms());
    }
}

/// Fill the window with the keys of events stored within it (at start, so
/// that it survives a restart). Time the gateway was down does not age the
/// keys: the window is measured back from the newest event, and those keys
/// are as fresh as they were when it stopped, so a message RabbitMQ
/// redelivers after a long outage is still recognised. Returns how many
/// keys were found.
pub(crate) async fn rebuild_window(log: &dyn EventLog, window: &IdempotencyWindow) -> Result<usize, LogError> {
    let head = log.bounds().head;
    if head == 0 {
        return Ok(0);
    }
    let now = now_us();
    let newest = log
        .read(ReadQuery {
            exchanges: None,
            after: head - 1,
            upto: head,
            limit: 1,
            newest_first: false,
            max_bytes: usize::MAX,
        })
        .await?
        .first()
        .map_or(now, |e| e.time_us)
        .min(now);
    let shift_ms = (now - newest) / 1000;
    let since_us = newest.saturating_sub(window.window().as_micros() as u64);
    let mut after = log.first_at_or_after(since_us).await?.saturating_sub(1);
    let mut found = 0;
    while after < head {
        let (keys, last) = log.idempotency_keys(after, head, 65_536).await?;
        if last <= after {
            break;
        }
        after = last;
        for k in &keys {
            window.remember(&k.exchange, &k.key, k.id, k.time_us / 1000 + shift_ms);
            found += 1;
        }
    }
    Ok(found)
}
