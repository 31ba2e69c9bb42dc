//! The worker's gRPC boundary, the only module here that touches `proto` types: a client
//! for the coordinator speaking domain types, the `Peer` service (the rendezvous board other
//! workers exchange commitments and reveals with), and the client side of that service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use proto::v1 as pb;
use proto::wire;
use protocol::board::{Reason, View};
use protocol::call::{self, Stamper};
use protocol::certificate::MAX_CLAIMS;
use protocol::claim::Commitment;
use protocol::evidence::Evidence;
use protocol::provenance::SubmitterKey;
use protocol::{Claim, Digest, Failure, Identity, UnitId, WorkerId};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::Error;
use crate::gossip::{Reply, Request};
use crate::tls::{Connection, Trust};

pub use protocol::assignment::{Assignment, Signed};

/// An assignment as bytes, kept on disk beside a checkpoint so a restarted worker can resume
/// the unit (the protobuf message the coordinator sent, mapped by `proto::wire`).
pub fn encode_assignment(a: &Assignment) -> Vec<u8> {
    pb::Assignment::from(a).encode_to_vec()
}

/// Reads [`encode_assignment`] back, checking it like one from the coordinator.
pub fn decode_assignment(bytes: &[u8]) -> Result<Assignment, Error> {
    let a = pb::Assignment::decode(bytes).map_err(|e| {
        Error::Protocol(protocol::Error::Malformed {
            field: "Assignment",
            problem: e.to_string(),
        })
    })?;
    Ok(Assignment::try_from(a)?)
}

/// A peer worker, as the coordinator lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its key.
    pub id: WorkerId,
    /// Its peer service address ("" when it accepts no inbound connections).
    pub addr: String,
}

/// What a worker states about itself at registration (all signed).
#[derive(Debug, Clone, Copy)]
pub struct Introduction<'a> {
    /// Display name.
    pub name: &'a str,
    /// Volunteer account.
    pub account: &'a str,
    /// Team ("" for none).
    pub team: &'a str,
    /// Peer service address ("" without inbound connections).
    pub peer_addr: &'a str,
    /// Units run at once.
    pub cores: u32,
}

/// What the coordinator answered to a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateOutcome {
    /// This certificate verified the unit.
    pub accepted: bool,
    /// Its claims are kept toward the unit's quorum (a partial certificate).
    pub recorded: bool,
}

/// One certificate of a [`CoordinatorClient::submit_certificates`] batch: the unit, the
/// claims and our output.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The unit.
    pub unit: UnitId,
    /// The claims, ours among them.
    pub claims: &'a [Claim],
    /// The output they sign.
    pub output: &'a [u8],
}

/// Most certificates in one `SubmitCertificates` call (the coordinator's limit).
pub const MAX_CERTIFICATES_PER_CALL: usize = 64;
/// Most claims in one `SubmitCertificates` call, all certificates together (the
/// coordinator's limit).
pub const MAX_CLAIMS_PER_CALL: usize = 256;

/// What registration told us.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Peers known now.
    pub peers: Vec<PeerInfo>,
    /// The coordinator's own key (`None` from a coordinator older than this field).
    pub coordinator_key: Option<WorkerId>,
    /// The coordinator's membership credential for our peer address (`None` without one).
    pub credential: Option<protocol::membership::Credential>,
    /// Why the coordinator did not vouch for our peer address ("" if it did or none).
    pub peer_warning: String,
}

/// What a worker reports about itself with each heartbeat.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// `running`, `idle` or `suspended`.
    pub state: &'static str,
    /// Why, in words, when suspended; empty otherwise.
    pub reason: String,
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
    /// A renewed membership credential.
    pub credential: Option<protocol::membership::Credential>,
}

/// The generated client with the enrollment interceptor.
type Raw = pb::coordinator_client::CoordinatorClient<InterceptedService<Channel, Enrollment>>;

/// The coordinator, seen from a worker. Cheap to clone; reconnects by itself. Every call
/// that names this worker is signed by its key and stamped on the coordinator's clock
/// (`protocol::call`).
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    inner: Raw,
    key: Vec<u8>,
    identity: Arc<Identity>,
    clock: Arc<Stamper>,
    connection: Connection,
    /// The coordinator answered `SubmitCertificates` with UNIMPLEMENTED (an older
    /// version): batches go out one certificate a call from then on.
    singles: Arc<std::sync::atomic::AtomicBool>,
}

