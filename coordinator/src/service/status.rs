//! What the coordinator reports of its state: `ListProjects`' answer and the dashboard's
//! capture, both only once what they show is on disk.

use std::collections::HashSet;
use std::time::Duration;

use protocol::ProjectId;
use tonic::Status;

use super::{CoordinatorService, State, to_status};
use crate::dashboard;
use crate::fleet::{self, Fleet};
use crate::status::{ProjectStatus, project_status};
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

    /// The status of project `id` (or of every project), once what it reports is durable.
    pub(super) async fn status_of(
        &self,
        id: Option<ProjectId>,
    ) -> Result<Vec<ProjectStatus>, Status> {
        let state = self.inner.state.lock().await;
        if let Some(id) = id
            && state.sched.project(id).is_none()
        {
            return Err(to_status(Error::UnknownProject(id)));
        }
        let now = now_ms();
        let fleet = Self::fleet(&state, now, self.inner.lease_ms);
        let waiting = Self::waiting(&state, now, self.inner.lease_ms);
        let out: Vec<ProjectStatus> = state
            .sched
            .projects()
            .filter(|p| id.is_none_or(|id| id == p.id))
            .map(|p| {
                let waits: Vec<&crate::scheduler::Waiting> =
                    waiting.iter().filter(|w| w.project == p.id).collect();
                project_status(
                    p,
                    state.sched.in_progress(p.id),
                    &fleet,
                    fleet::waiting_sentences(&waits),
                    state.sched.warnings(p.id),
                )
            })
            .collect();
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
        let fleet = Self::fleet(&state, now, self.inner.lease_ms);
        let mut capture = dashboard::snapshot::Capture::take(
            &state.sched,
            &fleet,
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
            let waits: Vec<&crate::scheduler::Waiting> = waiting
                .iter()
                .filter(|w| w.project == p.status.id)
                .collect();
            p.status.waiting = fleet::waiting_sentences(&waits);
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
