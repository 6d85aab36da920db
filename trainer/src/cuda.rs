//! CUDA graphs for the training step, and libtorch's Kineto profiler.
//!
//! At ResNet-18-CIFAR sizes a training step is a few thousand small kernels, and enqueueing
//! them from the host (tch call, dispatcher, autograd) takes about as long as the GPU takes to
//! run them. A CUDA graph records the step once and replays it with one launch. tch 0.24 has
//! no binding for graphs, so `csrc/cuda_graph.cpp` (compiled by `build.rs` against the same
//! libtorch, when its CUDA headers are there) wraps `at::cuda::CUDAGraph` in a small C ABI.
//!
//! Protocol (as PyTorch's `torch.cuda.graph`): run the step a few times with the graph's side
//! stream current ([`CudaGraph::warm_up`]: executed, so that cuDNN, cuBLAS and the caching
//! allocator settle on that stream), capture it once ([`CudaGraph::capture`]: recorded, not
//! executed), then [`CudaGraph::replay`] it for every step. What changes between replays must
//! live in tensors whose addresses do not change (inputs copied into static buffers, the
//! learning rate in a device scalar); anything else (phase, shapes) needs a new capture.
//!
//! [`trace_begin`]/[`trace_end`] (`csrc/profiler.cpp`) record CPU ops and CUDA kernels, with
//! their device times, into a Chrome trace: `slb train --profile-steps N --trace FILE`.

#[cfg(slb_cuda_graph)]
use std::ffi::c_int;
use std::ffi::{c_char, c_void};

use tch::Tensor;

use crate::nn::net::Ctx;
use crate::nn::QuantMode;
#[cfg(slb_cuda_graph)]
use std::panic::{catch_unwind, AssertUnwindSafe};

