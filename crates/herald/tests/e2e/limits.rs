//! Connection limits and command rate, answered with their documented codes.

use crate::common::*;
use futures_util::SinkExt;
use serde_json::json;

async fn upgrade_status(g: &Gateway) -> Result<(), (u16, Option<String>)> {
    match tokio_tungstenite::connect_async(g.ws_url()).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from),
        )),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn total_and_per_ip_connection_limits_refuse_cleanly() {
    let g = Gateway::start_with("[limits]\nmax_connections = 3\nmax_connections_per_ip = 2\n");
    let (a, _) = g.hello().await;
    let (_b, _) = g.hello().await;
    assert_eq!(upgrade_status(&g).await, Err((429, Some("5".into()))), "third from one address");
    drop(a);
    // The gateway has let the dropped connection go once only `_b` is counted.
    g.wait_metric_at_most("herald_connections", 1.0).await;
    let (_c, _) = g.hello().await;
    let g2 = Gateway::start_with("[limits]\nmax_connections = 1\n");
    let (_x, _) = g2.hello().await;
    assert_eq!(upgrade_status(&g2).await, Err((503, Some("5".into()))), "at capacity");
}

#[tokio::test]
async fn per_user_connection_limit_closes_with_4429() {
    let secret = "limits-secret-0123456789";
    let g =
        Gateway::start_with(&format!("[auth]\njwt_secret = \"{secret}\"\n[limits]\nmax_connections_per_user = 1\n"));
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 600;
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign");
    let mut first = g.client().await;
    assert_eq!(first.request(json!({"type": "hello", "token": t})).await["type"], "welcome");
    let mut second = g.client().await;
    let e = second.request(json!({"type": "hello", "token": t})).await;
    assert_eq!(e["code"], "limit_exceeded", "{e}");
    assert_eq!(second.expect_close().await, 4429);
    assert_eq!(first.request(json!({"type": "ping"})).await["type"], "pong", "the first one is untouched");
}

#[tokio::test]
async fn command_rate_is_limited_then_enforced() {
    let g = Gateway::start_with("[limits]\ncommands_per_second = 5\n");
    let (mut c, _) = g.hello().await;
    for i in 0..30 {
        c.send(json!({"type": "ping", "ref": i})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..30 {
        let m = c.recv().await;
        match m["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(m["code"], "limit_exceeded", "{m}");
                limited += 1;
            }
            _ => panic!("unexpected {m}"),
        }
    }
    assert!((9..=16).contains(&pongs), "the burst passes, then about 5 per second: {pongs}");
    assert_eq!(pongs + limited, 30);
    // A client that keeps flooding is disconnected.
    for i in 0..300 {
        if c.ws
            .send(tokio_tungstenite::tungstenite::Message::text(json!({"type": "ping", "ref": i}).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.expect_close().await, 4429);
}

/// The per-user session budget holds while connections per user are
/// limited; with `max_connections_per_user = 0` it does not apply (each of
/// the user's connections needs a session).
#[tokio::test]
async fn per_user_budgets_follow_the_per_user_connection_limit() {
    let secret = "limits-budget-secret-0123456789ab";
    for (per_user, admitted) in [(10, 2), (0, 4)] {
        let g = Gateway::start_with(&format!(
            "[auth]\njwt_secret = \"{secret}\"\n[limits]\nmax_connections_per_user = {per_user}\nmax_sessions_per_user = 2\n"
        ));
        let token = g.admin_token.clone().expect("token");
        let mut held = Vec::new();
        let mut welcomed = 0;
        for _ in 0..4 {
            let mut c = g.client().await;
            let w = c.request(json!({"type": "hello", "token": token})).await;
            if w["type"] == "welcome" {
                welcomed += 1;
            } else {
                assert_eq!(w["code"], "limit_exceeded", "{w}");
            }
            held.push(c);
        }
        assert_eq!(welcomed, admitted, "max_connections_per_user = {per_user}");
    }
}
