//! Serving modules to workers (`GetModule`) in bounded memory, whoever asks and however
//! many ask at once. Module bytes are read from the store one module at a time and kept in
//! a small cache as shared [`Bytes`], so concurrent calls share one copy; what each call
//! still costs is the buffer tonic encodes its response into, held until the response has
//! been sent. Those buffers are bounded by a budget of bytes being sent at once
//! ([`SEND_BUDGET`]; a call waits for its module's share) and, per caller address, by
//! [`SENDS_PER_ADDRESS`] at once with at most [`CALLS_PER_ADDRESS`] calls waiting or
//! sending, more refused with `RESOURCE_EXHAUSTED` — so one address that asks a thousand
//! times waits behind itself, not in front of everyone else.
//!
//! Worst case: [`CACHE_BYTES`] cached + one module being read (twice: SQLite's copy and
//! ours) + [`SEND_BUDGET`] being sent, about 384 MiB with 64 MiB modules, however many
//! calls arrive; loopback callers are exempt from the per-address bounds unless
//! `limit_loopback`, not from the budget.
//!
//! A worker without wasmtime's fuel (the browser worker) asks for the module already
//! rewritten to meter itself (`sandbox::meter`, and `sandbox::nan` for a project that
//! canonicalizes NaNs): [`Modules::metered`] rewrites one module at a time, off the async
//! threads, and keeps the rewrites in a cache of their own ([`METERED_CACHE_BYTES`]).
//! The browser trusts the coordinator for the rewrite as it trusts it for the page's own
//! code: both come from the same origin.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use connections::{Address, KeepUntilSent};
use protocol::Digest;
use protocol::manifest::MAX_MODULE_BYTES;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::service::to_status;
use crate::store::Store;

/// Module bytes kept in memory after a read, most recently used first out last: two of
/// the largest modules, or a whole fleet's worth of ordinary ones.
pub(crate) const CACHE_BYTES: usize = 2 * MAX_MODULE_BYTES;
/// Bytes of modules being sent at once (each call's encoded response); a call waits for
/// its module's share. Small modules (most are well under 1 MiB) barely wait at all.
pub(crate) const SEND_BUDGET: usize = 2 * MAX_MODULE_BYTES;
/// Modules one address is sent at once; its further calls wait for their turn.
pub(crate) const SENDS_PER_ADDRESS: usize = 2;
/// Calls one address may have waiting or being sent; more are refused. A worker asks once
/// per core at most when a new module comes, so this is more than any machine's cores.
pub(crate) const CALLS_PER_ADDRESS: usize = 256;

/// Metered rewrites kept in memory after they are made (most recently used last).
pub(crate) const METERED_CACHE_BYTES: usize = MAX_MODULE_BYTES;

/// The budget counts in KiB, so the largest module's share fits a `u32` of permits.
const BUDGET_UNIT: usize = 1024;

/// The module server; one per coordinator.
pub(crate) struct Modules {
    cache: Mutex<Cache>,
    /// Metered rewrites, keyed by (digest, canonical NaNs).
    metered: Mutex<Cache<(Digest, bool)>>,
    /// One rewrite at a time: it costs a core for as long as it takes.
    rewrites: Semaphore,
    /// One store read at a time: a read costs its module twice over until it is cached.
    reads: Semaphore,
    /// [`SEND_BUDGET`], in [`BUDGET_UNIT`]s.
    sends: Arc<Semaphore>,
    callers: Arc<Mutex<HashMap<Address, Caller>>>,
    limit_loopback: bool,
}

