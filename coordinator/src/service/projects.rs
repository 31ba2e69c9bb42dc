//! Project submission checks that need the coordinator's state (free disk space, earlier
//! submissions of the same project), and the results stream of `GetResults`.

use proto::v1 as pb;
use protocol::manifest::ProjectSpec;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use connections::Address;

use protocol::{Digest, ProjectId, UnitId};
use tonic::Status;

use super::{CoordinatorService, to_status};
use crate::Error;
use crate::scheduler::{Aggregate, UnitState};
use crate::store::{MAX_OUTPUTS_OF, Store, StoredOutput, VerifiedOutput};

/// Free space kept in reserve on the data dir's disk beyond what a new project needs
/// (twice its size: the rows and the write-ahead log), for the results of the projects
/// already accepted.
pub(super) const DISK_RESERVE: u64 = 16 << 20;

impl<S: Store> CoordinatorService<S> {
    /// Refuses a project the data dir's disk has no room for (embedded store only,
    /// [`Store::on_data_dir_disk`]): twice its size (rows and write-ahead log) plus
    /// [`DISK_RESERVE`] for the results of the projects already accepted. A file system
    /// that cannot say is not a reason to refuse.
    pub(super) fn room_for(&self, spec: &ProjectSpec) -> Result<(), Status> {
        let size = spec.module.len()
            + spec.reducer.as_ref().map_or(0, Vec::len)
            + spec.manifest.len()
            + spec
                .units
                .iter()
                .map(|(name, input)| name.len() + input.len() + 64)
                .sum::<usize>();
        self.room_for_bytes(size as u64)
    }

