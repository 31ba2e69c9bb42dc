//! Several coordinators serving one deployment on one PostgreSQL database.
//!
//! One of them schedules: the one holding the database's coordinator lock
//! (`store::postgres`), with the whole deployment in its scheduler's memory. Every other
//! coordinator of the database is an **edge**: it listens on its own address from the
//! start and serves every call (gRPC, the dashboard, `/api`) by forwarding it, as it
//! came, to the scheduling coordinator over one multiplexed HTTP/2 connection, and
//! streams the answer back ([`Edge`]). So any coordinator accepts any worker's calls and
//! any submit, and shows the whole deployment. When the scheduling coordinator stops or
//! dies, an edge takes the lock, fences the former holder's sessions, loads the store and
//! schedules; the others forward to it once it has published its URL ([`Leader`]).
//!
//! What is decided once, is decided once: one scheduler places every replica and records
//! every result and credit, fenced by the lock, so concurrent coordinators can neither
//! over-replicate a unit nor credit a result twice. What spreads over the edges is the
//! per-connection work: TLS, HTTP/1.1 and HTTP/2 framing, connection limits per address,
//! and the long-lived streams (results, dashboards) of their own clients.
//!
//! A forwarded call carries its caller's address ([`FORWARDED_FOR`]) so that the
//! scheduling coordinator's per-address limits, subnet placement rules and peer-address
//! proofs see the caller, not the edge. Only an edge of the deployment may say so: the
//! header counts only beside [`FORWARD_KEY`], a secret every coordinator derives from the
//! deployment's coordinator key ([`secret`]); [`accept_forwarded`] strips both from
//! anyone else's calls, and an edge strips them from its callers' before adding its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use protocol::tls::CoordinatorUrl;
use tonic::transport::Channel;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The header naming the caller an edge forwards for (`IP:PORT`).
pub const FORWARDED_FOR: &str = "fallow-forwarded-for";

/// The header proving a call comes from an edge of this deployment ([`secret`], in hex).
pub const FORWARD_KEY: &str = "fallow-forward-key";

/// How long a call waits at an edge for a scheduling coordinator to appear.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an edge waits between two tries of a leader that refused the connection.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The largest request an edge keeps to forward ([`streamed`] methods are not kept; the
/// others are capped at 4 MiB by `body_limit` before this).
const MAX_BUFFERED: usize = 4 << 20;

/// The context of the forwarding secret's derivation from the coordinator key.
const SECRET_CONTEXT: &str = "fallow 2026-12-07 coordinator forwarding secret";

/// The secret an edge shows the scheduling coordinator: derived from the deployment's
/// coordinator key, which only the deployment's coordinators hold.
#[derive(Clone)]
pub struct Secret(blake3::Hash);

impl std::fmt::Debug for Secret {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The forwarding secret of the deployment whose coordinator key is `key`.
pub fn secret(key: &protocol::Identity) -> Secret {
    Secret(blake3::Hash::from_bytes(key.derive_secret(SECRET_CONTEXT)))
}

impl Secret {
    /// Whether a header value is this secret; compared in constant time (BLAKE3 hashes
    /// compare so).
    fn matches(&self, value: &HeaderValue) -> bool {
        let Ok(shown) = blake3::Hash::from_hex(value.as_bytes()) else {
            return false;
        };
        shown == self.0
    }

    fn header(&self) -> HeaderValue {
        // Hex digits are always a valid header value.
        HeaderValue::from_str(self.0.to_hex().as_str()).unwrap_or(HeaderValue::from_static(""))
    }
}

/// Whether `request` is a gRPC call (rather than a browser's or a script's HTTP request).
fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The address a call came from, as tonic and the connection layer record it.
fn remote_of(request: &Request) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

fn local_of(request: &Request) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(|i| i.local_addr())
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().local_addr())
        })
}

/// On the scheduling coordinator (middleware): a call an edge of the deployment forwarded
/// is taken to come from the caller it names, by recording that address where every
/// handler reads the caller's (`Request::remote_addr`). Anyone else's forwarding headers
/// are dropped; a wrong secret is refused, so a stranger cannot pose as any address.
pub(crate) async fn accept_forwarded(
    State(secret): State<Arc<Secret>>,
    mut request: Request,
    next: Next,
) -> Response {
    let key = request.headers_mut().remove(FORWARD_KEY);
    let named = request.headers_mut().remove(FORWARDED_FOR);
    if let Some(key) = key {
        if !secret.matches(&key) {
            let why = format!(
                "{FORWARD_KEY} is not this deployment's forwarding secret: only a \
                 coordinator of the deployment may forward calls"
            );
            if is_grpc(&request) {
                return tonic::Status::permission_denied(why)
                    .into_http::<axum::body::Body>()
                    .into_response();
            }
            return (http::StatusCode::FORBIDDEN, why).into_response();
        }
        let caller = named
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<SocketAddr>().ok());
        if let Some(caller) = caller {
            let local = local_of(&request);
            // `remote_addr` reads this extension first, over TLS too.
            request.extensions_mut().insert(TcpConnectInfo {
                local_addr: local,
                remote_addr: Some(caller),
            });
        }
    }
    next.run(request).await
}

