//! The dashboard's HTTP routes. GET (and HEAD) only: any other method gets 405, and no
//! handler can change the coordinator's state — they read the latest published snapshot.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use super::snapshot::{AccountRow, ProjectSummary, TeamRow, WorkerRow};
use super::{Dashboard, render};

type Shared = State<Arc<Dashboard>>;

/// The router, to be merged with the gRPC routes.
/// Coordinator RPC methods, the only values the `method` label takes (paths come from the
/// network: an unknown one is counted as `unknown`, so labels stay bounded).
const RPC_METHODS: &[&str] = &[
    "SubmitProject",
    "ListProjects",
    "GetResults",
    "RegisterWorker",
    "Heartbeat",
    "RequestWork",
    "GetModule",
    "ReportFailure",
    "SubmitCertificate",
    "SubmitCertificates",
    "ReportDispute",
    "ReturnUnits",
    "ReportMisbehaviour",
    "ListAccounts",
];

/// Wraps the coordinator's whole router (dashboard and gRPC): every gRPC request answered
/// with an error status (malformed, oversized, unknown sender, out of order, ...) is
/// counted in `fallow_rejected_requests_total{method,code}`.
pub(crate) fn count_rejections(router: Router, dashboard: Arc<Dashboard>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(dashboard, rejections))
}

async fn rejections(
    State(d): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let method = request.uri().path().rsplit('/').next().unwrap_or_default();
    let method = RPC_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("unknown");
    let response = next.run(request).await;
    // Unary errors are "trailers-only" responses: the status is a header.
    if grpc
        && let Some(code) = response.headers().get("grpc-status")
        && code.as_bytes() != b"0"
    {
        let code = tonic::Code::from_bytes(code.as_bytes());
        d.metrics
            .rejected
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("code", format!("{code:?}")),
            ])
            .inc();
    }
    response
}

pub(crate) fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/projects/{id}", get(project_page))
        .route("/volunteers", get(volunteers))
        .route("/api", get(api_index))
        .route("/api/overview", get(api_overview))
        .route("/api/projects", get(api_projects))
        .route("/api/projects/{id}", get(api_project))
        .route("/api/projects/{id}/mosaic.png", get(mosaic))
        .route("/api/workers", get(api_workers))
        .route("/api/leaderboard", get(api_leaderboard))
        .route("/api/events", get(events))
        .route("/api/export/{file}", get(export))
        .route("/metrics", get(metrics))
        .route("/assets/{file}", get(asset))
        .layer(axum::middleware::map_response(security_headers))
        // Its own, stricter headers (and not the dashboard's): see `volunteer`.
        .merge(super::volunteer::router())
        .with_state(dashboard)
}

/// Scripts and styles only from this server, no framing: the pages show names chosen by
/// strangers (projects, workers), so injected markup must not be able to run.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
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

async fn overview(State(d): Shared) -> Html<String> {
    Html(render::overview(&d.latest()))
}

async fn project_page(State(d): Shared, Path(id): Path<u64>) -> Response {
    match d.latest().projects.get(&id) {
        Some(p) => Html(render::project(p)).into_response(),
        None => not_found(&format!("no project {id}")),
    }
}

async fn volunteers(State(d): Shared) -> Html<String> {
    Html(render::volunteers(&d.latest()))
}

async fn api_index() -> Html<String> {
    Html(render::api_index())
}

async fn api_overview(State(d): Shared) -> Response {
    json(d.latest().overview_json.clone())
}

async fn api_projects(State(d): Shared) -> Response {
    json_value(&d.latest().overview.projects)
}

async fn api_project(State(d): Shared, Path(id): Path<u64>) -> Response {
    match d.latest().projects.get(&id) {
        Some(p) => json(p.json.clone()),
        None => not_found(&format!("no project {id}")),
    }
}

/// `?v=N` as the page's events name it.
#[derive(Debug, Deserialize)]
struct MosaicQuery {
    v: Option<u64>,
}

