//! Connection hygiene for Fallow's servers — the coordinator's API and a worker's peer
//! service — against clients that open connections and keep them: at most
//! [`Limits::per_address`] connections at once from one address, a connection closed once
//! no request has been in flight on it for [`Limits::idle_timeout`], and dead peers found
//! by TCP and HTTP/2 keepalive.
//!
//! "Idle" counts requests, not bytes: an HTTP/2 client answers keepalive pings by itself,
//! so a connection that only exchanges pings, or that never finishes its first request's
//! headers (slowloris, over HTTP/1 or HTTP/2), is idle; a request in flight (a download, a
//! dashboard's event stream) keeps its connection open until its response is sent.
//!
//! # Layout
//! - [`Limits`]: the settings, with their defaults.
//! - [`Connections`]: the table of open connections. [`Connections::incoming`] accepts
//!   through it (refusing past the cap) and yields [`Conn`]s, which close themselves when
//!   idle; [`Connections::layer`] counts each connection's requests in flight.
//! - [`server`]: a tonic server builder with HTTP/2 keepalive and a request timeout.
//! - [`KeepUntilSent`]: a value a handler attaches to its response to keep it alive until
//!   the response has been sent (e.g. a permit bounding the bytes being sent).
//! - [`Address`]: what the cap counts per — an IPv4 address or an IPv6 /64.
//! - [`peer_tls`]: worker-to-worker TLS, each board's certificate bound to its worker key.

#![forbid(unsafe_code)]

pub mod peer_tls;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Making or using a peer TLS identity or endpoint.
    #[error("peer TLS: {0}")]
    PeerTls(String),
}
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming, TlsConnectInfo};

/// How long an HTTP/2 connection may go without any frame before the server pings it.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// How long the server waits for a ping's answer before closing the connection.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keepalive: first probe after this much silence, then every
/// [`TCP_KEEPALIVE_INTERVAL`], [`TCP_KEEPALIVE_RETRIES`] times, so a peer that vanished
/// without closing (a half-open connection) is dropped within about two minutes.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// See [`TCP_KEEPALIVE`].
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// See [`TCP_KEEPALIVE`].
pub const TCP_KEEPALIVE_RETRIES: u32 = 4;

/// Connection limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once from one [`Address`]; a connection past it is closed as
    /// soon as it is accepted, before anything is read from it. A client needs one or two;
    /// a lab behind one NAT address about one per machine. 0: no cap. Default 256.
    pub per_address: usize,
    /// Whether loopback clients are exempt from `per_address` (a test fleet, or a reverse
    /// proxy on the same host, connects from loopback). Default true.
    pub exempt_loopback: bool,
    /// A connection with no request in flight for this long is closed; a client opens a new
    /// one when it next calls. Must be more than zero. Default 300 s (workers call at least
    /// every `lease / 4`, 30 s by default).
    pub idle_timeout: Duration,
    /// Longest a request may take until its response starts (reading the request body
    /// included; a response that streams, like a download or a dashboard's event stream,
    /// is not cut). Default 600 s: a 256 MiB upload at 0.5 MB/s.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_address: 256,
            exempt_loopback: true,
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// A tonic server builder with [`HTTP2_KEEPALIVE_INTERVAL`], [`HTTP2_KEEPALIVE_TIMEOUT`] and
/// `limits.request_timeout`. Serve it with `.layer(connections.layer())` and
/// `serve_with_incoming_shutdown(connections.incoming(listener), …)`.
pub fn server(limits: &Limits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .timeout(limits.request_timeout)
}

/// What [`Limits::per_address`] counts per: one IPv4 address, or one IPv6 /64 (what one
/// host or one LAN gets: an IPv6 host has more addresses than anyone could count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IPv4 address (also when it arrives IPv4-mapped in IPv6).
    V4(Ipv4Addr),
    /// The first four segments of an IPv6 address.
    V6([u16; 4]),
}

impl Address {
    /// The address `ip` counts as.
    pub fn of(ip: IpAddr) -> Address {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Address::V4(v4),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Address::V6([s[0], s[1], s[2], s[3]])
            }
        }
    }

    /// Whether it is loopback: 127.0.0.0/8, or the /64 of ::1 (`::/64`, which no packet
    /// from another host can come from).
    pub fn is_loopback(&self) -> bool {
        match self {
            Address::V4(v4) => v4.is_loopback(),
            Address::V6(s) => *s == [0; 4],
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::V4(v4) => write!(f, "{v4}"),
            Address::V6(s) => write!(f, "{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]),
        }
    }
}

