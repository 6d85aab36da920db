//! Data-parallel training over libtorch's distributed engine, c10d (`csrc/dist.cpp`): one
//! process per device, a TCPStore rendezvous, Gloo (CPU, or CUDA tensors) or NCCL (CUDA).
//!
//! * [`Launch`]: the rank, world size and rendezvous address a process was started with, read
//!   from the environment `torchrun` sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//!   `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`) and checked with one-line errors.
//! * [`Dist`]: the process group: sum all-reduce, broadcast, barrier. A collective that fails
//!   (a peer died, or hung past the timeout) becomes an [`Error::Dist`] naming this rank, the
//!   collective, and the ranks that did not report the failure themselves (the dead or hung
//!   ones), found through the store.
//! * [`launch_local`]: `slb train --nproc N`, a launcher for one node: it hosts the store (as
//!   torchrun's agent does, so that the store outlives any rank), starts N copies of this
//!   command with the variables above, and stops them all as soon as one fails.
//!
//! The training semantics (global batch, shards, gradient averaging, BatchNorm consistency,
//! rank 0 as the only writer) are in `train::learner`; docs/DISTRIBUTED.md describes them.

use std::ffi::{c_char, c_int, c_void, CString};
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use crate::error::{Error, Result};

/// The default timeout of a collective or a store operation (as PyTorch's for NCCL).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The most ranks a run may have (c10d takes `int`; this bounds what a typo can ask for).
pub const MAX_WORLD: usize = 65_536;

/// How a process was started: its place in the run and where the rendezvous store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Rank on this node (picks the GPU).
    pub local_rank: usize,
    /// Host of the store (`MASTER_ADDR`).
    pub master_addr: String,
    /// Port of the store (`MASTER_PORT`).
    pub master_port: u16,
    /// The store is hosted by the launcher (torchrun's agent, `slb train --nproc`) rather than
    /// by rank 0.
    pub agent_store: bool,
}

impl Launch {
    /// The launch described by the environment: `None` when `WORLD_SIZE` and `RANK` are both
    /// unset (a single process); an error naming the variable when one is malformed or
    /// inconsistent.
    pub fn from_env() -> Result<Option<Launch>> {
        Launch::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Launch::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let (world, rank) = (var("WORLD_SIZE"), var("RANK"));
        if world.is_none() && rank.is_none() {
            return Ok(None);
        }
        let bad = |m: String| Err(Error::Launch(m));
        let num = |k: &str| -> Result<usize> {
            let v = var(k).ok_or_else(|| {
                Error::Launch(format!(
                    "{k} is not set (WORLD_SIZE and RANK come together)"
                ))
            })?;
            v.trim()
                .parse::<usize>()
                .map_err(|_| Error::Launch(format!("{k}={v:?} is not a whole number")))
        };
        let world = num("WORLD_SIZE")?;
        let rank = num("RANK")?;
        if world == 0 || world > MAX_WORLD {
            return bad(format!("WORLD_SIZE={world}: must be 1 to {MAX_WORLD}"));
        }
        if rank >= world {
            return bad(format!(
                "RANK={rank} with WORLD_SIZE={world}: ranks are 0 to {}",
                world - 1
            ));
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(_) => num("LOCAL_RANK")?,
            None => rank,
        };
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        if master_addr.trim().is_empty() {
            return bad("MASTER_ADDR is empty".into());
        }
        let port = var("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return bad(format!("MASTER_PORT={port:?}: must be a port, 1 to 65535")),
        };
        Ok(Some(Launch {
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
        }))
    }
}

/// A collective backend of c10d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors, and CUDA tensors through host copies.
    Gloo,
    /// NCCL: CUDA tensors, device to device.
    Nccl,
}

