//! A fixed pool of guest threads. Guest code blocks for as long as it computes, so it never
//! runs on the async runtime: each job goes to one of `cores` OS threads with a stack big
//! enough for the sandbox's wasm stack limit, and the result comes back on a oneshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

#[cfg(test)]
use protocol::FailureKind;
use protocol::{Failure, Limits};
#[cfg(test)]
use sandbox::Execution;
use sandbox::{Checkpoint, Compiled, Finished, Pacer, Proceed, Sandbox};

type Job = Box<dyn FnOnce(&Sandbox) + Send>;

/// CPU time (nanoseconds) that guest threads of this process spent in `Sandbox::run`:
/// instantiation, guest code and collecting output.
static GUEST_CPU_NANOS: AtomicU64 = AtomicU64::new(0);

/// CPU time all guest threads of this process have spent running executions so far.
pub fn guest_cpu_time() -> Duration {
    Duration::from_nanos(GUEST_CPU_NANOS.load(Ordering::Relaxed))
}

/// Runs sandbox executions on dedicated threads.
pub struct Executor {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

impl Executor {
    /// Starts `threads` guest threads sharing `sandbox`, each at the lowest OS priority
    /// (`SCHED_IDLE` on Linux). They exit when the executor is dropped and their current
    /// job (if any) ends.
    pub fn new(sandbox: Arc<Sandbox>, threads: usize) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let sandbox = sandbox.clone();
            std::thread::Builder::new()
                .name(format!("guest-{i}"))
                .stack_size(sandbox::GUEST_THREAD_STACK)
                .spawn(move || {
                    crate::sources::lowest_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&sandbox),
                            Err(_) => return, // executor dropped
                        }
                    }
                })?;
        }
        Ok(Executor { jobs })
    }

    /// Runs one execution, held and slowed by `pacer`, and waits for it without blocking
    /// the async runtime.
    #[cfg(test)]
    pub async fn run(
        &self,
        compiled: Compiled,
        input: Vec<u8>,
        seed: [u8; 32],
        limits: Limits,
        pacer: Box<dyn Pacer>,
    ) -> Result<Execution, Failure> {
        let local = |e: crate::Error| Failure::new(FailureKind::BadModule, e.to_string());
        match self
            .run_resumable(
                compiled,
                input,
                seed,
                limits,
                None,
                None,
                pacer,
                Box::new(|_| Proceed::Continue),
            )
            .await
            .map_err(local)??
        {
            Finished::Done(e) => Ok(e),
            Finished::Stopped(_) => Err(Failure::new(FailureKind::BadModule, "stopped")),
        }
    }

    /// Runs one execution from `resume` (or the start), held and slowed by `pacer`,
    /// calling `on_checkpoint` on the guest thread after every checkpoint the guest saves,
    /// and waits for it without blocking the async runtime. The outer error is this
    /// worker's trouble (its guest threads are gone), never the unit's: the caller hands
    /// the unit back instead of reporting a failure.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_resumable(
        &self,
        compiled: Compiled,
        input: Vec<u8>,
        seed: [u8; 32],
        limits: Limits,
        data: Option<sandbox::DataMount>,
        resume: Option<Checkpoint>,
        pacer: Box<dyn Pacer>,
        mut on_checkpoint: Box<dyn FnMut(&Checkpoint) -> Proceed + Send>,
    ) -> Result<Result<Finished, Failure>, crate::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |sandbox| {
            // Thread CPU time, not wall time: guest threads may share cores.
            let start = cpu_time::ThreadTime::now();
            let outcome = sandbox.run_resumable(
                &compiled,
                &input,
                seed,
                &limits,
                data.as_ref(),
                resume,
                pacer,
                &mut *on_checkpoint,
            );
            let spent = start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            GUEST_CPU_NANOS.fetch_add(spent, Ordering::Relaxed);
            let _ = tx.send(outcome);
        });
        if self.jobs.send(job).is_err() {
            return Err(crate::Error::Local("the guest threads are gone".into()));
        }
        rx.await
            .map_err(|_| crate::Error::Local("a guest thread died during the run".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Digest;
    use sandbox::SandboxConfig;

    /// On a single-threaded runtime, a guest that spins for a second must not stop other
    /// tasks: the ticker keeps running while the guest computes.
    #[test]
    fn guests_never_block_the_async_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let sandbox = Arc::new(
                Sandbox::new(SandboxConfig {
                    slots: 1,
                    max_memory_mb: 64,
                    ..Default::default()
                })
                .expect("sandbox"),
            );
            let executor = Executor::new(sandbox.clone(), 1).expect("executor");
            let spin = artifacts::hostile::SPIN;
            let compiled = sandbox
                .compile(Digest::of(spin), spin, false)
                .expect("compile");
            let limits = protocol::Limits {
                fuel: 1 << 50,
                wall_seconds: 1,
                ..Default::default()
            };
            let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let ticker = {
                let ticks = ticks.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            };
            struct NoPace;
            impl sandbox::Pacer for NoPace {
                fn pace(&mut self, _fuel_used: u64) {}
            }
            let outcome = executor
                .run(compiled, Vec::new(), [0; 32], limits, Box::new(NoPace))
                .await;
            ticker.abort();
            assert_eq!(
                outcome.map_err(|f| f.kind).err(),
                Some(protocol::FailureKind::Timeout)
            );
            assert!(
                ticks.load(std::sync::atomic::Ordering::Relaxed) > 5,
                "the runtime was blocked while the guest ran"
            );
        });
    }
}