    /// Refuses `size` more bytes of store (a project, a data file) when the disk would
    /// keep less than the reserve.
    pub(super) fn room_for_bytes(&self, size: u64) -> Result<(), Status> {
        if !self.inner.store.on_data_dir_disk() {
            // On PostgreSQL the rows go to the database server's disk, not this one.
            return Ok(());
        }
        let need = 2 * size + DISK_RESERVE;
        match fs4::available_space(&self.inner.data_dir) {
            Ok(free) if free < need => Err(to_status(Error::NoRoom {
                free_mib: free >> 20,
                dir: self.inner.data_dir.clone(),
                need_mib: need.div_ceil(1 << 20),
                size_mib: size.div_ceil(1 << 20),
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

    /// Streams `project`'s results to `tx`: verified outputs page by page, then (when
    /// `follow`) each unit as it verifies until the project is finished, then failed units,
    /// then the aggregate. Without `follow`, outputs that fail their digest check end the
    /// stream with an error, after every such output was found and sent back for
    /// verification; with it, they are sent back and streamed once verified again.
    pub(super) async fn send_results(
        service: CoordinatorService<S>,
        project: ProjectId,
        follow: bool,
        tx: tokio::sync::mpsc::Sender<Result<pb::ResultItem, Status>>,
    ) {
        let store = &service.inner.store;
        let mut after = None;
        // What a follower was sent, so that a unit goes out again only once re-verified.
        let mut sent = HashSet::new();
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
                if follow {
                    sent.insert(v.unit);
                }
                if tx.send(Ok(verified_item(v))).await.is_err() {
                    return;
                }
            }
        }
        if !corrupt.is_empty() {
            service.reverify(&corrupt).await;
            if !follow {
                let _ = tx
                    .send(Err(to_status(Error::CorruptOutputs(corrupt))))
                    .await;
                return;
            }
        }
        if follow {
            match Self::follow_results(&service, project, sent, &tx).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let _ = tx.send(Err(to_status(e))).await;
                    return;
                }
            }
        }
        let send = |item| tx.send(Ok(pb::ResultItem { item: Some(item) }));
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

    /// `GetResults` with `follow`, after the outputs stored when the call came: every
    /// [`FOLLOW_POLL`], the units the scheduler now counts verified that the follower was
    /// not sent (`sent`) are read from the store and sent. A unit verified in memory but
    /// not yet written is read on a later round; a unit re-opened leaves `sent`, so it goes
    /// out again once verified again. Returns true once the project is finished (and its
    /// reducer, if any, has run) and everything verified was sent; false when the follower
    /// went away.
    async fn follow_results(
        service: &CoordinatorService<S>,
        project: ProjectId,
        mut sent: HashSet<UnitId>,
        tx: &tokio::sync::mpsc::Sender<Result<pb::ResultItem, Status>>,
    ) -> Result<bool, Error> {
        // The project's counters at the last scan: the units are looked at again only
        // when they moved (or something was left to read), so an idle follower costs
        // one lookup per round, not a walk over every unit.
        let mut seen = None;
        let mut unwritten = true;
        loop {
            let (verified, done) = {
                let state = service.inner.state.lock().await;
                let p = state
                    .sched
                    .project(project)
                    .ok_or(Error::UnknownProject(project))?;
                let counters = (
                    p.stats.verified,
                    p.stats.reopened,
                    p.finished(),
                    p.aggregate.clone(),
                    p.control,
                );
                if !unwritten && seen.as_ref() == Some(&counters) {
                    drop(state);
                    tokio::select! {
                        () = tokio::time::sleep(FOLLOW_POLL) => {}
                        () = tx.closed() => return Ok(false),
                    }
                    continue;
                }
                seen = Some(counters);
                // A cancelled project's reducer runs only when asked (`fallow reduce`).
                let done = p.finished()
                    && (p.reducer.is_none()
                        || p.aggregate != Aggregate::Pending
                        || p.control == protocol::control::State::Cancelled);
                let verified: HashSet<UnitId> = state
                    .sched
                    .unit_views()
                    .filter(|u| u.project == project && u.state == UnitState::Verified)
                    .map(|u| u.id)
                    .collect();
                (verified, done)
            };
            sent.retain(|id| verified.contains(id));
            let mut new: Vec<UnitId> = verified.difference(&sent).copied().collect();
            new.sort_unstable();
            unwritten = false;
            for ids in new.chunks(MAX_OUTPUTS_OF) {
                let outputs = service
                    .inner
                    .store
                    .verified_outputs_of(project, ids)
                    .await?;
                unwritten |= outputs.len() < ids.len();
                let mut corrupt = Vec::new();
                for output in outputs {
                    match output {
                        StoredOutput::Intact(v) => {
                            sent.insert(v.unit);
                            if tx.send(Ok(verified_item(v))).await.is_err() {
                                return Ok(false);
                            }
                        }
                        StoredOutput::Corrupt(c) => corrupt.push(c),
                    }
                }
                if !corrupt.is_empty() {
                    // Sent back for verification: streamed when verified again.
                    service.reverify(&corrupt).await;
                    unwritten = true;
                }
            }
            if done && !unwritten {
                return Ok(true);
            }
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_POLL) => {}
                () = tx.closed() => return Ok(false),
            }
        }
    }
}

/// Most `GetResults` streams with `follow` open at once from one address (an IPv4 address
/// or an IPv6 /64; loopback exempt unless `limit_loopback`). Each holds a task that looks
/// at the scheduler twice a second, so strangers may not open them without bound.
pub(crate) const MAX_FOLLOWERS_PER_ADDRESS: usize = 8;

/// Most `GetData` downloads in progress at once from one address (as above). Each holds a
/// task that reads the store a chunk at a time as the client takes them; a lab of workers
/// behind one NAT address shares the 64 (a download past them is refused and the unit
/// handed back, to be tried again).
pub(crate) const MAX_DOWNLOADS_PER_ADDRESS: usize = 64;

/// Long-lived streams open per address, at most `max` each (follow streams, data
/// downloads): a stranger cannot make the coordinator hold unbounded tasks for it.
pub(crate) struct StreamCap {
    open: Arc<std::sync::Mutex<HashMap<Address, usize>>>,
    max: usize,
    what: &'static str,
    limit_loopback: bool,
}

