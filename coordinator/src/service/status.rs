//! What the coordinator reports of its state: `ListProjects`' answer and the dashboard's
//! capture, both only once what they show is on disk.

use std::collections::HashSet;
use std::time::Duration;

use proto::v1 as pb;
use protocol::ProjectId;
use tonic::Status;

use super::{CoordinatorService, State, to_status};
use crate::dashboard;
use crate::fleet::{self, Fleet};
use crate::scheduler::Aggregate;
use crate::store::{CorruptOutput, Store};
use crate::{Error, now_ms};

impl<S: Store> CoordinatorService<S> {
    /// Online workers by state, as their heartbeats report it.
    pub(super) fn fleet(state: &State, now: u64, lease_ms: u64) -> Fleet {
        Fleet::count(
            state
                .workers
                .values()
                .map(|w| (w.reported.at(w.last_seen, now, lease_ms), &w.reported)),
        )
    }

    /// Units that want a replica no online account may take (`Scheduler::waiting`).
    pub(super) fn waiting(
        state: &State,
        now: u64,
        lease_ms: u64,
    ) -> Vec<crate::scheduler::Waiting> {
        let online: HashSet<&str> = state
            .workers
            .values()
            .filter(|w| now.saturating_sub(w.last_seen) <= lease_ms)
            .map(|w| w.account.as_str())
            .collect();
        state.sched.waiting(&online)
    }

    /// Logs each unit that newly waits for a worker of another account, once until it
    /// stops waiting (a few by name, the rest counted).
    pub(super) fn log_waiting(state: &mut State, waiting: &[crate::scheduler::Waiting]) {
        let new: Vec<&crate::scheduler::Waiting> = waiting
            .iter()
            .filter(|w| !state.waiting_logged.contains(&w.unit))
            .collect();
        for w in new.iter().take(fleet::WAITING_NAMED) {
            tracing::warn!(project = %w.project, "{}", fleet::waiting_sentence(w.unit, w.accounts));
        }
        if new.len() > fleet::WAITING_NAMED {
            tracing::warn!(
                "{} more units need a worker of another account: every online account has run them",
                new.len() - fleet::WAITING_NAMED
            );
        }
        state.waiting_logged = waiting.iter().map(|w| w.unit).collect();
    }

    pub(super) async fn status_of(
        &self,
        id: Option<ProjectId>,
    ) -> Result<Vec<pb::ProjectStatus>, Status> {
        let state = self.inner.state.lock().await;
        if let Some(id) = id
            && state.sched.project(id).is_none()
        {
            return Err(to_status(Error::UnknownProject(id)));
        }
        let now = now_ms();
        let fleet = Self::fleet(&state, now, self.inner.lease_ms);
        let waiting = Self::waiting(&state, now, self.inner.lease_ms);
        let mut out = Vec::new();
        for p in state
            .sched
            .projects()
            .filter(|p| id.is_none_or(|id| id == p.id))
        {
            let waits: Vec<&crate::scheduler::Waiting> =
                waiting.iter().filter(|w| w.project == p.id).collect();
            let in_progress = state.sched.in_progress(p.id);
            let s = p.stats;
            let aggregate_error = match &p.aggregate {
                Aggregate::Failed(e) => e.clone(),
                Aggregate::Pending | Aggregate::Ready => String::new(),
            };
            out.push(pb::ProjectStatus {
                id: p.id.0,
                name: p.name.clone(),
                total: s.total,
                verified: s.verified,
                failed: s.failed,
                in_progress,
                pending: s.total.saturating_sub(s.verified + s.failed + in_progress),
                finished: p.finished()
                    && (p.reducer.is_none() || p.aggregate != Aggregate::Pending),
                executions: s.executions,
                disputes: s.disputes,
                has_reducer: p.reducer.is_some(),
                aggregate_ready: p.aggregate == Aggregate::Ready,
                aggregate_error,
                replication: p.replication,
                quorum: p.quorum,
                credit: s.credit,
                solo: s.solo,
                spot_checks: s.spot_checks,
                mismatches: s.mismatches,
                reopened: s.reopened,
                submitter: p.signer.map(|g| g.key.to_hex()).unwrap_or_default(),
                workers_running: fleet.running,
                workers_suspended: fleet.suspended,
                workers_idle: fleet.idle,
                fleet: fleet.sentence(),
                waiting: fleet::waiting_sentences(&waits),
            });
        }
        // The scheduler runs ahead of the disk (answers wait for the group commit): report
        // only what is durable, so a crash never makes a reported count go back.
        let durable = self.queue(Vec::new());
        drop(state);
        self.durable(durable).await?;
        Ok(out)
    }
}

/// The dashboard's one window into the state: a capture under the lock, timed.
impl<S: Store> dashboard::Source for CoordinatorService<S> {
    type Store = S;

    async fn capture(&self) -> (dashboard::snapshot::Capture, Duration) {
        let mut state = self.inner.state.lock().await;
        let held = std::time::Instant::now();
        let now = now_ms();
        let waiting = Self::waiting(&state, now, self.inner.lease_ms);
        Self::log_waiting(&mut state, &waiting);
        let mut capture = dashboard::snapshot::Capture::take(
            &state.sched,
            state.workers.iter().map(|(id, w)| (*id, w.last_seen)),
            self.inner.lease_ms,
            now,
        );
        capture.reported = state
            .workers
            .iter()
            .map(|(id, w)| (*id, w.reported.clone()))
            .collect();
        for p in capture.projects.iter_mut() {
            let waits: Vec<&crate::scheduler::Waiting> =
                waiting.iter().filter(|w| w.project == p.id).collect();
            p.waiting = fleet::waiting_sentences(&waits);
        }
        // Published only once what it shows is on disk (see `status_of`).
        let durable = self.queue(Vec::new());
        drop(state);
        let held = held.elapsed();
        if let Err(e) = Self::committed(durable).await {
            tracing::warn!("dashboard snapshot: {}", e.message());
        }
        (capture, held)
    }

    fn store(&self) -> &S {
        &self.inner.store
    }

    async fn reverify(&self, corrupt: Vec<CorruptOutput>) {
        CoordinatorService::reverify(self, &corrupt).await;
    }
}
