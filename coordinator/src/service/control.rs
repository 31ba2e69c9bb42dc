//! Project control by its submitter (`ControlProject`, `ExtendProject`;
//! `protocol::control`): each call is signed by a submitter key like a worker call
//! (`fallow-call` header, replays refused), and only the key that signed the project may
//! control it. The scheduler decides what each action does; this module authenticates,
//! persists and answers.

use proto::v1 as pb;
use proto::wire;
use protocol::control::{Action, Done};
use protocol::provenance::UnitTerms;
use protocol::{ProjectId, SubmitterKey, WorkerId};
use tonic::{Request, Response, Status};

use super::handlers::authenticate;
use super::{CoordinatorService, State, to_status};
use crate::store::{Store, Write};
use crate::{Error, now_ms};

impl<S: Store> CoordinatorService<S> {
    /// `ControlProject`: cancel, pause, resume, retry or reduce.
    pub(super) async fn control(
        &self,
        request: Request<pb::ControlRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        self.writable()?;
        let (project, action, key) =
            wire::control_from_wire(request.get_ref()).map_err(|e| to_status(e.into()))?;
        // The signature (pure CPU) before the lock, as for worker calls.
        let (_, stamp) =
            authenticate("ControlProject", &request, &request.get_ref().submitter_key)?;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        Self::may_control(&state, project, key)?;
        Self::fresh(&mut state, WorkerId(key.0), &stamp)?;
        let refuse = |reason: &str| {
            to_status(Error::ControlRefused {
                action: action.as_str(),
                project,
                reason: reason.to_string(),
            })
        };
        let (done, changes) = match action {
            Action::Pause => state.sched.pause(project),
            Action::Resume => state.sched.resume(project),
            Action::Cancel => state.sched.cancel(project),
            Action::Retry => {
                // A reducer finishing after the retry would store an aggregate of the
                // project as it was before.
                if self.reducing(project) {
                    return Err(refuse(
                        "its reducer is running; retry once it is done (`fallow status`)",
                    ));
                }
                state.sched.retry(project)
            }
            Action::Reduce => {
                if self.reducing(project) {
                    return Err(refuse("its reducer is running already"));
                }
                let (reducer, limits, changes) =
                    state.sched.rereduce(project).map_err(to_status)?;
                let done = state.sched.done(project, 0);
                let committed = self.queue(vec![(Write::Changes(changes), now)]);
                drop(state);
                Self::committed(committed).await?;
                self.start_reducer(project, reducer, limits);
                tracing::info!(%project, "reducer run again at its submitter's request");
                self.inner.dashboard.changed();
                return Ok(Response::new(pb::ControlResponse::from(done)));
            }
        }
        .map_err(to_status)?;
        tracing::info!(%project, action = action.as_str(), units = done.units, state = %done.state, "project control by its submitter");
        self.inner.dashboard.changed();
        // Commit (and start the reducer of a project a retry left finished: none today,
        // but `commit` is the one path).
        self.commit(state, changes, now).await?;
        Ok(Response::new(pb::ControlResponse::from(done)))
    }

    /// `ExtendProject`: units added to a project, each signed by its submitter under the
    /// project's terms and checked like a submitted unit.
    pub(super) async fn extend(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        self.writable()?;
        let (_, stamp) = authenticate("ExtendProject", &request, &request.get_ref().submitter_key)?;
        let extension =
            wire::extension_from_wire(request.into_inner()).map_err(|e| to_status(e.into()))?;
        let (project, key) = (extension.project, extension.key);
        let terms = {
            let mut state = self.inner.state.lock().await;
            Self::may_control(&state, project, key)?;
            Self::fresh(&mut state, WorkerId(key.0), &stamp)?;
            state.sched.check_extend(project).map_err(to_status)?;
            let p = state
                .sched
                .project(project)
                .ok_or_else(|| to_status(Error::UnknownProject(project)))?;
            extension.validate(p.stats.total).map_err(|problem| {
                to_status(protocol::Error::malformed("ExtendRequest", problem).into())
            })?;
            let signer = p
                .signer
                .ok_or_else(|| to_status(Error::Uncontrollable(project)))?;
            (
                signer.terms,
                p.module,
                p.limits,
                p.quorum,
                protocol::data::list_digest(&p.data),
            )
        };
        self.room_for_bytes(
            extension
                .units
                .iter()
                .map(|(name, input)| (name.len() + input.len() + 64) as u64)
                .sum(),
        )?;
        // Every unit's signature under the project's terms, off the async threads.
        let extension = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            let (terms, module, limits, quorum, data) = terms;
            for ((name, input), signature) in extension.units.iter().zip(&extension.signatures) {
                let unit = UnitTerms {
                    terms,
                    module,
                    limits,
                    quorum,
                    name,
                    input,
                    data,
                };
                unit.verify(extension.key, signature).map_err(|e| {
                    to_status(Error::Protocol(protocol::Error::ProjectSignature(format!(
                        "{e}; units added to project {project} are signed under its terms \
                         (`fallow status {project} --json` shows them), its module, [limits], \
                         quorum and [data]: extend with a manifest of the same module, limits, \
                         quorum and data"
                    ))))
                })?;
            }
            Ok(extension)
        })
        .await
        .map_err(|e| to_status(Error::CheckPanicked(e.to_string())))??;
        let now = now_ms();
        let mut state = self.inner.state.lock().await;
        // Cancelled, or its reducer started, while the signatures were checked?
        state.sched.check_extend(project).map_err(to_status)?;
        if self.reducing(project) {
            return Err(to_status(Error::ControlRefused {
                action: "extend",
                project,
                reason: "its reducer is running; extend once it is done (`fallow status`)".into(),
            }));
        }
        let (replication, quorum) = state
            .sched
            .project(project)
            .map(|p| (p.replication, p.quorum))
            .ok_or_else(|| to_status(Error::UnknownProject(project)))?;
        let units = self
            .inner
            .store
            .insert_units(
                project,
                &extension.units,
                &extension.signatures,
                replication,
                quorum,
            )
            .await
            .map_err(to_status)?;
        let done: Done = state.sched.extend(project, &units, now);
        drop(state);
        tracing::info!(%project, units = units.len(), "project extended by its submitter");
        self.inner.dashboard.changed();
        Ok(Response::new(pb::ControlResponse::from(done)))
    }

    /// Refuses a control call on `project` by anyone but its submitter `key`.
    fn may_control(state: &State, project: ProjectId, key: SubmitterKey) -> Result<(), Status> {
        let p = state
            .sched
            .project(project)
            .ok_or_else(|| to_status(Error::UnknownProject(project)))?;
        match p.signer {
            None => Err(to_status(Error::Uncontrollable(project))),
            Some(s) if s.key != key => Err(to_status(Error::NotSubmitter {
                project,
                submitter: s.key,
                key,
            })),
            Some(_) => Ok(()),
        }
    }
}
