//! The worker's gRPC boundary, the only module here that touches `proto` types: a client
//! for the coordinator speaking domain types, the `Peer` service other workers call, and
//! the client side of that service.

use std::time::Duration;

use proto::v1 as pb;
use protocol::{Claim, Digest, Failure, Identity, Limits, ProjectId, UnitId, WorkerId, wire};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::Error;

/// A unit leased to this worker.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// Project.
    pub project: ProjectId,
    /// Unit.
    pub unit: UnitId,
    /// Unit name (part of the random seed).
    pub name: String,
    /// stdin.
    pub input: Vec<u8>,
    /// Module digest.
    pub module: Digest,
    /// Sandbox limits.
    pub limits: Limits,
    /// Matching claims needed.
    pub quorum: u32,
}

/// A peer worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its key.
    pub id: WorkerId,
    /// Its peer service address.
    pub addr: String,
}

/// What registration told us.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Peers known now.
    pub peers: Vec<PeerInfo>,
}

/// What a heartbeat told us.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatReply {
    /// Held units to drop.
    pub settled: Vec<UnitId>,
    /// New peer list with its version, when it changed.
    pub peers: Option<(u64, Vec<PeerInfo>)>,
    /// The coordinator does not know us: register again.
    pub unknown_worker: bool,
}

/// The coordinator, seen from a worker. Cheap to clone; reconnects by itself.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    inner: pb::coordinator_client::CoordinatorClient<Channel>,
    key: Vec<u8>,
}

fn rpc(call: &'static str) -> impl FnOnce(Status) -> Error {
    move |status| Error::Rpc { call, status }
}

fn peers_from_wire(peers: Vec<pb::PeerInfo>) -> Vec<PeerInfo> {
    peers
        .into_iter()
        .filter_map(|p| {
            Some(PeerInfo {
                id: WorkerId::from_slice("PeerInfo.public_key", &p.public_key).ok()?,
                addr: p.addr,
            })
        })
        .collect()
}

impl CoordinatorClient {
    /// A client for `url` (e.g. `http://127.0.0.1:7070`); connects on first use.
    pub fn new(url: &str, worker: WorkerId) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::Config(format!("--coordinator {url:?} is not a valid URL: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        let inner = pb::coordinator_client::CoordinatorClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        Ok(CoordinatorClient {
            inner,
            key: worker.0.to_vec(),
        })
    }

    /// Registers this worker.
    pub async fn register(
        &self,
        identity: &Identity,
        name: &str,
        peer_addr: &str,
        cores: u32,
    ) -> Result<Registration, Error> {
        let r = self
            .inner
            .clone()
            .register_worker(pb::RegisterWorkerRequest {
                public_key: self.key.clone(),
                name: name.to_string(),
                peer_addr: peer_addr.to_string(),
                cores,
                version: env!("CARGO_PKG_VERSION").to_string(),
                signature: identity.sign_registration(name, peer_addr).to_vec(),
            })
            .await
            .map_err(rpc("RegisterWorker"))?
            .into_inner();
        Ok(Registration {
            heartbeat: Duration::from_millis(r.heartbeat_ms.clamp(100, 600_000)),
            peers: peers_from_wire(r.peers),
        })
    }

    /// Renews the leases of `held`.
    pub async fn heartbeat(
        &self,
        held: &[UnitId],
        peers_version: u64,
    ) -> Result<HeartbeatReply, Error> {
        let r = self
            .inner
            .clone()
            .heartbeat(pb::HeartbeatRequest {
                public_key: self.key.clone(),
                held_units: held.iter().map(|u| u.0).collect(),
                peers_version,
            })
            .await
            .map_err(rpc("Heartbeat"))?
            .into_inner();
        Ok(HeartbeatReply {
            settled: r.settled_units.into_iter().map(UnitId).collect(),
            peers: (r.peers_version != peers_version)
                .then(|| (r.peers_version, peers_from_wire(r.peers))),
            unknown_worker: r.unknown_worker,
        })
    }

    /// Asks for up to `max` units; returns them and how long to wait when there were none.
    pub async fn request_work(&self, max: u32) -> Result<(Vec<Assignment>, Duration), Error> {
        let r = self
            .inner
            .clone()
            .request_work(pb::WorkRequest {
                public_key: self.key.clone(),
                max_units: max,
            })
            .await
            .map_err(rpc("RequestWork"))?
            .into_inner();
        let mut out = Vec::with_capacity(r.assignments.len());
        for a in r.assignments {
            out.push(Assignment {
                project: ProjectId(a.project_id),
                unit: UnitId(a.unit_id),
                name: a.unit_name,
                input: a.input,
                module: Digest::from_slice("Assignment.module_digest", &a.module_digest)?,
                limits: Limits::try_from(a.limits)?,
                quorum: a.quorum,
            });
        }
        Ok((
            out,
            Duration::from_millis(r.retry_after_ms.clamp(0, 60_000)),
        ))
    }

    /// Module bytes by digest.
    pub async fn module(&self, digest: Digest) -> Result<Vec<u8>, Error> {
        Ok(self
            .inner
            .clone()
            .get_module(pb::GetModuleRequest {
                digest: digest.0.to_vec(),
            })
            .await
            .map_err(rpc("GetModule"))?
            .into_inner()
            .module)
    }

    /// Reports a failed execution.
    pub async fn report_failure(&self, unit: UnitId, failure: &Failure) -> Result<(), Error> {
        self.inner
            .clone()
            .report_failure(pb::FailureReport {
                public_key: self.key.clone(),
                unit_id: unit.0,
                kind: pb::FailureKind::from(failure.kind).into(),
                detail: failure.detail.clone(),
                exit_code: 0,
            })
            .await
            .map_err(rpc("ReportFailure"))?;
        Ok(())
    }

    /// Submits a quorum certificate with the output; true if it verified the unit.
    pub async fn submit_certificate(
        &self,
        unit: UnitId,
        claims: &[Claim],
        output: &[u8],
    ) -> Result<bool, Error> {
        Ok(self
            .inner
            .clone()
            .submit_certificate(pb::CertificateSubmission {
                unit_id: unit.0,
                claims: wire::claims_to_wire(claims),
                output: output.to_vec(),
                submitter_key: self.key.clone(),
            })
            .await
            .map_err(rpc("SubmitCertificate"))?
            .into_inner()
            .accepted)
    }

    /// Reports disagreeing claims.
    pub async fn dispute(&self, unit: UnitId, claims: &[Claim]) -> Result<(), Error> {
        self.inner
            .clone()
            .report_dispute(pb::Dispute {
                public_key: self.key.clone(),
                unit_id: unit.0,
                claims: wire::claims_to_wire(claims),
            })
            .await
            .map_err(rpc("ReportDispute"))?;
        Ok(())
    }

    /// Hands units back.
    pub async fn return_units(&self, units: &[UnitId]) -> Result<(), Error> {
        self.inner
            .clone()
            .return_units(pb::ReturnUnitsRequest {
                public_key: self.key.clone(),
                unit_ids: units.iter().map(|u| u.0).collect(),
            })
            .await
            .map_err(rpc("ReturnUnits"))?;
        Ok(())
    }
}

