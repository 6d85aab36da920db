//! One conv's geometry as the kernels see it, and the border classes of its padded windows.

use slb_format::Conv;

use super::{portable, LUT_K, LUT_K8};

/// One conv's geometry as kernels see it (see CONTRACT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Padded input height.
    pub hp: usize,
    /// Padded input width.
    pub wp: usize,
    /// Input channels (all groups).
    pub c: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (rows).
    pub sh: usize,
    /// Stride (columns).
    pub sw: usize,
    /// Groups.
    pub groups: usize,
    /// Input channels per group.
    pub cin_g: usize,
    /// Output channels per group.
    pub cout_g: usize,
    /// Weight bits (1, 2, 4).
    pub wbits: u8,
    /// Activation bits (1, 2, 4, 8).
    pub abits: u8,
    /// u64 words per channel group, `ceil(cin_g / 64)`.
    pub cw: usize,
    /// Padding (rows), not seen by kernels.
    pub ph: usize,
    /// Padding (columns), not seen by kernels.
    pub pw: usize,
}

impl ConvShape {
    /// The shape of a validated conv on an input of `h x w` with `abits`-bit codes.
    // `%` rather than `is_multiple_of`: the workspace's MSRV is 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn of(conv: &Conv<'_>, h: usize, w: usize, abits: u8) -> Option<ConvShape> {
        let ph = conv.padding[0] as usize;
        let pw = conv.padding[1] as usize;
        let hp = h.checked_add(ph.checked_mul(2)?)?;
        let wp = w.checked_add(pw.checked_mul(2)?)?;
        let kh = conv.kernel[0] as usize;
        let kw = conv.kernel[1] as usize;
        let sh = conv.stride[0] as usize;
        let sw = conv.stride[1] as usize;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 || hp < kh || wp < kw || conv.groups == 0 {
            return None;
        }
        let groups = conv.groups as usize;
        let c = conv.in_channels as usize;
        let cout = conv.out_channels as usize;
        if c % groups != 0 || cout % groups != 0 || c == 0 || cout == 0 {
            return None;
        }
        let cin_g = c / groups;
        Some(ConvShape {
            hp,
            wp,
            c,
            oh: (hp - kh) / sh + 1,
            ow: (wp - kw) / sw + 1,
            cout,
            kh,
            kw,
            sh,
            sw,
            groups,
            cin_g,
            cout_g: cout / groups,
            wbits: conv.weight_bits,
            abits,
            cw: cin_g.div_ceil(64),
            ph,
            pw,
        })
    }

    /// Taps per output: `kh * kw * cin_g`.
    pub fn taps(&self) -> usize {
        self.kh * self.kw * self.cin_g
    }

    /// Bytes of the driver's correction table (`packed::correct`): `cout` sums per border
    /// class ([`ConvShape::border_classes`]) for 1-bit activations, else `cout` zero-point
    /// sums, as `i32`; `None` if that overflows `usize` (the planner's error).
    pub(crate) fn correction_len(&self) -> Option<usize> {
        let classes = if self.abits == 1 {
            let (rows, cols) = self.border_classes();
            rows.checked_mul(cols)?
        } else {
            1
        };
        self.cout.checked_mul(classes)?.checked_mul(4)
    }

    /// The border classes of the output rows and of the output columns: runs of outputs whose
    /// windows have the same taps in the padding ([`border_runs`]). An output's class is its
    /// row's and its column's.
    pub(crate) fn border_classes(&self) -> (usize, usize) {
        (classes_of(self.row_runs()), self.col_classes())
    }

    /// The second of [`ConvShape::border_classes`] alone.
    pub(crate) fn col_classes(&self) -> usize {
        classes_of(self.col_runs())
    }

    /// [`border_runs`] of the output rows.
    pub(crate) fn row_runs(&self) -> BorderRuns {
        border_runs(self.oh, self.sh, self.ph, self.h(), self.kh)
    }

    /// [`border_runs`] of the output columns.
    pub(crate) fn col_runs(&self) -> BorderRuns {
        border_runs(self.ow, self.sw, self.pw, self.w(), self.kw)
    }

    /// Unpadded input height.
    pub fn h(&self) -> usize {
        self.hp - 2 * self.ph
    }

    /// Unpadded input width.
    pub fn w(&self) -> usize {
        self.wp - 2 * self.pw
    }

    /// Channels per table of the table-lookup layout: [`LUT_K8`] (byte tables) for codes of
    /// up to 2 bits, else [`LUT_K`] (`u16` tables).
    pub(crate) fn lut_k(&self) -> usize {
        if self.abits <= 2 {
            LUT_K8
        } else {
            LUT_K
        }
    }

    /// Channel groups per group of the AVX-512 table-lookup layout, `ceil(cin_g / lut_k)`.
    /// (Each branch divides by a constant: a division by a value known only at run time, per
    /// tile, once cost the W1A8 network 2.5 %; the kernels now divide by their kind's
    /// constant.)
    pub(crate) fn lut_groups(&self) -> usize {
        if self.lut_k() == LUT_K8 {
            self.cin_g.div_ceil(LUT_K8)
        } else {
            self.cin_g.div_ceil(LUT_K)
        }
    }
}