/// The coordinator that schedules the deployment, as it publishes itself in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its `application_name` on the database (unique per process).
    pub name: String,
    /// Where the other coordinators reach it: `http://HOST:PORT`, or
    /// `https://HOST:PORT#sha256=PIN` with the deployment certificate's fingerprint.
    pub url: String,
}

/// An edge: forwards every call to the scheduling coordinator named by `leader`.
pub struct Edge {
    leader: tokio::sync::watch::Receiver<Option<Leader>>,
    secret: Secret,
    /// The channel to the leader it was made for.
    channel: Mutex<Option<(Leader, Channel)>>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("leader", &*self.leader.borrow())
            .finish_non_exhaustive()
    }
}

impl Edge {
    /// An edge forwarding to whoever `leader` names (`None`: no coordinator schedules yet),
    /// proving itself with `secret`.
    pub fn new(leader: tokio::sync::watch::Receiver<Option<Leader>>, secret: Secret) -> Edge {
        Edge {
            leader,
            secret,
            channel: Mutex::new(None),
        }
    }

    /// The channel to the current leader, made (lazily connecting) when the leader changed.
    fn channel(&self) -> Result<(Leader, Channel), String> {
        let Some(leader) = self.leader.borrow().clone() else {
            return Err(
                "no coordinator of this deployment schedules yet (one is loading \
                        the store or taking over); try again in a few seconds"
                    .into(),
            );
        };
        let mut held = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((l, c)) = held.as_ref()
            && *l == leader
        {
            return Ok((leader, c.clone()));
        }
        let endpoint = endpoint(&leader.url)?;
        let channel = endpoint.connect_lazy();
        *held = Some((leader.clone(), channel.clone()));
        Ok((leader, channel))
    }

    /// Forwards `request` to the scheduling coordinator and returns its answer; a call
    /// that cannot reach it is answered UNAVAILABLE, naming why (workers then retry, or
    /// move to another URL of the deployment).
    pub async fn forward(&self, mut request: Request) -> Response {
        let caller = remote_of(&request);
        let (leader, channel) = match self.channel() {
            Ok(c) => c,
            Err(_) => {
                // A takeover under way, or a scheduling coordinator still loading: wait a
                // little for it rather than fail the call.
                let mut leader = self.leader.clone();
                let _ = tokio::time::timeout(LEADER_WAIT, leader.wait_for(Option::is_some)).await;
                match self.channel() {
                    Ok(c) => c,
                    Err(why) => return unavailable(why),
                }
            }
        };
        let grpc = is_grpc(&request);
        let headers = request.headers_mut();
        for h in [CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE] {
            // Hop-by-hop headers end here (HTTP/2 forbids them); gRPC's `te: trailers`
            // is added back.
            headers.remove(h);
        }
        headers.remove("keep-alive");
        headers.remove("proxy-connection");
        headers.remove(FORWARDED_FOR);
        headers.insert(FORWARD_KEY, self.secret.header());
        if let Some(caller) = caller
            && let Ok(v) = HeaderValue::from_str(&caller.to_string())
        {
            headers.insert(FORWARDED_FOR, v);
        }
        if grpc {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
        *request.version_mut() = http::Version::HTTP_2;
        if streamed(request.uri().path()) {
            // Uploads (a project, a data file, a certificate with its output) are passed
            // through as they come, never kept here: an edge holds no large body for a
            // caller the scheduling coordinator has not yet authenticated. A failure is
            // the caller's to retry.
            let request = request.map(tonic::body::Body::new);
            return match tower::ServiceExt::oneshot(channel, request).await {
                Ok(response) => response.map(axum::body::Body::new),
                Err(e) => self.unreachable(&leader, &e),
            };
        }
        // Every other call's request is one small message (4 MiB at most, `body_limit`):
        // kept, so that a call the leader's address refused (nothing was sent: a takeover
        // under way) goes to the next one.
        let (parts, body) = request.into_parts();
        let bytes = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
            body,
            MAX_BUFFERED,
        ))
        .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return tonic::Status::invalid_argument(format!(
                    "the request body could not be read to forward it ({e}); at most \
                     {MAX_BUFFERED} bytes"
                ))
                .into_http::<axum::body::Body>()
                .into_response();
            }
        };
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let (mut leader, mut channel) = (leader, channel);
        loop {
            let mut again = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(
                bytes.clone(),
            )));
            *again.method_mut() = parts.method.clone();
            *again.uri_mut() = parts.uri.clone();
            *again.version_mut() = parts.version;
            *again.headers_mut() = parts.headers.clone();
            match tower::ServiceExt::oneshot(channel, again).await {
                Ok(response) => return response.map(axum::body::Body::new),
                Err(e) if refused(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_EVERY).await;
                    match self.channel() {
                        Ok((l, c)) => (leader, channel) = (l, c),
                        Err(_) => {
                            let mut watch = self.leader.clone();
                            let left =
                                deadline.saturating_duration_since(tokio::time::Instant::now());
                            let _ =
                                tokio::time::timeout(left, watch.wait_for(Option::is_some)).await;
                            match self.channel() {
                                Ok((l, c)) => (leader, channel) = (l, c),
                                Err(why) => return unavailable(why),
                            }
                        }
                    }
                }
                Err(e) => return self.unreachable(&leader, &e),
            }
        }
    }

    /// The answer to a call that could not reach the leader.
    fn unreachable(&self, leader: &Leader, e: &tonic::transport::Error) -> Response {
        tracing::warn!(leader = %leader.url, "cannot forward to the scheduling coordinator: {e}");
        unavailable(format!(
            "the deployment's scheduling coordinator {} is unreachable ({e}); another takes \
             over within seconds if it is gone",
            leader.name
        ))
    }
}