/// The open connections of one server; cheap to clone.
#[derive(Clone)]
pub struct Connections {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("limits", &self.shared.limits)
            .field("open", &self.open())
            .finish()
    }
}

struct Shared {
    limits: Limits,
    table: Mutex<Table>,
    /// Connections closed at accept for being past the cap.
    refused: AtomicU64,
    /// Connections closed for being idle.
    idle_closed: AtomicU64,
}

#[derive(Default)]
struct Table {
    /// Open connections per address (exempt ones too).
    per_address: HashMap<Address, usize>,
    /// Each open connection's requests in flight, by (local, remote) socket address: what
    /// tonic tells a request about its connection.
    open: HashMap<(SocketAddr, SocketAddr), Arc<Activity>>,
}

impl Connections {
    /// A table for a server with these limits.
    pub fn new(limits: Limits) -> Self {
        Connections {
            shared: Arc::new(Shared {
                limits,
                table: Mutex::new(Table::default()),
                refused: AtomicU64::new(0),
                idle_closed: AtomicU64::new(0),
            }),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Accepts on `listener` (TCP_NODELAY, TCP keepalive), closing at once a connection
    /// from an address that already has [`Limits::per_address`] open.
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        Incoming {
            // TCP_NODELAY: without it, a response written in two pieces (headers and data,
            // then trailers) waits for the client's delayed ACK, ~40 ms on Linux.
            inner: TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(TCP_KEEPALIVE))
                .with_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
                .with_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES)),
            shared: self.shared.clone(),
        }
    }

    /// The layer that counts each connection's requests in flight (without it every
    /// connection looks idle) and keeps a response's [`KeepUntilSent`] until it is sent.
    pub fn layer(&self) -> TrackLayer {
        TrackLayer {
            shared: self.shared.clone(),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.lock().open.len()
    }

    /// Connections refused so far for being past the cap.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Connections closed so far for being idle.
    pub fn idle_closed(&self) -> u64 {
        self.shared.idle_closed.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent across a panic (each change is one map operation).
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `stream` in, or closes it (dropping it) if its address is at the cap.
    fn admit(self: &Arc<Self>, stream: TcpStream) -> Option<Conn> {
        let (Ok(local), Ok(remote)) = (stream.local_addr(), stream.peer_addr()) else {
            return None; // already gone
        };
        let address = Address::of(remote.ip());
        let capped =
            self.limits.per_address > 0 && !(self.limits.exempt_loopback && address.is_loopback());
        let activity = Arc::new(Activity::new());
        {
            let mut table = self.lock();
            let count = table.per_address.entry(address).or_default();
            if capped && *count >= self.limits.per_address {
                drop(table);
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at 1, 2, 4, 8, …: visible, but a flood cannot flood the log.
                if refused.is_power_of_two() {
                    tracing::warn!(
                        %address,
                        cap = self.limits.per_address,
                        refused,
                        "closed a connection past the cap per address (refusals so far)"
                    );
                }
                return None;
            }
            *count += 1;
            table.open.insert((local, remote), activity.clone());
        }
        let idle = self.limits.idle_timeout;
        Some(Conn {
            stream,
            activity,
            check: Box::pin(tokio::time::sleep(idle)),
            shared: self.clone(),
            key: (local, remote),
            address,
        })
    }

    /// The requests in flight on the connection `request` came on, if it is one of ours.
    fn activity_of<B>(&self, request: &http::Request<B>) -> Option<Arc<Activity>> {
        let extensions = request.extensions();
        let info = extensions.get::<TcpConnectInfo>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(|t| t.get_ref())
        })?;
        let key = (info.local_addr()?, info.remote_addr()?);
        self.lock().open.get(&key).cloned()
    }
}

/// The accepted connections of [`Connections::incoming`], for tonic's
/// `serve_with_incoming_shutdown`.
pub struct Incoming {
    inner: TcpIncoming,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(stream)) => {
                    if let Some(conn) = self.shared.admit(stream) {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                }
            }
        }
    }
}

/// An accepted connection. Its reads fail with `TimedOut` once it has had no request in
/// flight for [`Limits::idle_timeout`], which makes the server close it.
pub struct Conn {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// When to look at the activity next.
    check: Pin<Box<Sleep>>,
    shared: Arc<Shared>,
    key: (SocketAddr, SocketAddr),
    address: Address,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("remote", &self.key.1)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut table = self.shared.lock();
        table.open.remove(&self.key);
        if let Some(count) = table.per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                table.per_address.remove(&self.address);
            }
        }
    }
}

