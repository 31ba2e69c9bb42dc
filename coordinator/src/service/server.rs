//! Server setup: loads the store into a scheduler, starts the writer and the background
//! tasks, and serves gRPC and the dashboard on one listener until shutdown.

use std::collections::HashSet;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use proto::v1::coordinator_server::CoordinatorServer;
use protocol::ProjectId;
use protocol::call::ReplayGuard;
use sandbox::{Sandbox, SandboxConfig};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registry::{RegistrationLimiter, WorkerEntry};
use super::tasks::expiry_loop;
use super::writer::writer;
use super::{CoordinatorService, Inner, State};
use crate::dashboard::{self, Dashboard};
use crate::fleet::Reported;
use crate::scheduler::{Scheduler, WorkerInfo};
use crate::store::Store;
use crate::{CoordinatorConfig, Error, now_ms};

/// Loads the store into a scheduler and serves until `shutdown`.
pub(crate) async fn run<S: Store>(
    listener: tokio::net::TcpListener,
    store: S,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let prepared = prepare(store, &config).await?;
    let result = listen(
        listener,
        &config,
        prepared.router.clone(),
        shutdown,
        prepared.cancel.clone(),
    )
    .await;
    prepared.wind_down().await;
    result
}

/// A coordinator's service, loaded and running its background tasks, not yet listening.
pub(crate) struct Prepared {
    /// Everything it serves: gRPC and the dashboard, behind its layers.
    pub(crate) router: axum::Router,
    /// Stops the background tasks, and with the broadcaster the dashboard's live streams.
    pub(crate) cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Prepared {
    /// Stops the background tasks after the listener stopped.
    pub(crate) async fn wind_down(self) {
        self.cancel.cancel();
        self.tasks.close();
        // Reducers in flight are abandoned at shutdown; their projects are reduced again
        // on the next start because no aggregate was stored.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
    }
}

/// Loads the store into a scheduler, starts the writer and the background tasks, and
/// builds the routes (the caller has validated `config`).
pub(crate) async fn prepare<S: Store>(
    store: S,
    config: &CoordinatorConfig,
) -> Result<Prepared, Error> {
    let lease_ms = config.lease.as_millis() as u64;
    let snapshot = store.load().await?;
    let now = now_ms();
    // Spot checks must be unpredictable to workers: seed from the OS (RandomState is).
    let seed =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), now);
    let mut sched = Scheduler::new(lease_ms, seed);
    sched.set_distinct_subnets(config.distinct_subnets);
    sched.set_unlimited(!config.limit_unfinished_leases);
    let projects = snapshot.projects.len();
    let (dashboard, published) = Dashboard::new(&snapshot.workers);
    for w in &snapshot.workers {
        sched.register(
            w.id,
            &WorkerInfo {
                account: w.account.clone(),
                team: w.team.clone(),
                subnet: w.subnet.clone(),
            },
        );
    }
    for (worker, project, trust) in snapshot.trust {
        sched.restore_trust(worker, project, trust);
    }
    for (worker, standing) in snapshot.standing {
        sched.restore_standing(worker, standing);
    }
    for (unit, worker) in snapshot.disqualified {
        sched.restore_disqualified(unit, worker);
    }
    for p in snapshot.projects {
        sched.add_project(p);
    }
    // Streamed: each unit goes straight into the scheduler (compact unless in play).
    let mut units = 0u64;
    let counts = store
        .load_units(|u| {
            units += 1;
            sched.add_unit(
                u.id, u.project, u.status, u.target, u.required, u.replicas, u.votes, now,
            );
        })
        .await?;
    for (p, c) in counts {
        sched.restore_counts(p, c);
    }
    let listed = snapshot
        .workers
        .iter()
        .filter(|w| !w.peer_addr.is_empty())
        .map(|w| w.id)
        .collect();
    let workers = snapshot
        .workers
        .into_iter()
        .map(|w| {
            (
                w.id,
                WorkerEntry {
                    peer_addr: w.peer_addr,
                    last_seen: now,
                    account: w.account,
                    team: w.team,
                    backed: 0,
                    reported: Reported::default(),
                    vouched_until: 0,
                },
            )
        })
        .collect();
    tracing::info!(projects, units, data = %config.data_dir.display(), "store loaded");
    // The coordinator runs guest code only for reducers: two slots are plenty.
    let key = protocol::Identity::load_or_create(&config.data_dir.join("coordinator.key"))
        .map_err(|e| Error::DataDir {
            path: config.data_dir.clone(),
            message: e.to_string(),
        })?;
    let sandbox = Sandbox::new(SandboxConfig {
        slots: 2,
        ..SandboxConfig::default()
    })?;
    let store = Arc::new(store);
    let (writes, queue) = tokio::sync::mpsc::unbounded_channel();
    let disk_full = Arc::new(AtomicBool::new(false));
    let pending_writes = Arc::new(AtomicUsize::new(0));
    tokio::spawn(writer(
        store.clone(),
        queue,
        disk_full.clone(),
        pending_writes.clone(),
    ));
    let limiter = NonZeroU32::new(config.worker_requests_per_second).map(|rate| {
        let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
    });
    let service = CoordinatorService {
        inner: Arc::new(Inner {
            store,
            writes,
            disk_full,
            pending_writes,
            max_pending_writes: config.max_pending_writes,
            limiter,
            registrations: RegistrationLimiter::new(config.registrations_per_minute),
            worker_rate: config.worker_requests_per_second,
            data_dir: config.data_dir.clone(),
            sandbox: Arc::new(sandbox),
            key,
            state: Mutex::new(State {
                sched,
                workers,
                peers_version: 1,
                listed,
                rng: protocol::rng::SplitMix64::new(seed ^ 0x5EED),
                calls: ReplayGuard::default(),
                waiting_logged: HashSet::new(),
            }),
            lease_ms,
            tamper_inputs: config.tamper_inputs,
            tasks: TaskTracker::new(),
            reducing: std::sync::Mutex::new(HashSet::new()),
            dashboard: dashboard.clone(),
            modules: crate::modules::Modules::new(config.limit_loopback),
            relay: crate::relay::Relay::default(),
            followers: super::projects::StreamCap::new(
                super::projects::MAX_FOLLOWERS_PER_ADDRESS,
                "`fallow results --follow` streams",
                config.limit_loopback,
            ),
            downloads: super::projects::StreamCap::new(
                super::projects::MAX_DOWNLOADS_PER_ADDRESS,
                "data downloads (GetData)",
                config.limit_loopback,
            ),
        }),
    };
    let cancel = CancellationToken::new();
    service
        .inner
        .tasks
        .spawn(expiry_loop(service.clone(), cancel.clone()));
    service.inner.tasks.spawn(dashboard::broadcaster(
        service.clone(),
        dashboard.clone(),
        published,
        cancel.clone(),
    ));
    // Projects that finished before a restart but have no aggregate yet.
    let finished: Vec<ProjectId> = service
        .inner
        .state
        .lock()
        .await
        .sched
        .projects()
        .map(|p| p.id)
        .collect();
    for p in finished {
        service.maybe_reduce(p).await;
    }
    let server = CoordinatorServer::new(service.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    // One port for all: gRPC over HTTP/2, the same service as gRPC-web over HTTP/1.1 or
    // HTTP/2 for browsers (tonic-web translates `application/grpc-web*` requests; the
    // volunteer page calls it with fetch()), and the dashboard over HTTP/1.1.
    let server = tower::Layer::layer(&tonic_web::GrpcWebLayer::new(), server);
    let gate = Arc::new(crate::auth::Gate::open(
        &config.data_dir,
        config.require_enrollment,
    )?);
    let routes = tonic::service::Routes::from(dashboard::router(dashboard.clone()))
        .add_service(server)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            gate,
            crate::auth::require_token,
        ))
        // Outermost: a body over its method's cap is cut off before anything else reads it.
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(crate::body_limit::Caps::new(config.max_message_bytes)),
            crate::body_limit::cap_body,
        ));
    let secret = Arc::new(crate::forward::secret(&service.inner.key));
    let router = dashboard::count_rejections(routes, dashboard).layer(
        // Outermost: a call forwarded by an edge of the deployment is its caller's
        // (`forward`), for everything below that reads the caller's address.
        axum::middleware::from_fn_with_state(secret, crate::forward::accept_forwarded),
    );
    Ok(Prepared {
        router,
        cancel,
        tasks: service.inner.tasks.clone(),
    })
}

