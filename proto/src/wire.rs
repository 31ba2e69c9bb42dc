//! The boundary between protobuf messages and domain types: every conversion of a shared
//! message lives here, and every one that reads network data is a `TryFrom` that rejects bad
//! input with [`Error::Malformed`] naming the field ("parse, don't validate").
//!
//! The conversions return `protocol::Error` rather than an error type of this crate: a bad
//! message is refused by the same domain checks (`Digest::from_slice`, `Limits::validate`,
//! `ProjectSpec::validate`) that return it, every caller already maps it to a `tonic::Status`
//! or its own error in one place, and a second enum here would only wrap it.

use std::time::Duration;

use protocol::assignment::{Assignment, Signed};
use protocol::claim::Commitment;
use protocol::control::{Action, Done, Extension, State};
use protocol::data::DataFile;
use protocol::evidence::Evidence;
use protocol::manifest::ProjectSpec;
use protocol::provenance::{Signatures, Signer, SubmitterKey};
use protocol::status::{Outcome, ProjectStatus};
use protocol::ticket::Ticket;
use protocol::{Claim, Digest, Error, Failure, FailureKind, Limits, ProjectId, UnitId, WorkerId};

use crate::v1 as pb;

fn fixed<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], Error> {
    bytes
        .try_into()
        .map_err(|_| Error::malformed(field, format!("expected {N} bytes, got {}", bytes.len())))
}

impl TryFrom<pb::Claim> for Claim {
    type Error = Error;
    fn try_from(c: pb::Claim) -> Result<Self, Error> {
        Ok(Claim {
            project: ProjectId(c.project_id),
            unit: UnitId(c.unit_id),
            digest: Digest::from_slice("Claim.digest", &c.digest)?,
            fuel: c.fuel,
            worker: WorkerId::from_slice("Claim.worker_key", &c.worker_key)?,
            salt: fixed("Claim.salt", &c.salt)?,
            signature: fixed("Claim.signature", &c.signature)?,
        })
    }
}

impl From<&Claim> for pb::Claim {
    fn from(c: &Claim) -> Self {
        pb::Claim {
            project_id: c.project.0,
            unit_id: c.unit.0,
            digest: c.digest.0.to_vec(),
            fuel: c.fuel,
            worker_key: c.worker.0.to_vec(),
            signature: c.signature.to_vec(),
            salt: c.salt.to_vec(),
        }
    }
}

impl TryFrom<pb::Commitment> for Commitment {
    type Error = Error;
    fn try_from(c: pb::Commitment) -> Result<Self, Error> {
        Ok(Commitment {
            project: ProjectId(c.project_id),
            unit: UnitId(c.unit_id),
            worker: WorkerId::from_slice("Commitment.worker_key", &c.worker_key)?,
            seal: fixed("Commitment.seal", &c.seal)?,
            signature: fixed("Commitment.signature", &c.signature)?,
            ticket: c.ticket.map(Ticket::try_from).transpose()?,
        })
    }
}

impl TryFrom<pb::LeaseTicket> for Ticket {
    type Error = Error;
    fn try_from(t: pb::LeaseTicket) -> Result<Self, Error> {
        Ok(Ticket {
            expires_ms: t.expires_ms,
            signature: fixed("LeaseTicket.signature", &t.signature)?,
        })
    }
}

impl From<&Ticket> for pb::LeaseTicket {
    fn from(t: &Ticket) -> Self {
        pb::LeaseTicket {
            expires_ms: t.expires_ms,
            signature: t.signature.to_vec(),
        }
    }
}

impl From<&Commitment> for pb::Commitment {
    fn from(c: &Commitment) -> Self {
        pb::Commitment {
            project_id: c.project.0,
            unit_id: c.unit.0,
            worker_key: c.worker.0.to_vec(),
            seal: c.seal.to_vec(),
            signature: c.signature.to_vec(),
            ticket: c.ticket.as_ref().map(pb::LeaseTicket::from),
        }
    }
}

