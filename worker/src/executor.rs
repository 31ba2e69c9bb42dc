//! A fixed pool of guest threads. Guest code blocks for as long as it computes, so it never
//! runs on the async runtime: each job goes to one of `cores` OS threads with a stack big
//! enough for the sandbox's wasm stack limit, and the result comes back on a oneshot.

use std::sync::{Arc, Mutex, mpsc};

use protocol::{Failure, FailureKind, Limits};
use sandbox::{Compiled, Execution, Sandbox};

type Job = Box<dyn FnOnce(&Sandbox) + Send>;

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
    /// Starts `threads` guest threads sharing `sandbox`. They exit when the executor is
    /// dropped and their current job (if any) ends.
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

    /// Runs one execution and waits for it without blocking the async runtime.
    pub async fn run(
        &self,
        compiled: Compiled,
        input: Vec<u8>,
        seed: [u8; 32],
        limits: Limits,
    ) -> Result<Execution, Failure> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |sandbox| {
            let _ = tx.send(sandbox.run(&compiled, &input, seed, &limits));
        });
        if self.jobs.send(job).is_err() {
            return Err(Failure::new(
                FailureKind::BadModule,
                "guest threads are gone",
            ));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Failure::new(
                FailureKind::BadModule,
                "guest thread died during the run",
            ))
        })
    }
}
