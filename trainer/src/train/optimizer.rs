//! The optimizer: SGD with momentum (optionally Nesterov) and weight decay over one flat buffer
//! ([`Sgd`]), and which variables it decays ([`decays`], [`is_logit`]).

use std::path::Path;

use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};

/// SGD with momentum (optionally Nesterov) and weight decay on some variables, over one flat
/// buffer: every trainable variable of the store becomes a view into `flat` (decayed
/// variables first), so that a step is a handful of kernels over the whole network instead of
/// six per variable. tch 0.24 exposes no `_foreach_*`/`_fused_sgd_` op; this is the same
/// idea with plain tensor ops. The per-variable reference it must equal bit for bit is
/// `tests::RefSgd`.
#[derive(Debug)]
pub struct Sgd {
    /// `(name, variable, offset, numel)`, decayed variables first.
    vars: Vec<(String, Tensor, i64, i64)>,
    /// All trainable values (the variables are views into it).
    flat: Tensor,
    /// The momentum buffer, laid out as `flat`.
    buf: Tensor,
    /// The gradient of the last [`Sgd::backward`], laid out as `flat`.
    grad: Option<Tensor>,
    /// Zeros standing in for a variable that got no gradient (as long as the largest one).
    zeros: Tensor,
    /// The learning rate, a device scalar so that a captured step reads the current one.
    lr: Tensor,
    /// Elements of the decayed variables (the head of `flat`).
    n_decay: i64,
    /// Elements of the SLB logits (the head of the decayed part).
    n_logits: i64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    /// The logits' weight decay ([`Sgd::with_logit_decay`]; default `weight_decay`).
    logit_decay: f64,
}

/// Whether a variable is an SLB conv's logits (decayed at `logit_weight_decay`).
pub fn is_logit(name: &str) -> bool {
    name.ends_with(".logits")
}

/// Whether a variable gets weight decay: conv logits and dense weights do, BatchNorm, biases
/// and quantizer parameters do not (as Golden Stick).
pub fn decays(name: &str) -> bool {
    name.ends_with(".logits") || name.ends_with("conv.weight") || name.ends_with("dense.weight")
}

impl Sgd {
    /// An optimizer over the trainable (f32) variables of `vs`. It moves their storage into one
    /// flat buffer (values kept): the store, and every module holding a variable, sees the
    /// same tensors as before.
    pub fn new(vs: &nn::VarStore, momentum: f64, nesterov: bool, weight_decay: f64) -> Sgd {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        // Logits first, then the other decayed variables, then by name: the decay is one op
        // over the head of the buffer (two when the logits' rate differs).
        let group = |n: &str| (!is_logit(n), !decays(n));
        named.sort_by(|a, b| (group(&a.0), &a.0).cmp(&(group(&b.0), &b.0)));
        let total: i64 = named.iter().map(|(_, t)| t.numel() as i64).sum();
        let largest = named
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .max()
            .unwrap_or(0);
        let n_decay = named
            .iter()
            .filter(|(n, _)| decays(n))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        let n_logits = named
            .iter()
            .filter(|(n, _)| is_logit(n))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        let opts = (Kind::Float, vs.device());
        let flat = Tensor::zeros([total], opts);
        let mut vars = Vec::with_capacity(named.len());
        let mut off = 0;
        tch::no_grad(|| {
            for (name, mut var) in named {
                let n = var.numel() as i64;
                let mut view = flat.narrow(0, off, n).view(var.size().as_slice());
                view.copy_(&var);
                var.set_data(&view);
                vars.push((name, var, off, n));
                off += n;
            }
        });
        Sgd {
            vars,
            buf: flat.zeros_like(),
            flat,
            grad: None,
            zeros: Tensor::zeros([largest], opts),
            lr: Tensor::zeros([], opts),
            n_decay,
            n_logits,
            momentum,
            nesterov,
            weight_decay,
            logit_decay: weight_decay,
        }
    }

    /// The same optimizer with weight decay `wd` on the SLB logits (the config's
    /// `logit_weight_decay`).
    pub fn with_logit_decay(mut self, wd: f64) -> Sgd {
        self.logit_decay = wd;
        self
    }

    /// Back-propagates `loss` into the optimizer's flat gradient (nothing accumulates in the
    /// variables' `.grad`, so there is nothing to zero). A variable without a gradient this
    /// step (the logits in the hard phase) gets zeros: it still sees momentum and weight
    /// decay, exactly as a zeroed gradient would, so a resumed run matches an uninterrupted one.
    pub fn backward(&mut self, loss: &Tensor) {
        let inputs: Vec<&Tensor> = self.vars.iter().map(|(_, v, _, _)| v).collect();
        let grads = Tensor::run_backward(&[loss], &inputs, false, false);
        let parts: Vec<Tensor> = grads
            .iter()
            .zip(&self.vars)
            .map(|(g, (_, _, _, n))| {
                if g.defined() {
                    g.reshape([-1])
                } else {
                    self.zeros.narrow(0, 0, *n)
                }
            })
            .collect();
        self.grad = Some(Tensor::cat(&parts, 0));
    }

