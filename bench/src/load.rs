//! The load generator: simulated workers that drive a coordinator over real tonic gRPC, and
//! the bare echo service that is its transport reference. This is the one module of the
//! bench that touches generated protobuf types.
//!
//! Each simulated worker has its own ed25519 identity and account, registers with a signed
//! [`protocol::Registration`], asks for work as `fallow worker` does in steady state (one
//! unit to run and enough to refill its prefetch buffer in one `RequestWork`) or one unit at
//! a time, and certifies each unit with real signed claims. A measurement has timed phases
//! with an untimed one between them, so that each timed phase costs the client one RPC per
//! request, like the echo reference it is compared with:
//! 1. [`Load::assign`]: every worker asks for work in turn until a deadline;
//! 2. [`sign`] (untimed): the claims for what was leased are signed;
//! 3. [`Load::certify`]: every certificate is submitted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::v1 as pb;
use proto::v1::coordinator_client::CoordinatorClient;
use proto::wire;
use protocol::manifest::ProjectSpec;
use protocol::{Claim, Digest, Identity, Limits, ProjectId, UnitId};
use tonic::transport::Channel;

mod echo_pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("bench.echo");
}

use echo_pb::EchoMessage;
use echo_pb::echo_client::EchoClient;
use echo_pb::echo_server::{Echo, EchoServer};

/// Bytes of each echo request: about a `WorkRequest` (a 32-byte key and a count).
const ECHO_PAYLOAD: usize = 36;

/// Simulated workers: identities and their public keys.
pub struct Fleet {
    identities: Vec<Identity>,
    keys: Vec<Vec<u8>>,
}

impl Fleet {
    /// `n` workers with fixed, distinct keys.
    pub fn new(n: usize) -> Fleet {
        let identities: Vec<Identity> = (0..n)
            .map(|i| {
                let mut seed = [0x5a; 32];
                seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
                Identity::from_seed(seed)
            })
            .collect();
        let keys = identities.iter().map(|id| id.id().0.to_vec()).collect();
        Fleet { identities, keys }
    }

    /// How many workers.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.identities.len()
    }
}

/// One unit leased to one worker.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    worker: usize,
    project: u64,
    unit: u64,
}

/// A client of the coordinator at `url` that may send a submission of any size the
/// coordinator takes.
pub(crate) async fn coordinator(url: &str) -> anyhow::Result<CoordinatorClient<Channel>> {
    Ok(CoordinatorClient::connect(url.to_string())
        .await
        .with_context(|| format!("cannot connect to {url}"))?
        .max_encoding_message_size(256 << 20))
}

/// Submits the signed `spec` with the submit `token`; returns the project's id.
pub(crate) async fn submit(
    client: &mut CoordinatorClient<Channel>,
    token: &str,
    spec: ProjectSpec,
) -> anyhow::Result<ProjectId> {
    let mut request = tonic::Request::new(pb::SubmitProjectRequest::from(spec));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let id = client
        .submit_project(request)
        .await
        .map_err(|s| anyhow::anyhow!("SubmitProject: {}", s.message()))?
        .into_inner()
        .project_id;
    Ok(ProjectId(id))
}

/// Where a project stands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// No unit is left to settle.
    pub finished: bool,
    /// Units verified and failed.
    pub verified: u64,
    pub failed: u64,
    /// Executions so far.
    pub executions: u64,
}

/// The progress of project `id`.
pub(crate) async fn progress(
    client: &mut CoordinatorClient<Channel>,
    id: ProjectId,
) -> anyhow::Result<Progress> {
    let status = client
        .list_projects(pb::ListProjectsRequest { project_id: id.0 })
        .await
        .map_err(|s| anyhow::anyhow!("ListProjects: {}", s.message()))?
        .into_inner()
        .projects
        .into_iter()
        .next()
        .with_context(|| format!("the coordinator has no project {}", id.0))?;
    Ok(Progress {
        finished: status.finished,
        verified: status.verified,
        failed: status.failed,
        executions: status.executions,
    })
}

