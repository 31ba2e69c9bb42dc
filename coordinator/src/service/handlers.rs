//! The tonic handlers (`impl Coordinator`): each converts its request to domain types at
//! the boundary, authenticates worker calls, and drives the scheduler and the writer.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::coordinator_server::Coordinator;
use proto::wire;
use protocol::assignment::{Assignment, Signed};
use protocol::call::{self, CallStamp};
use protocol::evidence::Evidence;
use protocol::manifest::ProjectSpec;
use protocol::provenance::SubmitterKey;
use protocol::{Certificate, Digest, ProjectId, UnitId, WorkerId};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::registry::{BACKED_CALLS_PER_LEASE, MAX_BACKED_CALLS, WorkerEntry, subnet_of};
use super::{CoordinatorService, to_status};
use crate::dashboard::ExecutionFailure;
use crate::fleet::{Reported, RunState};
use crate::scheduler::{Aggregate, Change, SignedCertificate, UnitStatus, WorkerInfo};
use crate::store::{LeasedInput, Store, StoredWorker, Write};
use crate::{Error, now_ms};

/// Most units one work request may lease.
pub(super) const MAX_UNITS_PER_REQUEST: u32 = 64;
/// Most submitter keys a worker may list in `WorkRequest.accept_submitters`.
pub(super) const MAX_ACCEPTED_SUBMITTERS: usize = 256;
/// How long an idle worker should wait before asking again.
pub(super) const IDLE_RETRY_MS: u64 = 500;

/// Longest account or team name.
pub(super) const MAX_ACCOUNT_LEN: usize = 64;

/// Checks a worker, account or team name ([`Error::BadName`]).
pub(super) fn check_name(what: &'static str, value: &str, optional: bool) -> Result<(), Status> {
    if (value.is_empty() && optional)
        || (!value.is_empty()
            && value.len() <= MAX_ACCOUNT_LEN
            && value.trim() == value
            && !value.chars().any(char::is_control))
    {
        return Ok(());
    }
    Err(to_status(Error::BadName {
        what,
        value: value.to_string(),
        max: MAX_ACCOUNT_LEN,
    }))
}

pub(super) fn worker_key(bytes: &[u8]) -> Result<WorkerId, Status> {
    WorkerId::from_slice("public_key", bytes).map_err(|e| to_status(e.into()))
}