/// Along one axis of `n` outputs (stride `stride`, padding `pad` on both sides of `size`
/// inputs, a window of `k` taps): for each output `o` in order, `(o, class, (before, after))`
/// with `before` the window's taps in the padding before the input and `after` those after it,
/// and `class` the number of changes of that pair so far. The pair changes monotonically
/// (`before` falls, `after` rises), so each class is one run of outputs.
pub(crate) fn border_runs(
    n: usize,
    stride: usize,
    pad: usize,
    size: usize,
    k: usize,
) -> BorderRuns {
    BorderRuns {
        o: 0,
        n,
        stride,
        pad,
        size,
        k,
        class: 0,
        prev: None,
    }
}

/// The number of classes of a [`border_runs`] axis.
fn classes_of(runs: BorderRuns) -> usize {
    runs.last().map_or(0, |(_, c, _)| c + 1)
}

/// The iterator of [`border_runs`].
#[derive(Clone, Debug)]
pub(crate) struct BorderRuns {
    o: usize,
    n: usize,
    stride: usize,
    pad: usize,
    size: usize,
    k: usize,
    class: usize,
    prev: Option<(usize, usize)>,
}

impl Iterator for BorderRuns {
    type Item = (usize, usize, (usize, usize));

    fn next(&mut self) -> Option<Self::Item> {
        if self.o >= self.n {
            return None;
        }
        let t = self.o * self.stride;
        let before = self.pad.saturating_sub(t).min(self.k);
        let after = (t + self.k)
            .saturating_sub(self.pad + self.size)
            .min(self.k);
        let pair = (before, after);
        if self.prev.is_some_and(|p| p != pair) {
            self.class += 1;
        }
        self.prev = Some(pair);
        self.o += 1;
        Some((self.o - 1, self.class, pair))
    }
}

/// The buffer sizes and call preconditions the SIMD kernels check (x86-64 and AArch64 only).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
impl ConvShape {
    /// Elements of the padded byte input of the byte family (`hp * wp * c`).
    pub(crate) fn byte_input_len(&self) -> usize {
        self.hp.saturating_mul(self.wp).saturating_mul(self.c)
    }

    /// `u64`s of the padded bit planes of the bit family.
    pub(crate) fn bit_input_len(&self) -> usize {
        self.hp
            .saturating_mul(self.wp)
            .saturating_mul(portable::bit_pixel_words(self))
    }

    /// Whether the fields agree with each other as [`ConvShape::of`] makes them.
    fn is_consistent(&self) -> bool {
        self.groups > 0
            && self.kh > 0
            && self.kw > 0
            && self.sh > 0
            && self.sw > 0
            && self.hp >= self.kh
            && self.wp >= self.kw
            && self.cin_g.checked_mul(self.groups) == Some(self.c)
            && self.cout_g.checked_mul(self.groups) == Some(self.cout)
            && self.cw == self.cin_g.div_ceil(64)
            && self.oh == (self.hp - self.kh) / self.sh + 1
            && self.ow == (self.wp - self.kw) / self.sw + 1
            && matches!(self.wbits, 1 | 2 | 4)
            && matches!(self.abits, 1 | 2 | 4 | 8)
    }

    /// The preconditions of a kernel call (CONTRACT.md), stated once: the shape is one
    /// [`ConvShape::of`] builds, `y0 <= y1 <= oh`, the input has at least `x_need` elements
    /// (`byte_input_len` or `bit_input_len`), the weights at least `w_need` bytes (the kernel's
    /// `prepared_len`) and the accumulators `(y1 - y0) * ow * cout` elements. The planner and
    /// the driver guarantee them; SIMD kernels, whose loads are unchecked, call this first.
    ///
    /// # Panics
    /// When a precondition fails, which no planned conv does: a kernel never reads out of
    /// bounds nor returns with its accumulators unwritten.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assert_call(
        &self,
        x_len: usize,
        x_need: usize,
        w_len: usize,
        w_need: usize,
        y0: usize,
        y1: usize,
        acc_len: usize,
    ) {
        let ok = self.is_consistent()
            && y0 <= y1
            && y1 <= self.oh
            && x_len >= x_need
            && w_len >= w_need
            && acc_len >= (y1 - y0).saturating_mul(self.ow).saturating_mul(self.cout);
        assert!(ok, "kernel call outside the contract (kernels/CONTRACT.md)");
    }
}