impl TryFrom<pb::Assignment> for Assignment {
    type Error = Error;
    fn try_from(a: pb::Assignment) -> Result<Self, Error> {
        let signed = if a.submitter_key.is_empty() && a.terms.is_empty() && a.signature.is_empty() {
            None
        } else {
            Some(Signed {
                signer: Signer {
                    key: SubmitterKey::from_slice("Assignment.submitter_key", &a.submitter_key)?,
                    terms: Digest::from_slice("Assignment.terms", &a.terms)?,
                },
                signature: a.signature.as_slice().try_into().map_err(|_| {
                    Error::malformed(
                        "Assignment.signature",
                        format!("{} bytes, expected 64", a.signature.len()),
                    )
                })?,
            })
        };
        Ok(Assignment {
            signed,
            ticket: a.ticket.map(Ticket::try_from).transpose()?,
            project: ProjectId(a.project_id),
            unit: UnitId(a.unit_id),
            name: a.unit_name,
            input: a.input,
            module: Digest::from_slice("Assignment.module_digest", &a.module_digest)?,
            limits: limits_from_wire(a.limits)?,
            quorum: a.quorum,
            lease: Duration::from_millis(a.lease_ms),
            data: data_from_wire("Assignment.data", a.data)?,
        })
    }
}

/// The one mapping of an assignment to the wire: the coordinator sends it, the worker keeps
/// it on disk beside a checkpoint.
impl From<&Assignment> for pb::Assignment {
    fn from(a: &Assignment) -> Self {
        pb::Assignment {
            project_id: a.project.0,
            unit_id: a.unit.0,
            unit_name: a.name.clone(),
            input: a.input.clone(),
            module_digest: a.module.0.to_vec(),
            limits: Some(a.limits.into()),
            quorum: a.quorum,
            lease_ms: a.lease.as_millis() as u64,
            submitter_key: a
                .signed
                .map(|s| s.signer.key.0.to_vec())
                .unwrap_or_default(),
            terms: a
                .signed
                .map(|s| s.signer.terms.0.to_vec())
                .unwrap_or_default(),
            signature: a.signed.map(|s| s.signature.to_vec()).unwrap_or_default(),
            ticket: a.ticket.as_ref().map(pb::LeaseTicket::from),
            data: a.data.iter().map(pb::DataFile::from).collect(),
        }
    }
}