/// A certificate ready to submit, by the fleet's worker `.1`.
pub struct Certificate(pb::CertificateSubmission, usize);

impl Certificate {
    /// The fleet's worker that submits it.
    pub fn submitter(&self) -> usize {
        self.1
    }
}

/// Stamps for every simulated worker's calls (one clock for the whole fleet: strictly
/// increasing for each worker too, as `protocol::call` requires).
static STAMPS: std::sync::LazyLock<protocol::call::Stamper> =
    std::sync::LazyLock::new(protocol::call::Stamper::default);

/// `message` as a call to `method` signed by `identity`, as `fallow worker` sends it
/// (`protocol::call`): the coordinator refuses worker calls without it.
pub(crate) fn signed<T: prost::Message>(
    identity: &Identity,
    method: &'static str,
    message: T,
) -> tonic::Request<T> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let stamp = identity.sign_call(method, STAMPS.next(now_us), &message.encode_to_vec());
    let mut request = tonic::Request::new(message);
    if let Ok(value) = stamp.encode().parse() {
        request
            .metadata_mut()
            .insert(protocol::call::CALL_HEADER, value);
    }
    request
}

/// A timed phase: how many operations and how long they took.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Operations completed.
    pub count: u64,
    /// Wall-clock time of the phase.
    pub elapsed: Duration,
}

impl Timed {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What one assignment phase ([`Load::assign`]) handed out.
#[derive(Debug)]
pub struct Assigned {
    /// Every lease, in no particular order.
    pub leases: Vec<Lease>,
    /// How many and how long.
    pub timed: Timed,
    /// A simulated worker got an empty answer before the deadline: the work it could take
    /// ran out, so the phase measured a draining queue (and ended early), not dispatch.
    pub ran_dry: bool,
}

/// Clients of one coordinator over a few shared HTTP/2 connections.
pub struct Load {
    clients: Vec<CoordinatorClient<Channel>>,
    concurrency: usize,
}

/// `channels` separate TCP connections to `addr`.
async fn connect(addr: SocketAddr, channels: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(channels);
    for _ in 0..channels {
        out.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {addr}"))?,
        );
    }
    Ok(out)
}

