//! `GET /inspector`: the web inspector, a static page built on the
//! JavaScript client. The files are compiled into the binary, so the page
//! works wherever the gateway runs, without a build step or a file path.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The page and everything it loads: (name, content type, body).
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../../../clients/inspector/index.html")),
    ("inspector.js", "text/javascript; charset=utf-8", include_str!("../../../../clients/inspector/inspector.js")),
    ("inspector.css", "text/css; charset=utf-8", include_str!("../../../../clients/inspector/inspector.css")),
    ("herald.js", "text/javascript; charset=utf-8", include_str!("../../../../clients/js/herald.js")),
];

/// Only this origin's scripts and connections; the page holds a token, so
/// it must not be framed or load anything from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `/inspector` and `/inspector/`: the page.
pub(crate) async fn index() -> Response {
    serve("index.html")
}

/// `/inspector/{file}`: its script, style and the client library.
pub(crate) async fn file(Path(name): Path<String>) -> Response {
    serve(&name)
}

fn serve(name: &str) -> Response {
    let Some((_, content_type, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such file in the inspector").into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Served from the binary: a new version of Herald brings new files.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