/// Serves `router` on `listener` (gRPC over HTTP/2, the dashboard over HTTP/1.1, TLS if
/// configured, connection limits per address) until `shutdown`; `stop` is cancelled
/// when the shutdown begins, to end the dashboard's live streams.
pub(crate) async fn listen(
    listener: tokio::net::TcpListener,
    config: &CoordinatorConfig,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop: CancellationToken,
) -> Result<(), Error> {
    let routes = tonic::service::Routes::from(router);
    // At most `max_connections_per_address` from one address, idle ones closed, dead
    // peers dropped by keepalive, requests timed out (`connections`).
    let connections = connections::Connections::new(config.connection_limits());
    let mut builder = connections::server(connections.limits());
    if let Some(identity) = &config.tls {
        // ALPN offers h2 only; browsers then load the dashboard over HTTP/2 as well.
        builder = builder.tls_config(identity.server_config())?;
    }
    // Live dashboard streams never end on their own: stopping the broadcaster (`stop`)
    // closes them, so the graceful shutdown can finish.
    let result = builder
        .accept_http1(true)
        .layer(connections.layer())
        .add_routes(routes)
        .serve_with_incoming_shutdown(connections.incoming(listener), async move {
            shutdown.await;
            stop.cancel();
        })
        .await;
    tracing::info!(
        refused = connections.refused(),
        idle_closed = connections.idle_closed(),
        "connections refused past the cap per address, and closed for being idle"
    );
    result.map_err(Error::from)
}
