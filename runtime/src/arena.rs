//! The arena's layout: where each tensor lives (`TensorSlot`, placed by lifetime with `place`),
//! the alignment every region keeps, and the borrow of one layer's input and output bytes at
//! once (`layer_io`), which both engines use.

use core::ops::Range;

use heapless::Vec;
use slb_format::{Layer, Shape, Site};

use crate::quant::QParams;
use crate::{Error, Result};

/// Most tensors a [`crate::Plan`] holds (the size of its slot table).
pub const MAX_TENSORS: usize = 256;
/// Alignment of every region and tensor in the arena.
pub(crate) const ALIGN: usize = 64;
/// Bytes at the arena's start: a marker saying which plan's weights are prepared.
pub(crate) const HEADER: usize = 64;

/// One tensor in the activation region: where, how big, which steps it is alive, its codes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TensorSlot {
    /// Offset inside the activation region.
    pub offset: usize,
    /// Bytes (0: never written).
    pub bytes: usize,
    /// First and last step alive (step 0: the input, step i+1: layer i).
    pub first: u16,
    pub last: u16,
    pub shape: Shape,
    pub q: Option<QParams>,
}

pub(crate) fn align(n: usize) -> Result<usize> {
    n.checked_add(ALIGN - 1)
        .map(|v| v / ALIGN * ALIGN)
        .ok_or(Error::Overflow { what: "arena size" })
}

pub(crate) fn mul(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or(Error::Overflow { what: "arena size" })
}

pub(crate) fn add(a: usize, b: usize) -> Result<usize> {
    a.checked_add(b)
        .ok_or(Error::Overflow { what: "arena size" })
}

/// Places tensors greedily, largest first, each at the lowest aligned offset that does not
/// overlap a placed tensor alive at the same time. Returns (region size, lower bound).
pub(crate) fn place(
    tensors: &mut Vec<TensorSlot, MAX_TENSORS>,
    steps: usize,
) -> Result<(usize, usize)> {
    // Lower bound: the most bytes alive at one step.
    let mut lower = 0usize;
    for st in 0..steps {
        let live: usize = tensors
            .iter()
            .filter(|t| t.bytes > 0 && usize::from(t.first) <= st && st <= usize::from(t.last))
            .map(|t| t.bytes)
            .sum();
        lower = lower.max(live);
    }
    // Order: by size descending (indices sorted without allocation).
    let mut order: Vec<u16, MAX_TENSORS> = Vec::new();
    for i in 0..tensors.len() {
        let _ = order.push(i as u16);
    }
    order.sort_unstable_by(|&a, &b| {
        let (ta, tb) = (&tensors[a as usize], &tensors[b as usize]);
        tb.bytes.cmp(&ta.bytes).then(ta.first.cmp(&tb.first))
    });
    let mut placed: Vec<u16, MAX_TENSORS> = Vec::new();
    let mut top = 0usize;
    for &i in order.iter() {
        let t = tensors[i as usize];
        if t.bytes == 0 {
            continue;
        }
        let size = align(t.bytes)?;
        // Conflicting intervals, sorted by offset.
        let mut busy: Vec<(usize, usize), MAX_TENSORS> = Vec::new();
        for &j in placed.iter() {
            let u = &tensors[j as usize];
            if u.first <= t.last && t.first <= u.last {
                let _ = busy.push((u.offset, add(u.offset, align(u.bytes)?)?));
            }
        }
        busy.sort_unstable();
        let mut off = 0usize;
        for &(s, e) in busy.iter() {
            if add(off, size)? <= s {
                break;
            }
            off = off.max(e);
        }
        tensors[i as usize].offset = off;
        top = top.max(add(off, size)?);
        let _ = placed.push(i);
    }
    Ok((top, lower))
}

/// One output range and up to two input ranges of the activation region, borrowed at once.
pub(crate) fn io<'a>(
    acts: &'a mut [u8],
    out: Range<usize>,
    a: Range<usize>,
    b: Range<usize>,
) -> Result<(&'a mut [u8], &'a [u8], &'a [u8])> {
    let bad = Error::PlanMismatch { layer: Site::Model };
    if out.end > acts.len() || out.start > out.end {
        return Err(bad);
    }
    let (before, rest) = acts.split_at_mut(out.start);
    let (o, after) = rest.split_at_mut(out.end - out.start);
    let (before, after): (&'a [u8], &'a [u8]) = (before, after);
    let pick = |r: Range<usize>| -> Result<&'a [u8]> {
        if r.is_empty() {
            return Ok(&[]);
        }
        if r.end <= out.start {
            before.get(r).ok_or(bad)
        } else if r.start >= out.end {
            after.get(r.start - out.end..r.end - out.end).ok_or(bad)
        } else {
            Err(bad)
        }
    };
    Ok((o, pick(a)?, pick(b)?))
}

/// What one layer reads and writes: its tensors' slots and their bytes in the activation
/// region (shared by the packed and the float executor).
pub(crate) struct LayerIo<'a> {
    pub ta: TensorSlot,
    pub tb: Option<TensorSlot>,
    pub to: TensorSlot,
    pub out: &'a mut [u8],
    pub a: &'a [u8],
    pub b: &'a [u8],
}

/// The [`LayerIo`] of `layer` with the tensors placed at `tensors`.
pub(crate) fn layer_io<'a>(
    tensors: &[TensorSlot],
    layer: &Layer<'_>,
    acts: &'a mut [u8],
) -> Result<LayerIo<'a>> {
    let ins = layer.inputs();
    let ta = tensors[ins[0].unwrap_or(0) as usize];
    let tb = ins[1].map(|t| tensors[t as usize]);
    let to = tensors[layer.output() as usize];
    let (out, a, b) = io(
        acts,
        range(&to),
        range(&ta),
        tb.as_ref().map_or(0..0, range),
    )?;
    Ok(LayerIo {
        ta,
        tb,
        to,
        out,
        a,
        b,
    })
}

pub(crate) fn range(t: &TensorSlot) -> Range<usize> {
    t.offset..t.offset + t.bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regions are rounded up to the next multiple of 64 bytes and no further (a region of
    /// whole 64-byte blocks takes no slack), and a size near `usize::MAX` is an error, not a
    /// wrap.
    #[test]
    fn align_rounds_up_to_the_next_multiple_of_64() {
        for (n, want) in [
            (0, 0),
            (1, 64),
            (63, 64),
            (64, 64),
            (65, 128),
            (128, 128),
            (129, 192),
        ] {
            assert_eq!(align(n), Ok(want), "{n}");
        }
        assert_eq!(
            align(usize::MAX - 62),
            Err(Error::Overflow { what: "arena size" })
        );
    }
}