struct Cache<K = Digest> {
    /// Least recently used first.
    entries: VecDeque<(K, Bytes)>,
    bytes: usize,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Cache {
            entries: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<K: PartialEq + Copy> Cache<K> {
    /// The entry for `key`, now the most recently used.
    fn get(&mut self, key: K) -> Option<Bytes> {
        let at = self.entries.iter().position(|(k, _)| *k == key)?;
        let entry = self.entries.remove(at)?;
        let bytes = entry.1.clone();
        self.entries.push_back(entry);
        Some(bytes)
    }

    /// Keeps `bytes` under `key`, evicting the least recently used beyond `cap` (never
    /// the entry just put).
    fn put(&mut self, key: K, bytes: Bytes, cap: usize) {
        self.bytes += bytes.len();
        self.entries.push_back((key, bytes));
        while self.bytes > cap && self.entries.len() > 1 {
            if let Some((_, evicted)) = self.entries.pop_front() {
                self.bytes -= evicted.len();
            }
        }
    }
}

/// One address's calls in progress.
struct Caller {
    turns: Arc<Semaphore>,
    calls: usize,
}

impl Modules {
    /// `limit_loopback`: apply the per-address bounds to loopback callers too.
    pub(crate) fn new(limit_loopback: bool) -> Self {
        Modules {
            cache: Mutex::new(Cache::default()),
            metered: Mutex::new(Cache::default()),
            rewrites: Semaphore::new(1),
            reads: Semaphore::new(1),
            sends: Arc::new(Semaphore::new(SEND_BUDGET / BUDGET_UNIT)),
            callers: Arc::new(Mutex::new(HashMap::new())),
            limit_loopback,
        }
    }

    /// The module `digest` for a caller at `remote`, with what must be kept until its
    /// response has been sent (put it in the response's extensions); `None` if there is no
    /// such module. Waits for the caller's turn and the module's share of the budget.
    pub(crate) async fn serve<S: Store>(
        &self,
        store: &S,
        digest: Digest,
        remote: Option<SocketAddr>,
    ) -> Result<Option<(Bytes, KeepUntilSent)>, Status> {
        let turn = match remote.map(|r| Address::of(r.ip())) {
            Some(address) if self.limit_loopback || !address.is_loopback() => {
                Some(self.turn(address).await?)
            }
            _ => None,
        };
        let Some(module) = self.bytes(store, digest).await? else {
            return Ok(None);
        };
        let share = module
            .len()
            .div_ceil(BUDGET_UNIT)
            .min(SEND_BUDGET / BUDGET_UNIT);
        let share = u32::try_from(share).unwrap_or(u32::MAX);
        let sending = self
            .sends
            .clone()
            .acquire_many_owned(share)
            .await
            .map_err(|_| crate::service::to_status(crate::Error::ShuttingDown))?;
        Ok(Some((module, KeepUntilSent::new((turn, sending)))))
    }

    /// Waits for one of `address`'s [`SENDS_PER_ADDRESS`] turns, or refuses past
    /// [`CALLS_PER_ADDRESS`].
    async fn turn(&self, address: Address) -> Result<Turn, Status> {
        let turns = {
            let mut callers = lock(&self.callers);
            let caller = callers.entry(address).or_insert_with(|| Caller {
                turns: Arc::new(Semaphore::new(SENDS_PER_ADDRESS)),
                calls: 0,
            });
            if caller.calls >= CALLS_PER_ADDRESS {
                return Err(to_status(crate::Error::DownloadsInProgress {
                    limit: CALLS_PER_ADDRESS,
                    address: address.to_string(),
                }));
            }
            caller.calls += 1;
            caller.turns.clone()
        };
        // Counted from here: the guard gives the call back even if this wait is dropped.
        let mut turn = Turn {
            callers: self.callers.clone(),
            address,
            _permit: None,
        };
        turn._permit = Some(
            turns
                .acquire_owned()
                .await
                .map_err(|_| crate::service::to_status(crate::Error::ShuttingDown))?,
        );
        Ok(turn)
    }

    /// The module's bytes, from the cache or read from the store once.
    async fn bytes<S: Store>(&self, store: &S, digest: Digest) -> Result<Option<Bytes>, Status> {
        if let Some(module) = self.cached(digest) {
            return Ok(Some(module));
        }
        // Holding the permit while the `Result` lives (the semaphore is never closed).
        let _reading = self.reads.acquire().await;
        // Whoever read it meanwhile cached it.
        if let Some(module) = self.cached(digest) {
            return Ok(Some(module));
        }
        let Some(module) = store.module(digest).await.map_err(to_status)? else {
            return Ok(None);
        };
        let module = Bytes::from(module);
        lock(&self.cache).put(digest, module.clone(), CACHE_BYTES);
        Ok(Some(module))
    }

    fn cached(&self, digest: Digest) -> Option<Bytes> {
        lock(&self.cache).get(digest)
    }

    /// `module` (the bytes of `digest`) rewritten to meter its own fuel by
    /// `sandbox::meter`'s rules, and with canonical NaNs when `canonical_nans`: what an
    /// engine without wasmtime's fuel runs to get the same bytes and fuel as a native
    /// worker.
    pub(crate) async fn metered(
        &self,
        digest: Digest,
        canonical_nans: bool,
        module: Bytes,
    ) -> Result<Bytes, Status> {
        let key = (digest, canonical_nans);
        if let Some(m) = lock(&self.metered).get(key) {
            return Ok(m);
        }
        let _rewriting = self.rewrites.acquire().await;
        if let Some(m) = lock(&self.metered).get(key) {
            return Ok(m);
        }
        let rewritten = tokio::task::spawn_blocking(move || {
            let metered = sandbox::meter::instrument(&module)?;
            if canonical_nans {
                sandbox::nan::canonicalize(&metered)
            } else {
                Ok(metered)
            }
        })
        .await
        .map_err(|e| to_status(crate::Error::Meter(format!("the rewrite stopped: {e}"))))?
        .map_err(|e| to_status(crate::Error::Meter(e.to_string())))?;
        let rewritten = Bytes::from(rewritten);
        lock(&self.metered).put(key, rewritten.clone(), METERED_CACHE_BYTES);
        Ok(rewritten)
    }
}

/// One call's place among its address's calls, given back when dropped.
struct Turn {
    callers: Arc<Mutex<HashMap<Address, Caller>>>,
    address: Address,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut callers = lock(&self.callers);
        if let Some(caller) = callers.get_mut(&self.address) {
            caller.calls -= 1;
            if caller.calls == 0 {
                callers.remove(&self.address);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is complete before it can panic.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_waits_for_its_turn_and_is_refused_past_its_calls() {
        let modules = Modules::new(true);
        let address = Address::of("203.0.113.7".parse().expect("ip"));
        let mut turns = Vec::new();
        for _ in 0..SENDS_PER_ADDRESS {
            turns.push(modules.turn(address).await.expect("a turn"));
        }
        // The next one waits…
        let waiting = modules.turn(address);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting)
                .await
                .is_err()
        );
        // …another address does not…
        let other = Address::of("198.51.100.1".parse().expect("ip"));
        drop(modules.turn(other).await.expect("a turn"));
        // …and gets its turn when one is given back.
        drop(turns.pop());
        turns.push(waiting.await.expect("a turn"));
        // Past its calls, one more is refused, naming the limit.
        let mut queue: Vec<_> = (SENDS_PER_ADDRESS..CALLS_PER_ADDRESS)
            .map(|_| Box::pin(modules.turn(address)))
            .collect();
        for call in &mut queue {
            let polled = tokio::time::timeout(std::time::Duration::ZERO, call).await;
            assert!(polled.is_err(), "waits for a turn");
        }
        let refused = modules.turn(address).await.err().expect("refused");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("256 module downloads"),
            "{refused}"
        );
        drop((queue, turns));
        assert!(lock(&modules.callers).is_empty(), "nothing left behind");
    }
}
