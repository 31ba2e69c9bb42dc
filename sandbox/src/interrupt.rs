//! Holding and stopping a running guest from another thread, so that the fuel meter's
//! checks need not call the host ([`crate::meter::Check::Limit`]).
//!
//! A call at every loop head costs more than the counting itself: Cranelift keeps the
//! values that live across a call on the stack, so loops with a check that *may* call ran
//! their loop-carried values through memory (BENCHMARKS.md). With call-free checks, the
//! host needs another way to pause a guest (the worker's pacer: suspension when the user
//! is back, the CPU limit's duty cycle) and to stop it (the wall clock). Both come from a
//! **companion thread**, one per guest thread, started the first time that thread runs a
//! guest and ended with it:
//! - every [`TICK`], it adds the guest's running time to its wall clock ([`Ticker::ran`]);
//!   past the limit it writes `i64::MAX` to the guest's limit, and the guest traps at its
//!   next draw from its bank (at most [`crate::meter::BANK_DRAW`] fuel later, about a
//!   millisecond);
//! - then it **holds** the guest thread: it sends it [`SIGNAL`], whose handler, if the
//!   thread is in the guest's compiled code, waits on a futex until released. Held, the
//!   guest is exactly as it was (registers, stack, memory), and the companion asks the
//!   pacer ([`Ticker::pace`]), which blocks for as long as the guest must not run;
//! - a guest caught in host code (a WASI call) is not held there — the host may hold
//!   locks — but signalled again until it is back in its own code.
//!
//! Linux on x86_64 and aarch64 ([`SUPPORTED`]); elsewhere the checks call the host
//! ([`crate::meter::Check::Slice`]).
//!
//! # Safety
//! This is the one module of the crate besides `disk_cache::deserialize` with `unsafe`
//! code: installing the signal handler, reading the interrupted program counter, the
//! futex system calls, `pthread_kill`, and the atomic accesses to the guest's limit
//! memory. The handler reads only this thread's [`SLOT`] pointer (a `const`-initialised
//! thread-local without a destructor, so reaching it allocates nothing) and the [`Slot`]
//! it points to, which the thread's companion state keeps alive (the pointer is cleared
//! before the thread lets go of it); it makes only `futex` system calls, which are
//! async-signal-safe, and saves and restores `errno`.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Whether guests on this platform are held and stopped from outside.
pub(crate) const SUPPORTED: bool = cfg!(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
));

/// How often the companion looks at the wall clock and asks the pacer: about as often as
/// the slice calls did (a slice of [`crate::meter::SLICE_FUEL`] is a few milliseconds).
pub(crate) const TICK: Duration = Duration::from_millis(5);

/// What the companion does for one execution.
pub(crate) trait Ticker: Send {
    /// The guest ran `running` since the last tick. `false`: stop it (its wall clock).
    fn ran(&mut self, running: Duration) -> bool;
    /// Called while the guest is held, with the fuel it used so far (as of its last call,
    /// return, outer-loop iteration or draw from its bank): may block for as long as the
    /// guest must not run.
    fn pace(&mut self, fuel_used: u64);
}

/// Per guest thread: what the signal handler reads. It lives in the thread's companion
/// state ([`Shared`]), which the companion thread keeps alive, so the companion may touch it
/// whenever it likes; the guest thread reaches it through [`SLOT`], cleared before the
/// thread lets go of its companion.
struct Slot {
    /// 1 while the companion wants the guest held.
    hold: AtomicU32,
    /// 1 while the handler holds the guest.
    held: AtomicU32,
    /// The running module's compiled code: the guest is held only there.
    code_start: AtomicUsize,
    code_end: AtomicUsize,
}