/// A data list from the wire: digests of 32 bytes, and the list checked whole
/// ([`protocol::data::check_list`]: names, order, limits).
pub fn data_from_wire(
    field: &'static str,
    files: Vec<pb::DataFile>,
) -> Result<Vec<DataFile>, Error> {
    let files = files
        .into_iter()
        .map(|f| {
            Ok(DataFile {
                digest: Digest::from_slice("DataFile.digest", &f.digest)?,
                name: f.name,
                size: f.size,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    protocol::data::check_list(&files).map_err(|e| Error::malformed(field, e))?;
    Ok(files)
}

impl From<&DataFile> for pb::DataFile {
    fn from(f: &DataFile) -> Self {
        pb::DataFile {
            name: f.name.clone(),
            size: f.size,
            digest: f.digest.0.to_vec(),
        }
    }
}

impl TryFrom<pb::Evidence> for Evidence {
    type Error = Error;
    fn try_from(e: pb::Evidence) -> Result<Self, Error> {
        let commitment = e
            .commitment
            .ok_or_else(|| Error::malformed("Evidence.commitment", "missing"))?
            .try_into()?;
        match (e.claim, e.other) {
            (Some(claim), None) => Ok(Evidence::Mismatch(commitment, claim.try_into()?)),
            (None, Some(other)) => Ok(Evidence::Equivocation(commitment, other.try_into()?)),
            _ => Err(Error::malformed(
                "Evidence",
                "exactly one of claim and other must be set",
            )),
        }
    }
}

impl From<&Evidence> for pb::Evidence {
    fn from(e: &Evidence) -> Self {
        match e {
            Evidence::Mismatch(c, claim) => pb::Evidence {
                reporter_key: Vec::new(),
                commitment: Some(c.into()),
                claim: Some(claim.into()),
                other: None,
            },
            Evidence::Equivocation(a, b) => pb::Evidence {
                reporter_key: Vec::new(),
                commitment: Some(a.into()),
                claim: None,
                other: Some(b.into()),
            },
        }
    }
}

/// Converts a list of wire claims, refusing the whole list if one is malformed.
pub fn claims_from_wire(claims: Vec<pb::Claim>) -> Result<Vec<Claim>, Error> {
    claims.into_iter().map(Claim::try_from).collect()
}

/// Converts claims for the wire.
pub fn claims_to_wire(claims: &[Claim]) -> Vec<pb::Claim> {
    claims.iter().map(pb::Claim::from).collect()
}

/// Reads a message's `limits` field, refusing a missing one. (A function, not a `TryFrom`
/// on `Option<pb::Limits>`: neither `Option` nor `Limits` is this crate's.)
pub fn limits_from_wire(l: Option<pb::Limits>) -> Result<Limits, Error> {
    let l = l.ok_or_else(|| Error::malformed("limits", "missing"))?;
    let limits = Limits {
        fuel: l.fuel,
        memory_mb: l.memory_mb,
        wall_seconds: l.wall_seconds,
        max_output_bytes: l.max_output_bytes,
        nan_canonicalization: l.nan_canonicalization,
        // 0: sent by a coordinator that predates checkpoints.
        max_checkpoint_bytes: match l.max_checkpoint_bytes {
            0 => Limits::default().max_checkpoint_bytes,
            n => n,
        },
    };
    limits
        .validate()
        .map_err(|p| Error::malformed("limits", p))?;
    Ok(limits)
}

impl From<Limits> for pb::Limits {
    fn from(l: Limits) -> Self {
        pb::Limits {
            fuel: l.fuel,
            memory_mb: l.memory_mb,
            wall_seconds: l.wall_seconds,
            max_output_bytes: l.max_output_bytes,
            nan_canonicalization: l.nan_canonicalization,
            max_checkpoint_bytes: l.max_checkpoint_bytes,
        }
    }
}

impl From<FailureKind> for pb::FailureKind {
    fn from(k: FailureKind) -> Self {
        match k {
            FailureKind::FuelExhausted => pb::FailureKind::FuelExhausted,
            FailureKind::Timeout => pb::FailureKind::Timeout,
            FailureKind::MemoryExhausted => pb::FailureKind::MemoryExhausted,
            FailureKind::StackOverflow => pb::FailureKind::StackOverflow,
            FailureKind::OutputTooLarge => pb::FailureKind::OutputTooLarge,
            FailureKind::Trap => pb::FailureKind::Trap,
            FailureKind::ExitCode => pb::FailureKind::ExitCode,
            FailureKind::BadModule => pb::FailureKind::BadModule,
            FailureKind::BadSignature => pb::FailureKind::BadSignature,
            FailureKind::CheckpointTooLarge => pb::FailureKind::CheckpointTooLarge,
        }
    }
}

/// Reads a failure report's kind and detail.
pub fn failure_from_wire(kind: i32, detail: String) -> Result<Failure, Error> {
    let kind = match pb::FailureKind::try_from(kind) {
        Ok(pb::FailureKind::FuelExhausted) => FailureKind::FuelExhausted,
        Ok(pb::FailureKind::Timeout) => FailureKind::Timeout,
        Ok(pb::FailureKind::MemoryExhausted) => FailureKind::MemoryExhausted,
        Ok(pb::FailureKind::StackOverflow) => FailureKind::StackOverflow,
        Ok(pb::FailureKind::OutputTooLarge) => FailureKind::OutputTooLarge,
        Ok(pb::FailureKind::Trap) => FailureKind::Trap,
        Ok(pb::FailureKind::ExitCode) => FailureKind::ExitCode,
        Ok(pb::FailureKind::BadModule) => FailureKind::BadModule,
        Ok(pb::FailureKind::BadSignature) => FailureKind::BadSignature,
        Ok(pb::FailureKind::CheckpointTooLarge) => FailureKind::CheckpointTooLarge,
        Ok(pb::FailureKind::Unspecified) | Err(_) => {
            return Err(Error::malformed(
                "FailureReport.kind",
                format!("unknown kind {kind}"),
            ));
        }
    };
    Ok(Failure::new(kind, detail))
}

impl TryFrom<pb::SubmitProjectRequest> for ProjectSpec {
    type Error = Error;
    fn try_from(r: pb::SubmitProjectRequest) -> Result<Self, Error> {
        let mut spec = ProjectSpec {
            name: r.name,
            module: r.module,
            reducer: (!r.reducer.is_empty()).then_some(r.reducer),
            replication: r.replication,
            quorum: r.quorum,
            max_replicas: r.max_replicas,
            adaptive: !r.fixed_replication,
            error_bound: if r.error_bound == 0.0 {
                protocol::manifest::DEFAULT_ERROR_BOUND
            } else {
                r.error_bound
            },
            limits: limits_from_wire(r.limits)?,
            signatures: None,
            units: Vec::with_capacity(r.units.len()),
            manifest: r.manifest,
            data: data_from_wire("SubmitProjectRequest.data", r.data)?,
            data_paths: Vec::new(),
        };
        let mut signatures = Vec::with_capacity(r.units.len());
        for u in r.units {
            if !r.submitter_key.is_empty() {
                let sig: [u8; 64] = u.signature.as_slice().try_into().map_err(|_| {
                    Error::malformed(
                        "UnitInput.signature",
                        format!(
                            "unit {:?}: {} bytes, expected 64",
                            u.name,
                            u.signature.len()
                        ),
                    )
                })?;
                signatures.push(sig);
            }
            spec.units.push((u.name, u.input));
        }
        if !r.submitter_key.is_empty() {
            spec.signatures = Some(Signatures {
                key: SubmitterKey::from_slice(
                    "SubmitProjectRequest.submitter_key",
                    &r.submitter_key,
                )?,
                units: signatures,
            });
        }
        spec.validate()
            .map_err(|p| Error::malformed("SubmitProjectRequest", p))?;
        Ok(spec)
    }
}

impl From<ProjectSpec> for pb::SubmitProjectRequest {
    fn from(s: ProjectSpec) -> Self {
        pb::SubmitProjectRequest {
            name: s.name,
            module: s.module,
            reducer: s.reducer.unwrap_or_default(),
            replication: s.replication,
            quorum: s.quorum,
            max_replicas: s.max_replicas,
            fixed_replication: !s.adaptive,
            error_bound: s.error_bound,
            limits: Some(s.limits.into()),
            submitter_key: s
                .signatures
                .as_ref()
                .map(|g| g.key.0.to_vec())
                .unwrap_or_default(),
            once: false,
            data: s.data.iter().map(pb::DataFile::from).collect(),
            units: s
                .units
                .into_iter()
                .enumerate()
                .map(|(i, (name, input))| pb::UnitInput {
                    name,
                    input,
                    signature: s
                        .signatures
                        .as_ref()
                        .and_then(|g| g.units.get(i))
                        .map(|sig| sig.to_vec())
                        .unwrap_or_default(),
                })
                .collect(),
            manifest: s.manifest,
        }
    }
}

/// The one mapping of a project's status to the wire (`ListProjects`).
impl From<&ProjectStatus> for pb::ProjectStatus {
    fn from(s: &ProjectStatus) -> Self {
        pb::ProjectStatus {
            id: s.id.0,
            name: s.name.clone(),
            total: s.total,
            verified: s.verified,
            failed: s.failed,
            in_progress: s.in_progress,
            pending: s.pending,
            finished: s.finished,
            executions: s.executions,
            disputes: s.disputes,
            has_reducer: s.has_reducer,
            aggregate_ready: s.aggregate_ready,
            aggregate_error: s.aggregate_error.clone(),
            replication: s.replication,
            quorum: s.quorum,
            credit: s.credit,
            solo: s.solo,
            spot_checks: s.spot_checks,
            mismatches: s.mismatches,
            reopened: s.reopened,
            submitter: s.submitter.clone(),
            workers_running: s.workers_running,
            workers_suspended: s.workers_suspended,
            workers_idle: s.workers_idle,
            fleet: s.fleet.clone(),
            waiting: s.waiting.clone(),
            warnings: s.warnings.clone(),
            state: s.state.as_str().to_string(),
            cancelled: s.cancelled,
            terms: s.terms.map(|d| d.0.to_vec()).unwrap_or_default(),
        }
    }
}

/// A project's status as the coordinator sent it; the outcome is derived from its numbers
/// (the wire does not carry it). Every field is plain data, so nothing is refused.
impl From<pb::ProjectStatus> for ProjectStatus {
    fn from(p: pb::ProjectStatus) -> Self {
        // A state this version does not know is shown as active: status is plain data.
        let state = State::parse(&p.state).unwrap_or_default();
        ProjectStatus {
            outcome: Outcome::of(
                p.total,
                (p.verified, p.failed, p.cancelled),
                p.finished,
                !p.aggregate_error.is_empty(),
                state,
            ),
            state,
            cancelled: p.cancelled,
            // Plain data: terms of the wrong length are shown as none.
            terms: Digest::from_slice("ProjectStatus.terms", &p.terms).ok(),
            id: ProjectId(p.id),
            name: p.name,
            total: p.total,
            verified: p.verified,
            failed: p.failed,
            in_progress: p.in_progress,
            pending: p.pending,
            executions: p.executions,
            disputes: p.disputes,
            replication: p.replication,
            quorum: p.quorum,
            credit: p.credit,
            solo: p.solo,
            spot_checks: p.spot_checks,
            mismatches: p.mismatches,
            reopened: p.reopened,
            finished: p.finished,
            has_reducer: p.has_reducer,
            aggregate_ready: p.aggregate_ready,
            aggregate_error: p.aggregate_error,
            submitter: p.submitter,
            workers_running: p.workers_running,
            workers_suspended: p.workers_suspended,
            workers_idle: p.workers_idle,
            fleet: p.fleet,
            waiting: p.waiting,
            warnings: p.warnings,
        }
    }
}

/// The one mapping of a control action to the wire.
pub fn action_to_wire(action: Action) -> pb::ControlAction {
    match action {
        Action::Cancel => pb::ControlAction::Cancel,
        Action::Pause => pb::ControlAction::Pause,
        Action::Resume => pb::ControlAction::Resume,
        Action::Retry => pb::ControlAction::Retry,
        Action::Reduce => pb::ControlAction::Reduce,
    }
}

/// A `ControlRequest` as the domain sees it: the project, the action and who asks.
pub fn control_from_wire(
    r: &pb::ControlRequest,
) -> Result<(ProjectId, Action, SubmitterKey), Error> {
    let action = match pb::ControlAction::try_from(r.action) {
        Ok(pb::ControlAction::Cancel) => Action::Cancel,
        Ok(pb::ControlAction::Pause) => Action::Pause,
        Ok(pb::ControlAction::Resume) => Action::Resume,
        Ok(pb::ControlAction::Retry) => Action::Retry,
        Ok(pb::ControlAction::Reduce) => Action::Reduce,
        Ok(pb::ControlAction::Unspecified) | Err(_) => {
            return Err(Error::malformed(
                "ControlRequest.action",
                format!("{} is not a control action", r.action),
            ));
        }
    };
    let key = SubmitterKey::from_slice("ControlRequest.submitter_key", &r.submitter_key)?;
    Ok((ProjectId(r.project_id), action, key))
}

/// An `ExtendRequest` as the domain sees it; every unit must carry a 64-byte signature.
/// The submission rules are checked against the project by the receiver
/// ([`Extension::validate`]).
pub fn extension_from_wire(r: pb::ExtendRequest) -> Result<Extension, Error> {
    let key = SubmitterKey::from_slice("ExtendRequest.submitter_key", &r.submitter_key)?;
    let mut units = Vec::with_capacity(r.units.len());
    let mut signatures = Vec::with_capacity(r.units.len());
    for u in r.units {
        let sig: [u8; 64] = u.signature.as_slice().try_into().map_err(|_| {
            Error::malformed(
                "UnitInput.signature",
                format!(
                    "unit {:?}: {} bytes, expected 64",
                    u.name,
                    u.signature.len()
                ),
            )
        })?;
        signatures.push(sig);
        units.push((u.name, u.input));
    }
    Ok(Extension {
        project: ProjectId(r.project_id),
        key,
        units,
        signatures,
    })
}

/// An [`Extension`] on the wire.
impl From<Extension> for pb::ExtendRequest {
    fn from(e: Extension) -> Self {
        pb::ExtendRequest {
            project_id: e.project.0,
            submitter_key: e.key.0.to_vec(),
            units: e
                .units
                .into_iter()
                .zip(e.signatures)
                .map(|((name, input), signature)| pb::UnitInput {
                    name,
                    input,
                    signature: signature.to_vec(),
                })
                .collect(),
        }
    }
}

impl From<Done> for pb::ControlResponse {
    fn from(d: Done) -> Self {
        pb::ControlResponse {
            state: d.state.as_str().to_string(),
            units: d.units,
            pending: d.pending,
            in_progress: d.in_progress,
        }
    }
}

/// What a control call did, as the coordinator said (an unknown state reads as active).
impl From<pb::ControlResponse> for Done {
    fn from(r: pb::ControlResponse) -> Self {
        Done {
            state: State::parse(&r.state).unwrap_or_default(),
            units: r.units,
            pending: r.pending,
            in_progress: r.in_progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Identity;

    #[test]
    fn claims_round_trip_and_malformed_ones_are_refused() {
        let claim = Claim::sign(
            &Identity::from_seed([3; 32]),
            ProjectId(1),
            UnitId(2),
            Digest::of(b"o"),
            7,
        );
        let wire = pb::Claim::from(&claim);
        assert_eq!(Claim::try_from(wire.clone()).expect("valid"), claim);
        let mut short_digest = wire.clone();
        short_digest.digest.pop();
        assert!(Claim::try_from(short_digest).is_err());
        let mut long_sig = wire.clone();
        long_sig.signature.push(0);
        assert!(Claim::try_from(long_sig).is_err());
        let mut no_key = wire;
        no_key.worker_key.clear();
        assert!(Claim::try_from(no_key).is_err());
    }

    /// Every documented submission limit is checked by the receiver's conversion, whatever
    /// the sender checked: a raw `SubmitProject` over one is refused naming it.
    #[test]
    fn submissions_over_a_documented_limit_are_refused_on_the_wire() {
        use protocol::manifest::{MAX_INPUT_BYTES, MAX_MODULE_BYTES, MAX_UNITS};
        fn unit(name: &str, input: Vec<u8>) -> pb::UnitInput {
            pb::UnitInput {
                name: name.into(),
                input,
                signature: Vec::new(),
            }
        }
        let good = || pb::SubmitProjectRequest {
            name: "p".into(),
            module: b"\0asm\x01\0\0\0".to_vec(),
            reducer: Vec::new(),
            replication: 2,
            quorum: 2,
            max_replicas: 5,
            limits: Some(Limits::default().into()),
            units: vec![unit("a", b"1".to_vec())],
            manifest: String::new(),
            fixed_replication: false,
            error_bound: 0.0,
            submitter_key: Vec::new(),
            once: false,
            data: Vec::new(),
        };
        type Edit = fn(&mut pb::SubmitProjectRequest);
        let cases: [(&str, Edit, &str); 9] = [
            (
                "module",
                |r| r.module = vec![0; MAX_MODULE_BYTES + 1],
                "wasm: the module is 67108865 bytes, over the 67108864-byte (64 MiB) limit",
            ),
            (
                "reducer",
                |r| r.reducer = vec![0; MAX_MODULE_BYTES + 1],
                "[reduce].wasm: the module is 67108865 bytes, over the 67108864-byte (64 MiB)",
            ),
            (
                "units",
                |r| r.units = vec![unit("a", Vec::new()); MAX_UNITS + 1],
                "1000001 units, at most 1000000",
            ),
            (
                "input",
                |r| r.units[0].input = vec![0; MAX_INPUT_BYTES + 1],
                "16777217 bytes of input, at most 16777216",
            ),
            ("name", |r| r.name = "p".repeat(101), "1 to 100 printable"),
            (
                "unit name",
                |r| r.units[0].name = "u".repeat(201),
                "1 to 200 characters",
            ),
            (
                "reserved unit name",
                |r| r.units[0].name = "aggregate".into(),
                "reserved",
            ),
            ("replication", |r| r.replication = 65, "between 1 and 64"),
            (
                "max_replicas",
                |r| r.max_replicas = 65,
                "max_replicas must be",
            ),
        ];
        assert!(ProjectSpec::try_from(good()).is_ok());
        for (what, edit, named) in cases {
            let mut request = good();
            edit(&mut request);
            match ProjectSpec::try_from(request) {
                Ok(_) => panic!("{what}: accepted over its limit"),
                Err(e) => assert!(e.to_string().contains(named), "{what}: {e}"),
            }
        }
    }

    #[test]
    fn limits_out_of_range_are_refused_on_the_wire() {
        let mut l = pb::Limits::from(Limits::default());
        l.memory_mb = 1_000_000;
        assert!(limits_from_wire(Some(l)).is_err());
        assert!(limits_from_wire(None).is_err());
    }
}
