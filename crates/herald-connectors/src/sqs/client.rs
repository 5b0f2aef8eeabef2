//! Building SQS clients, shared by the SQS peer and `herald rendezvous`.

use aws_sdk_sqs::config::{BehaviorVersion, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// The message attribute that carries the outcome of a request in a reply:
/// `ok`, or a protocol error code (`unavailable`, `timeout`, `bad_request`).
pub const STATUS_ATTRIBUTE: &str = "Status";

/// Static AWS credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl Credentials {
    /// From `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, when both are set.
    pub fn from_env() -> Option<Credentials> {
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok().filter(|v| !v.is_empty())?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok().filter(|v| !v.is_empty())?;
        Some(Credentials { access_key_id: id, secret_access_key: secret })
    }
}

/// An SQS client for `region`, at `endpoint` when given (an SQS-compatible
/// server, or a specific AWS endpoint), with TLS by rustls and ring.
pub fn client(endpoint: Option<&str>, region: &str, credentials: Credentials) -> aws_sdk_sqs::Client {
    let http =
        aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
    let creds = aws_sdk_sqs::config::Credentials::new(
        credentials.access_key_id,
        credentials.secret_access_key,
        None,
        None,
        "herald",
    );
    let mut b = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .credentials_provider(creds)
        .http_client(http);
    if let Some(e) = endpoint {
        b = b.endpoint_url(e);
    }
    aws_sdk_sqs::Client::from_conf(b.build())
}

/// From a queue URL, the endpoint to talk to (its scheme, host and port) and
/// the region (from `sqs.<region>.amazonaws.com`, else `fallback`).
pub fn endpoint_and_region(queue_url: &str, fallback: &str) -> Option<(String, String)> {
    let (scheme, rest) = queue_url.split_once("://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    let region = host
        .strip_prefix("sqs.")
        .and_then(|h| h.split_once(".amazonaws.com"))
        .map(|(r, _)| r.to_string())
        .unwrap_or_else(|| fallback.to_string());
    Some((format!("{scheme}://{host}"), region))
}

/// A ClientID is 1 to 64 characters of `[A-Za-z0-9_-]`, so that the reply
/// queue name is a valid SQS queue name (check its length, at most 80, too).
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `<prefix>-client-<ClientID>`.
pub fn reply_queue_name(prefix: &str, client_id: &str) -> String {
    format!("{prefix}-client-{client_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_regions_and_ids() {
        assert_eq!(
            endpoint_and_region("https://sqs.eu-west-1.amazonaws.com/123/broker", "us-east-1"),
            Some(("https://sqs.eu-west-1.amazonaws.com".into(), "eu-west-1".into()))
        );
        assert_eq!(
            endpoint_and_region("http://127.0.0.1:5000/123456789012/broker", "us-east-1"),
            Some(("http://127.0.0.1:5000".into(), "us-east-1".into()))
        );
        assert_eq!(endpoint_and_region("not a url", "x"), None);
        assert!(valid_client_id("a1-B_2"));
        assert!(!valid_client_id(""));
        assert!(!valid_client_id("a.b"));
        assert!(!valid_client_id(&"a".repeat(65)));
        assert_eq!(reply_queue_name("snowflake", "abc"), "snowflake-client-abc");
    }
}