/// The picture; `?v=N` asks for version N, served when it is the previous picture (a
/// viewer's events lag the broadcaster by one frame at most), otherwise the newest.
async fn mosaic(State(d): Shared, Path(id): Path<u64>, Query(q): Query<MosaicQuery>) -> Response {
    let latest = d.latest();
    let page = latest.projects.get(&id);
    let previous = page
        .and_then(|p| p.mosaic_previous.as_ref())
        .filter(|(v, _)| q.v == Some(*v))
        .map(|(_, png)| png.clone());
    match previous.or_else(|| page.and_then(|p| p.mosaic_png.clone())) {
        Some(png) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            png,
        )
            .into_response(),
        None => not_found(&format!("project {id} has no picture (yet)")),
    }
}

async fn api_workers(State(d): Shared) -> Response {
    json(d.latest().workers_json.clone())
}

async fn api_leaderboard(State(d): Shared) -> Response {
    json(d.latest().leaderboard_json.clone())
}

async fn metrics(State(d): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    project: Option<u64>,
}

/// Server-sent events: the current snapshot at once, then every new one (at least every
/// 2 s, which doubles as the keep-alive). The broadcaster frames each event once for all
/// viewers, so a viewer costs one reference-counted buffer and one write per snapshot —
/// no serialization or copy (axum's `Sse` would copy and re-scan every event per viewer).
/// A stream ends when the coordinator shuts down.
async fn events(State(d): Shared, Query(q): Query<EventsQuery>) -> Response {
    if let Some(id) = q.project
        && !d.latest().projects.contains_key(&id)
    {
        return not_found(&format!("no project {id}"));
    }
    let viewer = Viewer::new(d.clone());
    let mut charts_seen = None;
    let stream = WatchStream::new(d.subscribe()).filter_map(move |published| {
        let _still_watching = &viewer;
        let event = match q.project {
            Some(id) => published.projects.get(&id)?.event.clone(),
            None if charts_seen != Some(published.charts_version) => {
                charts_seen = Some(published.charts_version);
                published.charts_and_overview_event.clone()
            }
            None => published.overview_event.clone(),
        };
        Some(Ok::<_, Infallible>(event))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Counts open live streams in `/metrics`.
struct Viewer(Arc<Dashboard>);

impl Viewer {
    fn new(d: Arc<Dashboard>) -> Self {
        d.metrics.viewers.inc();
        Viewer(d)
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.metrics.viewers.dec();
    }
}

/// `/api/export/{projects,workers,accounts,teams}.{json,csv}`: the stats dump.
async fn export(State(d): Shared, Path(file): Path<String>) -> Response {
    let Some((what, format)) = file.rsplit_once('.') else {
        return not_found("export: use NAME.json or NAME.csv");
    };
    let p = d.latest();
    let table: (Vec<&str>, Vec<Vec<String>>) = match what {
        "projects" => (
            vec![
                "id",
                "name",
                "total",
                "verified",
                "failed",
                "in_progress",
                "pending",
                "executions",
                "disputes",
                "extra_replicas",
                "credit",
                "finished",
            ],
            p.overview.projects.iter().map(project_row).collect(),
        ),
        "workers" => (
            vec![
                "id",
                "name",
                "account",
                "team",
                "platform",
                "cores",
                "online",
                "last_seen_ms",
                "state",
                "state_reason",
            ],
            p.workers.workers.iter().map(worker_row).collect(),
        ),
        "accounts" => (
            vec!["rank", "account", "team", "credit", "verified", "workers"],
            p.leaderboard.accounts.iter().map(account_row).collect(),
        ),
        "teams" => (
            vec!["rank", "team", "credit", "accounts"],
            p.leaderboard.teams.iter().map(team_row).collect(),
        ),
        _ => return not_found("export: projects, workers, accounts or teams"),
    };
    match format {
        "json" => match what {
            "projects" => json_value(&p.overview.projects),
            "workers" => json_value(&p.workers.workers),
            "accounts" => json_value(&p.leaderboard.accounts),
            _ => json_value(&p.leaderboard.teams),
        },
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            csv(&table.0, &table.1),
        )
            .into_response(),
        _ => not_found("export: .json or .csv"),
    }
}

fn project_row(p: &ProjectSummary) -> Vec<String> {
    vec![
        p.id.to_string(),
        p.name.clone(),
        p.total.to_string(),
        p.verified.to_string(),
        p.failed.to_string(),
        p.in_progress.to_string(),
        p.pending.to_string(),
        p.executions.to_string(),
        p.disputes.to_string(),
        p.extra_replicas.to_string(),
        p.credit.to_string(),
        p.finished.to_string(),
    ]
}

fn worker_row(w: &WorkerRow) -> Vec<String> {
    vec![
        w.id.clone(),
        w.name.clone(),
        w.account.clone(),
        w.team.clone(),
        w.platform.clone(),
        w.cores.to_string(),
        w.online.to_string(),
        w.last_seen_ms.map(|t| t.to_string()).unwrap_or_default(),
        w.state.to_string(),
        w.state_reason.clone(),
    ]
}

fn account_row(r: &AccountRow) -> Vec<String> {
    vec![
        r.rank.to_string(),
        r.name.clone(),
        r.team.clone(),
        r.credit.to_string(),
        r.verified.to_string(),
        r.workers.to_string(),
    ]
}

fn team_row(r: &TeamRow) -> Vec<String> {
    vec![
        r.rank.to_string(),
        r.name.clone(),
        r.credit.to_string(),
        r.accounts.to_string(),
    ]
}

/// RFC 4180 CSV.
fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let field = |f: &str| {
        if f.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_string()
        }
    };
    let mut out = header.join(",");
    out.push_str("\r\n");
    for row in rows {
        out.push_str(&row.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

/// The embedded assets: the dashboard works offline and needs no CDN.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/dashboard.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard.js"),
    ),
    (
        "errors.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/errors.js"),
    ),
];