    /// One step at learning rate `lr` with the gradient of the last [`Sgd::backward`] (none
    /// yet: a zero gradient): [`Sgd::set_lr`] then [`Sgd::apply`].
    pub fn step(&mut self, lr: f64) {
        self.set_lr(lr);
        self.apply();
    }

    /// Sets the learning rate the next [`Sgd::apply`] uses (in place, on the device).
    pub fn set_lr(&mut self, lr: f64) {
        // Rounded to f32 here (as the update would round a scalar): an out-of-range rate
        // becomes infinite, and the loss check then stops the run, instead of libtorch
        // refusing the fill.
        let _ = self.lr.fill_(lr as f32 as f64);
    }

    /// The update itself, reading the learning rate from the device: nothing in it comes from
    /// the host, so a CUDA graph can record it once.
    pub fn apply(&mut self) {
        tch::no_grad(|| {
            let g = match self.grad.take() {
                Some(g) => g,
                None => self.flat.zeros_like(),
            };
            // (offset, length, rate) of the decayed parts of the buffer's head.
            let parts = if self.logit_decay == self.weight_decay {
                [(0, self.n_decay, self.weight_decay), (0, 0, 0.0)]
            } else {
                [
                    (0, self.n_logits, self.logit_decay),
                    (
                        self.n_logits,
                        self.n_decay - self.n_logits,
                        self.weight_decay,
                    ),
                ]
            };
            for (off, len, wd) in parts {
                if wd > 0.0 && len > 0 {
                    let p = self.flat.narrow(0, off, len);
                    let _ = g.narrow(0, off, len).g_add_(&(p * wd));
                }
            }
            let _ = self.buf.g_mul_scalar_(self.momentum).g_add_(&g);
            let d = if self.nesterov {
                g + &self.buf * self.momentum
            } else {
                self.buf.shallow_clone()
            };
            let _ = self.flat.g_sub_(&(d * &self.lr));
        });
    }

    /// Sums the gradient of the last [`Sgd::backward`] over the ranks of `dist`, in place: one
    /// all-reduce of the flat buffer. Each rank's loss must have been weighted by its share of
    /// the global batch, so that the sum is the global batch's mean gradient.
    pub fn all_reduce_grad(&mut self, dist: &crate::dist::Dist) -> Result<()> {
        let g = self.grad.get_or_insert_with(|| self.flat.zeros_like());
        dist.all_reduce_sum(g)
    }

    /// Copies rank `root`'s parameters and momentum into every rank's.
    pub fn broadcast(&self, dist: &crate::dist::Dist, root: usize) -> Result<()> {
        dist.broadcast(&self.flat, root)?;
        dist.broadcast(&self.buf, root)
    }

