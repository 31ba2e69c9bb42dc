//! The volunteer page (`/volunteer`) and its modules (`/volunteer/FILE`): a browser tab
//! that donates by running work units in Web Workers (`assets/volunteer/README.md`).
//!
//! Everything is embedded at build time, so a module the page imports cannot be missing
//! at run time: a file left out is a compile error here, not a 404 in a volunteer's tab.
//!
//! The page runs strangers' guests and keeps a signing key, so its headers are stricter
//! than the dashboard's: scripts, workers, styles and connections only from this origin,
//! WebAssembly compiled from bytes (`'wasm-unsafe-eval'`, not `eval`), no inline script
//! or style, no plugins, forms, frames or base rewriting. `Cross-Origin-Opener-Policy` and
//! `Cross-Origin-Embedder-Policy` make the page cross-origin isolated, which is what lets
//! it share a `SharedArrayBuffer` with its workers and hold a paused guest with
//! `Atomics.wait` without losing its state.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The volunteer page's Content-Security-Policy: nothing that the page does not need.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const JS: &str = "text/javascript; charset=utf-8";

/// The page itself: static HTML (the numbers come from `volunteer.js`; a stranger's name
/// never reaches this markup on the server side).
const PAGE: &str = include_str!("../../assets/volunteer/volunteer.html");

/// Every module the page and its workers import, and the page's stylesheet.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "volunteer.js",
        JS,
        include_str!("../../assets/volunteer/volunteer.js"),
    ),
    (
        "pool.js",
        JS,
        include_str!("../../assets/volunteer/pool.js"),
    ),
    (
        "runner.js",
        JS,
        include_str!("../../assets/volunteer/runner.js"),
    ),
    (
        "loop.js",
        JS,
        include_str!("../../assets/volunteer/loop.js"),
    ),
    (
        "holder.js",
        JS,
        include_str!("../../assets/volunteer/holder.js"),
    ),
    (
        "claim.js",
        JS,
        include_str!("../../assets/volunteer/claim.js"),
    ),
    (
        "guest.js",
        JS,
        include_str!("../../assets/volunteer/guest.js"),
    ),
    (
        "blake3.js",
        JS,
        include_str!("../../assets/volunteer/blake3.js"),
    ),
    (
        "identity.js",
        JS,
        include_str!("../../assets/volunteer/identity.js"),
    ),
    (
        "proto.js",
        JS,
        include_str!("../../assets/volunteer/proto.js"),
    ),
    ("rpc.js", JS, include_str!("../../assets/volunteer/rpc.js")),
    (
        "volunteer.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/volunteer/volunteer.css"),
    ),
];

/// `/volunteer` and `/volunteer/FILE`, with the page's own headers (merged into the
/// dashboard's router, whose looser policy does not reach these routes).
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/volunteer", get(page))
        .route("/volunteer/{file}", get(asset))
        .layer(axum::middleware::map_response(isolation_headers))
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    super::routes::embedded(ASSETS, &file)
        .unwrap_or_else(|| (StatusCode::NOT_FOUND, "no such file").into_response())
}

/// The headers of every answer under `/volunteer`, 404s and 405s included.
async fn isolation_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-embedder-policy"),
        HeaderValue::from_static("require-corp"),
    );
    // Only this origin may embed these files (another site cannot load the page's
    // modules into its own isolated context).
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct Answer {
        status: StatusCode,
        headers: axum::http::HeaderMap,
        body: String,
    }

    async fn call(method: Method, uri: &str) -> Answer {
        let response = router::<()>()
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
        a.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn check_isolated(a: &Answer, what: &str) {
        assert_eq!(header(a, "content-security-policy"), CSP, "{what}");
        assert_eq!(
            header(a, "cross-origin-opener-policy"),
            "same-origin",
            "{what}"
        );
        assert_eq!(
            header(a, "cross-origin-embedder-policy"),
            "require-corp",
            "{what}"
        );
        assert_eq!(header(a, "x-content-type-options"), "nosniff", "{what}");
        assert_eq!(header(a, "referrer-policy"), "no-referrer", "{what}");
    }

    #[tokio::test]
    async fn the_page_and_every_module_are_served_isolated() {
        let a = call(Method::GET, "/volunteer").await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(header(&a, "content-type").starts_with("text/html"));
        check_isolated(&a, "/volunteer");
        assert!(a.body.contains("Donate"), "{}", a.body);
        assert!(
            a.body
                .contains("<script type=\"module\" src=\"/volunteer/volunteer.js\"></script>"),
            "{}",
            a.body
        );
        for (name, mime, _) in ASSETS {
            let a = call(Method::GET, &format!("/volunteer/{name}")).await;
            assert_eq!(a.status, StatusCode::OK, "{name}");
            assert_eq!(header(&a, "content-type"), *mime, "{name}");
            check_isolated(&a, name);
        }
        let a = call(Method::GET, "/volunteer/runner.js").await;
        assert!(header(&a, "content-type").starts_with("text/javascript"));
        // Refusals carry the same headers.
        let a = call(Method::GET, "/volunteer/secrets.js").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        check_isolated(&a, "404");
        let a = call(Method::POST, "/volunteer").await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
        check_isolated(&a, "405");
    }

    /// The policy holds only while nothing needs an exception: no inline script, inline
    /// style or event-handler attribute in the page, nothing loaded from elsewhere.
    #[test]
    fn the_page_needs_no_exception_to_its_policy() {
        let page = PAGE.to_ascii_lowercase();
        for needle in ["<style", " style=", "=\"javascript:", "http://", "https://"] {
            assert!(!page.contains(needle), "the page has {needle:?}");
        }
        for script in page.split("<script").skip(1) {
            let (tag, rest) = script.split_once('>').unwrap_or((script, ""));
            assert!(tag.contains(" src=\"/volunteer/"), "inline script: {tag}");
            assert!(rest.starts_with("</script>"), "inline script body");
        }
        for attribute in page.split_whitespace() {
            assert!(
                !(attribute.starts_with("on") && attribute.contains('=')),
                "event handler attribute {attribute}"
            );
        }
        for (name, _, body) in ASSETS {
            // Workers and imports stay on this origin.
            assert!(
                !body.contains("importScripts(") && !body.contains("eval("),
                "{name}"
            );
        }
    }
}
