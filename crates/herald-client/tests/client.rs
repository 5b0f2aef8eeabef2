//! The client against a real gateway (herald-server in this process, on
//! real sockets), through a proxy that cuts connections.

use herald_client::{Client, ClientConfig, Error, NewEvent, SubscribeOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

struct Gateway {
    base: String,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn gateway(edit: impl FnOnce(&mut herald_server::Config)) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config =
        herald_server::Config { listen: "127.0.0.1:0".into(), data: dir.path().into(), ..Default::default() };
    edit(&mut config);
    let server = herald_server::Server::start(config).await.expect("gateway starts");
    let addr = server.local_addr().expect("bound");
    tokio::spawn(server.run(std::future::pending()));
    Gateway { base: format!("http://{addr}"), addr, _dir: dir }
}

/// A TCP proxy whose `cut` drops every connection through it at once.
struct Proxy {
    base: String,
    cuts: AtomicU64,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let t = tasks.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let t2 = t.clone();
                let task = tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(target).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                t2.lock().await.push(task);
            }
        });
        Proxy { base, cuts: AtomicU64::new(0), tasks }
    }

    /// Abort every piped connection (the sockets close without a WebSocket close).
    async fn cut(&self) {
        self.cuts.fetch_add(1, Ordering::Relaxed);
        // Dropping a pipe's task drops both of its sockets.
        for t in self.tasks.lock().await.drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_once_and_in_order_while_the_connection_is_cut() {
    // The publisher sends faster than the default command rate allows.
    let g = gateway(|c| c.limits.commands_per_second = 0).await;
    let proxy = Proxy::start(g.addr).await;
    let config = ClientConfig::new(&proxy.base).with_backoff(Duration::from_millis(10), Duration::from_millis(100));
    let client = Client::connect(config).await.expect("connects");
    let mut sub = client.subscribe(SubscribeOptions::new("flaky", "#")).await.expect("subscribed");
    let total = 1500u64;
    let publisher = Client::connect(ClientConfig::new(&g.base)).await.expect("publisher");
    let published = Arc::new(AtomicU64::new(0));
    let count = published.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..total {
            count.fetch_add(1, Ordering::Relaxed);
            publisher.publish(NewEvent::new("flaky", "k", &i).expect("event")).await.expect("published");
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
    });
    let cutting = async {
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            proxy.cut().await;
        }
    };
    let reading = async {
        let mut seen = Vec::new();
        while (seen.len() as u64) < total {
            match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
                Ok(Some(Ok(e))) => seen.push(e.id),
                other => panic!(
                    "no event: {other:?} after {} (last {:?}); {} published",
                    seen.len(),
                    seen.last(),
                    published.load(Ordering::Relaxed)
                ),
            }
        }
        seen
    };
    let (_, seen) = tokio::join!(cutting, reading);
    publishing.await.expect("publisher");
    assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "each event once, in order");
    let stats = client.stats().await.expect("stats");
    assert!(stats.reconnects >= 3, "reconnected through the cuts: {stats:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_ends_the_client_without_retrying() {
    let g = gateway(|c| c.auth.jwt_secret = Some("client-tests-secret-0123456789".into())).await;
    let err = Client::connect(ClientConfig::new(&g.base).with_token("not-a-token")).await.expect_err("refused");
    assert!(matches!(err, Error::Refused { code: 4401, .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_wait_for_the_connection_and_errors_are_the_servers() {
    let g = gateway(|_| {}).await;
    let proxy = Proxy::start(g.addr).await;
    let config = ClientConfig::new(&proxy.base).with_backoff(Duration::from_millis(50), Duration::from_millis(100));
    let client = Client::connect(config).await.expect("connects");
    let mut sub = client.subscribe(SubscribeOptions::new("offline", "#").since_id(0)).await.expect("subscribed");
    proxy.cut().await;
    // Sent when the client is back: nothing is lost, nothing doubled.
    let id = client.publish(NewEvent::new("offline", "k", &"queued").expect("event")).await;
    let id = match id {
        Ok(id) => id,
        // Sent on the cut connection just before the client noticed: retry.
        Err(Error::Disconnected) => {
            client.publish(NewEvent::new("offline", "k", &"queued").expect("event")).await.expect("published")
        }
        Err(e) => panic!("{e}"),
    };
    let event = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("in time").expect("open");
    assert_eq!(event.expect("event").id, id);
    let refused = client.subscribe(SubscribeOptions::new("", "#")).await.expect_err("no exchange");
    assert_eq!(refused.code(), Some(herald_client::ErrorCode::BadRequest), "{refused}");
    let none = client.request("nobody", serde_json::value::to_raw_value(&1).expect("raw"), None).await;
    assert_eq!(none.expect_err("no responder").code(), Some(herald_client::ErrorCode::Unavailable));
    client.close().await;
    let closed = client.publish(NewEvent::new("offline", "k", &1).expect("event")).await;
    assert_eq!(closed.expect_err("closed"), Error::Closed);
}
