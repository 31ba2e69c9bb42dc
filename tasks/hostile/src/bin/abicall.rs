//! The guest side of the `abi` fuzz target: reads stdin as a list of host calls with
//! arbitrary arguments (pointers anywhere, lengths of any size, unknown ids) and makes
//! them, straight to the raw WASI imports and Fallow's checkpoint imports. Whatever the
//! arguments, the host must answer with an errno or stop the guest with a trap, never
//! misbehave itself, and do the same on every run.
//!
//! Each call is 13 bytes: an opcode and three little-endian `u32` arguments `a b c`
//! (folded into the size of memory unless the opcode's top bit is set).
//! After the calls it writes the errno of each call to stdout, so the fuzz target can check
//! that two runs agree.
//!
//! Natively there are no such imports, so the binary only says so.

#![allow(unsafe_code)]

#[cfg(target_arch = "wasm32")]
mod guest {
    use std::io::{Read, Write};

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        #[link_name = "fd_write"]
        fn raw_fd_write(fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> i32;
        #[link_name = "fd_read"]
        fn raw_fd_read(fd: i32, iovs: i32, iovs_len: i32, nread: i32) -> i32;
        #[link_name = "random_get"]
        fn raw_random_get(buf: i32, len: i32) -> i32;
        #[link_name = "clock_time_get"]
        fn raw_clock_time_get(id: i32, precision: i64, time: i32) -> i32;
        #[link_name = "clock_res_get"]
        fn raw_clock_res_get(id: i32, res: i32) -> i32;
        #[link_name = "args_sizes_get"]
        fn raw_args_sizes_get(argc: i32, size: i32) -> i32;
        #[link_name = "args_get"]
        fn raw_args_get(argv: i32, buf: i32) -> i32;
        #[link_name = "environ_sizes_get"]
        fn raw_environ_sizes_get(count: i32, size: i32) -> i32;
        #[link_name = "environ_get"]
        fn raw_environ_get(environ: i32, buf: i32) -> i32;
        #[link_name = "poll_oneoff"]
        fn raw_poll_oneoff(subs: i32, events: i32, n: i32, nevents: i32) -> i32;
        #[link_name = "fd_close"]
        fn raw_fd_close(fd: i32) -> i32;
        #[link_name = "fd_fdstat_get"]
        fn raw_fd_fdstat_get(fd: i32, buf: i32) -> i32;
        #[link_name = "fd_prestat_get"]
        fn raw_fd_prestat_get(fd: i32, buf: i32) -> i32;
        #[link_name = "fd_seek"]
        fn raw_fd_seek(fd: i32, offset: i64, whence: i32, newoffset: i32) -> i32;
        #[link_name = "path_open"]
        #[allow(clippy::too_many_arguments)]
        fn raw_path_open(
            fd: i32,
            dirflags: i32,
            path: i32,
            path_len: i32,
            oflags: i32,
            rights: i64,
            inheriting: i64,
            fdflags: i32,
            opened: i32,
        ) -> i32;
        #[link_name = "sched_yield"]
        fn raw_sched_yield() -> i32;
        #[link_name = "proc_exit"]
        fn raw_proc_exit(code: i32) -> !;
    }

    #[link(wasm_import_module = "fallow")]
    unsafe extern "C" {
        fn checkpoint_save(ptr: i32, len: i32);
        fn checkpoint_load(ptr: i32, cap: i32) -> i32;
    }

    /// Where a checkpoint keeps the index of the next call (so a resumed run goes on after
    /// the save rather than making it again).
    static mut RESUME: [u8; 4] = [0; 4];

    pub fn main() {
        let mut input = Vec::new();
        if std::io::stdin().read_to_end(&mut input).is_err() {
            return;
        }
        let resume_at = std::ptr::addr_of_mut!(RESUME) as i32;
        // SAFETY: the host writes at most 4 bytes (the capacity given) into `RESUME`.
        let first = if unsafe { checkpoint_load(resume_at, 4) } == 4 {
            // SAFETY: written by `checkpoint_load` just above; nothing else touches it.
            u32::from_le_bytes(unsafe { RESUME }) as usize
        } else {
            0
        };
        let mut errnos = Vec::new();
        for (i, call) in input.chunks_exact(13).enumerate().skip(first) {
            let arg = |k: usize| {
                u32::from_le_bytes([
                    call[1 + 4 * k],
                    call[2 + 4 * k],
                    call[3 + 4 * k],
                    call[4 + 4 * k],
                ])
            };
            // Opcodes below 0x80 fold their arguments into the size of memory, so most
            // pointers land inside it and a run gets past its first call; 0x80 and up pass
            // them as they are, pointing anywhere.
            let (a, b, c) = if call[0] & 0x80 == 0 {
                let size = (core::arch::wasm32::memory_size(0) as u32)
                    .saturating_mul(65536)
                    .max(1);
                (
                    (arg(0) % size) as i32,
                    (arg(1) % size) as i32,
                    (arg(2) % size) as i32,
                )
            } else {
                (arg(0) as i32, arg(1) as i32, arg(2) as i32)
            };
            // SAFETY: none. Arbitrary pointers and lengths are the point: the host must check
            // every one of them against this guest's memory.
            let errno = unsafe {
                match (call[0] & 0x7f) % 20 {
                    0 => raw_fd_write(a & 3, b, c & 7, a),
                    1 => raw_fd_read(a & 3, b, c & 7, c),
                    2 => raw_random_get(a, b & 0xfff),
                    3 => raw_clock_time_get(a & 7, i64::from(b), c),
                    4 => raw_clock_res_get(a & 7, b),
                    5 => raw_args_sizes_get(a, b),
                    6 => raw_args_get(a, b),
                    7 => raw_environ_sizes_get(a, b),
                    8 => raw_environ_get(a, b),
                    9 => raw_poll_oneoff(a, b, c & 3, a ^ b),
                    10 => raw_fd_close(a & 7),
                    11 => raw_fd_fdstat_get(a & 7, b),
                    12 => raw_fd_prestat_get(a & 7, b),
                    13 => raw_fd_seek(a & 7, i64::from(b), c & 3, a),
                    14 => raw_path_open(
                        a & 7,
                        0,
                        b,
                        c & 0xfff,
                        0,
                        i64::from(a & 0x1fff_ffff),
                        0,
                        0,
                        b,
                    ),
                    15 => raw_sched_yield(),
                    16 => checkpoint_load(a, b),
                    17 => {
                        // Saves where to go on (the next call), followed by `b` bytes of
                        // whatever lies after it in memory (a length of any size).
                        RESUME = (i as u32 + 1).to_le_bytes();
                        checkpoint_save(resume_at, 4u32.saturating_add(b as u32 & 0xfffff) as i32);
                        0
                    }
                    18 => {
                        // Grows memory by up to 255 pages (the memory limit may refuse).
                        core::arch::wasm32::memory_grow(0, (a & 0xff) as usize) as i32
                    }
                    _ => raw_proc_exit(a & 0xff),
                }
            };
            errnos.push(errno);
        }
        let mut out = std::io::stdout().lock();
        for e in errnos {
            let _ = writeln!(out, "{e}");
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {
    guest::main();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    println!("abicall: the host calls it makes exist only in the wasm build");
}
