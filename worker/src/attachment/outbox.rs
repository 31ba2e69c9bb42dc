//! Certificates on their way to the coordinator, several to a call.
//!
//! Each upload puts its certificate in the outbox and waits for the outbox's turn. The
//! upload that gets the turn sends everything queued by then (at most
//! [`MAX_CERTIFICATES_PER_CALL`] certificates, [`MAX_CLAIMS_PER_CALL`] claims and
//! [`BATCH_OUTPUT_BYTES`] of output) in
//! one `SubmitCertificates` call and hands every certificate its own answer; the others
//! find theirs already answered. So a worker that finishes one unit at a time sends one
//! certificate a call as before, without waiting for company, while a worker finishing
//! units faster than a call takes sends them together: one call signature, one request
//! and one turn of the coordinator's state lock for the lot.
//!
//! An output larger than [`BATCH_OUTPUT_BYTES`] goes alone in its own call, beside the
//! batches, so it never holds small certificates back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use protocol::{Claim, UnitId};
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

use super::coordinator::Coordinator;
use crate::rpc::{CertificateOutcome, MAX_CERTIFICATES_PER_CALL, MAX_CLAIMS_PER_CALL, Outgoing};
use crate::{Error, lock};

/// Most output bytes one batch carries (always at least one certificate's).
pub(crate) const BATCH_OUTPUT_BYTES: usize = 1 << 20;

/// The queue and the turn (see the module doc).
#[derive(Default)]
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Queued>>,
    /// Held by the upload whose batch is in flight.
    turn: tokio::sync::Mutex<()>,
}

/// A certificate waiting in the outbox, and where its answer goes.
struct Queued {
    unit: UnitId,
    claims: Arc<[Claim]>,
    output: Arc<[u8]>,
    answer: oneshot::Sender<Result<CertificateOutcome, Error>>,
}

impl Outbox {
    /// Sends `unit`'s certificate, with whatever else is queued, and returns the
    /// coordinator's answer for it (an error of the whole call counts for each).
    pub(crate) async fn deliver(
        &self,
        coordinator: &dyn Coordinator,
        unit: UnitId,
        claims: Arc<[Claim]>,
        output: Arc<[u8]>,
    ) -> Result<CertificateOutcome, Error> {
        if output.len() > BATCH_OUTPUT_BYTES {
            return coordinator.submit_certificate(unit, &claims, &output).await;
        }
        let (answer, mut answered) = oneshot::channel();
        lock(&self.queue).push_back(Queued {
            unit,
            claims,
            output,
            answer,
        });
        loop {
            if let Some(answer) = ready(&mut answered) {
                return answer;
            }
            let _turn = self.turn.lock().await;
            // Sent with the batch of the upload that had the turn before us?
            if let Some(answer) = ready(&mut answered) {
                return answer;
            }
            let batch = self.take();
            send(coordinator, batch).await;
        }
    }

    /// The oldest queued certificates that make one batch.
    fn take(&self) -> Vec<Queued> {
        let mut queue = lock(&self.queue);
        let mut batch = Vec::new();
        let (mut bytes, mut claims) = (0, 0);
        while let Some(next) = queue.front() {
            if batch.len() == MAX_CERTIFICATES_PER_CALL
                || (!batch.is_empty()
                    && (bytes + next.output.len() > BATCH_OUTPUT_BYTES
                        || claims + next.claims.len() > MAX_CLAIMS_PER_CALL))
            {
                break;
            }
            bytes += next.output.len();
            claims += next.claims.len();
            batch.extend(queue.pop_front());
        }
        batch
    }
}

/// The answer, if it has come. A certificate whose sender went away unanswered (its
/// upload was cut off at shutdown) gets a transient error, as a dropped call would.
fn ready(
    answered: &mut oneshot::Receiver<Result<CertificateOutcome, Error>>,
) -> Option<Result<CertificateOutcome, Error>> {
    match answered.try_recv() {
        Ok(answer) => Some(answer),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Closed) => Some(Err(Error::Rpc {
            call: "SubmitCertificates",
            status: tonic::Status::cancelled("the call carrying this certificate was cut off"),
        })),
    }
}

/// Sends one batch and hands out the answers.
async fn send(coordinator: &dyn Coordinator, batch: Vec<Queued>) {
    if batch.is_empty() {
        return;
    }
    let outgoing: Vec<Outgoing<'_>> = batch
        .iter()
        .map(|q| Outgoing {
            unit: q.unit,
            claims: &q.claims,
            output: &q.output,
        })
        .collect();
    let answers = coordinator.submit_certificates(&outgoing).await;
    drop(outgoing);
    match answers {
        Ok(answers) => {
            // Any certificate left unanswered is dropped: its upload sees a transient
            // error and tries again.
            for (q, answer) in batch.into_iter().zip(answers) {
                let _ = q.answer.send(answer);
            }
        }
        Err(e) => {
            for q in batch {
                let _ = q.answer.send(Err(for_each(&e)));
            }
        }
    }
}