/// One admitted stream; dropping it (the stream ended) frees its place.
pub(super) struct Admitted {
    open: Arc<std::sync::Mutex<HashMap<Address, usize>>>,
    address: Option<Address>,
}

impl StreamCap {
    /// `what` names the streams in the refusal ("`fallow results --follow` streams").
    pub(crate) fn new(max: usize, what: &'static str, limit_loopback: bool) -> Self {
        StreamCap {
            open: Arc::default(),
            max,
            what,
            limit_loopback,
        }
    }

    /// A place for one more stream from `remote`, or [`Error::TooManyStreams`].
    pub(super) fn admit(&self, remote: Option<SocketAddr>) -> Result<Admitted, Error> {
        let address = remote
            .map(|r| Address::of(r.ip()))
            .filter(|a| self.limit_loopback || !a.is_loopback());
        if let Some(address) = address {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let n = open.entry(address).or_default();
            if *n >= self.max {
                return Err(Error::TooManyStreams {
                    what: self.what,
                    max: self.max,
                });
            }
            *n += 1;
        }
        Ok(Admitted {
            open: self.open.clone(),
            address,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(address) = self.address {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&address) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&address);
                }
            }
        }
    }
}

/// How often a follower (`GetResults` with `follow`) looks for newly verified units.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// A verified output as sent.
fn verified_item(v: VerifiedOutput) -> pb::ResultItem {
    pb::ResultItem {
        item: Some(pb::result_item::Item::Verified(pb::VerifiedOutput {
            unit: v.name,
            output: v.output,
            digest: v.digest.0.to_vec(),
            fuel: v.fuel,
            signers: v.signers.iter().map(|s| s.0.to_vec()).collect(),
            verified_ms: v.verified_ms,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stranger cannot hold more than [`MAX_FOLLOWERS_PER_ADDRESS`] follow streams open
    /// from one address (nor from another address of the same IPv6 /64); a stream that
    /// ends frees its place; loopback is exempt unless the limits apply to it.
    #[test]
    fn follow_streams_are_bounded_per_address() {
        let followers = StreamCap::new(MAX_FOLLOWERS_PER_ADDRESS, "follow streams", false);
        let stranger: SocketAddr = "203.0.113.7:4000".parse().expect("addr");
        let mut held: Vec<Admitted> = (0..MAX_FOLLOWERS_PER_ADDRESS)
            .map(|_| followers.admit(Some(stranger)).expect("admitted"))
            .collect();
        assert!(matches!(
            followers.admit(Some(stranger)),
            Err(Error::TooManyStreams {
                max: MAX_FOLLOWERS_PER_ADDRESS,
                ..
            })
        ));
        let v6a: SocketAddr = "[2001:db8:1:2::1]:1".parse().expect("addr");
        let v6b: SocketAddr = "[2001:db8:1:2::2]:1".parse().expect("addr");
        let six: Vec<Admitted> = (0..MAX_FOLLOWERS_PER_ADDRESS)
            .map(|_| followers.admit(Some(v6a)).expect("admitted"))
            .collect();
        assert!(followers.admit(Some(v6b)).is_err(), "same /64");
        assert!(
            followers
                .admit(Some("198.51.100.1:1".parse().expect("addr")))
                .is_ok(),
            "another address has its own places"
        );
        held.pop();
        assert!(followers.admit(Some(stranger)).is_ok(), "a place freed");
        drop(six);
        assert!(followers.admit(Some(v6b)).is_ok());
        let local: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let many: Vec<Admitted> = (0..3 * MAX_FOLLOWERS_PER_ADDRESS)
            .map(|_| followers.admit(Some(local)).expect("loopback is exempt"))
            .collect();
        drop(many);
        let strict = StreamCap::new(MAX_FOLLOWERS_PER_ADDRESS, "follow streams", true);
        let local_held: Vec<Admitted> = (0..MAX_FOLLOWERS_PER_ADDRESS)
            .map(|_| strict.admit(Some(local)).expect("admitted"))
            .collect();
        assert!(strict.admit(Some(local)).is_err());
        drop(local_held);
    }
}
