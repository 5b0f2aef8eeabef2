//! [`ClientConfig`]: where to connect, with what token, and how to behave.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A function returning a fresh token (called for every connection).
pub type TokenFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// Where tokens come from.
#[derive(Clone, Default)]
pub enum Token {
    /// No token (anonymous access).
    #[default]
    None,
    /// The same token for every connection.
    Static(String),
    /// A fresh token for every connection.
    Callback(TokenFn),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token.
        f.write_str(match self {
            Token::None => "Token::None",
            Token::Static(_) => "Token::Static(..)",
            Token::Callback(_) => "Token::Callback(..)",
        })
    }
}

/// How the client connects and behaves. Start with [`ClientConfig::new`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// WebSocket URLs of the nodes (`ws(s)://host/v1/ws`); each reconnect
    /// tries the next one.
    pub urls: Vec<String>,
    /// The token.
    pub token: Token,
    /// Acknowledge an event when the application asks for the next one.
    pub auto_ack: bool,
    /// How often acks are sent (batched).
    pub ack_interval: Duration,
    /// Reconnect after a lost connection.
    pub reconnect: bool,
    /// Backoff: a random delay up to `initial_delay · 2^attempt`, capped at `max_delay`.
    pub initial_delay: Duration,
    /// The longest backoff.
    pub max_delay: Duration,
    /// How long to wait for `welcome`.
    pub connect_timeout: Duration,
    /// Events a subscription buffers before the client stops reading.
    pub max_buffered: usize,
    /// Sent in `hello.client`, shown in the server's logs.
    pub client_name: String,
}

/// `http(s)://host[/]` or `ws(s)://...` to the WebSocket endpoint's URL.
pub fn websocket_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let url = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_string()
    };
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    if url[after_scheme..].contains('/') {
        url
    } else {
        format!("{url}/v1/ws")
    }
}

impl ClientConfig {
    /// Defaults for one gateway: `http(s)://host` or a `ws(s)://` URL.
    pub fn new(url: &str) -> ClientConfig {
        ClientConfig {
            urls: vec![websocket_url(url)],
            token: Token::None,
            auto_ack: true,
            ack_interval: Duration::from_millis(200),
            reconnect: true,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            max_buffered: 10_000,
            client_name: "herald-rust".into(),
        }
    }

    /// Several nodes of a cluster.
    pub fn with_urls<S: AsRef<str>>(mut self, urls: &[S]) -> ClientConfig {
        self.urls = urls.iter().map(|u| websocket_url(u.as_ref())).collect();
        self
    }

    /// A token for every connection.
    pub fn with_token(mut self, token: impl Into<String>) -> ClientConfig {
        self.token = Token::Static(token.into());
        self
    }

    /// A function asked for a fresh token before every connection.
    pub fn with_token_fn<F, Fut>(mut self, f: F) -> ClientConfig
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token = Token::Callback(Arc::new(move || Box::pin(f())));
        self
    }

    /// Automatic acks (the default) or manual ([`crate::Subscription::ack`]).
    pub fn with_auto_ack(mut self, auto_ack: bool) -> ClientConfig {
        self.auto_ack = auto_ack;
        self
    }

    /// The backoff between reconnect attempts.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> ClientConfig {
        self.initial_delay = initial;
        self.max_delay = max;
        self
    }

    /// Give up after the first lost connection instead of reconnecting.
    pub fn without_reconnect(mut self) -> ClientConfig {
        self.reconnect = false;
        self
    }

    /// The name in `hello.client`.
    pub fn with_client_name(mut self, name: impl Into<String>) -> ClientConfig {
        self.client_name = name.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_the_websocket_endpoint() {
        assert_eq!(websocket_url("http://h:1"), "ws://h:1/v1/ws");
        assert_eq!(websocket_url("https://h/"), "wss://h/v1/ws");
        assert_eq!(websocket_url("ws://h:1/v1/ws"), "ws://h:1/v1/ws");
        assert_eq!(websocket_url("ws://h:1/custom"), "ws://h:1/custom");
    }

    #[test]
    fn tokens_are_never_printed() {
        let c = ClientConfig::new("http://h").with_token("secret-token");
        assert!(!format!("{c:?}").contains("secret-token"));
    }
}