impl Backend {
    /// The backend for tensors on `device`: NCCL on CUDA (when this slb has it), else Gloo.
    pub fn for_device(device: Device) -> Backend {
        if device.is_cuda() && NCCL {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    /// c10d's name of the backend.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// Parses `gloo` or `nccl`.
    pub fn parse(s: &str) -> Result<Backend> {
        match s {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            _ => Err(Error::Launch(format!(
                "--dist-backend {s:?}: expected gloo or nccl"
            ))),
        }
    }
}

/// Whether this slb was built with c10d (Gloo's headers were there at build time).
pub const AVAILABLE: bool = cfg!(slb_dist);

/// Whether this slb was built with c10d's NCCL backend.
pub const NCCL: bool = cfg!(slb_nccl);

#[cfg(slb_dist)]
#[allow(missing_docs)]
mod ffi {
    use super::*;
    extern "C" {
        pub fn slb_store_new(
            host: *const c_char,
            port: c_int,
            is_server: c_int,
            world: c_int,
            timeout_ms: c_int,
            prefix: *const c_char,
            err: *mut c_char,
            len: usize,
        ) -> *mut c_void;
        pub fn slb_store_port(s: *mut c_void) -> c_int;
        pub fn slb_store_free(s: *mut c_void);
        pub fn slb_store_set(
            s: *mut c_void,
            key: *const c_char,
            val: *const u8,
            n: usize,
            err: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn slb_store_check(
            s: *mut c_void,
            key: *const c_char,
            err: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn slb_pg_new(
            s: *mut c_void,
            backend: *const c_char,
            host: *const c_char,
            rank: c_int,
            world: c_int,
            timeout_ms: c_int,
            err: *mut c_char,
            len: usize,
        ) -> *mut c_void;
        pub fn slb_pg_free(pg: *mut c_void);
        pub fn slb_pg_allreduce_sum(
            pg: *mut c_void,
            t: *mut c_void,
            err: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn slb_pg_broadcast(
            pg: *mut c_void,
            t: *mut c_void,
            root: c_int,
            err: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn slb_pg_barrier(pg: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    }
}

/// Calls a shim entry point with an error buffer; its message on failure.
#[cfg_attr(not(slb_dist), allow(dead_code))]
fn call(f: impl FnOnce(*mut c_char, usize) -> bool) -> std::result::Result<(), String> {
    let mut buf = [0u8; 1024];
    if f(buf.as_mut_ptr().cast(), buf.len()) {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let msg = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    Err(crate::error::one_line_torch(&msg))
}

#[cfg_attr(not(slb_dist), allow(dead_code))]
fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Launch(format!("{s:?} contains a NUL byte")))
}

#[cfg_attr(not(slb_dist), allow(dead_code))]
fn millis(d: Duration) -> c_int {
    d.as_millis().clamp(1, c_int::MAX as u128) as c_int
}

/// A c10d TCPStore (server or client), owned.
pub struct Store {
    ptr: *mut c_void,
    port: u16,
}

impl Store {
    /// A store at `host:port`: the server when `server` (`port` 0 picks a free one), else a
    /// client that connects within `timeout`. Keys are namespaced by `prefix`.
    pub fn new(
        host: &str,
        port: u16,
        server: bool,
        world: usize,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Store> {
        #[cfg(slb_dist)]
        {
            let (h, p) = (c_string(host)?, c_string(prefix)?);
            let mut ptr = std::ptr::null_mut();
            call(|e, n| {
                // SAFETY: the strings outlive the call; `e` is a buffer of `n` bytes.
                ptr = unsafe {
                    ffi::slb_store_new(
                        h.as_ptr(),
                        c_int::from(port),
                        c_int::from(server),
                        world.min(c_int::MAX as usize) as c_int,
                        millis(timeout),
                        p.as_ptr(),
                        e,
                        n,
                    )
                };
                !ptr.is_null()
            })
            .map_err(|m| {
                let role = if server { "start" } else { "reach" };
                Error::Launch(format!(
                    "cannot {role} the rendezvous store at {host}:{port}: {m}"
                ))
            })?;
            // SAFETY: `ptr` is a live store.
            let port = unsafe { ffi::slb_store_port(ptr) } as u16;
            Ok(Store { ptr, port })
        }
        #[cfg(not(slb_dist))]
        {
            let _ = (host, port, server, world, timeout, prefix);
            Err(not_built())
        }
    }

    /// The port the store listens on (the server's actual one when it was asked for 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> std::result::Result<(), String> {
        #[cfg(slb_dist)]
        {
            let k = CString::new(key).map_err(|e| e.to_string())?;
            // SAFETY: the key and value outlive the call; `e` is a buffer of `n` bytes.
            call(|e, n| unsafe {
                ffi::slb_store_set(self.ptr, k.as_ptr(), value.as_ptr(), value.len(), e, n) == 0
            })
        }
        #[cfg(not(slb_dist))]
        {
            let _ = (key, value, self.ptr);
            Err(not_built().to_string())
        }
    }

    /// Whether `key` is set.
    pub fn check(&self, key: &str) -> std::result::Result<bool, String> {
        #[cfg(slb_dist)]
        {
            let k = CString::new(key).map_err(|e| e.to_string())?;
            let mut r = -1;
            // SAFETY: the key outlives the call; `e` is a buffer of `n` bytes.
            call(|e, n| {
                r = unsafe { ffi::slb_store_check(self.ptr, k.as_ptr(), e, n) };
                r >= 0
            })?;
            Ok(r == 1)
        }
        #[cfg(not(slb_dist))]
        {
            let _ = key;
            Err(not_built().to_string())
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        #[cfg(slb_dist)]
        // SAFETY: `ptr` came from `slb_store_new` and is freed only here.
        unsafe {
            ffi::slb_store_free(self.ptr)
        };
    }
}

#[cfg(not(slb_dist))]
fn not_built() -> Error {
    Error::Launch(
        "this slb was built without data-parallel training (no Gloo headers at build time: \
         run scripts/setup.sh, which installs Debian's libgloo-dev, then rebuild)"
            .into(),
    )
}

/// This process's membership of a data-parallel run: its rank and the process group.
pub struct Dist {
    /// This process's rank.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// The collective backend.
    pub backend: Backend,
    /// Timeout of every collective.
    pub timeout: Duration,
    pg: *mut c_void,
    store: Store,
    /// Collectives issued so far (names the failing one).
    calls: std::cell::Cell<u64>,
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Dist(rank {}/{}, {})",
            self.rank,
            self.world,
            self.backend.name()
        )
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        #[cfg(slb_dist)]
        // SAFETY: `pg` came from `slb_pg_new` and is freed only here, before the store.
        unsafe {
            ffi::slb_pg_free(self.pg)
        };
    }
}

impl Dist {
    /// Joins the run `launch` describes with `backend`: connects to (or, as rank 0 without an
    /// agent store, hosts) the store, then forms the process group, waiting up to `timeout`
    /// for every rank.
    pub fn init(launch: &Launch, backend: Backend, timeout: Duration) -> Result<Dist> {
        if backend == Backend::Nccl && !NCCL {
            return Err(Error::Launch(
                "this slb was built without NCCL (no CUDA headers at build time); use \
                 --dist-backend gloo"
                    .into(),
            ));
        }
        let server = !launch.agent_store && launch.rank == 0;
        let store = Store::new(
            &launch.master_addr,
            launch.master_port,
            server,
            launch.world,
            timeout,
            "slb/",
        )?;
        #[cfg(slb_dist)]
        {
            let b = c_string(backend.name())?;
            // Gloo binds the interface GLOO_SOCKET_IFNAME names (as in PyTorch), else the
            // address the store is reached on when that is the loopback (one node), else
            // libtorch's default (this host's name).
            let host = match std::env::var("GLOO_SOCKET_IFNAME") {
                Ok(i) if !i.is_empty() => format!("if:{}", i.split(',').next().unwrap_or(&i)),
                _ if is_loopback(&launch.master_addr) => launch.master_addr.clone(),
                _ => String::new(),
            };
            let h = c_string(&host)?;
            let mut pg = std::ptr::null_mut();
            call(|e, n| {
                // SAFETY: the strings and the store outlive the call; `e` holds `n` bytes.
                pg = unsafe {
                    ffi::slb_pg_new(
                        store.ptr,
                        b.as_ptr(),
                        h.as_ptr(),
                        launch.rank as c_int,
                        launch.world as c_int,
                        millis(timeout),
                        e,
                        n,
                    )
                };
                !pg.is_null()
            })
            .map_err(|m| Error::Dist {
                rank: launch.rank,
                msg: format!(
                    "cannot form the {} process group of {} ranks (timeout {} s): {m}",
                    backend.name(),
                    launch.world,
                    timeout.as_secs()
                ),
            })?;
            Ok(Dist {
                rank: launch.rank,
                world: launch.world,
                backend,
                timeout,
                pg,
                store,
                calls: std::cell::Cell::new(0),
            })
        }
        #[cfg(not(slb_dist))]
        {
            let _ = store;
            Err(not_built())
        }
    }

    /// Whether this is rank 0 (the one that writes).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Sums `t` over the ranks, in place (`t` contiguous, the same shape on every rank).
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        self.collective("all-reduce", |pg, e, n| {
            // SAFETY: `t` is a live tensor for the call; tch's pointer is a `torch::Tensor*`.
            #[cfg(slb_dist)]
            return unsafe {
                ffi::slb_pg_allreduce_sum(pg, t.as_ptr().cast::<c_void>().cast_mut(), e, n) == 0
            };
            #[cfg(not(slb_dist))]
            {
                let _ = (pg, e, n, t);
                false
            }
        })
    }

    /// Averages `t` over the ranks, in place.
    pub fn all_reduce_mean(&self, t: &mut Tensor) -> Result<()> {
        self.all_reduce_sum(t)?;
        if self.world > 1 {
            tch::no_grad(|| {
                let _ = t.g_div_scalar_(self.world as f64);
            });
        }
        Ok(())
    }

    /// Copies rank `root`'s `t` into every rank's `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        self.collective("broadcast", |pg, e, n| {
            // SAFETY: as in `all_reduce_sum`.
            #[cfg(slb_dist)]
            return unsafe {
                ffi::slb_pg_broadcast(
                    pg,
                    t.as_ptr().cast::<c_void>().cast_mut(),
                    root as c_int,
                    e,
                    n,
                ) == 0
            };
            #[cfg(not(slb_dist))]
            {
                let _ = (pg, e, n, t, root);
                false
            }
        })
    }

    /// Waits until every rank reaches this call.
    pub fn barrier(&self) -> Result<()> {
        self.collective("barrier", |pg, e, n| {
            // SAFETY: `pg` is live; `e` holds `n` bytes.
            #[cfg(slb_dist)]
            return unsafe { ffi::slb_pg_barrier(pg, e, n) == 0 };
            #[cfg(not(slb_dist))]
            {
                let _ = (pg, e, n);
                false
            }
        })
    }

    fn collective(
        &self,
        what: &str,
        f: impl FnOnce(*mut c_void, *mut c_char, usize) -> bool,
    ) -> Result<()> {
        let k = self.calls.get() + 1;
        self.calls.set(k);
        call(|e, n| f(self.pg, e, n)).map_err(|m| self.failed(what, k, &m))
    }

    /// The error of collective number `k` (`what`) that failed with `msg`: it records the
    /// failure in the store, waits a few seconds for the other ranks to record theirs, and
    /// names those that did not (they died or hang).
    fn failed(&self, what: &str, k: u64, msg: &str) -> Error {
        let key = |r: usize| format!("failed/{r}");
        let mut msg = format!("{what} #{k} failed: {msg}");
        if self.store.set(&key(self.rank), what.as_bytes()).is_err() {
            msg.push_str(
                "; the rendezvous store is unreachable too (its host, the launcher or rank 0, \
                 has stopped)",
            );
            return Error::Dist {
                rank: self.rank,
                msg,
            };
        }
        let deadline = Instant::now() + Duration::from_secs(5).min(self.timeout);
        let mut silent: Vec<usize>;
        loop {
            silent = (0..self.world)
                .filter(|&r| r != self.rank && !self.store.check(&key(r)).unwrap_or(false))
                .collect();
            if silent.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !silent.is_empty() {
            let list: Vec<String> = silent.iter().map(|r| r.to_string()).collect();
            msg.push_str(&format!(
                "; rank(s) {} did not report it (died or hung)",
                list.join(", ")
            ));
        }
        Error::Dist {
            rank: self.rank,
            msg,
        }
    }
}

#[cfg_attr(not(slb_dist), allow(dead_code))]
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "::1"
}

/// `slb train --nproc N`: runs `args` (this command without `--nproc`) as `nproc` ranks on
/// this node, hosting the rendezvous store here (so it outlives any rank), with
/// `timeout` for the store. When a rank fails, the others are stopped (SIGTERM, then SIGKILL
/// after a grace period) and the error names the rank that failed first. Returns when every
/// rank has ended.
pub fn launch_local(nproc: usize, args: &[std::ffi::OsString], timeout: Duration) -> Result<()> {
    use std::process::{Child, Command};
    if nproc == 0 || nproc > MAX_WORLD {
        return Err(Error::Launch(format!(
            "--nproc {nproc}: must be 1 to {MAX_WORLD}"
        )));
    }
    let store = Store::new("127.0.0.1", 0, true, nproc, timeout, "")?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::Launch(format!("cannot find this executable: {e}")))?;
    // As torchrun: the node's cores shared out among the ranks, unless the user chose.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads =
        std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| (cores / nproc).max(1).to_string());
    let mut children: Vec<Option<Child>> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let child = Command::new(&exe)
            .args(args)
            .env("OMP_NUM_THREADS", &threads)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", store.port().to_string())
            .env("TORCHELASTIC_USE_AGENT_STORE", "True")
            .spawn();
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                stop(&mut children);
                return Err(Error::Launch(format!("cannot start rank {rank}: {e}")));
            }
        }
    }
    let grace = Duration::from_secs(5);
    let mut first_failure: Option<(usize, String)> = None;
    let mut stop_at: Option<Instant> = None;
    loop {
        let mut running = 0;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            match c.try_wait() {
                Ok(Some(status)) => {
                    *slot = None;
                    if !status.success() && first_failure.is_none() {
                        first_failure = Some((rank, describe(status)));
                        stop_at = Some(Instant::now() + grace);
                    }
                }
                Ok(None) => running += 1,
                Err(_) => running += 1,
            }
        }
        if running == 0 {
            break;
        }
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            stop(&mut children);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(store);
    match first_failure {
        None => Ok(()),
        Some((rank, how)) => Err(Error::Launch(format!(
            "rank {rank} of {nproc} failed first ({how}); the run was stopped"
        ))),
    }
}