/// A whole call's error, repeated for each of its certificates: as transient or not as
/// the original.
fn for_each(e: &Error) -> Error {
    match e {
        Error::Rpc { call, status } => Error::Rpc {
            call,
            status: status.clone(),
        },
        Error::Certificate(refusal) => Error::Certificate(refusal.clone()),
        other => Error::Local(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use protocol::{Failure, Identity, SubmitterKey};
    use tokio::sync::Semaphore;

    use super::super::coordinator::Call;
    use super::*;
    use crate::rpc::{Assignment, HeartbeatReply, Introduction, Registration, RunReport};

    /// Unit whose certificate the post refuses on its own.
    const REFUSED: UnitId = UnitId(13);

    /// A coordinator that takes only certificates: it records each call's units, then
    /// waits for a permit of `gate` before answering.
    struct Post {
        batches: Mutex<Vec<Vec<UnitId>>>,
        singles: Mutex<Vec<UnitId>>,
        gate: Semaphore,
        down: std::sync::atomic::AtomicBool,
    }

    impl Post {
        fn new() -> Arc<Post> {
            Arc::new(Post {
                batches: Mutex::default(),
                singles: Mutex::default(),
                gate: Semaphore::new(0),
                down: Default::default(),
            })
        }

        fn batches(&self) -> Vec<Vec<u64>> {
            lock(&self.batches)
                .iter()
                .map(|b| b.iter().map(|u| u.0).collect())
                .collect()
        }
    }

    fn unused<'a, T: 'a>() -> Call<'a, T> {
        Box::pin(async { Err(Error::Local("not used by the outbox".into())) })
    }

    impl Coordinator for Post {
        fn register<'a>(&'a self, _: &'a Identity, _: Introduction<'a>) -> Call<'a, Registration> {
            unused()
        }
        fn request_work<'a>(
            &'a self,
            _: u32,
            _: &'a [SubmitterKey],
            _: bool,
        ) -> Call<'a, (Vec<Assignment>, Duration, String)> {
            unused()
        }
        fn heartbeat<'a>(
            &'a self,
            _: &'a [UnitId],
            _: u64,
            _: &'a RunReport,
        ) -> Call<'a, HeartbeatReply> {
            unused()
        }
        fn return_units<'a>(&'a self, _: &'a [UnitId]) -> Call<'a, ()> {
            unused()
        }
        fn report_failure<'a>(&'a self, _: UnitId, _: &'a Failure) -> Call<'a, ()> {
            unused()
        }
        fn dispute<'a>(&'a self, _: UnitId, _: &'a [Claim]) -> Call<'a, ()> {
            unused()
        }
        fn submit_certificate<'a>(
            &'a self,
            unit: UnitId,
            _: &'a [Claim],
            _: &'a [u8],
        ) -> Call<'a, CertificateOutcome> {
            lock(&self.singles).push(unit);
            Box::pin(async {
                Ok(CertificateOutcome {
                    accepted: true,
                    recorded: true,
                })
            })
        }
        fn submit_certificates<'a>(
            &'a self,
            batch: &'a [Outgoing<'a>],
        ) -> Call<'a, Vec<Result<CertificateOutcome, Error>>> {
            lock(&self.batches).push(batch.iter().map(|c| c.unit).collect());
            Box::pin(async move {
                if let Ok(permit) = self.gate.acquire().await {
                    permit.forget();
                }
                if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(Error::Rpc {
                        call: "SubmitCertificates",
                        status: tonic::Status::unavailable("the post is down"),
                    });
                }
                Ok(batch
                    .iter()
                    .map(|c| {
                        if c.unit == REFUSED {
                            Err(Error::Rpc {
                                call: "SubmitCertificates",
                                status: tonic::Status::invalid_argument("unit 13 is not yours"),
                            })
                        } else {
                            Ok(CertificateOutcome {
                                accepted: true,
                                recorded: true,
                            })
                        }
                    })
                    .collect())
            })
        }
    }

    type Delivery = tokio::task::JoinHandle<Result<CertificateOutcome, Error>>;

    fn deliver(outbox: &Arc<Outbox>, post: &Arc<Post>, unit: u64, bytes: usize) -> Delivery {
        let (outbox, post) = (outbox.clone(), post.clone());
        tokio::spawn(async move {
            outbox
                .deliver(
                    &*post,
                    UnitId(unit),
                    Arc::from(vec![]),
                    vec![0u8; bytes].into(),
                )
                .await
        })
    }

    /// Yields until `done` holds (the spawned deliveries have got that far).
    async fn until(done: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the deliveries never got there");
    }

    #[tokio::test]
    async fn certificates_that_finish_while_a_call_is_out_go_together_in_the_next() {
        let (outbox, post) = (Arc::new(Outbox::default()), Post::new());
        let first = deliver(&outbox, &post, 1, 10);
        until(|| post.batches().len() == 1).await;
        // The first went alone, at once; four more finish while it is out.
        let rest: Vec<Delivery> = [2, 3, REFUSED.0, 4]
            .into_iter()
            .map(|u| deliver(&outbox, &post, u, 10))
            .collect();
        until(|| lock(&outbox.queue).len() == 4).await;
        post.gate.add_permits(2);
        assert!(first.await.expect("task").expect("accepted").accepted);
        let mut answers = Vec::new();
        for r in rest {
            answers.push(r.await.expect("task"));
        }
        assert_eq!(post.batches(), vec![vec![1], vec![2, 3, 13, 4]]);
        // Each its own answer: the refused one alone is refused, and not as transient.
        for (i, answer) in answers.iter().enumerate() {
            match (i, answer) {
                (2, Err(e)) => {
                    assert!(!e.is_transient(), "{e}");
                    assert!(e.to_string().contains("unit 13 is not yours"), "{e}");
                }
                (_, Ok(outcome)) => assert!(outcome.accepted, "{i}: {outcome:?}"),
                (_, other) => panic!("certificate {i}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_call_fails_each_of_its_certificates_as_retryable() {
        let (outbox, post) = (Arc::new(Outbox::default()), Post::new());
        post.down.store(true, std::sync::atomic::Ordering::Relaxed);
        let first = deliver(&outbox, &post, 1, 10);
        until(|| post.batches().len() == 1).await;
        let rest: Vec<Delivery> = (2..5).map(|u| deliver(&outbox, &post, u, 10)).collect();
        until(|| lock(&outbox.queue).len() == 3).await;
        post.gate.add_permits(2);
        for d in std::iter::once(first).chain(rest) {
            let e = d.await.expect("task").expect_err("the post is down");
            assert!(e.is_transient(), "{e}");
            assert!(e.to_string().contains("the post is down"), "{e}");
        }
        assert_eq!(post.batches(), vec![vec![1], vec![2, 3, 4]]);
    }

    #[tokio::test]
    async fn a_large_output_goes_alone_without_waiting_for_the_batch_out() {
        let (outbox, post) = (Arc::new(Outbox::default()), Post::new());
        let small = deliver(&outbox, &post, 1, 10);
        until(|| post.batches().len() == 1).await;
        let large = deliver(&outbox, &post, 2, BATCH_OUTPUT_BYTES + 1);
        assert!(large.await.expect("task").expect("accepted").accepted);
        assert_eq!(*lock(&post.singles), vec![UnitId(2)]);
        post.gate.add_permits(1);
        assert!(small.await.expect("task").expect("accepted").accepted);
        assert_eq!(post.batches(), vec![vec![1]]);
    }

    #[test]
    fn a_batch_holds_at_most_64_certificates_256_claims_and_1_mib_of_output() {
        let outbox = Outbox::default();
        let claim = Claim::sign(
            &Identity::from_seed([3; 32]),
            protocol::ProjectId(1),
            UnitId(1),
            protocol::Digest::of(b"42"),
            1,
        );
        let queue = |units: std::ops::Range<u64>, bytes: usize, claims: usize| {
            for unit in units {
                let (answer, _) = oneshot::channel();
                lock(&outbox.queue).push_back(Queued {
                    unit: UnitId(unit),
                    claims: vec![claim.clone(); claims].into(),
                    output: vec![0u8; bytes].into(),
                    answer,
                });
            }
        };
        let units = |batch: Vec<Queued>| batch.iter().map(|q| q.unit.0).collect::<Vec<_>>();
        queue(0..70, 1, 2);
        assert_eq!(units(outbox.take()), (0..64).collect::<Vec<_>>());
        assert_eq!(units(outbox.take()), (64..70).collect::<Vec<_>>());
        assert!(outbox.take().is_empty());
        queue(0..3, 400 << 10, 2);
        assert_eq!(units(outbox.take()), vec![0, 1]);
        assert_eq!(units(outbox.take()), vec![2]);
        // 100 claims each: two fit in 256, the third waits.
        queue(0..3, 1, 100);
        assert_eq!(units(outbox.take()), vec![0, 1]);
        assert_eq!(units(outbox.take()), vec![2]);
    }
}
