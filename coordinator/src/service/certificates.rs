//! Certificates: `SubmitCertificate` (one per call) and `SubmitCertificates` (a batch in
//! one signed call). Both take every certificate through the same steps: claims from the
//! wire, their signatures checked before the state lock, the scheduler's verdict under it,
//! the writes queued to the writer, and the answer once they are on disk.
//!
//! A batch saves what is per call, not per certificate: one call signature, one RPC, one
//! turn of the state lock and one wake-up for the writer's answer. Each certificate keeps
//! its own writer job, so a write that fails fails only its own certificate, and its own
//! answer, so a refused certificate does not cost the others.

use proto::v1 as pb;
use proto::wire;
use protocol::{Certificate, ProjectId, UnitId, WorkerId};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::handlers::authenticate;
use super::{CoordinatorService, State, to_status};
use crate::dashboard::CertificateOutcome;
use crate::scheduler::{Change, SignedCertificate, Verdict};
use crate::store::{CreditTo, Store, Write};
use crate::{Error, now_ms};

/// Most certificates in one `SubmitCertificates` call.
pub const MAX_CERTIFICATES_PER_CALL: usize = 64;

/// Most claims in one `SubmitCertificates` call, all certificates together. Their
/// signatures are checked before the caller's standing is (outside the lock, like a single
/// certificate's), so this bounds what one call can make the coordinator verify: 256
/// signatures, about 10 ms of one core, four times what one certificate of
/// `certificate::MAX_CLAIMS` claims may cost. Honest batches carry a quorum's claims each.
pub const MAX_CLAIMS_PER_CALL: usize = 256;

/// A certificate the scheduler has decided on, waiting for its writes to be committed.
struct Entered {
    unit: UnitId,
    claims: usize,
    committed: oneshot::Receiver<Result<(), Status>>,
    outcome: CertificateOutcome,
    /// The project, when this certificate verified its last open unit.
    finished: Option<ProjectId>,
}

