//! The ranks of a data-parallel run kept in agreement: every rank starts from rank 0's state,
//! and the buffers (BatchNorm statistics, activation ranges) are made to agree after the
//! training steps.

use tch::{nn, Device, Kind, Tensor};

use super::optimizer::Sgd;
use crate::dist::Dist;
use crate::error::{Error, Result};

/// Makes every rank start from rank 0's state: the step count is checked (a rank that resumed
/// from another checkpoint than rank 0's is an error), then the parameters, the momentum and
/// every buffer (BatchNorm statistics, activation ranges) are broadcast from rank 0.
pub(super) fn sync_start(
    d: &Dist,
    vs: &nn::VarStore,
    opt: &Sgd,
    step: i64,
    dev: Device,
) -> Result<()> {
    let s = Tensor::from_slice(&[step as f64]).to_device(dev);
    d.broadcast(&s, 0)?;
    let root = s.double_value(&[0]) as i64;
    if root != step {
        return Err(Error::Dist {
            rank: d.rank,
            msg: format!(
                "rank 0 starts at step {root} but this rank at step {step}: every rank must \
                 see the same --out folder (and checkpoint) when resuming"
            ),
        });
    }
    opt.broadcast(d, 0)?;
    for t in buffers(vs) {
        d.broadcast(&t, 0)?;
    }
    Ok(())
}

/// Makes the buffers of the ranks agree after their training steps: floating-point ones
/// (BatchNorm running statistics, activation ranges) become the ranks' mean, the others rank
/// 0's. One collective per dtype over the buffers packed into one flat tensor, instead of one
/// per buffer (a ResNet-18 has about 60).
pub fn sync_buffers(d: &Dist, vs: &nn::VarStore) -> Result<()> {
    let mut groups: Vec<(Kind, Vec<Tensor>)> = Vec::new();
    for t in buffers(vs) {
        match groups.iter_mut().find(|(k, _)| *k == t.kind()) {
            Some((_, g)) => g.push(t),
            None => groups.push((t.kind(), vec![t])),
        }
    }
    for (_, group) in groups {
        let parts: Vec<Tensor> = group.iter().map(|t| t.reshape([-1])).collect();
        let mut flat = Tensor::cat(&parts, 0);
        if flat.is_floating_point() {
            d.all_reduce_mean(&mut flat)?;
        } else {
            d.broadcast(&flat, 0)?;
        }
        unpack(&flat, &group);
    }
    Ok(())
}

/// Copies the consecutive parts of `flat` back into `parts` (in place, no gradient).
fn unpack(flat: &Tensor, parts: &[Tensor]) {
    let mut at = 0;
    tch::no_grad(|| {
        for p in parts {
            let n = p.numel() as i64;
            let mut p = p.shallow_clone();
            p.copy_(&flat.narrow(0, at, n).view_as(&p));
            at += n;
        }
    });
}

/// The variables of `vs` that are not trained (buffers), by name.
fn buffers(vs: &nn::VarStore) -> Vec<Tensor> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().map(|(_, t)| t).collect()
}
