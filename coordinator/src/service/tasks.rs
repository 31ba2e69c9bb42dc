//! The coordinator's background work: lease expiry on a timer, reducers of finished
//! projects, and sending units whose stored outputs changed on disk back for verification.

use std::time::Duration;

use protocol::ProjectId;
use tokio_util::sync::CancellationToken;

use super::{CoordinatorService, now_us};
use crate::scheduler::Aggregate;
use crate::store::{CorruptOutput, Store, Write};
use crate::{Error, now_ms};

/// How often leases are checked for expiry.
pub(super) const EXPIRY_TICK: Duration = Duration::from_millis(250);

pub(super) async fn expiry_loop<S: Store>(
    service: CoordinatorService<S>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        if ticks.is_multiple_of(240) {
            // Forget workers that have been quiet long enough to have a full bucket again.
            if let Some(limiter) = &service.inner.limiter {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
            service.inner.registrations.prune();
        }
        let now = now_ms();
        let mut state = service.inner.state.lock().await;
        if ticks.is_multiple_of(240) {
            state.calls.forget_quiet(now_us());
        }
        let changes = state.sched.expire(now);
        if changes.is_empty() {
            continue;
        }
        tracing::info!(
            expired = changes.len(),
            "leases expired; units go back to the queue"
        );
        service.inner.dashboard.leases_expired(changes.len());
        if let Err(e) = service.commit(state, changes, now).await {
            tracing::error!("cannot persist lease expiry: {}", e.message());
        }
    }
}

impl<S: Store> CoordinatorService<S> {
    /// Sends units whose stored outputs failed their digest check back for verification
    /// (`Scheduler::reverify`: other workers run them again), durably.
    pub(crate) async fn reverify(&self, corrupt: &[CorruptOutput]) {
        for c in corrupt {
            let ran = match self.inner.store.unit_workers(c.unit).await {
                Ok(ran) => ran,
                Err(e) => {
                    tracing::error!(unit = %c.unit, "cannot send {c} back for verification: {e}");
                    continue;
                }
            };
            let mut state = self.inner.state.lock().await;
            let now = now_ms();
            let changes = state.sched.reverify(c.unit, &ran, now);
            if changes.is_empty() {
                continue; // sent back already
            }
            tracing::error!(
                unit = %c.unit,
                "the stored output of {c} changed on disk since it was verified (no longer matching its digest): not served; sent back to be verified again"
            );
            // Not `commit`: nothing here finishes a project, and `commit` may start reducers,
            // which call this.
            let committed = self.queue(vec![(Write::Changes(changes), now)]);
            drop(state);
            if let Err(e) = Self::committed(committed).await {
                tracing::error!(unit = %c.unit, "cannot record that {c} goes back for verification: {}", e.message());
            }
        }
        self.inner.dashboard.changed();
    }

    /// Starts the reducer of `project` if it is finished and has no aggregate yet (never
    /// for a cancelled project: `fallow reduce` runs it there on request).
    pub(super) async fn maybe_reduce(&self, project: ProjectId) {
        let job = {
            let state = self.inner.state.lock().await;
            match state.sched.project(project) {
                Some(p)
                    if p.finished()
                        && p.aggregate == Aggregate::Pending
                        && p.control != protocol::control::State::Cancelled =>
                {
                    p.reducer.map(|r| (r, p.limits))
                }
                _ => None,
            }
        };
        let Some((reducer, limits)) = job else { return };
        self.start_reducer(project, reducer, limits);
    }

    /// Whether `project`'s reducer is running now.
    pub(super) fn reducing(&self, project: ProjectId) -> bool {
        self.inner
            .reducing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&project)
    }

    /// Runs `project`'s reducer in the background unless it is running already; false
    /// then.
    pub(super) fn start_reducer(
        &self,
        project: ProjectId,
        reducer: protocol::Digest,
        limits: protocol::Limits,
    ) -> bool {
        {
            let mut reducing = self
                .inner
                .reducing
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !reducing.insert(project) {
                return false;
            }
        }
        let service = self.clone();
        self.inner.tasks.spawn(async move {
            let inner = &service.inner;
            match crate::reducer::reduce(
                &*inner.store,
                inner.sandbox.clone(),
                project,
                reducer,
                limits,
            )
            .await
            {
                Ok(aggregate) => {
                    inner
                        .state
                        .lock()
                        .await
                        .sched
                        .set_aggregate(project, aggregate);
                    inner.dashboard.changed();
                }
                Err(Error::CorruptOutputs(corrupt)) => {
                    tracing::error!(%project, "reducer not run: {}", Error::CorruptOutputs(corrupt.clone()));
                    service.reverify(&corrupt).await;
                }
                Err(e) => tracing::error!(%project, "cannot store aggregate: {e}"),
            }
            inner
                .reducing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&project);
        });
        true
    }
}
