//! The protocol at arm's length, for tools that measure the gateway
//! (`herald bench`): open a connection, say `hello`, and then read frames
//! and write typed messages directly, with none of [`crate::Client`]'s
//! bookkeeping between the gateway and the measurement.

use crate::Error;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald_protocol::{decode_server, encode_client, ClientMessage, Hello, ServerFrame, ServerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use herald_protocol::{encode_client as encode, ClientMessage as Outgoing};

/// Put a `ref` in a message (`ack` has none), to match its answer.
pub fn set_ref(msg: &mut ClientMessage, reference: herald_protocol::Ref) {
    crate::connection::set_ref(msg, reference);
}

/// The WebSocket of a raw connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// Its writing half.
pub type Tx = SplitSink<Ws, Message>;
/// Its reading half.
pub type Rx = SplitStream<Ws>;

/// Connect to `url` (`http(s)://host` or a `ws(s)://` URL), send `hello`
/// and wait for `welcome`; returns the two halves and the welcome.
pub async fn connect(url: &str, hello: Hello) -> Result<(Tx, Rx, ServerMessage), Error> {
    let url = crate::websocket_url(url);
    // Nagle off: an ack or a publish is a small write that should not wait
    // for the server's ACK of the one before.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .map_err(|e| Error::Json(format!("cannot connect to {url}: {e}")))?;
    let (mut tx, mut rx) = ws.split();
    send(&mut tx, &ClientMessage::Hello(hello)).await?;
    loop {
        let text = next_text(&mut rx).await?;
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            match decode_server(line)? {
                ServerFrame::Message(m @ ServerMessage::Welcome { .. }) => return Ok((tx, rx, m)),
                ServerFrame::Message(ServerMessage::Error { code, message, .. }) => {
                    return Err(Error::Server { code, message })
                }
                _ => {}
            }
        }
    }
}

/// Write one message.
pub async fn send(tx: &mut Tx, msg: &ClientMessage) -> Result<(), Error> {
    tx.send(Message::text(encode_client(msg))).await.map_err(|_| Error::Disconnected)
}

/// Queue one message without flushing (pipelining; flush with [`flush`]).
pub async fn feed(tx: &mut Tx, msg: &ClientMessage) -> Result<(), Error> {
    tx.feed(Message::text(encode_client(msg))).await.map_err(|_| Error::Disconnected)
}

/// Flush what [`feed`] queued.
pub async fn flush(tx: &mut Tx) -> Result<(), Error> {
    tx.flush().await.map_err(|_| Error::Disconnected)
}

/// The next text frame as it came (with `hello.batch`, several lines).
pub async fn next_text(rx: &mut Rx) -> Result<String, Error> {
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Close(f))) => {
                let (code, reason) = f.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                return Err(Error::Refused { code, reason });
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(Error::Disconnected),
        }
    }
}