/// Whether calls to `path` carry large bodies, which an edge streams rather than keeps:
/// the methods `body_limit` allows more than its default cap.
fn streamed(path: &str) -> bool {
    [
        "/SubmitProject",
        "/ExtendProject",
        "/PutData",
        "/SubmitCertificate",
        "/SubmitCertificates",
    ]
    .iter()
    .any(|m| path.ends_with(m))
}

/// Whether a forwarding failure is a refused connection: nothing was sent, so the call
/// may go to the next leader.
fn refused(e: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// An endpoint for the leader at `url` (see [`Leader::url`]).
fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, String> {
    let parsed = CoordinatorUrl::parse(url).map_err(|e| format!("leader URL {url:?}: {e}"))?;
    if !parsed.tls {
        return tonic::transport::Endpoint::from_shared(parsed.url.clone())
            .map(|e| e.connect_timeout(std::time::Duration::from_secs(5)))
            .map_err(|e| format!("leader URL {url:?}: {e}"));
    }
    let pin = parsed
        .pin
        .ok_or_else(|| format!("leader URL {url:?} names no certificate (#sha256=…)"))?;
    connections::peer_tls::pinned_endpoint(&parsed.url, &parsed.host, pin)
        .map_err(|e| e.to_string())
}

fn unavailable(message: String) -> Response {
    tonic::Status::unavailable(message)
        .into_http::<axum::body::Body>()
        .into_response()
}

/// What serves the listener of a coordinator on a shared database: first an [`Edge`],
/// then, once this coordinator holds the lock and has loaded the store, its own service.
/// The listener, its TLS and its connection limits stay the same throughout, so the
/// coordinator's address never changes role under a worker's feet.
#[derive(Clone)]
pub struct Switch {
    mode: Arc<RwLock<Mode>>,
}

#[derive(Clone)]
enum Mode {
    Forward(Arc<Edge>),
    Serve(axum::Router),
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &*self.mode.read().unwrap_or_else(|p| p.into_inner()) {
            Mode::Forward(_) => "forward",
            Mode::Serve(_) => "serve",
        };
        f.debug_struct("Switch").field("mode", &mode).finish()
    }
}

impl Switch {
    /// A switch that forwards through `edge` until [`Switch::serve`].
    pub fn forwarding(edge: Edge) -> Switch {
        Switch {
            mode: Arc::new(RwLock::new(Mode::Forward(Arc::new(edge)))),
        }
    }

    /// From now on every call goes to `router` (this coordinator's own service).
    pub(crate) fn serve(&self, router: axum::Router) {
        *self.mode.write().unwrap_or_else(|p| p.into_inner()) = Mode::Serve(router);
    }