/// Microseconds since the Unix epoch on this machine's clock.
fn local_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Adds the worker's enrollment token, if it has one, to every coordinator call.
#[derive(Clone)]
pub struct Enrollment(Option<AsciiMetadataValue>);

impl Interceptor for Enrollment {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

fn rpc(call: &'static str) -> impl FnOnce(Status) -> Error {
    move |status| Error::Rpc { call, status }
}

/// Sends `batch` one certificate a call with `send`; the answers in order. A call that
/// fails transiently (the coordinator unreachable, say) is the whole batch's error:
/// failover must see it as such, and the certificates answered before it are answered
/// again when retried (as duplicates).
pub(crate) async fn one_by_one<'a, Fut>(
    batch: &'a [Outgoing<'a>],
    send: impl Fn(&'a Outgoing<'a>) -> Fut,
) -> Result<Vec<Result<CertificateOutcome, Error>>, Error>
where
    Fut: std::future::Future<Output = Result<CertificateOutcome, Error>>,
{
    let mut answers = Vec::with_capacity(batch.len());
    for c in batch {
        match send(c).await {
            Err(e) if e.is_transient() => return Err(e),
            answer => answers.push(answer),
        }
    }
    Ok(answers)
}

/// The answers to a batch of `sent` certificates: each an outcome, or the refusal the
/// coordinator gave that certificate alone.
fn acks_from_wire(
    acks: pb::CertificateAcks,
    sent: usize,
) -> Result<Vec<Result<CertificateOutcome, Error>>, Error> {
    if acks.acks.len() != sent {
        return Err(protocol::Error::malformed(
            "CertificateAcks.acks",
            format!("{} answers to {sent} certificates", acks.acks.len()),
        )
        .into());
    }
    Ok(acks
        .acks
        .into_iter()
        .map(|ack| match ack.refused {
            Some(refusal) => Err(Error::Rpc {
                call: "SubmitCertificates",
                status: Status::new(tonic::Code::from(refusal.code), refusal.message),
            }),
            None => Ok(CertificateOutcome {
                accepted: ack.accepted,
                recorded: ack.recorded,
            }),
        })
        .collect())
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
    /// A client for `url` (e.g. `http://127.0.0.1:7070`) with the default [`Trust`]: plain
    /// HTTP on loopback only, an unpinned `https://` trusted on first use for this process.
    pub fn new(url: &str, identity: Arc<Identity>) -> Result<Self, Error> {
        CoordinatorClient::with_trust(url, identity, &Trust::default())
    }

    /// A client for `url` (`https://HOST:PORT#sha256=HEX`, see [`crate::tls`]); connects on
    /// first use.
    pub fn with_trust(url: &str, identity: Arc<Identity>, trust: &Trust) -> Result<Self, Error> {
        CoordinatorClient::enrolled(url, identity, trust, None)
    }

    /// [`CoordinatorClient::with_trust`] sending `enrollment` (a token from the
    /// coordinator's enrollment list, see `coordinator::auth`) with every call.
    pub fn enrolled(
        url: &str,
        identity: Arc<Identity>,
        trust: &Trust,
        enrollment: Option<&str>,
    ) -> Result<Self, Error> {
        let enrollment = enrollment
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
                    Error::Config(
                        "--enroll-token must be printable ASCII, as `fallow token create --worker` prints it"
                            .into(),
                    )
                })
            })
            .transpose()?;
        let connection = crate::tls::connect(url, trust)?;
        let endpoint = connection.endpoint.clone().timeout(Duration::from_secs(60));
        let inner = pb::coordinator_client::CoordinatorClient::with_interceptor(
            endpoint.connect_lazy(),
            Enrollment(enrollment),
        )
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
        Ok(CoordinatorClient {
            inner,
            key: identity.id().0.to_vec(),
            identity,
            clock: Arc::default(),
            connection,
            singles: Arc::default(),
        })
    }

    /// The coordinator's clock (Unix ms) as this worker knows it: what lease tickets
    /// expire on, so our board checks them on it.
    pub fn coordinator_now_ms(&self) -> u64 {
        self.clock.now_us(local_us()) / 1000
    }

    /// Makes the call to `method` with the request `make` builds, signed and stamped; a
    /// refusal for a stamp off the coordinator's clock (it names the clock in the
    /// `fallow-now` header) corrects this worker's view of that clock and is retried once.
    async fn call<T, R, Fut>(
        &self,
        method: &'static str,
        make: impl Fn() -> T,
        send: impl Fn(Raw, tonic::Request<T>) -> Fut,
    ) -> Result<R, Status>
    where
        T: prost::Message,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        let mut corrected = false;
        loop {
            let message = make();
            let stamp = self.identity.sign_call(
                method,
                self.clock.next(local_us()),
                &message.encode_to_vec(),
            );
            let mut request = tonic::Request::new(message);
            if let Ok(value) = stamp.encode().parse() {
                request.metadata_mut().insert(call::CALL_HEADER, value);
            }
            match send(self.inner.clone(), request).await {
                Err(status) if !corrected && status.code() == tonic::Code::Unauthenticated => {
                    let Some(now) = status
                        .metadata()
                        .get(call::NOW_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                    else {
                        return Err(status);
                    };
                    tracing::warn!(
                        "{method}: {}; correcting this worker's view of the coordinator's clock",
                        status.message()
                    );
                    self.clock.learn(now, local_us());
                    corrected = true;
                }
                other => return other.map(Response::into_inner),
            }
        }
    }

    /// Maps a failed call's status, naming a refused certificate rather than reporting
    /// tonic's bare "transport error".
    fn rpc(&self, call: &'static str) -> impl FnOnce(Status) -> Error + '_ {
        // A refusal is cleared by the next accepted handshake, so one still recorded is
        // why this call found no connection.
        move |status| match self.connection.refusal() {
            Some(refusal) => Error::Certificate(refusal),
            None => Error::Rpc { call, status },
        }
    }

    /// Registers this worker, signing everything it states.
    pub async fn register(
        &self,
        identity: &Identity,
        me: Introduction<'_>,
    ) -> Result<Registration, Error> {
        let signature = identity.sign_registration(&protocol::Registration {
            name: me.name,
            account: me.account,
            team: me.team,
            peer_addr: me.peer_addr,
        });
        let r = self
            .call(
                "RegisterWorker",
                || pb::RegisterWorkerRequest {
                    public_key: self.key.clone(),
                    name: me.name.to_string(),
                    peer_addr: me.peer_addr.to_string(),
                    cores: me.cores,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    signature: signature.to_vec(),
                    account: me.account.to_string(),
                    team: me.team.to_string(),
                    platform: platform(),
                    fuel_rules: sandbox::meter::VERSION,
                },
                |mut c, r| async move { c.register_worker(r).await },
            )
            .await
            .map_err(self.rpc("RegisterWorker"))?;
        if r.now_ms != 0 {
            self.clock.learn(r.now_ms, local_us());
        }
        Ok(Registration {
            coordinator_key: WorkerId::from_slice(
                "RegisterWorkerResponse.coordinator_key",
                &r.coordinator_key,
            )
            .ok(),
            credential: credential_from_wire(
                "RegisterWorkerResponse.membership_credential",
                &r.membership_credential,
            ),
            peer_warning: r.peer_warning,
            heartbeat: Duration::from_millis(r.heartbeat_ms.clamp(100, 600_000)),
            peers: peers_from_wire(r.peers),
        })
    }

    /// Renews the leases of `held`.
    pub async fn heartbeat(
        &self,
        held: &[UnitId],
        peers_version: u64,
        run: &RunReport,
    ) -> Result<HeartbeatReply, Error> {
        let r = self
            .call(
                "Heartbeat",
                || pb::HeartbeatRequest {
                    public_key: self.key.clone(),
                    held_units: held.iter().map(|u| u.0).collect(),
                    peers_version,
                    run_state: run.state.to_string(),
                    state_reason: run.reason.clone(),
                },
                |mut c, r| async move { c.heartbeat(r).await },
            )
            .await
            .map_err(self.rpc("Heartbeat"))?;
        if r.now_ms != 0 {
            self.clock.learn(r.now_ms, local_us());
        }
        Ok(HeartbeatReply {
            settled: r.settled_units.into_iter().map(UnitId).collect(),
            peers: (r.peers_version != peers_version)
                .then(|| (r.peers_version, peers_from_wire(r.peers))),
            unknown_worker: r.unknown_worker,
            credential: credential_from_wire(
                "HeartbeatResponse.membership_credential",
                &r.membership_credential,
            ),
        })
    }

    /// Asks for up to `max` units; returns them and how long to wait when there were none.
    pub async fn request_work(
        &self,
        max: u32,
        accept_submitters: &[SubmitterKey],
        allow_unsigned: bool,
    ) -> Result<(Vec<Assignment>, Duration), Error> {
        let (units, wait, _) = self
            .request_work_why(max, accept_submitters, allow_unsigned)
            .await?;
        Ok((units, wait))
    }

    /// [`CoordinatorClient::request_work`], with the coordinator's reason when it assigned
    /// nothing because of this worker (empty otherwise).
    pub async fn request_work_why(
        &self,
        max: u32,
        accept_submitters: &[SubmitterKey],
        allow_unsigned: bool,
    ) -> Result<(Vec<Assignment>, Duration, String), Error> {
        let r = self
            .call(
                "RequestWork",
                || pb::WorkRequest {
                    public_key: self.key.clone(),
                    max_units: max,
                    accept_submitters: accept_submitters.iter().map(|k| k.0.to_vec()).collect(),
                    allow_unsigned,
                },
                |mut c, r| async move { c.request_work(r).await },
            )
            .await
            .map_err(self.rpc("RequestWork"))?;
        let mut out = Vec::with_capacity(r.assignments.len());
        for a in r.assignments {
            out.push(Assignment::try_from(a)?);
        }
        let reason: String = r
            .reason
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        Ok((
            out,
            Duration::from_millis(r.retry_after_ms.clamp(0, 60_000)),
            reason,
        ))
    }

    /// Module bytes by digest.
    pub async fn module(&self, digest: Digest) -> Result<Vec<u8>, Error> {
        Ok(self
            .inner
            .clone()
            .get_module(pb::GetModuleRequest {
                digest: digest.0.to_vec(),
                // As submitted: the worker meters it itself (its own compiled code only).
                fuel_rules: 0,
                canonical_nans: false,
            })
            .await
            .map_err(self.rpc("GetModule"))?
            .into_inner()
            .module
            .into())
    }

    /// Appends data file `digest` to `out` from byte `offset` on (`GetData`, streamed in
    /// chunks), calling `on_chunk` with each chunk's length. Returns the bytes written; an
    /// error after some chunks leaves them written, so the caller resumes from there.
    pub async fn data(
        &self,
        digest: Digest,
        offset: u64,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, Error> {
        use tokio::io::AsyncWriteExt;
        let mut stream = self
            .inner
            .clone()
            .get_data(pb::GetDataRequest {
                digest: digest.0.to_vec(),
                offset,
            })
            .await
            .map_err(self.rpc("GetData"))?
            .into_inner();
        let mut written = 0u64;
        while let Some(chunk) = stream.message().await.map_err(self.rpc("GetData"))? {
            if chunk.offset != offset + written {
                return Err(Error::Local(format!(
                    "GetData sent bytes at offset {} where {} was next",
                    chunk.offset,
                    offset + written
                )));
            }
            out.write_all(&chunk.bytes)
                .await
                .map_err(|e| Error::Local(format!("cannot write data file {digest}: {e}")))?;
            written += chunk.bytes.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| Error::Local(format!("cannot write data file {digest}: {e}")))?;
        Ok(written)
    }

    /// Reports a failed execution.
    pub async fn report_failure(&self, unit: UnitId, failure: &Failure) -> Result<(), Error> {
        self.call(
            "ReportFailure",
            || pb::FailureReport {
                public_key: self.key.clone(),
                unit_id: unit.0,
                kind: pb::FailureKind::from(failure.kind).into(),
                detail: failure.detail.clone(),
                exit_code: 0,
            },
            |mut c, r| async move { c.report_failure(r).await },
        )
        .await
        .map_err(self.rpc("ReportFailure"))?;
        Ok(())
    }

    /// Submits a (possibly partial) quorum certificate with the output.
    pub async fn submit_certificate(
        &self,
        unit: UnitId,
        claims: &[Claim],
        output: &[u8],
    ) -> Result<CertificateOutcome, Error> {
        let ack = self
            .call(
                "SubmitCertificate",
                || pb::CertificateSubmission {
                    unit_id: unit.0,
                    claims: wire::claims_to_wire(claims),
                    output: output.to_vec(),
                    submitter_key: self.key.clone(),
                },
                |mut c, r| async move { c.submit_certificate(r).await },
            )
            .await
            .map_err(self.rpc("SubmitCertificate"))?;
        Ok(CertificateOutcome {
            accepted: ack.accepted,
            recorded: ack.recorded,
        })
    }

    /// Submits several certificates in one call; the answers are in order, one per
    /// certificate (a refused one as its own error). An error for the whole call is
    /// returned as such. A batch of one, or any batch against a coordinator without the
    /// batched call, goes one certificate a call.
    pub async fn submit_certificates(
        &self,
        batch: &[Outgoing<'_>],
    ) -> Result<Vec<Result<CertificateOutcome, Error>>, Error> {
        use std::sync::atomic::Ordering;
        if batch.len() > 1 && !self.singles.load(Ordering::Relaxed) {
            let answer = self
                .call(
                    "SubmitCertificates",
                    || pb::CertificateBatch {
                        submitter_key: self.key.clone(),
                        certificates: batch
                            .iter()
                            .map(|c| pb::CertificateSubmission {
                                unit_id: c.unit.0,
                                claims: wire::claims_to_wire(c.claims),
                                output: c.output.to_vec(),
                                submitter_key: Vec::new(),
                            })
                            .collect(),
                    },
                    |mut c, r| async move { c.submit_certificates(r).await },
                )
                .await;
            match answer {
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(
                        "the coordinator does not take certificates in batches (an older version); sending them one by one"
                    );
                    self.singles.store(true, Ordering::Relaxed);
                }
                Err(status) => return Err(self.rpc("SubmitCertificates")(status)),
                Ok(acks) => return acks_from_wire(acks, batch.len()),
            }
        }
        one_by_one(batch, |c| {
            self.submit_certificate(c.unit, c.claims, c.output)
        })
        .await
    }

    /// Reports proof that a worker changed its answer.
    pub async fn report_misbehaviour(&self, evidence: &Evidence) -> Result<(), Error> {
        self.call(
            "ReportMisbehaviour",
            || pb::Evidence {
                reporter_key: self.key.clone(),
                ..pb::Evidence::from(evidence)
            },
            |mut c, r| async move { c.report_misbehaviour(r).await },
        )
        .await
        .map_err(self.rpc("ReportMisbehaviour"))?;
        Ok(())
    }

    /// Reports disagreeing claims.
    pub async fn dispute(&self, unit: UnitId, claims: &[Claim]) -> Result<(), Error> {
        self.call(
            "ReportDispute",
            || pb::Dispute {
                public_key: self.key.clone(),
                unit_id: unit.0,
                claims: wire::claims_to_wire(claims),
            },
            |mut c, r| async move { c.report_dispute(r).await },
        )
        .await
        .map_err(self.rpc("ReportDispute"))?;
        Ok(())
    }

    /// Hands units back.
    pub async fn return_units(&self, units: &[UnitId]) -> Result<(), Error> {
        self.call(
            "ReturnUnits",
            || pb::ReturnUnitsRequest {
                public_key: self.key.clone(),
                unit_ids: units.iter().map(|u| u.0).collect(),
            },
            |mut c, r| async move { c.return_units(r).await },
        )
        .await
        .map_err(self.rpc("ReturnUnits"))?;
        Ok(())
    }
}

/// The operating system and architecture, e.g. `linux-x86_64` (informational).
pub fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

pub use crate::gossip::MAX_EXCHANGE_UNITS;
/// Most commitments plus reveals in one Exchange.
pub const MAX_EXCHANGE_MESSAGES: usize = 2 * MAX_EXCHANGE_UNITS;
/// Largest encoded Exchange request a board decodes.
pub const MAX_EXCHANGE_BYTES: usize = 1 << 20;
/// Largest encoded answer a holder decodes.
const MAX_VIEWS_BYTES: usize = 16 << 20;

/// The encoded size of `request` on the wire (for traffic accounting).
pub fn request_len(request: &Request) -> usize {
    request_to_wire(request).encoded_len()
}

fn request_to_wire(r: &Request) -> pb::BoardExchange {
    pb::BoardExchange {
        commitments: r.commitments.iter().map(pb::Commitment::from).collect(),
        reveals: wire::claims_to_wire(&r.reveals),
        want_units: r.want.iter().map(|u| u.0).collect(),
    }
}

/// What the peer service asks of the worker: its board.
pub trait BoardHost: Send + Sync + 'static {
    /// One exchange from a holder, already well-formed and within the size limits.
    fn exchange(&self, commitments: Vec<Commitment>, reveals: Vec<Claim>, want: &[UnitId])
    -> Reply;
    /// A request was refused before reaching the board (too big or malformed).
    fn refused(&self, why: &'static str);
    /// Signs a peer proof for `peer_addr` (`protocol::membership`) if it is the address
    /// this host serves; `None` otherwise (the default: a host that proves nothing).
    fn prove(
        &self,
        _coordinator: WorkerId,
        _nonce: &[u8; protocol::membership::NONCE_LEN],
        _peer_addr: &str,
    ) -> Option<(WorkerId, [u8; 64])> {
        None
    }
}

/// A well-formed exchange: commitments, reveals, wanted units.
type Parsed = (Vec<Commitment>, Vec<Claim>, Vec<UnitId>);

/// The `Peer` service: this worker's rendezvous board.
#[derive(Debug)]
pub struct PeerService<H> {
    host: Arc<H>,
    /// Exchanges per connection, address and key (`crate::peer_limiter`).
    limiter: crate::peer_limiter::PeerLimiter,
}

impl<H: BoardHost> PeerService<H> {
    /// A service in front of `host`.
    pub fn new(host: Arc<H>) -> pb::peer_server::PeerServer<Self> {
        pb::peer_server::PeerServer::new(PeerService {
            host,
            limiter: Default::default(),
        })
        .max_decoding_message_size(MAX_EXCHANGE_BYTES)
    }

    fn parse(&self, r: pb::BoardExchange) -> Result<Parsed, Status> {
        if r.want_units.len() > MAX_EXCHANGE_UNITS {
            self.host.refused("too_many_units");
            return Err(Status::invalid_argument(format!(
                "BoardExchange.want_units: {} units, at most {MAX_EXCHANGE_UNITS} per exchange; split the batch",
                r.want_units.len()
            )));
        }
        let messages = r.commitments.len() + r.reveals.len();
        if messages > MAX_EXCHANGE_MESSAGES {
            self.host.refused("too_many_messages");
            return Err(Status::invalid_argument(format!(
                "BoardExchange: {messages} commitments and reveals, at most {MAX_EXCHANGE_MESSAGES} per exchange; split the batch"
            )));
        }
        let malformed = |e: protocol::Error| {
            self.host.refused("malformed");
            Status::invalid_argument(e.to_string())
        };
        let commitments = r
            .commitments
            .into_iter()
            .map(Commitment::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed)?;
        let reveals = wire::claims_from_wire(r.reveals).map_err(malformed)?;
        let want = r.want_units.into_iter().map(UnitId).collect();
        Ok((commitments, reveals, want))
    }
}

#[tonic::async_trait]
impl<H: BoardHost> pb::peer_server::Peer for PeerService<H> {
    async fn exchange(
        &self,
        request: tonic::Request<pb::BoardExchange>,
    ) -> Result<Response<pb::BoardViews>, Status> {
        let remote = request.remote_addr();
        let (commitments, reveals, want) = self.parse(request.into_inner())?;
        // After the cheap size and shape checks, before any signature is verified.
        let keys = commitments.iter().map(|c| c.worker);
        let keys = keys.chain(reveals.iter().map(|c| c.worker));
        if let Err(limited) = self.limiter.admit(remote, keys) {
            self.host.refused("rate_limited");
            return Err(Status::resource_exhausted(limited.0));
        }
        let reply = self.host.exchange(commitments, reveals, &want);
        Ok(Response::new(reply_to_wire(&reply)))
    }

    async fn prove(
        &self,
        request: tonic::Request<pb::ProveRequest>,
    ) -> Result<Response<pb::ProveResponse>, Status> {
        // Each answer costs a signature: charged like an exchange (the coordinator asks
        // once per registration).
        if let Err(limited) = self.limiter.admit(request.remote_addr(), []) {
            self.host.refused("rate_limited");
            return Err(Status::resource_exhausted(limited.0));
        }
        let r = request.into_inner();
        let coordinator = WorkerId::from_slice("ProveRequest.coordinator_key", &r.coordinator_key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let nonce: [u8; protocol::membership::NONCE_LEN] = r
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("ProveRequest.nonce: must be 32 bytes"))?;
        match self.host.prove(coordinator, &nonce, &r.peer_addr) {
            Some((key, signature)) => Ok(Response::new(pb::ProveResponse {
                public_key: key.0.to_vec(),
                signature: signature.to_vec(),
            })),
            None => Err(Status::failed_precondition(format!(
                "this worker does not serve {:?}",
                r.peer_addr
            ))),
        }
    }
}

/// A membership credential from the wire; a malformed one is logged and ignored (the
/// worker then stays out of the membership until a good one comes).
fn credential_from_wire(
    field: &'static str,
    bytes: &[u8],
) -> Option<protocol::membership::Credential> {
    if bytes.is_empty() {
        return None;
    }
    protocol::membership::Credential::from_bytes(field, bytes)
        .inspect_err(|e| tracing::warn!("{e}"))
        .ok()
}

fn reply_to_wire(reply: &Reply) -> pb::BoardViews {
    pb::BoardViews {
        views: reply
            .views
            .iter()
            .map(|(unit, v)| pb::UnitView {
                unit_id: unit.0,
                commitments: v.commitments,
                reveals: wire::claims_to_wire(&v.reveals),
                committed: v.committed.iter().map(pb::Commitment::from).collect(),
            })
            .collect(),
        rejected: reply
            .rejected
            .iter()
            .map(|(unit, reason)| pb::BoardRejection {
                unit_id: unit.0,
                reason: reason.as_str().to_string(),
            })
            .collect(),
    }
}

fn reply_from_wire(r: pb::BoardViews, asked: usize) -> Result<Reply, Error> {
    let malformed = |field: &'static str, problem: String| {
        Error::Protocol(protocol::Error::Malformed { field, problem })
    };
    if r.views.len() > asked || r.rejected.len() > MAX_EXCHANGE_MESSAGES {
        return Err(malformed(
            "BoardViews",
            format!(
                "{} views and {} rejections for {asked} wanted units",
                r.views.len(),
                r.rejected.len()
            ),
        ));
    }
    let mut views = Vec::with_capacity(r.views.len());
    for v in r.views {
        if v.reveals.len() > MAX_CLAIMS || v.committed.len() > MAX_CLAIMS {
            return Err(malformed(
                "UnitView",
                format!(
                    "{} reveals and {} commitments (at most {MAX_CLAIMS} each)",
                    v.reveals.len(),
                    v.committed.len()
                ),
            ));
        }
        let committed = v
            .committed
            .into_iter()
            .map(Commitment::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        views.push((
            UnitId(v.unit_id),
            View {
                commitments: v.commitments,
                reveals: wire::claims_from_wire(v.reveals)?,
                committed,
            },
        ));
    }
    let mut rejected = Vec::with_capacity(r.rejected.len());
    for x in r.rejected {
        let reason = Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == x.reason)
            .ok_or_else(|| {
                malformed(
                    "BoardRejection.reason",
                    format!("unknown reason {:?}", x.reason),
                )
            })?;
        rejected.push((UnitId(x.unit_id), reason));
    }
    Ok(Reply { views, rejected })
}

/// A client for one peer's `Peer` service.
#[derive(Debug, Clone)]
pub struct PeerClient {
    inner: pb::peer_client::PeerClient<Channel>,
}

impl PeerClient {
    /// A lazily connecting client for the board of worker `board` at `addr`: over TLS,
    /// accepting only a certificate bound to `board`'s key (`connections::peer_tls`).
    pub fn new(addr: SocketAddr, board: WorkerId) -> Result<Self, Error> {
        let endpoint = connections::peer_tls::endpoint(addr, board)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        Ok(PeerClient {
            inner: pb::peer_client::PeerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_VIEWS_BYTES)
                .max_encoding_message_size(MAX_EXCHANGE_BYTES),
        })
    }

    /// One exchange with the peer's board.
    pub async fn exchange(&self, request: &Request) -> Result<Reply, Error> {
        let r = self
            .inner
            .clone()
            .exchange(request_to_wire(request))
            .await
            .map_err(rpc("Exchange"))?
            .into_inner();
        reply_from_wire(r, request.want.len())
    }
}

#[cfg(test)]
mod tests;
