//! The CLI's gRPC boundary: submit, status and results, speaking domain types.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use prost::Message;
use proto::v1 as pb;
use proto::wire;
use protocol::control::{Action, Done, Extension};
use protocol::manifest::ProjectSpec;
use tonic::transport::Channel;
use worker::tls::Trust;

/// A project's progress, as `fallow status --json` prints it: the coordinator's one
/// status view, converted from the wire once here (`proto::wire`).
pub type Status = protocol::status::ProjectStatus;

/// A volunteer account on the leaderboard, as `fallow accounts --json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Account {
    /// Account name.
    pub name: String,
    /// Team ("" for none).
    pub team: String,
    /// Credit: fuel of verified units.
    pub credit: u64,
    /// Verified results credited.
    pub verified: u64,
    /// Workers registered under it.
    pub workers: u32,
}

/// A team on the leaderboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Team {
    /// Team name.
    pub name: String,
    /// Credit of its accounts.
    pub credit: u64,
    /// Accounts credited under it.
    pub accounts: u32,
}

/// What the coordinator did with a submitted project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The new project's id (or, when `reused`, the earliest duplicate's).
    pub id: u64,
    /// Earlier projects with the same module, inputs and terms, oldest first.
    pub duplicates: Vec<u64>,
    /// Nothing was created (`--once` and a duplicate exists).
    pub reused: bool,
}

/// Everything `fallow results` writes.
#[derive(Debug, Default)]
pub struct Results {
    /// Each verified unit, in unit-name order.
    pub verified: Vec<Verified>,
    /// `(unit, reason)` per failed unit.
    pub failed: Vec<(String, String)>,
    /// The aggregate, or why the reducer failed.
    pub aggregate: Option<Result<Vec<u8>, String>>,
}

/// A verified unit as the coordinator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The unit's name.
    pub unit: String,
    /// Its verified output.
    pub output: Vec<u8>,
    /// BLAKE3 of `output`, as the signers claimed it.
    pub digest: Vec<u8>,
    /// Fuel each signer claimed (the unit's credit).
    pub fuel: u64,
    /// The ed25519 keys of the workers whose signed claims verified it.
    pub signers: Vec<Vec<u8>>,
    /// When the coordinator recorded it (Unix milliseconds; 0 from an older coordinator).
    pub verified_ms: u64,
}

/// How long a client keeps trying to reach a coordinator that does not answer.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// A connected coordinator client.
#[derive(Debug, Clone)]
pub struct Client {
    inner: pb::coordinator_client::CoordinatorClient<Channel>,
    url: String,
    /// Sent with calls that need one (`SubmitProject`).
    token: Option<String>,
}