/// Stops the children still running: SIGTERM, a few seconds to end, then SIGKILL.
fn stop(children: &mut [Option<std::process::Child>]) {
    for c in children.iter().flatten() {
        // The child has not been reaped yet, so its pid is not reused.
        if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for slot in children.iter_mut() {
        if let Some(c) = slot {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        *slot = None;
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended abnormally".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn launch_from_torchrun_variables() {
        assert_eq!(launch(&[]).unwrap(), None);
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (3, 8, 1));
        assert_eq!((l.master_addr.as_str(), l.master_port), ("node0", 29400));
        assert!(l.agent_store);
        let l = launch(&[("RANK", "0"), ("WORLD_SIZE", "1")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.local_rank, l.master_port, l.agent_store),
            (0, 29500, false)
        );
    }

    #[test]
    fn bad_launch_settings_are_one_line_errors() {
        for (vars, needle) in [
            (vec![("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE=0"),
            (vec![("RANK", "2"), ("WORLD_SIZE", "2")], "ranks are 0 to 1"),
            (vec![("RANK", "x"), ("WORLD_SIZE", "2")], "RANK=\"x\""),
            (vec![("WORLD_SIZE", "2")], "RANK is not set"),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")],
                "MASTER_PORT",
            ),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "0")],
                "MASTER_PORT",
            ),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", " ")],
                "MASTER_ADDR",
            ),
        ] {
            let e = launch(&vars).unwrap_err().to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