/// Most claims or wanted units in one exchange; more is refused as malformed.
pub const MAX_EXCHANGE: usize = 256;

/// What the peer service needs from the worker.
pub trait ClaimSink: Send + Sync + 'static {
    /// A peer's claim arrived (already well-formed; the sink checks the signature).
    fn on_claim(self: &std::sync::Arc<Self>, claim: Claim) -> Result<(), protocol::Error>;
    /// The claims this worker holds for `unit`.
    fn claims_for(&self, unit: UnitId) -> Vec<Claim>;
}

/// The `Peer` service: other workers push their claims and pull ours.
#[derive(Debug)]
pub struct PeerService<S> {
    sink: std::sync::Arc<S>,
}

impl<S: ClaimSink> PeerService<S> {
    /// A service feeding `sink`.
    pub fn new(sink: std::sync::Arc<S>) -> pb::peer_server::PeerServer<Self> {
        pb::peer_server::PeerServer::new(PeerService { sink }).max_decoding_message_size(1 << 20)
    }
}

#[tonic::async_trait]
impl<S: ClaimSink> pb::peer_server::Peer for PeerService<S> {
    async fn exchange_claims(
        &self,
        request: Request<pb::ClaimExchange>,
    ) -> Result<Response<pb::ClaimExchange>, Status> {
        let r = request.into_inner();
        if r.claims.len() > MAX_EXCHANGE || r.want_units.len() > MAX_EXCHANGE {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_EXCHANGE} claims and wanted units per exchange"
            )));
        }
        let claims = wire::claims_from_wire(r.claims)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut rejected = 0;
        for claim in claims {
            if let Err(e) = self.sink.on_claim(claim) {
                rejected += 1;
                tracing::warn!("peer sent a bad claim: {e}");
            }
        }
        if rejected > 0 {
            return Err(Status::invalid_argument(format!(
                "{rejected} claims rejected (bad signature)"
            )));
        }
        let claims = r
            .want_units
            .iter()
            .flat_map(|&u| self.sink.claims_for(UnitId(u)))
            .take(MAX_EXCHANGE)
            .collect::<Vec<_>>();
        Ok(Response::new(pb::ClaimExchange {
            claims: wire::claims_to_wire(&claims),
            want_units: Vec::new(),
        }))
    }
}

/// A client for one peer's `Peer` service.
#[derive(Debug, Clone)]
pub struct PeerClient {
    inner: pb::peer_client::PeerClient<Channel>,
}

impl PeerClient {
    /// A lazily connecting client for the peer at `addr` (host:port).
    pub fn new(addr: &str) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Config(format!("bad peer address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        Ok(PeerClient {
            inner: pb::peer_client::PeerClient::new(endpoint.connect_lazy()),
        })
    }

    /// Pushes `claims` and pulls the peer's claims for `want`.
    pub async fn exchange(&self, claims: &[Claim], want: &[UnitId]) -> Result<Vec<Claim>, Error> {
        let r = self
            .inner
            .clone()
            .exchange_claims(pb::ClaimExchange {
                claims: wire::claims_to_wire(claims),
                want_units: want.iter().map(|u| u.0).collect(),
            })
            .await
            .map_err(rpc("ExchangeClaims"))?
            .into_inner();
        if r.claims.len() > MAX_EXCHANGE {
            return Err(Error::Protocol(protocol::Error::Malformed {
                field: "ClaimExchange.claims",
                problem: format!("{} claims, at most {MAX_EXCHANGE}", r.claims.len()),
            }));
        }
        Ok(wire::claims_from_wire(r.claims)?)
    }
}
