//! Project submission checks that need the coordinator's state (free disk space, earlier
//! submissions of the same project), and the results stream of `GetResults`.

use proto::v1 as pb;
use protocol::manifest::ProjectSpec;
use protocol::{Digest, ProjectId};
use tonic::Status;

use super::{CoordinatorService, to_status};
use crate::Error;
use crate::store::{Store, StoredOutput};

/// Free space kept in reserve on the data dir's disk beyond what a new project needs
/// (twice its size: the rows and the write-ahead log), for the results of the projects
/// already accepted.
pub(super) const DISK_RESERVE: u64 = 16 << 20;

impl<S: Store> CoordinatorService<S> {
    /// Refuses a project the data dir's disk has no room for: twice its size (rows and
    /// write-ahead log) plus [`DISK_RESERVE`] for the results of the projects already
    /// accepted. A file system that cannot say is not a reason to refuse.
    pub(super) fn room_for(&self, spec: &ProjectSpec) -> Result<(), Status> {
        let size = spec.module.len()
            + spec.reducer.as_ref().map_or(0, Vec::len)
            + spec.manifest.len()
            + spec
                .units
                .iter()
                .map(|(name, input)| name.len() + input.len() + 64)
                .sum::<usize>();
        self.room_for_bytes(size)
    }

    /// [`CoordinatorService::room_for`] `size` bytes of new rows (units added by `fallow
    /// extend`).
    pub(super) fn room_for_bytes(&self, size: usize) -> Result<(), Status> {
        let need = 2 * size as u64 + DISK_RESERVE;
        match fs4::available_space(&self.inner.data_dir) {
            Ok(free) if free < need => Err(to_status(Error::NoRoom {
                free_mib: free >> 20,
                dir: self.inner.data_dir.clone(),
                need_mib: need.div_ceil(1 << 20),
                size_mib: (size as u64).div_ceil(1 << 20),
                reserve_mib: DISK_RESERVE >> 20,
            })),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(
                    "cannot read the free space of {}: {e}; accepting the project unchecked",
                    self.inner.data_dir.display()
                );
                Ok(())
            }
        }
    }

    /// Projects (oldest first) with the same module, inputs and terms as `spec`: the
    /// scheduler's numbers narrow them down, the store compares the inputs.
    pub(super) async fn duplicates_of(
        &self,
        spec: &ProjectSpec,
        module: Digest,
        terms: Digest,
    ) -> Result<Vec<ProjectId>, Status> {
        let candidates: Vec<ProjectId> = {
            let state = self.inner.state.lock().await;
            state
                .sched
                .projects()
                .filter(|p| {
                    p.signer.as_ref().is_some_and(|g| g.terms == terms)
                        && p.module == module
                        && p.limits == spec.limits
                        && p.quorum == spec.quorum
                        && p.stats.total == spec.units.len() as u64
                })
                .map(|p| p.id)
                .collect()
        };
        let mut same = Vec::new();
        for id in candidates {
            if self
                .inner
                .store
                .same_units(id, &spec.units)
                .await
                .map_err(to_status)?
            {
                same.push(id);
            }
        }
        Ok(same)
    }

    /// Streams `project`'s results to `tx`: verified outputs page by page, then failed
    /// units, then the aggregate. Outputs that fail their digest check end the stream with
    /// an error, after every such output was found and sent back for verification.
    pub(super) async fn send_results(
        service: CoordinatorService<S>,
        project: ProjectId,
        tx: tokio::sync::mpsc::Sender<Result<pb::ResultItem, Status>>,
    ) {
        let store = &service.inner.store;
        let send = |item| tx.send(Ok(pb::ResultItem { item: Some(item) }));
        let mut after = None;
        // Outputs that fail their digest check: once there is one the answer is an
        // error, and the rest is read only to find every such output.
        let mut corrupt = Vec::new();
        loop {
            let page = match store.verified_outputs(project, after.clone(), 256).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(to_status(e))).await;
                    return;
                }
            };
            let Some(last) = page.last() else { break };
            after = Some(last.name().to_string());
            for v in page {
                let v = match v {
                    StoredOutput::Intact(v) if corrupt.is_empty() => v,
                    StoredOutput::Intact(_) => continue,
                    StoredOutput::Corrupt(c) => {
                        corrupt.push(c);
                        continue;
                    }
                };
                let item = pb::result_item::Item::Verified(pb::VerifiedOutput {
                    unit: v.name,
                    output: v.output,
                    digest: v.digest.0.to_vec(),
                    fuel: v.fuel,
                    signers: v.signers.iter().map(|s| s.0.to_vec()).collect(),
                });
                if send(item).await.is_err() {
                    return;
                }
            }
        }
        if !corrupt.is_empty() {
            service.reverify(&corrupt).await;
            let _ = tx
                .send(Err(to_status(Error::CorruptOutputs(corrupt))))
                .await;
            return;
        }
        match store.failed_units(project).await {
            Ok(failed) => {
                for (unit, reason) in failed {
                    if send(pb::result_item::Item::Failed(pb::FailedUnit {
                        unit,
                        reason,
                    }))
                    .await
                    .is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(to_status(e))).await;
                return;
            }
        }
        match store.aggregate(project).await {
            Ok(Some(Ok(bytes))) => {
                let _ = send(pb::result_item::Item::Aggregate(bytes)).await;
            }
            Ok(Some(Err(e))) => {
                let _ = send(pb::result_item::Item::AggregateError(e)).await;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tx.send(Err(to_status(e))).await;
            }
        }
    }
}
