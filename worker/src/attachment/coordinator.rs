//! The coordinator calls the units' shell makes, behind a trait: the gRPC
//! [`CoordinatorClient`] in a worker, an in-memory twin in the shell's tests (so they run
//! without sockets, with paused time), and [`super::failover::Failover`] over a
//! deployment's coordinators. Module downloads and misbehaviour reports stay on the client
//! itself (the current one of the deployment).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use protocol::{Claim, Failure, Identity, SubmitterKey, UnitId};

use crate::Error;
use crate::rpc::{
    Assignment, CertificateOutcome, CoordinatorClient, HeartbeatReply, Introduction, Outgoing,
    Registration, RunReport,
};

/// A call in flight.
pub(crate) type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// What the shell asks of the coordinator about its units.
pub(crate) trait Coordinator: Send + Sync {
    /// Registers this worker (signed by `identity`).
    fn register<'a>(
        &'a self,
        identity: &'a Identity,
        me: Introduction<'a>,
    ) -> Call<'a, Registration>;
    /// Up to `max` units; with none, how long to wait and the coordinator's reason.
    fn request_work<'a>(
        &'a self,
        max: u32,
        accept_submitters: &'a [SubmitterKey],
        allow_unsigned: bool,
    ) -> Call<'a, (Vec<Assignment>, Duration, String)>;
    /// Renews the leases of `held`; says which are settled.
    fn heartbeat<'a>(
        &'a self,
        held: &'a [UnitId],
        peers_version: u64,
        run: &'a RunReport,
    ) -> Call<'a, HeartbeatReply>;
    /// Hands units back.
    fn return_units<'a>(&'a self, units: &'a [UnitId]) -> Call<'a, ()>;
    /// Reports that a unit failed.
    fn report_failure<'a>(&'a self, unit: UnitId, failure: &'a Failure) -> Call<'a, ()>;
    /// Submits a certificate with our output.
    fn submit_certificate<'a>(
        &'a self,
        unit: UnitId,
        claims: &'a [Claim],
        output: &'a [u8],
    ) -> Call<'a, CertificateOutcome>;
    /// Submits several certificates in one call: an answer for each, in order (a refused
    /// certificate as its own error), or the error of the whole call. By default, one
    /// call per certificate, as [`CoordinatorClient::submit_certificates`] does against
    /// an older coordinator: a call that fails transiently (the coordinator unreachable,
    /// say) is the whole batch's error, so failover sees it as it would a batch's.
    fn submit_certificates<'a>(
        &'a self,
        batch: &'a [Outgoing<'a>],
    ) -> Call<'a, Vec<Result<CertificateOutcome, Error>>> {
        Box::pin(crate::rpc::one_by_one(batch, move |c| {
            self.submit_certificate(c.unit, c.claims, c.output)
        }))
    }
    /// Reports disagreeing claims.
    fn dispute<'a>(&'a self, unit: UnitId, claims: &'a [Claim]) -> Call<'a, ()>;
}

impl Coordinator for CoordinatorClient {
    fn register<'a>(
        &'a self,
        identity: &'a Identity,
        me: Introduction<'a>,
    ) -> Call<'a, Registration> {
        Box::pin(CoordinatorClient::register(self, identity, me))
    }

    fn request_work<'a>(
        &'a self,
        max: u32,
        accept_submitters: &'a [SubmitterKey],
        allow_unsigned: bool,
    ) -> Call<'a, (Vec<Assignment>, Duration, String)> {
        Box::pin(self.request_work_why(max, accept_submitters, allow_unsigned))
    }

    fn heartbeat<'a>(
        &'a self,
        held: &'a [UnitId],
        peers_version: u64,
        run: &'a RunReport,
    ) -> Call<'a, HeartbeatReply> {
        Box::pin(CoordinatorClient::heartbeat(self, held, peers_version, run))
    }

    fn return_units<'a>(&'a self, units: &'a [UnitId]) -> Call<'a, ()> {
        Box::pin(CoordinatorClient::return_units(self, units))
    }

    fn report_failure<'a>(&'a self, unit: UnitId, failure: &'a Failure) -> Call<'a, ()> {
        Box::pin(CoordinatorClient::report_failure(self, unit, failure))
    }

    fn submit_certificate<'a>(
        &'a self,
        unit: UnitId,
        claims: &'a [Claim],
        output: &'a [u8],
    ) -> Call<'a, CertificateOutcome> {
        Box::pin(CoordinatorClient::submit_certificate(
            self, unit, claims, output,
        ))
    }

    fn submit_certificates<'a>(
        &'a self,
        batch: &'a [Outgoing<'a>],
    ) -> Call<'a, Vec<Result<CertificateOutcome, Error>>> {
        Box::pin(CoordinatorClient::submit_certificates(self, batch))
    }

    fn dispute<'a>(&'a self, unit: UnitId, claims: &'a [Claim]) -> Call<'a, ()> {
        Box::pin(CoordinatorClient::dispute(self, unit, claims))
    }
}
