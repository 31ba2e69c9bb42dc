//! The group-commit store writer and the path every change takes to it: handlers queue
//! their writes under the state lock and answer once the writer has committed them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use protocol::ProjectId;
use tonic::Status;

use super::{CoordinatorService, State, to_status};
use crate::Error;
use crate::store::{Store, Write};

/// Most requests whose writes share one transaction.
pub(super) const MAX_GROUP: usize = 512;

/// How long a status answer waits for the disk while it is full before refusing.
pub(super) const FULL_DISK_PATIENCE: Duration = Duration::from_secs(2);

/// One request's writes and who waits for them to be committed. A job without writes is
/// a barrier: it completes once everything queued before it is on disk.
pub(super) struct Job {
    writes: Vec<(Write, u64)>,
    done: tokio::sync::oneshot::Sender<Result<(), Status>>,
}

/// The store writer: takes every job queued meanwhile (up to [`MAX_GROUP`]), applies their
/// writes in order in one transaction, and answers each. If the group fails, each job is
/// tried again on its own, so one bad write fails only its own request.
///
/// A full disk is different: the scheduler already made those changes in memory, so
/// dropping them would let memory and disk disagree. The writer keeps the group and
/// retries it until space is freed, with `disk_full` set meanwhile; request handlers see
/// the flag and refuse new changes ([`CoordinatorService::writable`]), so what waits is
/// bounded by what was in flight, and nothing accepted is lost.
pub(super) async fn writer<S: Store>(
    store: Arc<S>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Job>,
    disk_full: Arc<AtomicBool>,
    pending: Arc<AtomicUsize>,
) {
    let mut jobs = Vec::new();
    while queue.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let taken = jobs.len();
        let mut all = Vec::new();
        let mut spans = Vec::with_capacity(jobs.len());
        for job in jobs.iter_mut() {
            let start = all.len();
            all.append(&mut job.writes);
            spans.push(start..all.len());
        }
        let mut result = if all.is_empty() {
            Ok(())
        } else {
            store.write(&all).await
        };
        let mut wait = Duration::from_millis(100);
        while let Err(e) = &result
            && e.is_disk_full()
        {
            if !disk_full.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    "the data directory's disk is full ({e}): refusing changes until space is \
                     freed; {} accepted requests wait to be written",
                    jobs.len()
                );
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            result = store.write(&all).await;
        }
        if result.is_ok() && disk_full.swap(false, Ordering::SeqCst) {
            tracing::info!(
                "disk space is back: the waiting changes are written; accepting changes again"
            );
        }
        match result {
            Ok(()) => {
                for job in jobs.drain(..) {
                    let _ = job.done.send(Ok(()));
                }
            }
            Err(e) if jobs.len() == 1 => {
                let status = to_status(e);
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(status.clone()));
                }
            }
            Err(_) => {
                for (job, span) in jobs.drain(..).zip(spans) {
                    let result = if span.is_empty() {
                        Ok(())
                    } else {
                        store.write(&all[span]).await.map_err(to_status)
                    };
                    let _ = job.done.send(result);
                }
            }
        }
        pending.fetch_sub(taken, Ordering::SeqCst);
    }
}

impl<S: Store> CoordinatorService<S> {
    /// Queues `writes` behind everything queued before (call with the state lock held, so
    /// the store sees changes in the scheduler's order); await the receiver after releasing
    /// the lock.
    pub(super) fn queue(
        &self,
        writes: Vec<(Write, u64)>,
    ) -> tokio::sync::oneshot::Receiver<Result<(), Status>> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.inner.pending_writes.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.inner.writes.send(Job { writes, done }) {
            self.inner.pending_writes.fetch_sub(1, Ordering::SeqCst);
            let _ = e.0.done.send(Err(to_status(Error::ShuttingDown)));
        }
        committed
    }

    /// Refuses a change while the disk is full (see [`writer`]): checked before the
    /// scheduler is touched, so a refused request changed nothing.
    pub(super) fn writable(&self) -> Result<(), Status> {
        if self.inner.disk_full.load(Ordering::SeqCst) {
            return Err(to_status(Error::DiskFull));
        }
        let pending = self.inner.pending_writes.load(Ordering::SeqCst);
        if pending >= self.inner.max_pending_writes {
            return Err(to_status(Error::Overloaded { pending }));
        }
        Ok(())
    }

    /// Waits until a queued barrier is on disk; while the disk is full, at most
    /// [`FULL_DISK_PATIENCE`], then refuses (what the caller would report is not durable).
    pub(super) async fn durable(
        &self,
        committed: tokio::sync::oneshot::Receiver<Result<(), Status>>,
    ) -> Result<(), Status> {
        let mut committed = std::pin::pin!(Self::committed(committed));
        loop {
            match tokio::time::timeout(FULL_DISK_PATIENCE, &mut committed).await {
                Ok(result) => return result,
                Err(_) if self.inner.disk_full.load(Ordering::SeqCst) => {
                    return Err(to_status(Error::NotDurable));
                }
                Err(_) => {} // slow, not full: keep waiting
            }
        }
    }

    /// Waits until a queued job is on disk.
    pub(super) async fn committed(
        committed: tokio::sync::oneshot::Receiver<Result<(), Status>>,
    ) -> Result<(), Status> {
        committed
            .await
            .map_err(|_| to_status(Error::ShuttingDown))?
    }

    /// Persists scheduler `changes`, releases the state lock, and starts the reducer of any
    /// project that a failed unit just finished.
    pub(super) async fn commit(
        &self,
        state: tokio::sync::MutexGuard<'_, State>,
        changes: Vec<crate::scheduler::Change>,
        now: u64,
    ) -> Result<(), Status> {
        let any_failed = changes
            .iter()
            .any(|c| matches!(c, crate::scheduler::Change::UnitFailed { .. }));
        let finished: Vec<ProjectId> = if any_failed {
            state
                .sched
                .projects()
                .filter(|p| p.finished())
                .map(|p| p.id)
                .collect()
        } else {
            Vec::new()
        };
        let committed = if changes.is_empty() {
            // Nothing changed, but the answer may rest on changes not yet on disk.
            self.queue(Vec::new())
        } else {
            self.queue(vec![(Write::Changes(changes), now)])
        };
        drop(state);
        Self::committed(committed).await?;
        for p in finished {
            self.maybe_reduce(p).await;
        }
        Ok(())
    }
}