    /// The router a listener serves: every request goes to the current mode, its body
    /// capped per method as the scheduling coordinator caps it (`body_limit`), so an edge
    /// keeps no more of a request than the scheduling coordinator would accept.
    pub(crate) fn router(&self, max_message_bytes: usize) -> axum::Router {
        let switch = self.clone();
        axum::Router::new()
            .fallback(move |request: Request| {
                let mode = switch
                    .mode
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                async move {
                    match mode {
                        Mode::Forward(edge) => edge.forward(request).await,
                        Mode::Serve(router) => {
                            match tower::ServiceExt::oneshot(router, request).await {
                                Ok(response) => response,
                                Err(never) => match never {},
                            }
                        }
                    }
                }
            })
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(crate::body_limit::Caps::new(max_message_bytes)),
                crate::body_limit::cap_body,
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router answering with the caller's address as the handlers see it, behind
    /// [`accept_forwarded`] for the deployment of `key`.
    fn echo(key: &protocol::Identity) -> axum::Router {
        axum::Router::new()
            .fallback(|request: Request| async move {
                let seen = tonic::Request::from_http(request.map(|_| ()))
                    .remote_addr()
                    .map_or_else(|| "none".to_string(), |a| a.to_string());
                seen.into_response()
            })
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(secret(key)),
                accept_forwarded,
            ))
    }

    async fn call(
        router: axum::Router,
        headers: &[(&str, &str)],
    ) -> (http::StatusCode, String, String) {
        let mut request = Request::new(axum::body::Body::empty());
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: "127.0.0.1:7070".parse().ok(),
            remote_addr: "10.0.0.9:5555".parse().ok(),
        });
        for (k, v) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header"),
            );
        }
        let response = tower::ServiceExt::oneshot(router, request)
            .await
            .expect("infallible");
        let status = response.status();
        let grpc = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        (status, grpc, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn only_an_edge_with_the_deployment_secret_may_name_the_caller() {
        let key = protocol::Identity::from_seed([7; 32]);
        let ours = secret(&key).0.to_hex().to_string();
        // An edge of the deployment: the handlers see the caller it names.
        let (_, _, seen) = call(
            echo(&key),
            &[(FORWARD_KEY, &ours), (FORWARDED_FOR, "203.0.113.5:4242")],
        )
        .await;
        assert_eq!(seen, "203.0.113.5:4242");
        // A stranger naming an address without the secret is who it is.
        let (_, _, seen) = call(echo(&key), &[(FORWARDED_FOR, "203.0.113.5:4242")]).await;
        assert_eq!(seen, "10.0.0.9:5555");
        // A wrong secret (another deployment's, or a guess) is refused outright.
        let other = secret(&protocol::Identity::from_seed([8; 32]))
            .0
            .to_hex()
            .to_string();
        for wrong in [other.as_str(), "not hex", ""] {
            let (status, _, body) = call(
                echo(&key),
                &[(FORWARD_KEY, wrong), (FORWARDED_FOR, "203.0.113.5:4242")],
            )
            .await;
            assert_eq!(status, http::StatusCode::FORBIDDEN, "{wrong:?}");
            assert!(
                body.contains(FORWARD_KEY) && !body.contains("203.0.113.5"),
                "{body}"
            );
            // A gRPC call is refused in gRPC's terms.
            let (_, grpc, _) = call(
                echo(&key),
                &[
                    (FORWARD_KEY, wrong),
                    (FORWARDED_FOR, "203.0.113.5:4242"),
                    ("content-type", "application/grpc"),
                ],
            )
            .await;
            assert_eq!(
                grpc,
                (tonic::Code::PermissionDenied as i32).to_string(),
                "{wrong:?}"
            );
        }
        // The secret is the deployment's: every coordinator holding the key derives it.
        assert_eq!(
            secret(&key).0,
            secret(&protocol::Identity::from_seed([7; 32])).0
        );
    }

    #[tokio::test]
    async fn an_edge_without_a_leader_answers_unavailable_in_words() {
        // No coordinator schedules, and none will (the watch's sender is gone, so the
        // edge does not wait).
        let (_, rx) = tokio::sync::watch::channel(None);
        let edge = Edge::new(rx, secret(&protocol::Identity::from_seed([1; 32])));
        let response = edge.forward(Request::new(axum::body::Body::empty())).await;
        let grpc = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(grpc, (tonic::Code::Unavailable as i32).to_string());
        let message = response
            .headers()
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(message.contains("schedules"), "{message}");
    }
}