impl Connected for Conn {
    // The very type a plain TcpStream gives, so `Request::remote_addr` works as before.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Servers always have a read pending on an open connection, so the check runs
        // (and its timer is armed) without a task of its own.
        let this = &mut *self;
        let idle = this.shared.limits.idle_timeout;
        while this.check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match this.activity.idle_since() {
                Some(since) if since + idle <= now => {
                    this.shared.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(remote = %this.key.1, "closing an idle connection");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no request for {idle:?}: idle connection closed"),
                    )));
                }
                Some(since) => this.check.as_mut().reset(since + idle),
                // Busy: look again later (the request may end any time before).
                None => this.check.as_mut().reset(now + idle),
            }
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One connection's requests in flight, and since when it has had none.
struct Activity {
    state: Mutex<(usize, Instant)>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new((0, Instant::now())),
        }
    }

    fn state(&self) -> MutexGuard<'_, (usize, Instant)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Since when no request has been in flight; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        let (in_flight, since) = *self.state();
        (in_flight == 0).then_some(since)
    }
}

/// One request in flight, from the moment it reaches the service until its response has
/// been sent (see [`Tracked`]) or the connection is gone.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.state().0 += 1;
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }
}

/// A value kept alive until the response that carries it in its extensions has been sent
/// (see [`Tracked`]) — under [`Connections::layer`]. A handler attaches one with
/// `response.extensions_mut().insert(KeepUntilSent::new(permit))`, e.g. to bound how many
/// bytes of large responses are waiting to be sent at once: tonic encodes a response into
/// a buffer of its own after the handler returned, so a permit dropped by the handler
/// would bound nothing.
#[derive(Clone)]
pub struct KeepUntilSent(#[allow(dead_code)] Arc<dyn Any + Send + Sync>);

impl KeepUntilSent {
    /// Keeps `value` until the response is sent.
    pub fn new(value: impl Any + Send + Sync) -> Self {
        KeepUntilSent(Arc::new(value))
    }
}

impl std::fmt::Debug for KeepUntilSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepUntilSent")
    }
}

/// See [`Connections::layer`].
#[derive(Clone)]
pub struct TrackLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TrackLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrackLayer")
    }
}

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`TrackLayer`] makes.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Track<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Track")
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Track<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let busy = self.shared.activity_of(&request).map(Busy::new);
        TrackFuture {
            inner: Box::pin(self.inner.call(request)),
            busy,
        }
    }
}

/// The future of [`Track`]: the request counts as in flight from the start.
pub struct TrackFuture<F> {
    inner: Pin<Box<F>>,
    busy: Option<Busy>,
}

impl<F> std::fmt::Debug for TrackFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrackFuture")
    }
}

impl<F, B, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<Tracked<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.inner.as_mut().poll(cx))?;
        let (mut parts, body) = response.into_parts();
        let kept = parts.extensions.remove::<KeepUntilSent>();
        let busy = self.busy.take();
        let body = Tracked {
            body: Box::pin(body),
            hold: (busy.is_some() || kept.is_some()).then(|| {
                Arc::new(Hold {
                    _busy: busy,
                    _kept: kept,
                })
            }),
        };
        Poll::Ready(Ok(http::Response::from_parts(parts, body)))
    }
}

/// A response body that keeps its request in flight, and its [`KeepUntilSent`], until the
/// response has been sent: until the body is dropped *and* every data frame it yielded has
/// been dropped by the connection. The second matters: hyper hands a body's data to h2,
/// which queues it and writes it as the client's flow-control window allows, and ends (and
/// drops) the body as soon as the last frame is queued — long before a slow client has
/// read a big response. So each data frame carries the hold along, without a copy.
pub struct Tracked<B> {
    body: Pin<Box<B>>,
    hold: Option<Arc<Hold>>,
}

/// What a response holds until it has been sent.
struct Hold {
    _busy: Option<Busy>,
    _kept: Option<KeepUntilSent>,
}

/// A data frame's bytes, with the hold of the response they belong to.
struct Held {
    data: Bytes,
    _hold: Arc<Hold>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl<B> std::fmt::Debug for Tracked<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracked")
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        let Some(hold) = &this.hold else {
            return Poll::Ready(frame);
        };
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| {
                frame.map_data(|data| {
                    Bytes::from_owner(Held {
                        data,
                        _hold: hold.clone(),
                    })
                })
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
