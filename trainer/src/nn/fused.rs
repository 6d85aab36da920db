//! Fused CUDA kernels for the 8-bit activation node (issue 13).
//!
//! On the GPU the min/max node is memory-bound: libtorch runs ReLU, the fake quantization with
//! its gradient mask, and in the backward pass the mask multiply and ReLU's gradient, each a
//! pass over the activation. The fused node does ReLU + fake quantization in one pass (reading
//! `x`, writing `y`) and both gradients in one (reading `dy` and `x`, writing `dx`), with the
//! same results bit for bit: `csrc/fused_quant.h` holds the element math, `csrc/fused.cpp`
//! compiles it with NVRTC at run time for the device, launches it on libtorch's current stream
//! (so a captured CUDA graph records it) and wraps it in a libtorch autograd function.
//!
//! Everything works without the kernels: on the CPU, in a build without the CUDA shims, or on a
//! GPU where NVRTC or the module load fails, [`ActQuant::forward`](super::ActQuant::forward)
//! uses the libtorch ops. The trainer probes the kernels once per run ([`probe`]) and, when
//! they fail on a CUDA device, says so in one line on stderr and uses the libtorch ops.
//!
//! The element math is also compiled for the host ([`host_forward`], [`host_backward`]): the
//! twin that the CPU tests compare with libtorch's ops, bit for bit, on f32 and bf16.

use tch::{Device, Kind, Tensor};

#[cfg(slb_fused)]
use std::ffi::{c_char, c_int, c_void};

#[cfg(slb_fused)]
extern "C" {
    fn slb_fused_compile(major: c_int, minor: c_int, err: *mut c_char, len: usize) -> c_int;
    fn slb_fused_ready(device: c_int, err: *mut c_char, len: usize) -> c_int;
    fn slb_fused_fake_quant(
        x: *mut c_void,
        scale: *mut c_void,
        zp: *mut c_void,
        qmax: c_int,
        relu: c_int,
        err: *mut c_char,
        len: usize,
    ) -> *mut c_void;
    fn slb_fused_host_forward(
        x: *const c_void,
        y: *mut c_void,
        keep: *mut u8,
        n: usize,
        scale: f32,
        zp: c_int,
        qmax: c_int,
        relu: c_int,
        bf16: c_int,
    );
    fn slb_fused_host_backward(
        dy: *const c_void,
        x: *const c_void,
        dx: *mut c_void,
        n: usize,
        scale: f32,
        zp: c_int,
        qmax: c_int,
        relu: c_int,
        bf16: c_int,
    );
}