/// Authenticates a worker call (`protocol::call`): its `fallow-call` header must be the
/// signature of the key the request names (`key`) over `method` and the encoded request.
/// Pure CPU, done before the state lock and before the rate limiter, so a request naming
/// someone else's key spends neither the victim's rate nor the lock; the replay check
/// follows under the lock ([`CoordinatorService::fresh`]).
pub(super) fn authenticate<T: prost::Message>(
    method: &'static str,
    request: &Request<T>,
    key: &[u8],
) -> Result<(WorkerId, CallStamp), Status> {
    let worker = worker_key(key)?;
    let header = request
        .metadata()
        .get(call::CALL_HEADER)
        .ok_or_else(|| to_status(Error::UnsignedCall { method }))?
        .to_str()
        .map_err(|_| {
            to_status(Error::BadCall {
                method,
                problem: format!("the {} header is not ASCII", call::CALL_HEADER),
            })
        })?;
    let bad = |e: protocol::Error| {
        to_status(Error::BadCall {
            method,
            problem: e.to_string(),
        })
    };
    let stamp = CallStamp::parse(header).map_err(bad)?;
    call::verify(worker, method, &stamp, &request.get_ref().encode_to_vec()).map_err(bad)?;
    Ok((worker, stamp))
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::ResultItem, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> Coordinator for CoordinatorService<S> {
    type GetResultsStream = ResultStream;
    type GetDataStream = super::data::DataStream;

    async fn has_data(
        &self,
        request: Request<pb::HasDataRequest>,
    ) -> Result<Response<pb::HasDataResponse>, Status> {
        let present = self.data_present(request.into_inner().digests).await?;
        Ok(Response::new(pb::HasDataResponse { present }))
    }

    async fn put_data(
        &self,
        request: Request<tonic::Streaming<pb::DataChunk>>,
    ) -> Result<Response<pb::PutDataResponse>, Status> {
        self.receive_data(request).await
    }

    async fn get_data(
        &self,
        request: Request<pb::GetDataRequest>,
    ) -> Result<Response<Self::GetDataStream>, Status> {
        // Held by the stream task until the download ends (`send_data`).
        let admitted = self
            .inner
            .downloads
            .admit(request.remote_addr())
            .map_err(to_status)?;
        Ok(Response::new(
            self.send_data(request.into_inner(), admitted).await?,
        ))
    }

    async fn submit_project(
        &self,
        request: Request<pb::SubmitProjectRequest>,
    ) -> Result<Response<pb::SubmitProjectResponse>, Status> {
        self.writable()?;
        let request = request.into_inner();
        let once = request.once;
        let spec = ProjectSpec::try_from(request).map_err(|e| to_status(e.into()))?;
        self.room_for(&spec)?;
        // Every data file must be here whole before the project is: a worker could not
        // fetch one that is not.
        if !spec.data.is_empty() {
            let digests: Vec<Digest> = spec.data.iter().map(|f| f.digest).collect();
            let held = self
                .inner
                .store
                .data_held(&digests)
                .await
                .map_err(to_status)?;
            for f in &spec.data {
                match held.get(&f.digest) {
                    Some(&size) if size == f.size => {}
                    _ => {
                        return Err(to_status(Error::DataNotHeld(format!(
                            "{} ({}, {} bytes)",
                            f.name,
                            f.digest.to_hex(),
                            f.size
                        ))));
                    }
                }
            }
        }
        // Compiling a module takes tens of milliseconds: keep it off the async threads.
        let sandbox = self.inner.sandbox.clone();
        let (spec, signer) = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            // Every unit's signature, before anything else: a project its submitter did
            // not sign as sent is refused whole, naming the first bad unit.
            let key = spec.verify_signatures().map_err(|e| to_status(e.into()))?;
            let signer = protocol::provenance::Signer {
                key,
                terms: spec.terms(),
            };
            sandbox.inspect(&spec.module).map_err(|error| {
                to_status(Error::BadWasm {
                    field: "wasm",
                    error,
                })
            })?;
            if let Some(r) = &spec.reducer {
                sandbox.inspect(r).map_err(|error| {
                    to_status(Error::BadWasm {
                        field: "[reduce].wasm",
                        error,
                    })
                })?;
            }
            Ok((spec, signer))
        })
        .await
        .map_err(|e| to_status(Error::CheckPanicked(e.to_string())))??;
        let module = Digest::of(&spec.module);
        let duplicates = self.duplicates_of(&spec, module, signer.terms).await?;
        let duplicate_ids: Vec<u64> = duplicates.iter().map(|p| p.0).collect();
        if once && let Some(first) = duplicates.first() {
            tracing::info!(project = %first, name = %spec.name, "submitted again with --once: nothing created");
            return Ok(Response::new(pb::SubmitProjectResponse {
                project_id: first.0,
                duplicates: duplicate_ids,
                reused: true,
            }));
        }
        let reducer = spec.reducer.as_deref().map(Digest::of);
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        let (id, units) = self
            .inner
            .store
            .insert_project(&spec, module, reducer, now)
            .await
            .map_err(to_status)?;
        state.sched.add_project(crate::scheduler::Project {
            id,
            name: spec.name.trim().to_string(),
            replication: spec.replication,
            quorum: spec.quorum,
            max_replicas: spec.max_replicas,
            limits: spec.limits,
            module,
            reducer,
            stats: crate::scheduler::ProjectStats {
                total: units.len() as u64,
                ..Default::default()
            },
            aggregate: Aggregate::Pending,
            adaptive: spec.adaptive,
            error_bound: spec.error_bound,
            signer: Some(signer),
            data: spec.data.clone().into(),
            control: Default::default(),
        });
        for unit in units.iter().copied() {
            state.sched.add_unit(
                unit,
                id,
                UnitStatus::Pending,
                spec.replication,
                spec.quorum,
                Vec::new(),
                Vec::new(),
                now,
            );
        }
        tracing::info!(project = %id, name = %spec.name, units = units.len(), submitter = %signer.key, "project accepted");
        self.inner.dashboard.changed();
        if !duplicates.is_empty() {
            tracing::info!(project = %id, earlier = ?duplicate_ids, "the same module, inputs and terms were submitted before");
        }
        Ok(Response::new(pb::SubmitProjectResponse {
            project_id: id.0,
            duplicates: duplicate_ids,
            reused: false,
        }))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let id = request.into_inner().project_id;
        let projects = self.status_of((id != 0).then_some(ProjectId(id))).await?;
        Ok(Response::new(pb::ListProjectsResponse {
            projects: projects.iter().map(pb::ProjectStatus::from).collect(),
        }))
    }

    async fn get_results(
        &self,
        request: Request<pb::GetResultsRequest>,
    ) -> Result<Response<ResultStream>, Status> {
        let remote = request.remote_addr();
        let request = request.into_inner();
        let project = ProjectId(request.project_id);
        if self
            .inner
            .state
            .lock()
            .await
            .sched
            .project(project)
            .is_none()
        {
            return Err(to_status(Error::UnknownProject(project)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let service = self.clone();
        // A follower's place is held for as long as its stream runs.
        let following = if request.follow {
            Some(self.inner.followers.admit(remote).map_err(to_status)?)
        } else {
            None
        };
        tokio::spawn(async move {
            Self::send_results(service, project, request.follow, tx).await;
            drop(following);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        self.writable()?;
        let (id, stamp) = authenticate("RegisterWorker", &request, &request.get_ref().public_key)?;
        let subnet = subnet_of(request.remote_addr());
        self.inner.registrations.admit(subnet.as_deref())?;
        let r = request.into_inner();
        self.admit(id)?;
        let registration = protocol::Registration {
            name: &r.name,
            account: &r.account,
            team: &r.team,
            peer_addr: &r.peer_addr,
        };
        protocol::identity::verify_registration(id, &registration, &r.signature)
            .map_err(|e| to_status(e.into()))?;
        check_name("worker name", &r.name, false)?;
        check_name("account", &r.account, false)?;
        check_name("team", &r.team, true)?;
        if r.platform.len() > MAX_ACCOUNT_LEN || r.platform.chars().any(char::is_control) {
            return Err(to_status(Error::BadPlatform {
                max: MAX_ACCOUNT_LEN,
            }));
        }
        if r.fuel_rules != sandbox::meter::VERSION {
            return Err(to_status(Error::FuelRules {
                worker: r.fuel_rules,
                ours: sandbox::meter::VERSION,
            }));
        }
        if !r.peer_addr.is_empty() && r.peer_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(to_status(Error::BadPeerAddr(r.peer_addr)));
        }
        let cores = r.cores.clamp(1, 1024);
        // A replayed registration is refused before it costs a proof round trip.
        Self::fresh(&mut *self.inner.state.lock().await, id, &stamp)?;
        // Vouch only for an address the worker proves it answers at (outside the lock: a
        // network round trip). Otherwise it works on without inbound connections.
        let (peer_addr, peer_warning) = if r.peer_addr.is_empty() {
            (String::new(), String::new())
        } else {
            match self.prove_peer(id, &r.peer_addr).await {
                Ok(()) => (r.peer_addr.clone(), String::new()),
                Err(why) => {
                    tracing::warn!(worker = %id, peer_addr = %r.peer_addr, "peer address not vouched for: {why}; registered without inbound connections");
                    (String::new(), why)
                }
            }
        };
        let now = now_ms();
        let credential = peer_addr
            .parse()
            .ok()
            .map(|addr| protocol::membership::Credential::issue(&self.inner.key, id, addr, now));
        let mut state = self.inner.state.lock().await;
        let worker = StoredWorker {
            id,
            name: r.name.clone(),
            peer_addr: peer_addr.clone(),
            cores,
            account: r.account.clone(),
            team: r.team.clone(),
            platform: r.platform.clone(),
            subnet: subnet.clone(),
        };
        let committed = self.queue(vec![(Write::Worker(worker.clone()), now)]);
        state.sched.register(
            id,
            &WorkerInfo {
                account: r.account.clone(),
                team: r.team.clone(),
                subnet,
            },
        );
        let listed = !peer_addr.is_empty();
        let previous_backed = state.workers.get(&id).map_or(0, |w| w.backed);
        let previous = state.workers.insert(
            id,
            WorkerEntry {
                peer_addr,
                last_seen: now,
                account: r.account.clone(),
                team: r.team.clone(),
                backed: previous_backed,
                reported: Reported::default(),
                vouched_until: credential.as_ref().map_or(0, |c| c.expires_ms),
            },
        );
        if listed {
            // Only a reachable worker changes what workers behind NAT need to know.
            state.peers_version += 1;
            if previous.is_none_or(|p| p.peer_addr.is_empty()) && !state.listed.contains(&id) {
                state.listed.push(id);
            }
        }
        let peers = self.peers_for(&mut state, id, now);
        drop(state);
        Self::committed(committed).await?;
        self.inner.dashboard.worker_registered(&worker);
        tracing::info!(worker = %id, name = %r.name, account = %r.account, cores, "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse {
            heartbeat_ms: (self.inner.lease_ms / 4).max(100),
            lease_ms: self.inner.lease_ms,
            peers,
            now_ms: now_ms(),
            coordinator_key: self.inner.key.id().0.to_vec(),
            membership_credential: credential.map(|c| c.to_bytes()).unwrap_or_default(),
            peer_warning,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (id, stamp) = authenticate("Heartbeat", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        if Self::known_worker(&mut state, id, now).is_err() {
            return Ok(Response::new(pb::HeartbeatResponse {
                unknown_worker: true,
                now_ms: now,
                ..Default::default()
            }));
        }
        Self::fresh(&mut state, id, &stamp)?;
        self.admit_backed(&mut state, id)?;
        let held: Vec<UnitId> = r.held_units.iter().map(|&u| UnitId(u)).collect();
        let reported = Reported::from_wire(&r.run_state, &r.state_reason);
        if let Some(w) = state.workers.get_mut(&id)
            && w.reported != reported
        {
            match reported.state {
                RunState::Suspended => {
                    tracing::info!(worker = %id, account = %w.account, "worker suspended: {}", reported.reason)
                }
                _ if w.reported.state == RunState::Suspended => {
                    tracing::info!(worker = %id, account = %w.account, "worker no longer suspended")
                }
                _ => {}
            }
            w.reported = reported;
            self.inner.dashboard.changed();
        }
        let settled = state.sched.heartbeat(id, &held, now);
        let version = state.peers_version;
        let peers = if r.peers_version != version {
            self.peers_for(&mut state, id, now)
        } else {
            Vec::new()
        };
        // Renew the membership credential of a vouched worker well before it expires.
        let credential = state.workers.get_mut(&id).and_then(|w| {
            let due = w.vouched_until.saturating_sub(now) < protocol::membership::RENEW_BEFORE_MS;
            let addr = w.peer_addr.parse().ok().filter(|_| due)?;
            let c = protocol::membership::Credential::issue(&self.inner.key, id, addr, now);
            w.vouched_until = c.expires_ms;
            Some(c.to_bytes())
        });
        Ok(Response::new(pb::HeartbeatResponse {
            settled_units: settled.iter().map(|u| u.0).collect(),
            peers_version: version,
            peers,
            unknown_worker: false,
            now_ms: now,
            membership_credential: credential.unwrap_or_default(),
        }))
    }

    async fn request_work(
        &self,
        request: Request<pb::WorkRequest>,
    ) -> Result<Response<pb::WorkResponse>, Status> {
        self.writable()?;
        let (id, stamp) = authenticate("RequestWork", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        let max = r.max_units.clamp(1, MAX_UNITS_PER_REQUEST) as usize;
        let accept_keys = r
            .accept_submitters
            .iter()
            .take(MAX_ACCEPTED_SUBMITTERS + 1)
            .map(|k| SubmitterKey::from_slice("WorkRequest.accept_submitters", k))
            .collect::<Result<HashSet<_>, _>>()
            .map_err(|e| to_status(e.into()))?;
        if accept_keys.len() > MAX_ACCEPTED_SUBMITTERS {
            return Err(to_status(Error::TooManySubmitters(MAX_ACCEPTED_SUBMITTERS)));
        }
        let allow_unsigned = r.allow_unsigned;
        let accept = move |p: &crate::scheduler::Project| match &p.signer {
            Some(s) => accept_keys.is_empty() || accept_keys.contains(&s.key),
            None => allow_unsigned,
        };
        let now = now_ms();
        let (leases, projects, committed, capped) = {
            let mut state = self.inner.state.lock().await;
            Self::known_worker(&mut state, id, now)?;
            Self::fresh(&mut state, id, &stamp)?;
            // Asking for the next unit is part of the work a lease pays for: a worker on
            // tiny units asks as often as it finishes one.
            self.admit_backed(&mut state, id)?;
            let assigned = state.sched.assign_from(id, max, now, &accept);
            let capped = assigned.capped;
            let leases = assigned.leases;
            if let Some(entry) = state.workers.get_mut(&id) {
                let earned = BACKED_CALLS_PER_LEASE.saturating_mul(leases.len() as u32);
                entry.backed = entry.backed.saturating_add(earned).min(MAX_BACKED_CALLS);
            }
            self.inner.dashboard.assigned(leases.len());
            let committed = if leases.is_empty() {
                None
            } else {
                let rows: Vec<(UnitId, WorkerId)> = leases.iter().map(|l| (l.unit, id)).collect();
                Some(self.queue(vec![
                    (Write::Assignments(rows), now),
                    (Write::Changes(assigned.changes), now),
                ]))
            };
            let projects: HashMap<ProjectId, crate::scheduler::Project> = leases
                .iter()
                .filter_map(|l| state.sched.project(l.project).map(|p| (p.id, p.clone())))
                .collect();
            (leases, projects, committed, capped)
        };
        if let Some(committed) = committed {
            Self::committed(committed).await?;
        }
        // Every leased unit's name and input in one query.
        let ids: Vec<UnitId> = leases.iter().map(|l| l.unit).collect();
        let mut inputs: HashMap<UnitId, LeasedInput> = if ids.is_empty() {
            HashMap::new()
        } else {
            self.inner
                .store
                .unit_inputs(&ids)
                .await
                .map_err(to_status)?
                .into_iter()
                .map(|u| (u.unit, u))
                .collect()
        };
        let mut assignments = Vec::with_capacity(leases.len());
        for lease in leases {
            let Some(p) = projects.get(&lease.project) else {
                continue;
            };
            let LeasedInput {
                name,
                mut input,
                signature,
                ..
            } = inputs
                .remove(&lease.unit)
                .ok_or_else(|| to_status(Error::UnknownUnit(lease.unit)))?;
            if self.inner.tamper_inputs {
                input.push(b'!');
            }
            // A signed project's units all carry a signature (`SubmitProject` refuses one
            // without), so both are set or neither.
            let signed = p
                .signer
                .zip(signature)
                .map(|(signer, signature)| Signed { signer, signature });
            let assignment = Assignment {
                project: lease.project,
                unit: lease.unit,
                name,
                input,
                module: p.module,
                limits: p.limits,
                quorum: p.quorum,
                lease: Duration::from_millis(self.inner.lease_ms),
                data: p.data.to_vec(),
                signed,
                // Boards file the worker's commitment only with this (protocol::ticket, which
                // explains the expiry).
                ticket: Some(
                    self.inner.key.sign_ticket(
                        id,
                        lease.project,
                        lease.unit,
                        lease
                            .until
                            .saturating_add(protocol::ticket::GRACE_MS.max(self.inner.lease_ms)),
                    ),
                ),
            };
            assignments.push(pb::Assignment::from(&assignment));
        }
        let retry_after_ms = if assignments.is_empty() {
            IDLE_RETRY_MS
        } else {
            0
        };
        let reason = match capped {
            Some(limit) if assignments.is_empty() => format!(
                "this worker holds {limit} unfinished units of projects with a quorum, its limit \
                 for now (it rises by one with each of its results another account confirms)"
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::WorkResponse {
            assignments,
            retry_after_ms,
            reason,
        }))
    }

    async fn get_module(
        &self,
        request: Request<pb::GetModuleRequest>,
    ) -> Result<Response<pb::GetModuleResponse>, Status> {
        let remote = request.remote_addr();
        let r = request.into_inner();
        let digest = Digest::from_slice("digest", &r.digest).map_err(|e| to_status(e.into()))?;
        // A metered copy by other rules would give other fuel than every native replica's.
        if r.fuel_rules != 0 && r.fuel_rules != sandbox::meter::VERSION {
            return Err(to_status(Error::FuelRules {
                worker: r.fuel_rules,
                ours: sandbox::meter::VERSION,
            }));
        }
        let store = self.inner.store.as_ref();
        match self.inner.modules.serve(store, digest, remote).await? {
            Some((module, sending)) => {
                let module = if r.fuel_rules == 0 {
                    module
                } else {
                    self.inner
                        .modules
                        .metered(digest, r.canonical_nans, module)
                        .await?
                };
                let mut response = Response::new(pb::GetModuleResponse { module });
                // The caller's turn and the module's share of the send budget, held until
                // the response has been sent (`connections::KeepUntilSent`).
                response.extensions_mut().insert(sending);
                Ok(response)
            }
            None => Err(to_status(Error::UnknownModule(digest))),
        }
    }

    async fn report_failure(
        &self,
        request: Request<pb::FailureReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.writable()?;
        let (id, stamp) = authenticate("ReportFailure", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        let failure = wire::failure_from_wire(r.kind, r.detail).map_err(|e| to_status(e.into()))?;
        let unit = UnitId(r.unit_id);
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, id, now)?;
        Self::fresh(&mut state, id, &stamp)?;
        self.admit_backed(&mut state, id)?;
        tracing::info!(%unit, worker = %id, reason = %failure, "execution failed");
        if let Some(project) = state.sched.unit_project(unit) {
            self.inner.dashboard.execution_failed(
                ExecutionFailure {
                    at_ms: now,
                    project,
                    unit,
                    worker: id,
                    reason: failure.to_string(),
                },
                failure.kind.as_str(),
            );
        }
        let changes = state
            .sched
            .report_failure(id, unit, failure)
            .map_err(to_status)?;
        self.commit(state, changes, now).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn submit_certificate(
        &self,
        request: Request<pb::CertificateSubmission>,
    ) -> Result<Response<pb::CertificateAck>, Status> {
        self.certificate(request).await
    }

    async fn submit_certificates(
        &self,
        request: Request<pb::CertificateBatch>,
    ) -> Result<Response<pb::CertificateAcks>, Status> {
        self.certificates(request).await
    }

    async fn report_dispute(
        &self,
        request: Request<pb::Dispute>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.writable()?;
        let (reporter, stamp) =
            authenticate("ReportDispute", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        let claims = wire::claims_from_wire(r.claims).map_err(|e| to_status(e.into()))?;
        let unit = UnitId(r.unit_id);
        let checked = SignedCertificate::check(Certificate {
            unit,
            claims: claims.clone(),
        })
        .map_err(|e| {
            tracing::warn!(%unit, worker = %reporter, "dispute rejected: {e}");
            to_status(e)
        })?;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, reporter, now)?;
        Self::fresh(&mut state, reporter, &stamp)?;
        self.admit_backed(&mut state, reporter)?;
        let submitted = state.sched.submit_checked(&checked, None).map_err(|e| {
            tracing::warn!(%unit, worker = %reporter, "dispute rejected: {e}");
            to_status(e)
        })?;
        let raised = submitted
            .changes
            .iter()
            .any(|c| matches!(c, Change::Target { .. }));
        if raised {
            tracing::info!(%unit, claims = claims.len(), "claims disagree; extra replica issued");
        }
        self.inner.dashboard.dispute(claims.len(), raised);
        self.commit(state, submitted.changes, now).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_misbehaviour(
        &self,
        request: Request<pb::Evidence>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.writable()?;
        let (reporter, stamp) = authenticate(
            "ReportMisbehaviour",
            &request,
            &request.get_ref().reporter_key,
        )?;
        let r = request.into_inner();
        let evidence = Evidence::try_from(r).map_err(|e| to_status(e.into()))?;
        let (offender, unit) = evidence.offender().map_err(|e| to_status(e.into()))?;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, reporter, now)?;
        Self::fresh(&mut state, reporter, &stamp)?;
        self.admit_backed(&mut state, reporter)?;
        let changes = state
            .sched
            .misbehaviour(offender, unit)
            .map_err(to_status)?;
        tracing::warn!(%unit, worker = %offender, reporter = %reporter, "signed proof of a changed answer: trust reset");
        self.inner.dashboard.changed();
        self.commit(state, changes, now).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn list_accounts(
        &self,
        _request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let (accounts, teams) = self.inner.store.leaderboard().await.map_err(to_status)?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts
                .into_iter()
                .map(|a| pb::AccountInfo {
                    name: a.name,
                    team: a.team,
                    credit: a.credit,
                    verified: a.verified,
                    workers: a.workers,
                })
                .collect(),
            teams: teams
                .into_iter()
                .map(|t| pb::TeamInfo {
                    name: t.name,
                    credit: t.credit,
                    accounts: t.accounts,
                })
                .collect(),
        }))
    }

    async fn control_project(
        &self,
        request: Request<pb::ControlRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        self.control(request).await
    }

    async fn extend_project(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        self.extend(request).await
    }

    async fn relay_exchange(
        &self,
        request: Request<pb::RelayExchangeRequest>,
    ) -> Result<Response<pb::BoardViews>, Status> {
        let (id, stamp) = authenticate("RelayExchange", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        let board =
            WorkerId::from_slice("board_key", &r.board_key).map_err(|e| to_status(e.into()))?;
        let exchange = r.exchange.unwrap_or_default();
        crate::relay::check_own(id, &exchange).map_err(to_status)?;
        let now = now_ms();
        let addr = {
            let mut state = self.inner.state.lock().await;
            Self::known_worker(&mut state, id, now)?;
            Self::fresh(&mut state, id, &stamp)?;
            self.admit_backed(&mut state, id)?;
            // Only a live member the coordinator vouched for (what the peer list names):
            // the relay is no way to reach any other address.
            state
                .workers
                .get(&board)
                .filter(|w| now.saturating_sub(w.last_seen) <= self.inner.lease_ms)
                .and_then(|w| w.peer_addr.parse::<std::net::SocketAddr>().ok())
                .ok_or_else(|| to_status(Error::UnknownBoard(board)))?
        };
        let views = self.inner.relay.exchange(id, board, addr, exchange).await;
        self.inner.dashboard.relayed(match &views {
            Ok(_) => "answered",
            Err(s) if s.code() == tonic::Code::Unavailable => "unreachable",
            Err(_) => "refused",
        });
        Ok(Response::new(views?))
    }

    async fn return_units(
        &self,
        request: Request<pb::ReturnUnitsRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.writable()?;
        let (id, stamp) = authenticate("ReturnUnits", &request, &request.get_ref().public_key)?;
        let r = request.into_inner();
        self.admit(id)?;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, id, now)?;
        Self::fresh(&mut state, id, &stamp)?;
        let returned = r.unit_ids.len();
        // Work handed back earns no calls: leasing and returning must not farm them.
        if let Some(entry) = state.workers.get_mut(&id) {
            let forfeit =
                BACKED_CALLS_PER_LEASE.saturating_mul(returned.min(u32::MAX as usize) as u32);
            entry.backed = entry.backed.saturating_sub(forfeit);
        }
        let mut changes = Vec::new();
        for unit in r.unit_ids {
            changes.extend(state.sched.give_back(id, UnitId(unit)));
        }
        tracing::info!(worker = %id, units = returned, "units handed back");
        self.inner.dashboard.changed();
        self.commit(state, changes, now).await?;
        Ok(Response::new(pb::Ack {}))
    }
}