async fn asset(Path(file): Path<String>) -> Response {
    embedded(ASSETS, &file).unwrap_or_else(|| not_found("no such asset"))
}

/// The file `file` of `assets` (name, content type, body; embedded at build time), revalidated
/// on every load so a new build's files are never mixed with a cached old one; `None` when
/// there is no such file.
pub(super) fn embedded(
    assets: &[(&str, &'static str, &'static str)],
    file: &str,
) -> Option<Response> {
    let (_, mime, body) = assets.iter().find(|(name, _, _)| *name == file)?;
    Some(
        (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
    )
}

fn json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_value(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(v) => json(Bytes::from(v)),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn not_found(message: &str) -> Response {
    (StatusCode::NOT_FOUND, message.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::snapshot::{Overview, ProjectDetail, ProjectPage, Published};
    use axum::body::Body;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let out = csv(
            &["a", "b"],
            &[
                vec!["x,y".into(), "say \"hi\"".into()],
                vec!["1".into(), "2".into()],
            ],
        );
        assert_eq!(out, "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\n1,2\r\n");
    }

    /// A dashboard that published one project named by a hostile submitter.
    fn dashboard() -> (Router, tokio::sync::watch::Sender<Arc<Published>>) {
        let (d, tx) = Dashboard::new(&[]);
        let project = ProjectSummary {
            id: 7,
            name: "<script>alert(1)</script>".into(),
            total: 10,
            verified: 4,
            ..Default::default()
        };
        let detail = ProjectDetail {
            project: project.clone(),
            ..Default::default()
        };
        let overview = Overview {
            projects: vec![project],
            ..Default::default()
        };
        let overview_json = Bytes::from(serde_json::to_vec(&overview).expect("json"));
        let mut published = Published {
            overview_event: crate::dashboard::snapshot::frame("overview", 3, &overview_json),
            charts_and_overview_event: crate::dashboard::snapshot::frame(
                "overview",
                3,
                &overview_json,
            ),
            overview_json,
            overview,
            ..Default::default()
        };
        published.projects.insert(
            7,
            ProjectPage {
                event: crate::dashboard::snapshot::frame(
                    "project",
                    3,
                    &serde_json::to_vec(&detail).expect("json"),
                ),
                json: Bytes::from(serde_json::to_vec(&detail).expect("json")),
                detail,
                mosaic_png: None,
                mosaic_previous: None,
            },
        );
        published.workers = crate::dashboard::snapshot::Workers {
            online: 1,
            flagged: 1,
            workers: vec![crate::dashboard::snapshot::WorkerRow {
                id: "ab".repeat(32),
                name: "liar-box".into(),
                account: "mallory".into(),
                team: String::new(),
                cores: 4,
                platform: "linux-x86_64".into(),
                browser: None,
                online: true,
                last_seen_ms: Some(1),
                state: "suspended",
                state_reason: "other programs use 47 % of the CPUs".into(),
                flagged: true,
            }],
            ..Default::default()
        };
        published.workers_json = Bytes::from(serde_json::to_vec(&published.workers).expect("json"));
        tx.send_replace(Arc::new(published));
        (router(d), tx)
    }

    async fn call(method: Method, uri: &str) -> (StatusCode, String, String) {
        // The sender lives as long as the call, as the broadcaster would.
        let (router, _broadcaster) = dashboard();
        let response = router
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
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut body = response.into_body();
        // An event stream never ends: read its first frame only.
        let bytes = if kind.starts_with("text/event-stream") {
            body.frame()
                .await
                .and_then(|f| f.ok())
                .and_then(|f| f.into_data().ok())
                .unwrap_or_default()
        } else {
            body.collect().await.expect("body").to_bytes()
        };
        (status, kind, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn pages_carry_the_numbers_and_escape_names() {
        let (status, kind, html) = call(Method::GET, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(kind.starts_with("text/html"), "{kind}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            !html.contains("<script>alert"),
            "a name must never become markup"
        );
        assert!(
            html.contains("4 verified"),
            "numbers are in the HTML: {html}"
        );
        let (status, _, html) = call(Method::GET, "/projects/7").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("data-live=\"project:7\""));
        assert_eq!(
            call(Method::GET, "/projects/8").await.0,
            StatusCode::NOT_FOUND
        );
        let (status, _, html) = call(Method::GET, "/volunteers").await;
        assert_eq!(status, StatusCode::OK);
        // A worker throttled for repeated wrong results is flagged where everyone sees it.
        assert!(
            html.contains("1 flagged: throttled to one unit a day"),
            "{html}"
        );
        assert!(
            html.contains("<tr class=\"flagged\"><td title=\"abab"),
            "{html}"
        );
        // A suspended worker says so, and why.
        assert!(
            html.contains("suspended: other programs use 47 % of the CPUs"),
            "{html}"
        );
        let (_, _, json) = call(Method::GET, "/api/workers").await;
        assert!(json.contains("\"flagged\":true"), "{json}");
        assert!(json.contains("\"browser\":null"), "{json}");
        assert!(json.contains("\"state\":\"suspended\""), "{json}");
        assert!(
            json.contains("\"state_reason\":\"other programs use 47 % of the CPUs\""),
            "{json}"
        );
    }

    #[tokio::test]
    async fn nothing_but_get_is_served() {
        for path in [
            "/",
            "/api/overview",
            "/api/projects/7",
            "/api/events",
            "/metrics",
        ] {
            for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                let (status, _, _) = call(method.clone(), path).await;
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
        }
    }

    #[tokio::test]
    async fn the_api_exports_and_streams_the_snapshot() {
        let (status, kind, json) = call(Method::GET, "/api/projects").await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::OK, "application/json")
        );
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v[0]["verified"], 4);
        let (_, kind, csv) = call(Method::GET, "/api/export/projects.csv").await;
        assert!(kind.starts_with("text/csv"));
        assert!(csv.starts_with("id,name,total,verified,"), "{csv}");
        assert!(
            csv.contains("\r\n7,<script>alert(1)</script>,10,4,"),
            "{csv}"
        );
        assert_eq!(
            call(Method::GET, "/api/export/secrets.csv").await.0,
            StatusCode::NOT_FOUND
        );
        // A late viewer gets the current snapshot as its first event.
        let (status, kind, first) = call(Method::GET, "/api/events").await;
        assert_eq!(status, StatusCode::OK);
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        assert!(
            first.contains("event: overview") && first.contains("id: 3"),
            "{first}"
        );
        assert!(first.contains("\"verified\":4"), "{first}");
        let (_, _, first) = call(Method::GET, "/api/events?project=7").await;
        assert!(first.contains("event: project"), "{first}");
        assert_eq!(
            call(Method::GET, "/api/events?project=9").await.0,
            StatusCode::NOT_FOUND
        );
        let (_, kind, metrics) = call(Method::GET, "/metrics").await;
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        assert!(metrics.contains("fallow_assignments_total 0"), "{metrics}");
        let (_, kind, js) = call(Method::GET, "/assets/dashboard.js").await;
        assert!(kind.starts_with("text/javascript") && js.contains("EventSource"));
    }
}