#[cfg(slb_cuda_graph)]
extern "C" {
    fn slb_graph_new(device: c_int, err: *mut c_char, len: usize) -> *mut c_void;
    fn slb_graph_free(g: *mut c_void);
    fn slb_graph_enter(g: *mut c_void, capture: c_int, err: *mut c_char, len: usize) -> c_int;
    fn slb_graph_exit(g: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn slb_graph_replay(g: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn slb_trace_begin(err: *mut c_char, len: usize) -> c_int;
    fn slb_trace_end(path: *const c_char, err: *mut c_char, len: usize) -> c_int;
}

/// Starts libtorch's Kineto profiler (CPU ops and CUDA kernels) on this process.
pub fn trace_begin() -> Result<(), String> {
    #[cfg(slb_cuda_graph)]
    {
        // SAFETY: error buffer as in `call`.
        call(|e, n| unsafe { slb_trace_begin(e, n) == 0 })
    }
    #[cfg(not(slb_cuda_graph))]
    {
        Err("this slb was built without the libtorch profiler shim".into())
    }
}

/// Stops the profiler started by [`trace_begin`] and writes its Chrome trace to `path`.
pub fn trace_end(path: &std::path::Path) -> Result<(), String> {
    #[cfg(slb_cuda_graph)]
    {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
        // SAFETY: `c` is a NUL-terminated string alive for the call; error buffer as in `call`.
        call(|e, n| unsafe { slb_trace_end(c.as_ptr(), e, n) == 0 })
    }
    #[cfg(not(slb_cuda_graph))]
    {
        let _ = path;
        Err("this slb was built without the libtorch profiler shim".into())
    }
}

/// Whether this build has the CUDA graph shim (libtorch with CUDA headers at build time).
pub const AVAILABLE: bool = cfg!(slb_cuda_graph);

/// One captured CUDA graph (and its side stream).
#[derive(Debug)]
pub struct CudaGraph {
    #[cfg_attr(not(slb_cuda_graph), allow(dead_code))]
    ptr: *mut c_void,
    captured: bool,
}

/// Runs a shim call with an error buffer; `Err` holds the C++ exception's message.
#[cfg_attr(not(slb_cuda_graph), allow(dead_code))]
fn call(f: impl FnOnce(*mut c_char, usize) -> bool) -> Result<(), String> {
    let mut buf = vec![0u8; 1024];
    if f(buf.as_mut_ptr().cast(), buf.len()) {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Err(String::from_utf8_lossy(&buf[..end]).trim().to_string())
}

/// The message of a caught panic.
#[cfg(slb_cuda_graph)]
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

impl CudaGraph {
    /// A new, empty graph on CUDA device `device`; `Err` if this build has no CUDA graph
    /// support or libtorch refuses.
    pub fn new(device: i64) -> Result<CudaGraph, String> {
        #[cfg(slb_cuda_graph)]
        {
            let mut ptr = std::ptr::null_mut();
            call(|e, n| {
                // SAFETY: `e` points to `n` writable bytes; the shim writes at most `n`.
                ptr = unsafe { slb_graph_new(device as c_int, e, n) };
                !ptr.is_null()
            })?;
            Ok(CudaGraph {
                ptr,
                captured: false,
            })
        }
        #[cfg(not(slb_cuda_graph))]
        {
            let _ = device;
            Err(
                "this slb was built without CUDA graph support (no CUDA headers next to libtorch)"
                    .into(),
            )
        }
    }

    fn run<R>(&mut self, capture: bool, f: impl FnOnce() -> R) -> Result<R, String> {
        #[cfg(slb_cuda_graph)]
        {
            let g = self.ptr;
            // SAFETY: `g` is a live graph (freed only in Drop); error buffers as in `call`.
            call(|e, n| unsafe { slb_graph_enter(g, capture as c_int, e, n) == 0 })?;
            // tch panics on a libtorch error; the stream must be restored (and the capture
            // ended) either way.
            let out = catch_unwind(AssertUnwindSafe(f));
            // SAFETY: as above.
            let exit = call(|e, n| unsafe { slb_graph_exit(g, e, n) == 0 });
            let out = out.map_err(panic_message)?;
            exit?;
            if capture {
                self.captured = true;
            }
            Ok(out)
        }
        #[cfg(not(slb_cuda_graph))]
        {
            let _ = capture;
            drop(f);
            Err("no CUDA graph support".into())
        }
    }

    /// Runs `f` (executed) with the graph's side stream current, the device idle before and
    /// after.
    pub fn warm_up<R>(&mut self, f: impl FnOnce() -> R) -> Result<R, String> {
        self.run(false, f)
    }

    /// Records `f` into the graph (nothing executes). On `Err` the graph is unusable; the
    /// work `f` would have done has not happened.
    pub fn capture(&mut self, f: impl FnOnce()) -> Result<(), String> {
        self.run(true, f)
    }

    /// Whether [`CudaGraph::capture`] succeeded.
    pub fn captured(&self) -> bool {
        self.captured
    }

    /// Launches the recorded work on the current stream.
    pub fn replay(&self) -> Result<(), String> {
        if !self.captured {
            return Err("replay of a graph that was not captured".into());
        }
        #[cfg(slb_cuda_graph)]
        {
            let g = self.ptr;
            // SAFETY: `g` is live and captured.
            call(|e, n| unsafe { slb_graph_replay(g, e, n) == 0 })
        }
        #[cfg(not(slb_cuda_graph))]
        {
            Err("no CUDA graph support".into())
        }
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        #[cfg(slb_cuda_graph)]
        // SAFETY: `ptr` came from `slb_graph_new` and is freed once, here.
        unsafe {
            slb_graph_free(self.ptr)
        };
    }
}

/// Eager steps (on the graph's stream) before a capture.
const WARM_UP_STEPS: u32 = 2;

/// The training step as a CUDA graph, captured again whenever what is baked into it changes
/// (hard/soft weights, activation-node mode, input shape): two warm-up steps, one capture,
/// then replays, so a run captures about three times. Inputs go through static buffers; the
/// learning rate and the temperature live in device scalars ([`crate::train::Sgd::set_lr`],
/// [`crate::nn::Net::set_temperature`]), set before each step.
#[derive(Debug)]
pub struct StepGraph {
    device: i64,
    graph: Option<CudaGraph>,
    key: Option<(bool, QuantMode)>,
    warm: u32,
    inputs: Option<(Tensor, Tensor)>,
    off: bool,
}

impl StepGraph {
    /// Graphs for training on CUDA device `device`.
    pub fn new(device: i64) -> StepGraph {
        StepGraph {
            device,
            graph: None,
            key: None,
            warm: 0,
            inputs: None,
            off: false,
        }
    }

    /// Gives up on graphs for the rest of the run (one line on stderr); the step runs eagerly.
    fn disable(&mut self, why: &str) -> bool {
        eprintln!("CUDA graphs off ({why}); training continues without them");
        self.off = true;
        self.graph = None;
        false
    }

    /// Runs one training step `body` on the batch `(x, y)` through the graph: warm-up, capture
    /// or replay. `false` means the step did not run (graphs are off, or failed and are now
    /// off): the caller runs it eagerly.
    pub fn step(
        &mut self,
        ctx: &Ctx,
        x: &Tensor,
        y: &Tensor,
        body: impl FnOnce(&Tensor, &Tensor),
    ) -> bool {
        if self.off {
            return false;
        }
        // The temperature is not baked in: the network reads it from a device scalar.
        let key = (ctx.hard, ctx.q);
        if self.key != Some(key) {
            self.key = Some(key);
            self.graph = None;
            self.warm = 0;
        }
        // Copy the batch into the static inputs (new buffers, and a new graph, if the shape
        // changed; `copy_` handles any difference in strides).
        let same = |a: &Tensor, b: &Tensor| a.size() == b.size() && a.kind() == b.kind();
        match &mut self.inputs {
            Some((sx, sy)) if same(sx, x) && same(sy, y) => {
                sx.copy_(x);
                sy.copy_(y);
            }
            _ => {
                self.inputs = Some((x.copy(), y.copy()));
                self.graph = None;
                self.warm = 0;
            }
        }
        if self.graph.is_none() {
            match CudaGraph::new(self.device) {
                Ok(g) => self.graph = Some(g),
                Err(e) => return self.disable(&e),
            }
        }
        let (Some(g), Some((sx, sy))) = (self.graph.as_mut(), self.inputs.as_ref()) else {
            return false;
        };
        if self.warm < WARM_UP_STEPS {
            if let Err(e) = g.warm_up(|| body(sx, sy)) {
                return self.disable(&format!("warm-up: {e}"));
            }
            self.warm += 1;
            return true;
        }
        if !g.captured() {
            if let Err(e) = g.capture(|| body(sx, sy)) {
                return self.disable(&format!("capture: {e}"));
            }
        }
        match g.replay() {
            Ok(()) => true,
            Err(e) => self.disable(&format!("replay: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_graph_without_the_device_hands_the_step_back() {
        // CUDA device 99 exists nowhere (and no CUDA at all on CI): no graph can be made.
        let mut g = StepGraph::new(99);
        let ctx = Ctx {
            train: true,
            t: 1.0,
            hard: false,
            q: QuantMode {
                observe: true,
                quantize: true,
                ema: false,
                fused: false,
            },
            amp: false,
        };
        let x = Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
        let y = Tensor::zeros([2], (tch::Kind::Int64, tch::Device::Cpu));
        let mut ran = false;
        assert!(!g.step(&ctx, &x, &y, |_, _| ran = true));
        assert!(!ran, "the step must not run inside a failed graph");
        // Off for good: the next step is handed back at once.
        assert!(!g.step(&ctx, &x, &y, |_, _| ran = true));
        assert!(!ran);
    }

    #[test]
    fn cpu_machine_reports_instead_of_crashing() {
        // No GPU here (or not CUDA device 99): creating or using a graph is an error, never a
        // crash; a graph that was never captured cannot be replayed.
        match CudaGraph::new(99) {
            Ok(mut g) => {
                assert!(g.replay().is_err());
                assert!(g.warm_up(|| 1).is_err() || tch::Cuda::device_count() > 99);
            }
            Err(e) => assert!(!e.is_empty()),
        }
    }
}