/// Runs `f` with an error buffer; `Err` holds its message when `f` returns false.
#[cfg(slb_fused)]
fn call(f: impl FnOnce(*mut c_char, usize) -> bool) -> Result<(), String> {
    let mut buf = [0u8; 512];
    if f(buf.as_mut_ptr().cast(), buf.len()) {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Err(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Whether this build has the fused kernels' shim (libtorch with CUDA, NVRTC and the CUDA
/// headers at build time).
pub const BUILT: bool = cfg!(slb_fused);

/// Compiles the kernels with NVRTC for `sm_<major><minor>` and discards the result. Needs no
/// GPU: the CPU tests use it to check that the kernels' source compiles.
pub fn compile_only(major: u32, minor: u32) -> Result<(), String> {
    #[cfg(slb_fused)]
    {
        let (ma, mi) = (major as c_int, minor as c_int);
        // SAFETY: the error buffer outlives the call; the function only writes into it.
        call(|e, n| unsafe { slb_fused_compile(ma, mi, e, n) == 0 })
    }
    #[cfg(not(slb_fused))]
    {
        let _ = (major, minor);
        Err(not_built())
    }
}

#[cfg(not(slb_fused))]
fn not_built() -> String {
    "this slb was built without the fused kernels (no CUDA libtorch, NVRTC or CUDA headers)".into()
}

/// Whether the fused kernels run on `device`: compiles and loads them (once per architecture)
/// for a CUDA device; `Err` says why not (a CPU device, a build without them, NVRTC or the
/// load failing).
pub fn probe(device: Device) -> Result<(), String> {
    let Device::Cuda(index) = device else {
        return Err(format!("{device:?} is not a CUDA device"));
    };
    #[cfg(slb_fused)]
    {
        let i = index as c_int;
        // SAFETY: as in `compile_only`; the shim catches every C++ exception.
        call(|e, n| unsafe { slb_fused_ready(i, e, n) == 0 })
    }
    #[cfg(not(slb_fused))]
    {
        let _ = index;
        Err(not_built())
    }
}

/// The fused node: `fake_quant(relu(x))` (ReLU when `relu`) with the per-tensor `scale` (f32,
/// one element) and zero point `zp` (i32, one element), codes `0..=qmax`, and its
/// straight-through gradient. `None` when the kernels do not take this input (not CUDA, not
/// f32/bf16, not dense, or not [`probe`]d successfully): the caller uses the libtorch ops.
pub fn fake_quant(
    x: &Tensor,
    scale: &Tensor,
    zp: &Tensor,
    qmax: i64,
    relu: bool,
) -> Option<Tensor> {
    if !x.device().is_cuda() || !matches!(x.kind(), Kind::Float | Kind::BFloat16) {
        return None;
    }
    #[cfg(slb_fused)]
    {
        let mut out = std::ptr::null_mut();
        let (q, r) = (qmax as c_int, c_int::from(relu));
        let ok = call(|e, n| {
            // SAFETY: the three pointers are live `torch::Tensor*` owned by the caller's
            // tensors for the duration of the call; the shim copies what it keeps (tensors are
            // reference counted) and returns a new heap tensor or null.
            out = unsafe {
                slb_fused_fake_quant(
                    x.as_ptr().cast::<c_void>().cast_mut(),
                    scale.as_ptr().cast::<c_void>().cast_mut(),
                    zp.as_ptr().cast::<c_void>().cast_mut(),
                    q,
                    r,
                    e,
                    n,
                )
            };
            !out.is_null()
        });
        // SAFETY: a non-null result is a fresh `torch::Tensor*` from `new`, which tch's Tensor
        // takes ownership of (and deletes on drop).
        ok.ok().map(|()| unsafe { Tensor::from_ptr(out.cast()) })
    }
    #[cfg(not(slb_fused))]
    {
        let _ = (scale, zp, qmax, relu);
        None
    }
}

/// Host twin of the forward kernel on `x` (f32 or bf16, CPU, contiguous): the fake-quantized
/// values (same dtype) and the gradient mask (1 where the gradient passes).
pub fn host_forward(
    x: &Tensor,
    scale: f32,
    zp: i32,
    qmax: i64,
    relu: bool,
) -> Result<(Tensor, Vec<u8>), String> {
    #[cfg(slb_fused)]
    {
        let (x, bf16) = host_input(x)?;
        let y = x.empty_like();
        let n = x.numel();
        let mut keep = vec![0u8; n];
        // SAFETY: `x` and `y` are contiguous CPU tensors of `n` elements of the dtype `bf16`
        // says; `keep` holds `n` bytes.
        unsafe {
            slb_fused_host_forward(
                x.data_ptr(),
                y.data_ptr(),
                keep.as_mut_ptr(),
                n,
                scale,
                zp,
                qmax as c_int,
                c_int::from(relu),
                c_int::from(bf16),
            )
        };
        Ok((y, keep))
    }
    #[cfg(not(slb_fused))]
    {
        let _ = (x, scale, zp, qmax, relu);
        Err(not_built())
    }
}

/// Host twin of the backward kernel: the gradient of `x` for the output gradient `dy` (same
/// dtype and shape as `x`).
pub fn host_backward(
    dy: &Tensor,
    x: &Tensor,
    scale: f32,
    zp: i32,
    qmax: i64,
    relu: bool,
) -> Result<Tensor, String> {
    #[cfg(slb_fused)]
    {
        let (x, bf16) = host_input(x)?;
        let (dy, dy_bf16) = host_input(dy)?;
        if dy_bf16 != bf16 || dy.size() != x.size() {
            return Err("dy and x differ in dtype or shape".into());
        }
        let dx = x.empty_like();
        // SAFETY: as in `host_forward`, for three tensors of `x.numel()` elements.
        unsafe {
            slb_fused_host_backward(
                dy.data_ptr(),
                x.data_ptr(),
                dx.data_ptr(),
                x.numel(),
                scale,
                zp,
                qmax as c_int,
                c_int::from(relu),
                c_int::from(bf16),
            )
        };
        Ok(dx)
    }
    #[cfg(not(slb_fused))]
    {
        let _ = (dy, x, scale, zp, qmax, relu);
        Err(not_built())
    }
}

/// `x` contiguous on the CPU, and whether it is bf16 (else f32).
#[cfg(slb_fused)]
fn host_input(x: &Tensor) -> Result<(Tensor, bool), String> {
    let bf16 = match x.kind() {
        Kind::Float => false,
        Kind::BFloat16 => true,
        k => return Err(format!("host twin: {k:?} is neither f32 nor bf16")),
    };
    Ok((x.to_device(Device::Cpu).contiguous(), bf16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::quant::{ActQuant, QuantMode};
    use tch::nn;

    /// Activations that meet every branch: both signs, zeros of both signs, values on the
    /// rounding ties of the grid, inside and far outside the range, and random ones.
    fn inputs(scale: f32, kind: Kind) -> Tensor {
        let mut v: Vec<f32> = vec![0.0, -0.0, 1e-30, -1e-30, 1e9, -1e9, f32::MAX, f32::MIN];
        for k in -300..300 {
            v.push((k as f32 + 0.5) * scale);
            v.push(k as f32 * scale);
            v.push((k as f32 + 0.499) * scale);
        }
        tch::manual_seed(7);
        let r = Tensor::randn([4000], (Kind::Float, Device::Cpu)) * (100.0 * scale as f64);
        Tensor::cat(&[Tensor::from_slice(&v), r], 0).to_kind(kind)
    }

    /// libtorch's ops, as the unfused node runs them: values, mask and the gradient of `x`
    /// for the output gradient `dy`.
    fn libtorch(x: &Tensor, dy: &Tensor, s: f32, zp: i32, relu: bool) -> (Tensor, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let scale = Tensor::from_slice(&[s]);
        let zpt = Tensor::from_slice(&[zp]);
        let on = Tensor::ones([1], (Kind::Int64, Device::Cpu));
        let r = if relu { x.relu() } else { x.shallow_clone() };
        let (y, _mask) = r.internal_fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
            &scale, &zpt, &on, 0, 255,
        );
        (&y * dy.detach()).sum(Kind::Float).backward();
        (y.detach(), x.grad())
    }

    /// Panics naming the first element where `got` and `want` differ in their bits.
    fn same_bits(got: &Tensor, want: &Tensor, x: &Tensor, what: &str) {
        let (g, w) = (bits(got), bits(want));
        assert_eq!(g.len(), w.len(), "{what}: lengths");
        let xs = Vec::<f32>::try_from(x.to_kind(Kind::Float).flatten(0, -1)).unwrap();
        if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
            panic!(
                "{what}: element {i} (x = {:e}): {:e} instead of {:e}",
                xs[i],
                f32::from_bits(g[i] as u32),
                f32::from_bits(w[i] as u32)
            );
        }
    }

    fn bits(t: &Tensor) -> Vec<i32> {
        let t = t.to_kind(Kind::Float);
        Vec::<f32>::try_from(t.flatten(0, -1))
            .unwrap()
            .iter()
            .map(|f| f.to_bits() as i32)
            .collect()
    }

    #[test]
    fn host_twin_equals_libtorch_bit_for_bit() {
        for kind in [Kind::Float, Kind::BFloat16] {
            for (s, zp) in [(0.0123f32, 0), (0.05, 128), (1.0 / 255.0, 255), (3.7, 17)] {
                for relu in [false, true] {
                    let x = inputs(s, kind);
                    let dy =
                        (Tensor::randn(x.size(), (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
                    let (want_y, want_dx) = libtorch(&x, &dy, s, zp, relu);
                    let (y, keep) = host_forward(&x, s, zp, 255, relu).unwrap();
                    let at = format!("{kind:?} scale {s} zp {zp} relu {relu}");
                    same_bits(&y, &want_y, &x, &format!("forward, {at}"));
                    let dx = host_backward(&dy, &x, s, zp, 255, relu).unwrap();
                    same_bits(&dx, &want_dx, &x, &format!("backward, {at}"));
                    // The mask the kernels keep is where libtorch's gradient is dy itself.
                    let passed: Vec<u8> = Vec::<f32>::try_from(
                        want_dx
                            .to_kind(Kind::Float)
                            .eq_tensor(&dy.to_kind(Kind::Float)),
                    )
                    .unwrap()
                    .iter()
                    .map(|&b| b as u8)
                    .collect();
                    let dyf = Vec::<f32>::try_from(dy.to_kind(Kind::Float)).unwrap();
                    for (i, (&k, &p)) in keep.iter().zip(&passed).enumerate() {
                        if dyf[i] != 0.0 {
                            assert_eq!(k, p, "mask at {i}, {at}");
                        }
                    }
                    assert!(keep.contains(&0) && keep.contains(&1), "{at}");
                }
            }
        }
    }

    #[test]
    fn bf16_rounding_is_nearest_even_as_libtorch() {
        // Every float whose upper half is a tie, and its neighbours, through the host twin's
        // pass-through (scale 1, the codes wide): compared with libtorch's f32 -> bf16 cast.
        let v: Vec<f32> = (0u32..4096)
            .flat_map(|i| {
                let u = 0x3f80_0000 + (i << 12);
                [
                    f32::from_bits(u | 0x8000),
                    f32::from_bits(u | 0x7fff),
                    f32::from_bits(u | 0x8001),
                ]
            })
            .collect();
        let x = Tensor::from_slice(&v);
        let want = x.to_kind(Kind::BFloat16);
        // Codes 0..=2^30 at scale 2^-20 keep these values in range; a bf16 input is rounded
        // once by libtorch's cast, once by the twin's store: compare the rounded store alone.
        let (y, _) = host_forward(&want, 1.0 / 1048576.0, 0, 1 << 30, false).unwrap();
        assert_eq!(bits(&y), bits(&want));
        assert!(host_forward(&x.to_kind(Kind::Double), 1.0, 0, 255, false).is_err());
    }

    #[test]
    fn kernels_compile_with_nvrtc_for_hopper_and_ampere() {
        // NVRTC needs no GPU: the source the GPU machine compiles at run time compiles here.
        compile_only(9, 0).expect("sm_90 (H100, H200)");
        compile_only(8, 0).expect("sm_80 (A100)");
        // An architecture NVRTC does not know is a message, not a crash.
        let e = compile_only(1, 0).unwrap_err();
        assert!(e.contains("NVRTC") && e.contains("sm_10"), "{e}");
    }

    #[test]
    fn without_a_gpu_the_node_falls_back_to_libtorch() {
        if tch::Cuda::is_available() {
            probe(Device::Cuda(0)).expect("the fused kernels on this GPU");
            return;
        }
        // The probe names the cause; the node with `fused` on gives libtorch's results.
        let e = probe(Device::Cuda(0)).unwrap_err();
        assert!(!e.is_empty());
        assert!(probe(Device::Cpu)
            .unwrap_err()
            .contains("not a CUDA device"));
        let x = inputs(0.02, Kind::Float)
            .narrow(0, 0, 4800)
            .reshape([2, 5, 48, 10]);
        let mut outs = Vec::new();
        for fused in [false, true] {
            let vs = nn::VarStore::new(Device::Cpu);
            let q = ActQuant::minmax(&vs.root());
            let mode = QuantMode {
                observe: true,
                quantize: true,
                ema: false,
                fused,
            };
            let xg = x.detach().set_requires_grad(true);
            let y = q.forward(&xg, true, mode);
            y.sum(Kind::Float).backward();
            outs.push((bits(&y), bits(&xg.grad())));
        }
        assert_eq!(outs[0], outs[1]);
    }

    #[test]
    fn fused_node_equals_libtorch_ops_on_the_gpu() {
        // The reference twin on the device: runs where a GPU is (scripts/gpu-results.sh runs
        // this test there); elsewhere it checks that the kernels say they cannot run.
        if !tch::Cuda::is_available() {
            assert!(fake_quant(
                &Tensor::ones([4], (Kind::Float, Device::Cpu)),
                &Tensor::ones([1], (Kind::Float, Device::Cpu)),
                &Tensor::zeros([1], (Kind::Int, Device::Cpu)),
                255,
                true
            )
            .is_none());
            return;
        }
        let dev = Device::Cuda(0);
        probe(dev).expect("fused kernels");
        for kind in [Kind::Float, Kind::BFloat16] {
            for relu in [false, true] {
                for (s, zp) in [(0.0123f32, 0), (0.05, 128), (3.7, 17)] {
                    // Channels-last [n, c, h, w], as the trainer's activations.
                    let x = inputs(s, kind).narrow(0, 0, 4800).reshape([2, 8, 20, 15]);
                    let x = x
                        .permute([0, 2, 3, 1])
                        .contiguous()
                        .permute([0, 3, 1, 2])
                        .to_device(dev);
                    let dy = (Tensor::randn(x.size(), (Kind::Float, dev)) * 3.0).to_kind(kind);
                    let (want_y, want_dx) = libtorch(
                        &x.to_device(Device::Cpu),
                        &dy.to_device(Device::Cpu),
                        s,
                        zp,
                        relu,
                    );
                    let scale = Tensor::from_slice(&[s]).to_device(dev);
                    let zpt = Tensor::from_slice(&[zp]).to_device(dev);
                    let xg = x.detach().set_requires_grad(true);
                    let y = fake_quant(&xg, &scale, &zpt, 255, relu).expect("fused node");
                    assert_eq!(y.stride(), x.stride(), "layout kept");
                    (&y * dy.detach()).sum(Kind::Float).backward();
                    let at = format!("{kind:?} scale {s} zp {zp} relu {relu}");
                    assert_eq!(
                        bits(&y.to_device(Device::Cpu)),
                        bits(&want_y),
                        "forward, {at}"
                    );
                    assert_eq!(
                        bits(&xg.grad().to_device(Device::Cpu)),
                        bits(&want_dx),
                        "backward, {at}"
                    );
                }
            }
        }
    }
}