    /// The momentum buffers, named `opt.<variable>` (views into the flat buffer).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, v, off, len)| {
                let b = self.buf.narrow(0, *off, *len).view(v.size().as_slice());
                (format!("opt.{n}"), b)
            })
            .collect()
    }

    /// Restores the momentum buffers from named tensors.
    pub fn load_state(&mut self, named: &[(String, Tensor)], path: &Path) -> Result<()> {
        for (n, mut b) in self.state() {
            let t = named
                .iter()
                .find(|(k, _)| *k == n)
                .ok_or_else(|| Error::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!("missing optimizer state {n}"),
                })?;
            if t.1.size() != b.size() {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!("{n}: shape {:?}, expected {:?}", t.1.size(), b.size()),
                });
            }
            tch::no_grad(|| b.copy_(&t.1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn weight_decay_groups() {
        assert!(decays("block1.c1.conv.logits"));
        assert!(decays("dense.weight"));
        assert!(!decays("dense.bias"));
        assert!(!decays("block1.c1.bn.weight"));
        assert!(!decays("block1.c1.bn.bias"));
        assert!(!decays("block1.act.alpha"));
    }

    #[test]
    fn sgd_momentum_and_decay_by_hand() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = (vs.root() / "x").var("logits", &[1], nn::Init::Const(1.0));
        let b = (vs.root() / "x").var("bias", &[1], nn::Init::Const(1.0));
        let mut opt = Sgd::new(&vs, 0.9, false, 0.1);
        for _ in 0..2 {
            opt.backward(&(&p * 2.0 + &b * 3.0).sum(Kind::Float));
            opt.step(0.5);
        }
        // logits: g1 = 2 + 0.1*1 = 2.1, p = 1 - 1.05 = -0.05;
        // g2 = 2 - 0.005 = 1.995, buf = 0.9*2.1 + 1.995 = 3.885, p = -0.05 - 1.9425 = -1.9925.
        assert!((p.double_value(&[0]) + 1.9925).abs() < 1e-6);
        // bias (no decay): buf 3 then 5.7; b = 1 - 1.5 - 2.85 = -3.35.
        assert!((b.double_value(&[0]) + 3.35).abs() < 1e-6);
    }

    /// The per-variable SGD that [`Sgd`] replaces: its reference twin (each variable with
    /// its own decay rate).
    struct RefSgd {
        params: Vec<(Tensor, f64)>,
        bufs: Vec<Tensor>,
        momentum: f64,
        nesterov: bool,
    }

    impl RefSgd {
        fn step(&mut self, lr: f64) {
            tch::no_grad(|| {
                for ((p, decay), buf) in self.params.iter_mut().zip(self.bufs.iter_mut()) {
                    let g = p.grad();
                    let g = if g.defined() { g } else { p.zeros_like() };
                    let g = if *decay > 0.0 { g + &*p * *decay } else { g };
                    let _ = buf.g_mul_scalar_(self.momentum).g_add_(&g);
                    let d = if self.nesterov {
                        g + &*buf * self.momentum
                    } else {
                        buf.shallow_clone()
                    };
                    let _ = p.g_sub_(&(d * lr));
                }
            });
        }
    }

    /// A small network (conv logits with decay, a BN-like scale without, a variable that gets
    /// no gradient on odd steps), for both optimizers.
    fn tiny(seed: i64) -> (nn::VarStore, Vec<Tensor>) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let r = vs.root();
        let w = (&r / "c").var(
            "logits",
            &[4, 3, 3, 3, 2],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.3,
            },
        );
        let s = (&r / "bn").var("weight", &[4], nn::Init::Const(1.0));
        let d = (&r / "dense").var(
            "weight",
            &[5, 4],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.3,
            },
        );
        let b = (&r / "dense").var("bias", &[5], nn::Init::Const(0.1));
        (vs, vec![w, s, d, b])
    }

    fn tiny_loss(v: &[Tensor], step: i64) -> Tensor {
        tch::manual_seed(100 + step);
        let x = Tensor::randn([2, 3, 6, 6], (Kind::Float, Device::Cpu));
        let w = if step % 2 == 0 {
            crate::nn::quant::relaxed_weight(&v[0], 1.5, 1)
        } else {
            // Hard weights: no gradient reaches the logits this step.
            crate::nn::quant::hard_weight(&v[0], 1)
        };
        let h = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let h =
            (h * v[1].view([1, 4, 1, 1]))
                .relu()
                .mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        h.linear(&v[2], Some(&v[3])).square().mean(Kind::Float)
    }

    #[test]
    fn flat_sgd_equals_the_per_variable_reference_bit_for_bit() {
        // The logits' own decay rate: the same as the weights' (one op) or not (two).
        for (nesterov, logit_decay) in [(false, 5e-4), (true, 5e-4), (true, 1e-4), (false, 0.0)] {
            let (vs_a, va) = tiny(7);
            let (_vs_b, vb) = tiny(7);
            let mut fast = Sgd::new(&vs_a, 0.9, nesterov, 5e-4).with_logit_decay(logit_decay);
            let mut reference = RefSgd {
                params: vb
                    .iter()
                    .zip([logit_decay, 0.0, 5e-4, 0.0])
                    .map(|(t, d)| (t.shallow_clone(), d))
                    .collect(),
                bufs: vb.iter().map(|t| t.zeros_like()).collect(),
                momentum: 0.9,
                nesterov,
            };
            for step in 0..6 {
                fast.backward(&tiny_loss(&va, step));
                fast.step(0.05);
                for (p, _) in &reference.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.detach_();
                        let _ = g.zero_();
                    }
                }
                tiny_loss(&vb, step).backward();
                reference.step(0.05);
            }
            for (a, b) in va.iter().zip(&vb) {
                assert!(
                    a.equal(b),
                    "nesterov {nesterov}, logit decay {logit_decay}: {a:?} vs {b:?}"
                );
            }
            // The state round-trips through named tensors.
            let state = fast.state();
            assert_eq!(state.len(), 4);
            for (name, t) in &state {
                let (i, _) = reference
                    .params
                    .iter()
                    .enumerate()
                    .find(|(_, (p, _))| p.size() == t.size())
                    .unwrap();
                assert!(t.equal(&reference.bufs[i]), "{name}");
            }
        }
    }
}