impl Client {
    /// Connects to `url` (`https://HOST:PORT#sha256=HEX` off loopback, see
    /// `worker::tls`), with an error that says what to check.
    pub async fn connect(url: &str, trust: &Trust) -> anyhow::Result<Self> {
        // A deployment's URL list, as `fallow worker --coordinator` takes it (so one
        // FALLOW_COORDINATOR serves both): the first coordinator that answers. A standby
        // does not listen, so it is passed over at once.
        let mut last = None;
        for one in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            match Client::connect_one(one, trust).await {
                Ok(client) => return Ok(client),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no coordinator URL given")))
    }

    /// [`Client::connect`] to one coordinator.
    async fn connect_one(url: &str, trust: &Trust) -> anyhow::Result<Self> {
        let connection = worker::tls::connect(url, trust)?;
        // A coordinator started a moment ago (`fallow coordinator &` then `fallow submit`)
        // may not listen yet: keep trying for a few seconds, saying so, before giving up.
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        let mut said = false;
        let channel = loop {
            match connection.endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) => {
                    if let Some(refusal) = connection.refusal() {
                        bail!("{refusal}");
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(e).with_context(|| {
                            format!(
                                "cannot reach the coordinator at {url} (is `fallow coordinator` running there?)"
                            )
                        });
                    }
                    if !said {
                        eprintln!(
                            "the coordinator at {url} does not answer yet; trying again for {} s",
                            CONNECT_PATIENCE.as_secs()
                        );
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        Ok(Client {
            inner: pb::coordinator_client::CoordinatorClient::new(channel)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
            url: url.to_string(),
            token: None,
        })
    }

    /// This client with a token for the calls that need one.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// `message` with the token, if any, as `authorization: Bearer TOKEN`.
    fn authorized<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| anyhow!("the token holds characters a header cannot carry"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    /// Uploads a project (with `once`: only if no project with the same module, inputs
    /// and terms exists).
    pub async fn submit(&self, spec: ProjectSpec, once: bool) -> anyhow::Result<Submitted> {
        let mut request = pb::SubmitProjectRequest::from(spec);
        request.once = once;
        let r = self
            .inner
            .clone()
            .submit_project(self.authorized(request)?)
            .await
            .map_err(|s| {
                anyhow!(
                    "coordinator {} refused the project: {}",
                    self.url,
                    s.message()
                )
            })?
            .into_inner();
        Ok(Submitted {
            id: r.project_id,
            duplicates: r.duplicates,
            reused: r.reused,
        })
    }

    /// Uploads the data files of `spec` the coordinator does not hold yet (by digest), each
    /// streamed in chunks of [`protocol::data::CHUNK_BYTES`]. Returns how many were sent.
    pub async fn upload_data(&self, spec: &ProjectSpec) -> anyhow::Result<usize> {
        if spec.data.is_empty() {
            return Ok(0);
        }
        let digests = spec.data.iter().map(|f| f.digest.0.to_vec()).collect();
        let present = self
            .inner
            .clone()
            .has_data(self.authorized(pb::HasDataRequest { digests })?)
            .await
            .map_err(|s| anyhow!("coordinator {} refused HasData: {}", self.url, s.message()))?
            .into_inner()
            .present;
        let mut sent = 0;
        for (file, path) in spec.data.iter().zip(&spec.data_paths) {
            if present.iter().any(|d| d[..] == file.digest.0[..]) {
                continue;
            }
            let bytes = std::fs::File::open(path).map_err(|e| {
                anyhow!("[data] {}: cannot read {}: {e}", file.name, path.display())
            })?;
            let (digest, size) = (file.digest.0.to_vec(), file.size);
            let (name, shown) = (file.name.clone(), path.display().to_string());
            // Read on a blocking thread, a chunk at a time: a 1 GiB file is never in memory.
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::DataChunk>(2);
            let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                use std::io::Read;
                let mut bytes = bytes;
                let mut offset = 0u64;
                loop {
                    let mut buf = vec![0u8; protocol::data::CHUNK_BYTES];
                    let mut filled = 0;
                    while filled < buf.len() {
                        let n = bytes
                            .read(&mut buf[filled..])
                            .map_err(|e| anyhow!("[data] {name}: cannot read {shown}: {e}"))?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    buf.truncate(filled);
                    let first = offset == 0;
                    if filled == 0 && !first {
                        return Ok(());
                    }
                    let chunk = pb::DataChunk {
                        digest: if first { digest.clone() } else { Vec::new() },
                        size: if first { size } else { 0 },
                        offset,
                        bytes: buf,
                    };
                    offset += filled as u64;
                    if tx.blocking_send(chunk).is_err() || filled == 0 {
                        return Ok(());
                    }
                }
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            let result = self
                .inner
                .clone()
                .put_data(self.authorized(stream)?)
                .await
                .map_err(|s| {
                    anyhow!(
                        "coordinator {} refused data file {} ({}): {}",
                        self.url,
                        file.name,
                        path.display(),
                        s.message()
                    )
                });
            reader
                .await
                .map_err(|e| anyhow!("reading {} panicked: {e}", path.display()))??;
            result?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Progress of one project or all.
    pub async fn status(&self, project: Option<u64>) -> anyhow::Result<Vec<Status>> {
        let r = self
            .inner
            .clone()
            .list_projects(pb::ListProjectsRequest {
                project_id: project.unwrap_or(0),
            })
            .await
            .map_err(|s| anyhow!("{}", s.message()))?;
        Ok(r.into_inner()
            .projects
            .into_iter()
            .map(Status::from)
            .collect())
    }

    /// Accounts and teams by credit.
    pub async fn accounts(&self) -> anyhow::Result<(Vec<Account>, Vec<Team>)> {
        let r = self
            .inner
            .clone()
            .list_accounts(pb::ListAccountsRequest {})
            .await
            .map_err(|s| anyhow!("listing accounts: {}", s.message()))?
            .into_inner();
        let accounts = r
            .accounts
            .into_iter()
            .map(|a| Account {
                name: a.name,
                team: a.team,
                credit: a.credit,
                verified: a.verified,
                workers: a.workers,
            })
            .collect();
        let teams = r
            .teams
            .into_iter()
            .map(|t| Team {
                name: t.name,
                credit: t.credit,
                accounts: t.accounts,
            })
            .collect();
        Ok((accounts, teams))
    }

    /// All results of a project.
    pub async fn results(&self, project: u64) -> anyhow::Result<Results> {
        let mut stream = self.result_stream(project, false).await?;
        let mut results = Results::default();
        while let Some(item) = stream.next().await? {
            match item {
                ResultItem::Verified(v) => results.verified.push(v),
                ResultItem::Failed { unit, reason } => results.failed.push((unit, reason)),
                ResultItem::Aggregate(a) => results.aggregate = Some(a),
            }
        }
        Ok(results)
    }

    /// A project's results as they arrive: verified outputs (in unit-name order, then, when
    /// `follow`, each unit as it verifies until the project is finished), then failed units,
    /// then the aggregate.
    pub async fn result_stream(&self, project: u64, follow: bool) -> anyhow::Result<ResultStream> {
        let inner = self
            .inner
            .clone()
            .get_results(pb::GetResultsRequest {
                project_id: project,
                follow,
            })
            .await
            .map_err(|s| anyhow!("{}", s.message()))?
            .into_inner();
        Ok(ResultStream { inner, project })
    }

    /// A project control call (`fallow cancel|pause|resume|retry|reduce`), signed with
    /// the submitter key `submitter`.
    pub async fn control(
        &self,
        project: u64,
        action: Action,
        submitter: &protocol::Identity,
    ) -> anyhow::Result<Done> {
        let message = pb::ControlRequest {
            project_id: project,
            action: wire::action_to_wire(action) as i32,
            submitter_key: submitter.id().0.to_vec(),
        };
        let r = self
            .signed("ControlProject", message, submitter, |client, request| {
                Box::pin(async move {
                    let mut client = client;
                    client.control_project(request).await
                })
            })
            .await
            .map_err(|s| anyhow!("{}", s.message()))?;
        Ok(Done::from(r))
    }

    /// Adds units to a project (`fallow extend`); `extension` is signed already.
    pub async fn extend(
        &self,
        extension: Extension,
        submitter: &protocol::Identity,
    ) -> anyhow::Result<Done> {
        let message = pb::ExtendRequest::from(extension);
        let r = self
            .signed("ExtendProject", message, submitter, |client, request| {
                Box::pin(async move {
                    let mut client = client;
                    client.extend_project(request).await
                })
            })
            .await
            .map_err(|s| anyhow!("{}", s.message()))?;
        Ok(Done::from(r))
    }

    /// Sends `message` to `method` with a `fallow-call` header signed by `submitter`
    /// (`protocol::call`), stamped with this machine's clock; if the coordinator refuses
    /// the stamp as out of range, once more on the clock it sent back.
    async fn signed<T, R>(
        &self,
        method: &'static str,
        message: T,
        submitter: &protocol::Identity,
        call: impl Fn(
            pb::coordinator_client::CoordinatorClient<Channel>,
            tonic::Request<T>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>> + Send>,
        >,
    ) -> Result<R, tonic::Status>
    where
        T: Message + Clone,
    {
        let body = message.encode_to_vec();
        let local_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let request = |stamp_us: u64| {
            let stamp = submitter.sign_call(method, stamp_us, &body);
            let mut request = tonic::Request::new(message.clone());
            if let Ok(value) = stamp.encode().parse() {
                request
                    .metadata_mut()
                    .insert(protocol::call::CALL_HEADER, value);
            }
            request
        };
        match call(self.inner.clone(), request(local_us)).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                let coordinator_ms = status
                    .metadata()
                    .get(protocol::call::NOW_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                match coordinator_ms {
                    Some(ms) if status.code() == tonic::Code::Unauthenticated => {
                        let r = call(self.inner.clone(), request(ms.saturating_mul(1000))).await?;
                        Ok(r.into_inner())
                    }
                    _ => Err(status),
                }
            }
        }
    }
}

/// One result as it arrives ([`Client::result_stream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultItem {
    /// A verified unit.
    Verified(Verified),
    /// A failed unit and why.
    Failed {
        /// The unit's name.
        unit: String,
        /// Why it failed.
        reason: String,
    },
    /// The aggregate, or why the reducer failed.
    Aggregate(Result<Vec<u8>, String>),
}

/// The results of one project, item by item.
pub struct ResultStream {
    inner: tonic::Streaming<pb::ResultItem>,
    project: u64,
}

impl ResultStream {
    /// The next item; `None` at the end.
    pub async fn next(&mut self) -> anyhow::Result<Option<ResultItem>> {
        let project = self.project;
        loop {
            let Some(item) = self.inner.message().await.map_err(|s| {
                if s.code() == tonic::Code::DataLoss {
                    anyhow!(
                        "the coordinator refused project {project}'s results: {}; nothing was \
                         written: run `fallow results` again once the project is finished",
                        s.message()
                    )
                } else {
                    anyhow!("results stream broke: {}", s.message())
                }
            })?
            else {
                return Ok(None);
            };
            return Ok(Some(match item.item {
                Some(pb::result_item::Item::Verified(v)) => ResultItem::Verified(Verified {
                    unit: v.unit,
                    output: v.output,
                    digest: v.digest,
                    fuel: v.fuel,
                    signers: v.signers,
                    verified_ms: v.verified_ms,
                }),
                Some(pb::result_item::Item::Failed(f)) => ResultItem::Failed {
                    unit: f.unit,
                    reason: f.reason,
                },
                Some(pb::result_item::Item::Aggregate(a)) => ResultItem::Aggregate(Ok(a)),
                Some(pb::result_item::Item::AggregateError(e)) => ResultItem::Aggregate(Err(e)),
                // An item this client does not know (a newer coordinator): skipped.
                None => continue,
            }));
        }
    }
}