impl<S: Store> CoordinatorService<S> {
    /// `SubmitCertificate`: one certificate.
    pub(super) async fn certificate(
        &self,
        request: Request<pb::CertificateSubmission>,
    ) -> Result<Response<pb::CertificateAck>, Status> {
        self.writable()?;
        let (submitter, stamp) = authenticate(
            "SubmitCertificate",
            &request,
            &request.get_ref().submitter_key,
        )?;
        let r = request.into_inner();
        let checked = self.check_signatures(r.unit_id, r.claims)?;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, submitter, now)?;
        Self::fresh(&mut state, submitter, &stamp)?;
        self.admit_backed(&mut state, submitter)?;
        let entered = self.enter(&mut state, &checked, r.output, now)?;
        drop(state);
        self.settle(entered).await.map(Response::new)
    }

    /// `SubmitCertificates`: up to [`MAX_CERTIFICATES_PER_CALL`], each answered on its own.
    pub(super) async fn certificates(
        &self,
        request: Request<pb::CertificateBatch>,
    ) -> Result<Response<pb::CertificateAcks>, Status> {
        self.writable()?;
        let (submitter, stamp) = authenticate(
            "SubmitCertificates",
            &request,
            &request.get_ref().submitter_key,
        )?;
        let batch = request.into_inner();
        check_batch(submitter, &batch)?;
        // Signatures first, outside the lock; a certificate refused here keeps its place.
        let checked: Vec<Result<(SignedCertificate, Vec<u8>), Status>> = batch
            .certificates
            .into_iter()
            .map(|c| Ok((self.check_signatures(c.unit_id, c.claims)?, c.output)))
            .collect();
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::known_worker(&mut state, submitter, now)?;
        Self::fresh(&mut state, submitter, &stamp)?;
        let entered: Vec<Result<Entered, Status>> = checked
            .into_iter()
            .map(|c| {
                let (checked, output) = c?;
                // Each certificate spends what it would have spent alone.
                self.admit_backed(&mut state, submitter)?;
                self.enter(&mut state, &checked, output, now)
            })
            .collect();
        drop(state);
        let mut acks = Vec::with_capacity(entered.len());
        for e in entered {
            let settled = match e {
                Ok(entered) => self.settle(entered).await,
                Err(status) => Err(status),
            };
            acks.push(settled.unwrap_or_else(|status| pb::CertificateAck {
                accepted: false,
                recorded: false,
                refused: Some(pb::Refusal {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                }),
            }));
        }
        Ok(Response::new(pb::CertificateAcks { acks }))
    }

    /// Converts a certificate's claims and checks their signatures (the expensive part;
    /// no state is touched). A refusal is counted on the dashboard and logged.
    fn check_signatures(
        &self,
        unit_id: u64,
        claims: Vec<pb::Claim>,
    ) -> Result<SignedCertificate, Status> {
        let unit = UnitId(unit_id);
        let cert = Certificate {
            unit,
            claims: wire::claims_from_wire(claims).map_err(|e| to_status(e.into()))?,
        };
        let claims = cert.claims.len();
        SignedCertificate::check(cert).map_err(|e| self.rejected(unit, claims, e))
    }

    fn rejected(&self, unit: UnitId, claims: usize, e: Error) -> Status {
        tracing::warn!(%unit, "certificate rejected: {e}");
        self.inner
            .dashboard
            .certificate(claims, CertificateOutcome::Rejected);
        to_status(e)
    }

    /// Asks the scheduler for the certificate's verdict and queues its writes (call with
    /// the state lock held; await [`settle`](Self::settle) after releasing it).
    fn enter(
        &self,
        state: &mut State,
        checked: &SignedCertificate,
        output: Vec<u8>,
        now: u64,
    ) -> Result<Entered, Status> {
        let cert = checked.certificate();
        let (unit, claims) = (cert.unit, cert.claims.len());
        let submitted = state
            .sched
            .submit_checked(checked, Some(&output))
            .map_err(|e| self.rejected(unit, claims, e))?;
        let verified = match submitted.verdict {
            Verdict::Verified(v) => v,
            other => {
                // Even a duplicate waits: the verdict it repeats may not be on disk yet.
                let committed = if submitted.changes.is_empty() {
                    self.queue(Vec::new())
                } else {
                    self.queue(vec![(Write::Changes(submitted.changes), now)])
                };
                return Ok(Entered {
                    unit,
                    claims,
                    committed,
                    outcome: if other == Verdict::Recorded {
                        CertificateOutcome::Recorded
                    } else {
                        CertificateOutcome::Duplicate
                    },
                    finished: None,
                });
            }
        };
        let credit: Vec<CreditTo> = verified
            .signers
            .iter()
            .map(|w| credit_to(state, *w))
            .collect();
        // The scheduler moves on now; the answer waits until the writes below are
        // committed, in order with every other request's.
        let changes = state.sched.mark_verified(unit, &verified);
        if changes.iter().any(|c| matches!(c, Change::Reopen { .. })) {
            tracing::warn!(%unit, "a trusted worker's result disagreed: its unchecked results are re-opened");
        }
        let finished = cert
            .claims
            .first()
            .and_then(|c| state.sched.project(c.project))
            .filter(|p| p.finished())
            .map(|p| p.id);
        tracing::debug!(%unit, digest = %verified.digest, "unit verified");
        let committed = self.queue(vec![
            (Write::Changes(submitted.changes), now),
            (
                Write::Verified {
                    unit,
                    output,
                    verified,
                    credit,
                },
                now,
            ),
            (Write::Changes(changes), now),
        ]);
        Ok(Entered {
            unit,
            claims,
            committed,
            outcome: CertificateOutcome::Accepted,
            finished,
        })
    }

    /// Waits until an entered certificate's writes are on disk, then answers for it.
    async fn settle(&self, entered: Entered) -> Result<pb::CertificateAck, Status> {
        Self::committed(entered.committed).await?;
        self.inner
            .dashboard
            .certificate(entered.claims, entered.outcome);
        if let Some(project) = entered.finished {
            tracing::info!(%project, unit = %entered.unit, "all units settled");
            self.maybe_reduce(project).await;
        }
        Ok(pb::CertificateAck {
            accepted: entered.outcome == CertificateOutcome::Accepted,
            recorded: matches!(
                entered.outcome,
                CertificateOutcome::Accepted | CertificateOutcome::Recorded
            ),
            refused: None,
        })
    }
}

/// Refuses a batch that is too large (certificates or claims) or names another submitter
/// in a certificate.
fn check_batch(submitter: WorkerId, batch: &pb::CertificateBatch) -> Result<(), Status> {
    let bad = |problem: String| to_status(Error::BadBatch(problem));
    if batch.certificates.len() > MAX_CERTIFICATES_PER_CALL {
        return Err(bad(format!(
            "{} certificates in one call (at most {MAX_CERTIFICATES_PER_CALL})",
            batch.certificates.len()
        )));
    }
    let claims: usize = batch.certificates.iter().map(|c| c.claims.len()).sum();
    if claims > MAX_CLAIMS_PER_CALL {
        return Err(bad(format!(
            "{claims} claims in one call (at most {MAX_CLAIMS_PER_CALL}, all certificates together)"
        )));
    }
    for (i, c) in batch.certificates.iter().enumerate() {
        if !c.submitter_key.is_empty() && c.submitter_key != submitter.0 {
            let named = WorkerId::from_slice("submitter_key", &c.submitter_key).map_or_else(
                |_| format!("{} bytes that are no key", c.submitter_key.len()),
                |key| format!("worker {key}"),
            );
            return Err(bad(format!(
                "certificate {i} (unit {}) names submitter_key {named} but the call is signed by {submitter}",
                c.unit_id
            )));
        }
    }
    Ok(())
}

/// Whom a verified unit's credit goes to: the signer's account and team as registered.
fn credit_to(state: &State, worker: WorkerId) -> CreditTo {
    let entry = state.workers.get(&worker);
    CreditTo {
        worker,
        account: entry.map_or_else(|| worker.to_string(), |e| e.account.clone()),
        team: entry.map(|e| e.team.clone()).unwrap_or_default(),
    }
}
