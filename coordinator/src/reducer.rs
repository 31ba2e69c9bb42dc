//! Runs a finished project's reducer over its verified outputs (sorted by unit name, framed
//! as in `protocol::reduce`) and stores the aggregate, or why the reducer failed.

use std::sync::Arc;

use protocol::{Digest, Limits, ProjectId};
use sandbox::Sandbox;

use crate::Error;
use crate::scheduler::Aggregate;
use crate::store::{Store, StoredOutput};

/// Limits for a reducer run: it sees every output at once, so it gets more room than one
/// unit. Fuel 100x the project's (at most 10^15), at least 256 MiB of memory, 10 minutes,
/// and up to 64 MiB of aggregate.
fn reducer_limits(project: &Limits) -> Limits {
    Limits {
        fuel: project
            .fuel
            .saturating_mul(100)
            .min(protocol::limits::FUEL_RANGE.1),
        memory_mb: project.memory_mb.max(256),
        wall_seconds: 600,
        max_output_bytes: protocol::limits::MAX_OUTPUT_RANGE.1,
        nan_canonicalization: project.nan_canonicalization,
        max_checkpoint_bytes: project.max_checkpoint_bytes,
    }
}

/// Runs the reducer `reducer` of `project`, stores the outcome and returns it. Errors are
/// store errors, and [`Error::CorruptOutputs`] when a stored output fails its digest
/// check (the reducer is not run: the caller sends those units back for verification); a
/// failing reducer is an outcome (`Aggregate::Failed`, with the reason alone: whoever
/// shows it says "reducer failed"), not an error.
pub(crate) async fn reduce<S: Store>(
    store: &S,
    sandbox: Arc<Sandbox>,
    project: ProjectId,
    reducer: Digest,
    limits: Limits,
) -> Result<Aggregate, Error> {
    let Some(module) = store.module(reducer).await? else {
        let reason = "its module is missing from the store".to_string();
        store.set_aggregate(project, Err(reason.clone())).await?;
        return Ok(Aggregate::Failed(reason));
    };
    let mut records = Vec::new();
    let mut corrupt = Vec::new();
    let mut after = None;
    loop {
        let page = store.verified_outputs(project, after.clone(), 512).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.name().to_string());
        for v in page {
            match v {
                StoredOutput::Intact(v) => records.push((v.name, v.output)),
                StoredOutput::Corrupt(c) => corrupt.push(c),
            }
        }
    }
    if !corrupt.is_empty() {
        return Err(Error::CorruptOutputs(corrupt));
    }
    let input = protocol::reduce::encode(records.iter().map(|(n, o)| (n.as_str(), o.as_slice())));
    let limits = reducer_limits(&limits);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Guest code never runs on the async runtime: a dedicated thread with a big stack.
    let spawned = std::thread::Builder::new()
        .name(format!("reducer-{project}"))
        .stack_size(sandbox::GUEST_THREAD_STACK)
        .spawn(move || {
            let outcome = sandbox
                .compile(reducer, &module, limits.nan_canonicalization)
                .map_err(|e| format!("its module was refused: {e}"))
                .and_then(|c| {
                    sandbox
                        .run(&c, &input, reducer.0, &limits)
                        .map_err(|f| f.to_string())
                })
                .map(|e| e.output);
            let _ = tx.send(outcome);
        });
    let outcome = match spawned {
        Ok(_) => rx.await.unwrap_or_else(|_| Err("its thread died".into())),
        Err(e) => Err(format!("cannot start its thread: {e}")),
    };
    if let Err(e) = &outcome {
        tracing::warn!(%project, "reducer failed: {e}");
    } else {
        tracing::info!(%project, "aggregate stored");
    }
    let state = match &outcome {
        Ok(_) => Aggregate::Ready,
        Err(e) => Aggregate::Failed(e.clone()),
    };
    store.set_aggregate(project, outcome).await?;
    Ok(state)
}