thread_local! {
    /// This thread's [`Slot`], or null. `const`-initialised and without a destructor, so
    /// a signal handler may read it.
    static SLOT: Cell<*const Slot> = const { Cell::new(std::ptr::null()) };
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod imp {
    use super::*;

    /// The signal that holds a guest thread. `SIGURG` is ignored by default, so one that
    /// arrives where no handler is installed does nothing.
    pub(super) const SIGNAL: libc::c_int = libc::SIGURG;

    /// The interrupted program counter.
    ///
    /// # Safety
    /// `context` is the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
    unsafe fn program_counter(context: *mut libc::c_void) -> usize {
        let context = context as *const libc::ucontext_t;
        // SAFETY: per this function's contract.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            {
                (*context).uc_mcontext.gregs[libc::REG_RIP as usize] as usize
            }
            #[cfg(target_arch = "aarch64")]
            {
                (*context).uc_mcontext.pc as usize
            }
        }
    }

    pub(super) fn futex_wait(word: &AtomicU32, expected: u32) {
        // SAFETY: a futex wait on a live `AtomicU32`; no timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    pub(super) fn futex_wake(word: &AtomicU32) {
        // SAFETY: a futex wake on a live `AtomicU32`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }

    extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: `errno` is this thread's; the futex calls may change it.
        let errno = unsafe { *libc::__errno_location() };
        // SAFETY: installed with SA_SIGINFO, so `context` is a `ucontext_t`.
        unsafe { hold_here(context) };
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
    }

    /// Holds this thread while its companion asks, if it is in the guest's code.
    ///
    /// # Safety
    /// `context` is the `ucontext_t` of the signal being handled.
    unsafe fn hold_here(context: *mut libc::c_void) {
        let slot = SLOT.try_with(Cell::get).unwrap_or(std::ptr::null());
        // SAFETY: a non-null `SLOT` points into this thread's live companion state
        // (`Slot`'s doc).
        let Some(slot) = (unsafe { slot.as_ref() }) else {
            return;
        };
        if slot.hold.load(SeqCst) == 0 {
            return;
        }
        // SAFETY: per this function's contract.
        let pc = unsafe { program_counter(context) };
        if pc < slot.code_start.load(SeqCst) || pc >= slot.code_end.load(SeqCst) {
            return; // in host code: the companion signals again
        }
        slot.held.store(1, SeqCst);
        futex_wake(&slot.held);
        while slot.hold.load(SeqCst) != 0 {
            futex_wait(&slot.hold, 1);
        }
        slot.held.store(0, SeqCst);
    }

    /// Installs the handler once per process.
    pub(crate) fn install() -> Result<(), String> {
        static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                // SAFETY: a zeroed `sigaction` is valid; the handler has the SA_SIGINFO
                // signature and is async-signal-safe (module doc).
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = on_signal as *const () as usize;
                    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
                    libc::sigemptyset(&mut action.sa_mask);
                    if libc::sigaction(SIGNAL, &action, std::ptr::null_mut()) != 0 {
                        return Err(format!(
                            "cannot install the guest-holding signal handler: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                }
                Ok(())
            })
            .clone()
    }

    pub(super) fn this_thread() -> libc::pthread_t {
        // SAFETY: always safe.
        unsafe { libc::pthread_self() }
    }

    pub(super) fn signal(thread: libc::pthread_t) {
        // SAFETY: `thread` is a live thread: the guest thread, which waits for its
        // companion before it ends an execution (so before it can exit).
        unsafe {
            libc::pthread_kill(thread, SIGNAL);
        }
    }

    /// The limit memory's words.
    ///
    /// # Safety
    /// `memory` points to at least 16 bytes, 8-aligned, valid for as long as the result
    /// is used.
    pub(super) unsafe fn word<'a>(memory: usize, offset: usize) -> &'a AtomicI64 {
        // SAFETY: per this function's contract.
        unsafe { AtomicI64::from_ptr((memory + offset) as *mut i64) }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod imp {
    //! Not supported: nothing to install, and `Watch::start` is never called.
    use super::*;
    pub(crate) fn install() -> Result<(), String> {
        Err("guests cannot be held from outside on this platform".into())
    }
    pub(super) fn futex_wake(_: &AtomicU32) {}
    pub(super) fn this_thread() -> usize {
        0
    }
    pub(super) fn signal(_: usize) {}
    pub(super) unsafe fn word<'a>(_: usize, _: usize) -> &'a AtomicI64 {
        unreachable!("not supported")
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
type Thread = libc::pthread_t;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
type Thread = usize;

use imp::futex_wake;
pub(crate) use imp::install;

/// One execution, as its companion sees it.
struct Job {
    thread: Thread,
    /// The limit memory's base: valid while the job is in [`State::job`].
    memory: usize,
    /// Fuel used before this execution's counter started at `issued`.
    before: u64,
    issued: u64,
    ticker: Option<Box<dyn Ticker>>,
    killed: bool,
}

struct State {
    job: Option<Job>,
    /// Counts jobs, so that the companion notices one ended while it was not looking.
    generation: u64,
    /// The guest thread is gone.
    shutdown: bool,
    /// The companion waits without a timeout: a new job must wake it.
    sleeping: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    slot: Slot,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The companion of the current thread, ended when the thread ends.
struct Companion(Arc<Shared>);

impl Drop for Companion {
    fn drop(&mut self) {
        // No signal handler on this thread may reach the slot once this Arc is gone.
        let _ = SLOT.try_with(|s| s.set(std::ptr::null()));
        self.0.lock().shutdown = true;
        self.0.wake.notify_all();
    }
}

thread_local! {
    static COMPANION: RefCell<Option<Companion>> = const { RefCell::new(None) };
}

fn companion() -> Result<Arc<Shared>, String> {
    COMPANION.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(c) = &*c {
            return Ok(c.0.clone());
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                job: None,
                generation: 0,
                shutdown: false,
                sleeping: false,
            }),
            wake: Condvar::new(),
            slot: Slot {
                hold: AtomicU32::new(0),
                held: AtomicU32::new(0),
                code_start: AtomicUsize::new(0),
                code_end: AtomicUsize::new(0),
            },
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("fallow-guest-watch".into())
            .spawn(move || run(&theirs))
            .map_err(|e| format!("cannot start the guest's companion thread: {e}"))?;
        SLOT.with(|s| s.set(&shared.slot));
        *c = Some(Companion(shared.clone()));
        Ok(shared)
    })
}

/// One execution watched by this thread's companion: from [`Watch::start`] (after the
/// guest's instance exists) to [`Watch::end`] (before it is dropped).
pub(crate) struct Watch {
    shared: Arc<Shared>,
    generation: u64,
}

impl Watch {
    /// Starts watching the guest this thread is about to run. `memory` is the base of its
    /// limit memory (valid until [`Watch::end`]), `code` its compiled code; its counter
    /// starts at `issued`, after `before` fuel used in earlier segments.
    pub(crate) fn start(
        memory: *mut u8,
        code: Range<usize>,
        before: u64,
        issued: u64,
        ticker: Box<dyn Ticker>,
    ) -> Result<Watch, String> {
        install()?;
        let shared = companion()?;
        shared.slot.code_start.store(code.start, SeqCst);
        shared.slot.code_end.store(code.end, SeqCst);
        let (generation, sleeping) = {
            let mut state = shared.lock();
            state.generation += 1;
            state.job = Some(Job {
                thread: imp::this_thread(),
                memory: memory as usize,
                before,
                issued,
                ticker: Some(ticker),
                killed: false,
            });
            (state.generation, state.sleeping)
        };
        // A companion that ticks (it lingers for a while after a job) finds the job at its
        // next tick: units run back to back cost no thread switch to start.
        if sleeping {
            shared.wake.notify_all();
        }
        Ok(Watch { shared, generation })
    }

    /// Stops watching; whether the wall clock stopped the guest.
    pub(crate) fn end(self) -> bool {
        let killed = {
            let mut state = self.shared.lock();
            let killed = state
                .job
                .take()
                .filter(|_| state.generation == self.generation)
                .is_some_and(|j| j.killed);
            state.generation += 1;
            killed
        };
        // The companion notices at its next tick; nothing to wake it for.
        self.shared.slot.code_start.store(0, SeqCst);
        self.shared.slot.code_end.store(0, SeqCst);
        killed
    }
}

/// The companion thread.
fn run(shared: &Shared) {
    let mut state = shared.lock();
    let mut last = Instant::now();
    let mut watching = 0u64;
    let mut idle_since = Instant::now();
    loop {
        if state.shutdown {
            return;
        }
        let Some(generation) = state.job.as_ref().map(|_| state.generation) else {
            // Between jobs: tick on for a while (the next unit usually follows at once),
            // then sleep until a job wakes this thread.
            if generation_seen(&mut watching, state.generation) {
                idle_since = Instant::now();
            }
            if idle_since.elapsed() < LINGER {
                state = shared
                    .wake
                    .wait_timeout(state, TICK)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            } else {
                state.sleeping = true;
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                state.sleeping = false;
                idle_since = Instant::now();
            }
            continue;
        };
        if generation != watching {
            watching = generation;
            last = Instant::now();
        }
        state = shared
            .wake
            .wait_timeout(state, TICK)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if state.generation != watching {
            continue;
        }
        let Some(job) = state.job.as_mut() else {
            continue;
        };
        if job.killed {
            continue;
        }
        let now = Instant::now();
        let Some(ticker) = job.ticker.as_mut() else {
            continue;
        };
        if !ticker.ran(now - last) {
            job.killed = true;
            // SAFETY: the job is live, so its memory is (`Watch::start`).
            unsafe { imp::word(job.memory, 0) }.store(i64::MAX, SeqCst);
            continue;
        }
        last = now;
        // Hold the guest, then ask the pacer with the lock released.
        let Some(mut ticker) = job.ticker.take() else {
            continue;
        };
        let thread = job.thread;
        let slot = &shared.slot;
        slot.hold.store(1, SeqCst);
        let mut held = false;
        while !held {
            imp::signal(thread);
            drop(state);
            held = wait_held(slot);
            state = shared.lock();
            if state.generation != watching || state.shutdown {
                break;
            }
        }
        if held && state.generation == watching {
            let fuel = state.job.as_ref().map_or(0, |j| {
                // SAFETY: the job is live.
                let (counter, bank) = unsafe {
                    (
                        imp::word(j.memory, crate::meter::COUNTER_OFFSET).load(SeqCst),
                        imp::word(j.memory, crate::meter::BANK_OFFSET).load(SeqCst),
                    )
                };
                let counter = counter.saturating_add(bank);
                j.before
                    + (i128::from(j.issued) - i128::from(counter)).clamp(0, i128::from(u64::MAX))
                        as u64
            });
            drop(state);
            ticker.pace(fuel);
            state = shared.lock();
        }
        slot.hold.store(0, SeqCst);
        futex_wake(&slot.hold);
        last = Instant::now();
        if state.generation == watching
            && let Some(job) = state.job.as_mut()
        {
            job.ticker = Some(ticker);
        }
    }
}

/// How long a companion keeps ticking after its last job before it sleeps.
const LINGER: Duration = Duration::from_secs(1);

/// Records `generation` as seen; whether it is new.
fn generation_seen(seen: &mut u64, generation: u64) -> bool {
    let new = *seen != generation;
    *seen = generation;
    new
}

/// Waits up to a millisecond for the handler to report the guest held.
fn wait_held(slot: &Slot) -> bool {
    let deadline = Instant::now() + Duration::from_millis(1);
    while Instant::now() < deadline {
        if slot.held.load(SeqCst) == 1 {
            return true;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    slot.held.load(SeqCst) == 1
}