impl Load {
    /// Connects `channels` connections; `concurrency` requests are in flight at once.
    pub async fn connect(
        addr: SocketAddr,
        channels: usize,
        concurrency: usize,
    ) -> anyhow::Result<Load> {
        let clients = connect(addr, channels)
            .await?
            .into_iter()
            .map(|c| {
                CoordinatorClient::new(c)
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20)
            })
            .collect();
        Ok(Load {
            clients,
            concurrency,
        })
    }

    /// Connects `channels` connections spread in turn over `addrs` (the coordinators of
    /// one deployment), so that task `t`'s requests go to `addrs[t % addrs.len()]` when
    /// `channels` is a multiple of `addrs.len()`; `concurrency` requests are in flight.
    pub async fn connect_spread(
        addrs: &[SocketAddr],
        channels: usize,
        concurrency: usize,
    ) -> anyhow::Result<Load> {
        anyhow::ensure!(!addrs.is_empty(), "no coordinator to connect to");
        let mut clients = Vec::with_capacity(channels);
        for i in 0..channels {
            let mut one = Load::connect(addrs[i % addrs.len()], 1, concurrency).await?;
            clients.append(&mut one.clients);
        }
        Ok(Load {
            clients,
            concurrency,
        })
    }

    fn client(&self, task: usize) -> CoordinatorClient<Channel> {
        self.clients[task % self.clients.len()].clone()
    }

    /// Waits until the coordinator answers on every connection (it loads its store before
    /// serving; an edge answers once the scheduling coordinator does).
    pub async fn ready(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        for client in &self.clients {
            loop {
                match client
                    .clone()
                    .list_projects(pb::ListProjectsRequest { project_id: 0 })
                    .await
                {
                    Ok(_) => break,
                    Err(e) if started.elapsed() > Duration::from_secs(300) => {
                        anyhow::bail!("coordinator not ready after 300 s: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        Ok(started.elapsed())
    }

    /// Submits a project of `units` tiny units with fixed replication (no adaptive
    /// replication: the workload stays the same throughout the measurement).
    pub async fn submit_project(
        &self,
        token: &str,
        units: u64,
        replication: u32,
        quorum: u32,
    ) -> anyhow::Result<(ProjectId, Duration)> {
        let mut spec = ProjectSpec {
            name: format!("bench {units} units r{replication} q{quorum}"),
            module: artifacts::hostile::ECHO.to_vec(),
            reducer: None,
            replication,
            quorum,
            max_replicas: replication + 3,
            adaptive: false,
            error_bound: protocol::manifest::DEFAULT_ERROR_BOUND,
            limits: Limits::default(),
            units: (0..units)
                .map(|i| (format!("u{i}"), i.to_le_bytes().to_vec()))
                .collect(),
            manifest: String::new(),
            data: Vec::new(),
            data_paths: Vec::new(),
            signatures: None,
        };
        // Signed before the clock starts: signing is the submitter's cost, not dispatch.
        spec.sign(&protocol::Identity::generate()?);
        let started = Instant::now();
        let id = submit(&mut self.client(0), token, spec).await?;
        Ok((id, started.elapsed()))
    }

    /// Registers every worker of `fleet`, each with its own account and no peer address (as
    /// a worker behind NAT does): the coordinator proves a peer address by calling it back
    /// (`Peer.Prove`, up to 3 s), and the simulated workers serve none.
    pub async fn register(&self, fleet: &Arc<Fleet>) -> anyhow::Result<Timed> {
        let started = Instant::now();
        let tasks = self.spawn_per_worker(fleet, |mut client, fleet, i| async move {
            let (name, account) = (format!("bench-{i}"), format!("bench-account-{i}"));
            let registration = protocol::Registration {
                name: &name,
                account: &account,
                team: "",
                peer_addr: "",
            };
            let signature = fleet.identities[i].sign_registration(&registration);
            client
                .register_worker(signed(
                    &fleet.identities[i],
                    "RegisterWorker",
                    pb::RegisterWorkerRequest {
                        public_key: fleet.keys[i].clone(),
                        name: name.clone(),
                        peer_addr: String::new(),
                        cores: 1,
                        version: "bench".into(),
                        signature: signature.to_vec(),
                        account: account.clone(),
                        team: String::new(),
                        platform: "bench".into(),
                        fuel_rules: sandbox::meter::VERSION,
                    },
                ))
                .await
                .context("RegisterWorker")?;
            Ok::<_, anyhow::Error>(1)
        });
        let mut count = 0;
        for t in tasks {
            count += t.await??;
        }
        Ok(Timed {
            count,
            elapsed: started.elapsed(),
        })
    }

    /// Runs `f(client, fleet, worker)` for every worker, `concurrency` at a time: task `t`
    /// takes workers `t, t + concurrency, ...` in turn.
    fn spawn_per_worker<F, Fut>(
        &self,
        fleet: &Arc<Fleet>,
        f: F,
    ) -> Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>
    where
        F: Fn(CoordinatorClient<Channel>, Arc<Fleet>, usize) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
    {
        let concurrency = self.concurrency.min(fleet.len()).max(1);
        (0..concurrency)
            .map(|t| {
                let (client, fleet, f) = (self.client(t), fleet.clone(), f.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    for i in (t..fleet.len()).step_by(concurrency) {
                        n += f(client.clone(), fleet.clone(), i).await?;
                    }
                    Ok(n)
                })
            })
            .collect()
    }

    /// Workers ask for up to `per_request` units each, in turn, until `duration` has passed
    /// or the queue is empty; returns every lease handed out.
    pub async fn assign(
        &self,
        fleet: &Arc<Fleet>,
        duration: Duration,
        per_request: u32,
    ) -> anyhow::Result<Assigned> {
        let concurrency = self.concurrency.min(fleet.len()).max(1);
        let started = Instant::now();
        let deadline = started + duration;
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let (mut client, fleet) = (self.client(t), fleet.clone());
                tokio::spawn(async move {
                    let mine: Vec<usize> = (t..fleet.len()).step_by(concurrency).collect();
                    let mut leases = Vec::new();
                    let mut dry = false;
                    for &i in mine.iter().cycle() {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let r = client
                            .request_work(signed(
                                &fleet.identities[i],
                                "RequestWork",
                                pb::WorkRequest {
                                    public_key: fleet.keys[i].clone(),
                                    max_units: per_request,
                                    ..Default::default()
                                },
                            ))
                            .await
                            .context("RequestWork")?
                            .into_inner();
                        if r.assignments.is_empty() {
                            dry = true; // nothing left for this worker
                            break;
                        }
                        leases.extend(r.assignments.iter().map(|a| Lease {
                            worker: i,
                            project: a.project_id,
                            unit: a.unit_id,
                        }));
                    }
                    Ok::<_, anyhow::Error>((leases, started.elapsed(), dry))
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut elapsed = Duration::ZERO;
        let mut ran_dry = false;
        for t in tasks {
            let (leases, e, dry) = t.await??;
            all.extend(leases);
            elapsed = elapsed.max(e);
            ran_dry |= dry;
        }
        let count = all.len() as u64;
        Ok(Assigned {
            leases: all,
            timed: Timed { count, elapsed },
            ran_dry,
        })
    }

    /// Submits every certificate, one a `SubmitCertificate` call; counts those accepted.
    pub async fn certify(
        &self,
        fleet: &Arc<Fleet>,
        certificates: Vec<Certificate>,
    ) -> anyhow::Result<Timed> {
        self.in_parallel(
            fleet,
            certificates,
            |mut client, fleet, Certificate(c, worker)| async move {
                let ack = client
                    .submit_certificate(signed(&fleet.identities[worker], "SubmitCertificate", c))
                    .await
                    .context("SubmitCertificate")?
                    .into_inner();
                Ok((client, u64::from(ack.accepted)))
            },
        )
        .await
    }

    /// Submits every certificate in `SubmitCertificates` calls of up to `per_call`, each
    /// call holding one worker's certificates (as `fallow worker`'s outbox sends those that
    /// finish together); counts those accepted. A refused certificate fails the phase.
    pub async fn certify_batched(
        &self,
        fleet: &Arc<Fleet>,
        certificates: Vec<Certificate>,
        per_call: usize,
    ) -> anyhow::Result<Timed> {
        let mut by_worker: BTreeMap<usize, Vec<pb::CertificateSubmission>> = BTreeMap::new();
        for Certificate(c, worker) in certificates {
            by_worker.entry(worker).or_default().push(c);
        }
        let mut batches: Vec<(usize, Vec<pb::CertificateSubmission>)> = Vec::new();
        for (worker, mut mine) in by_worker {
            while !mine.is_empty() {
                let rest = mine.split_off(per_call.max(1).min(mine.len()));
                batches.push((worker, std::mem::replace(&mut mine, rest)));
            }
        }
        self.in_parallel(
            fleet,
            batches,
            |mut client, fleet, (worker, certificates)| async move {
                let sent = certificates.len();
                let batch = pb::CertificateBatch {
                    submitter_key: fleet.keys[worker].clone(),
                    certificates,
                };
                let acks = client
                    .submit_certificates(signed(
                        &fleet.identities[worker],
                        "SubmitCertificates",
                        batch,
                    ))
                    .await
                    .context("SubmitCertificates")?
                    .into_inner()
                    .acks;
                anyhow::ensure!(
                    acks.len() == sent,
                    "{} answers to {sent} certificates",
                    acks.len()
                );
                let mut accepted = 0;
                for ack in &acks {
                    if let Some(r) = &ack.refused {
                        anyhow::bail!("a certificate was refused: {}", r.message);
                    }
                    accepted += u64::from(ack.accepted);
                }
                Ok((client, accepted))
            },
        )
        .await
    }

    /// Spreads `items` over the in-flight tasks (round robin), each sending its share one
    /// after the other with `send`, which returns the client and what it counts; the
    /// whole phase timed.
    async fn in_parallel<T, F, Fut>(
        &self,
        fleet: &Arc<Fleet>,
        items: Vec<T>,
        send: F,
    ) -> anyhow::Result<Timed>
    where
        T: Send + 'static,
        F: Fn(CoordinatorClient<Channel>, Arc<Fleet>, T) -> Fut + Copy + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<(CoordinatorClient<Channel>, u64)>> + Send,
    {
        let concurrency = self.concurrency.min(items.len()).max(1);
        let mut shares: Vec<Vec<T>> = (0..concurrency).map(|_| Vec::new()).collect();
        for (i, item) in items.into_iter().enumerate() {
            shares[i % concurrency].push(item);
        }
        let started = Instant::now();
        let tasks: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(t, share)| {
                let (mut client, fleet) = (self.client(t), fleet.clone());
                tokio::spawn(async move {
                    let mut counted = 0u64;
                    for item in share {
                        let (back, n) = send(client, fleet.clone(), item).await?;
                        client = back;
                        counted += n;
                    }
                    Ok::<_, anyhow::Error>(counted)
                })
            })
            .collect();
        let mut count = 0;
        for t in tasks {
            count += t.await??;
        }
        Ok(Timed {
            count,
            elapsed: started.elapsed(),
        })
    }
}

/// Signs the claims for `leases` (untimed): one certificate per unit that has `quorum`
/// replicas leased, with `quorum` matching claims, submitted by its first replica.
pub fn sign(fleet: &Fleet, leases: &[Lease], quorum: usize) -> Vec<Certificate> {
    let mut by_unit: BTreeMap<u64, Vec<Lease>> = BTreeMap::new();
    for l in leases {
        by_unit.entry(l.unit).or_default().push(*l);
    }
    let units: Vec<Vec<Lease>> = by_unit
        .into_values()
        .filter(|replicas| replicas.len() >= quorum)
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = units.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = units
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|replicas| {
                            let first = replicas[0];
                            let output = format!("result of unit {}\n", first.unit).into_bytes();
                            let digest = Digest::of(&output);
                            let claims: Vec<Claim> = replicas[..quorum]
                                .iter()
                                .map(|l| {
                                    Claim::sign(
                                        &fleet.identities[l.worker],
                                        ProjectId(l.project),
                                        UnitId(l.unit),
                                        digest,
                                        1_000,
                                    )
                                })
                                .collect();
                            Certificate(
                                pb::CertificateSubmission {
                                    unit_id: first.unit,
                                    claims: wire::claims_to_wire(&claims),
                                    output,
                                    submitter_key: fleet.keys[first.worker].clone(),
                                },
                                first.worker,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The reference: `concurrency` tasks over `channels` connections call the echo service
/// at `addr` until `duration` has passed.
pub async fn echo(
    addr: SocketAddr,
    channels: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Timed> {
    let clients: Vec<EchoClient<Channel>> = connect(addr, channels)
        .await?
        .into_iter()
        .map(EchoClient::new)
        .collect();
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let mut client = clients[t % clients.len()].clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let r = client
                        .echo(EchoMessage {
                            payload: vec![t as u8; ECHO_PAYLOAD],
                        })
                        .await
                        .context("Echo")?;
                    anyhow::ensure!(r.into_inner().payload.len() == ECHO_PAYLOAD, "bad echo");
                    n += 1;
                }
                Ok::<_, anyhow::Error>(n)
            })
        })
        .collect();
    let mut count = 0;
    for t in tasks {
        count += t.await??;
    }
    Ok(Timed {
        count,
        elapsed: started.elapsed(),
    })
}

struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<EchoMessage>,
    ) -> Result<tonic::Response<EchoMessage>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

/// Serves the echo service on `listener` until `stop` completes.
pub async fn serve_echo(
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .serve_with_incoming_shutdown(
            // TCP_NODELAY, as the coordinator's sockets.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop,
        )
        .await?;
    Ok(())
}
