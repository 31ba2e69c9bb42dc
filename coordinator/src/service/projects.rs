//! Project submission checks that need the coordinator's state: free disk space and
//! earlier submissions of the same project.

use protocol::manifest::ProjectSpec;
use protocol::{Digest, ProjectId};
use tonic::Status;

use super::{CoordinatorService, to_status};
use crate::Error;
use crate::store::Store;

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
}
