//! x86-64 SIMD convolution kernels: AVX-512 (VNNI, VPOPCNTDQ) and AVX2.
//!
//! # What a kernel computes (the contract with the conv driver)
//! The driver copies the conv's input into a *padded* HWC `u8` buffer of `h * w * c` codes
//! (padding filled with the zero-point code) and calls one kernel, which writes raw sums only:
//!
//! ```text
//! acc[(oy*ow + ox)*out_c + g*cout_g + o] =
//!     sum_{ky,kx,i} num[g*cout_g + o][ky][kx][i] * v(x[oy*sh + ky][ox*sw + kx][g*cin_g + i])
//! ```
//! with `num = 2k - (2^wb - 1)` the odd weight numerator of code `k` and `v(q) = q` (2/4/8-bit
//! activations) or `v(q) = 2q - 1` (1-bit sign activations, [`xnor_avx2`]/[`xnor_avx512`]).
//! Zero-point and padding corrections are the driver's job. Every kernel equals the plain loop
//! nest bit for bit (tests at the bottom of this file).
//!
//! # Kernels
//! | family | weights x activations | entry points | prepared layout |
//! |---|---|---|---|
//! | int8 | W{1,2,4} x A{2,4,8} | [`a8_avx512vnni`] (`vpdpbusd`), [`a8_avx2`] (`vpmaddubsw`) | [`a8_prepare`]: `i8 [g][O/16][kh][kw][ceil(cin/4)][16][4]` |
//! | XNOR | W1 x A1 | [`xnor_avx512`] (`vpopcntq`), [`xnor_avx2`] (`vpshufb` popcount) | [`bits_prepare`]: `u64 [g][O/8][kh][kw][words][wb][8]` |
//! | bit-serial | W{1,2,4} x A{2,4,8} | [`bitserial_avx512`], [`bitserial_avx2`] | [`bits_prepare`] |
//!
//! The popcount families read activations as bit planes over channels, produced per call by
//! [`pack_planes`] into a scratch region of [`planes_len`] `u64`s:
//! `u64 [h][w][g][ab][words]`, `words = ceil(cin_g / 64)`, channel `i` of the group at bit
//! `i % 64` of word `i / 64`, bits past `cin_g` zero.
//!
//! Prepared weights and planes are plain byte regions (arena slices, any alignment).
//!
//! # Selection
//! [`Features::detect`] says which kernels this CPU runs (run-time detection with `std`,
//! `cfg(target_feature)` without). Every safe entry point re-checks its feature and returns
//! [`KernelError::Unsupported`] instead of executing an illegal instruction.
//!
//! # Exactness
//! `vpmaddubsw` saturates at `i16`: with `|num| <= 15` and `q <= 255` a sum of four products is
//! at most `15300`, so the AVX2 path never saturates for weights of at most 4 bits, which is all
//! the format allows. Accumulators are `i32` (`u64` for popcounts); the model validator bounds
//! the accumulator to 32 bits.

// Register tiles are indexed by pixel and block in lock step; index loops read clearest there.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;
use core::fmt;

use slb_format::Conv;

use super::{Algo, ConvKernel, ConvShape, KernelKind, Run};

/// Geometry of one convolution as the kernels see it (batch 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    /// Padded input height.
    pub h: usize,
    /// Padded input width.
    pub w: usize,
    /// Channels of the input buffer (all groups): the stride between two pixels.
    pub c: usize,
    /// Output channels (all groups).
    pub out_c: usize,
    /// Groups; divides `c` and `out_c`.
    pub groups: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Weight code bits (1, 2 or 4).
    pub wbits: u8,
}

impl Geom {
    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h - self.kh) / self.sh + 1
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w - self.kw) / self.sw + 1
    }
    /// Input channels per group.
    pub fn cin_g(&self) -> usize {
        self.c / self.groups
    }
    /// Output channels per group.
    pub fn cout_g(&self) -> usize {
        self.out_c / self.groups
    }
    /// Length of the accumulators of all output rows (`oh * ow * out_c`).
    #[cfg(test)]
    pub fn acc_len(&self) -> usize {
        self.oh() * self.ow() * self.out_c
    }
    /// Length of the padded input buffer (`h * w * c`).
    pub fn input_len(&self) -> usize {
        self.h * self.w * self.c
    }
    /// Bytes of one bit-plane row of the packed weight codes (`format::row_bytes`).
    fn row_bytes(&self) -> usize {
        self.cin_g().div_ceil(8)
    }
    /// Bytes of the packed weight codes the format stores for this conv.
    pub fn codes_len(&self) -> usize {
        self.out_c * self.kh * self.kw * self.wbits as usize * self.row_bytes()
    }

    /// Checks that the geometry is one the kernels handle.
    pub fn check(&self) -> Result<(), KernelError> {
        let ok = self.groups > 0
            && self.c > 0
            && self.out_c > 0
            && self.c.is_multiple_of(self.groups)
            && self.out_c.is_multiple_of(self.groups)
            && self.kh > 0
            && self.kw > 0
            && self.sh > 0
            && self.sw > 0
            && self.h >= self.kh
            && self.w >= self.kw
            && matches!(self.wbits, 1 | 2 | 4)
            && self
                .h
                .checked_mul(self.w)
                .and_then(|v| v.checked_mul(self.c))
                .and_then(|v| v.checked_mul(8))
                .is_some()
            && self
                .kh
                .checked_mul(self.kw)
                .and_then(|v| v.checked_mul(self.c))
                .and_then(|v| v.checked_mul(self.out_c))
                .and_then(|v| v.checked_mul(8))
                .is_some();
        if ok {
            Ok(())
        } else {
            Err(KernelError::Geometry)
        }
    }

    /// The odd numerator of weight `(o, ky, kx, i)` read from the format's packed codes.
    fn numerator(&self, codes: &[u8], o: usize, ky: usize, kx: usize, i: usize) -> i32 {
        let row = self.row_bytes();
        let bits = self.wbits as usize;
        let base = ((o * self.kh + ky) * self.kw + kx) * bits * row;
        let mut k = 0i32;
        for p in 0..bits {
            if codes[base + p * row + i / 8] >> (i % 8) & 1 == 1 {
                k |= 1 << p;
            }
        }
        2 * k - ((1 << bits) - 1)
    }

    /// Bit plane `p` of the codes of weights `(o, ky, kx, 64*word .. 64*word+64)` as one word.
    fn code_word(
        &self,
        codes: &[u8],
        o: usize,
        ky: usize,
        kx: usize,
        p: usize,
        word: usize,
    ) -> u64 {
        let row = self.row_bytes();
        let bits = self.wbits as usize;
        let base = ((o * self.kh + ky) * self.kw + kx) * bits * row + p * row;
        let mut v = 0u64;
        for b in 0..8 {
            let idx = word * 8 + b;
            if idx < row {
                v |= (codes[base + idx] as u64) << (8 * b);
            }
        }
        v
    }
}

/// Why a kernel refused to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// This CPU lacks the instructions the kernel needs.
    Unsupported,
    /// The geometry is invalid (zero sizes, groups not dividing channels, kernel larger than
    /// the padded input, bits out of range, sizes overflowing `usize`).
    Geometry,
    /// The activation bits are not ones this kernel handles.
    Bits,
    /// A slice has the wrong length.
    Length {
        /// Which slice.
        what: &'static str,
        /// The length the geometry needs (at least, for output regions).
        expected: usize,
        /// The length given.
        got: usize,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Unsupported => f.write_str("CPU lacks the kernel's instruction set"),
            KernelError::Geometry => f.write_str("invalid convolution geometry"),
            KernelError::Bits => f.write_str("activation bits not handled by this kernel"),
            KernelError::Length {
                what,
                expected,
                got,
            } => write!(f, "{what}: expected {expected} elements, got {got}"),
        }
    }
}

impl core::error::Error for KernelError {}

/// Which of this module's kernels the running CPU supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features {
    /// AVX2: [`a8_avx2`], [`xnor_avx2`], [`bitserial_avx2`], fast [`pack_planes`].
    pub avx2: bool,
    /// AVX-512 F/BW/VNNI: [`a8_avx512vnni`].
    pub avx512vnni: bool,
    /// AVX-512 F/BW/VPOPCNTDQ: [`xnor_avx512`], [`bitserial_avx512`].
    pub avx512popcnt: bool,
}

impl Features {
    /// Detects the features (at run time with `std`, from `cfg(target_feature)` without).
    pub fn detect() -> Self {
        #[cfg(feature = "std")]
        {
            let f = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw");
            Features {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                avx512vnni: f && std::arch::is_x86_feature_detected!("avx512vnni"),
                avx512popcnt: f && std::arch::is_x86_feature_detected!("avx512vpopcntdq"),
            }
        }
        #[cfg(not(feature = "std"))]
        {
            let f = cfg!(all(target_feature = "avx512f", target_feature = "avx512bw"));
            Features {
                avx2: cfg!(target_feature = "avx2"),
                avx512vnni: f && cfg!(target_feature = "avx512vnni"),
                avx512popcnt: f && cfg!(target_feature = "avx512vpopcntdq"),
            }
        }
    }
}

/// Output rows `y0..y1` a kernel call computes; `acc` starts at row `y0`.
pub type Rows = (usize, usize);

fn check_rows(g: &Geom, (y0, y1): Rows) -> Result<(), KernelError> {
    if y0 <= y1 && y1 <= g.oh() {
        Ok(())
    } else {
        Err(KernelError::Geometry)
    }
}

fn need(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if got < expected {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    } else {
        Ok(())
    }
}

fn exact(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if got != expected {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// int8 path
// ---------------------------------------------------------------------------------------------

/// Channel chunks of 4 per kernel tap in the int8 layout.
fn a8_c4(g: &Geom) -> usize {
    g.cin_g().div_ceil(4)
}

/// Bytes of one block of 16 output channels in the int8 layout.
fn a8_block_bytes(g: &Geom) -> usize {
    g.kh * g.kw * a8_c4(g) * 64
}

/// Bytes of the prepared int8 weights ([`a8_prepare`]).
pub fn a8_prepared_len(g: &Geom) -> usize {
    g.groups * g.cout_g().div_ceil(16) * a8_block_bytes(g)
}

/// Expands the format's packed codes into the int8 layout
/// `i8 [g][O/16][kh][kw][ceil(cin_g/4)][16][4]` (numerators; zero for channels past `cin_g`
/// and outputs past `cout_g`) that [`a8_avx512vnni`] and [`a8_avx2`] read.
pub fn a8_prepare(codes: &[u8], g: &Geom, out: &mut [u8]) -> Result<(), KernelError> {
    g.check()?;
    exact("packed codes", g.codes_len(), codes.len())?;
    let len = a8_prepared_len(g);
    need("prepared weights", len, out.len())?;
    let out = &mut out[..len];
    out.fill(0);
    let (cin, cout, c4n) = (g.cin_g(), g.cout_g(), a8_c4(g));
    let nblk = cout.div_ceil(16);
    let bb = a8_block_bytes(g);
    for gi in 0..g.groups {
        for o in 0..cout {
            let blk = (gi * nblk + o / 16) * bb;
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let tap = (ky * g.kw + kx) * c4n;
                    for i in 0..cin {
                        let num = g.numerator(codes, gi * cout + o, ky, kx, i);
                        out[blk + (tap + i / 4) * 64 + (o % 16) * 4 + i % 4] = num as i8 as u8;
                    }
                }
            }
        }
    }
    Ok(())
}

fn a8_check(
    g: &Geom,
    prepared: &[u8],
    input: &[u8],
    rows: Rows,
    acc: &[i32],
) -> Result<(), KernelError> {
    g.check()?;
    check_rows(g, rows)?;
    need("prepared weights", a8_prepared_len(g), prepared.len())?;
    need("input", g.input_len(), input.len())?;
    need(
        "accumulators",
        (rows.1 - rows.0) * g.ow() * g.out_c,
        acc.len(),
    )
}

/// Reads four activation bytes at `p`, only the first `n` of them (the rest zero).
///
/// # Safety
/// `p .. p + n` must be readable.
#[inline(always)]
unsafe fn load4(p: *const u8, n: usize) -> i32 {
    debug_assert!(n <= 4);
    let mut v = 0u32;
    for i in 0..n {
        // SAFETY: the caller guarantees `n` readable bytes at `p`.
        v |= (unsafe { p.add(i).read() } as u32) << (8 * i);
    }
    v as i32
}

/// Pixel tiles: `f(start, count)` over `first..end` in steps of `P`, the tail one by one.
#[inline(always)]
fn tiles<const P: usize>(first: usize, end: usize, mut f: impl FnMut(usize, usize)) {
    let mut p = first;
    while p + P <= end {
        f(p, P);
        p += P;
    }
    while p < end {
        f(p, 1);
        p += 1;
    }
}

/// Byte offset, in the padded input, of the top-left input pixel of output pixel `pix`.
#[inline(always)]
fn pixel_base(g: &Geom, pix: usize) -> usize {
    let ow = g.ow();
    let (oy, ox) = (pix / ow, pix % ow);
    (oy * g.sh * g.w + ox * g.sw) * g.c
}

/// int8 convolution with AVX-512 VNNI (`vpdpbusd`), register-blocked as up to 4 x 16 output
/// channels by 6 output pixels.
pub fn a8_avx512vnni(
    g: &Geom,
    prepared: &[u8],
    input: &[u8],
    rows: Rows,
    acc: &mut [i32],
) -> Result<(), KernelError> {
    a8_check(g, prepared, input, rows, acc)?;
    if !Features::detect().avx512vnni {
        return Err(KernelError::Unsupported);
    }
    // SAFETY: feature checked just above; slice lengths checked by `a8_check`.
    unsafe { a8_avx512_impl(g, prepared, input, rows, acc) };
    Ok(())
}

/// # Safety
/// The CPU supports AVX-512 F/BW/VNNI and the slices passed [`a8_check`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn a8_avx512_impl(g: &Geom, prepared: &[u8], input: &[u8], rows: Rows, acc: &mut [i32]) {
    debug_assert!(a8_check(g, prepared, input, rows, acc).is_ok());
    let (first, end) = (rows.0 * g.ow(), rows.1 * g.ow());
    let nblk = g.cout_g().div_ceil(16);
    let bb = a8_block_bytes(g);
    for gi in 0..g.groups {
        let mut b0 = 0;
        while b0 < nblk {
            let nb = (nblk - b0).min(4);
            let w = prepared[(gi * nblk + b0) * bb..].as_ptr();
            tiles::<6>(first, end, |p0, np| {
                // SAFETY: same preconditions as this function; the tile lies inside `acc`.
                unsafe {
                    match (nb, np) {
                        (4, 6) => a8_tile_512::<4, 6>(g, gi, b0, first, p0, w, input, acc),
                        (3, 6) => a8_tile_512::<3, 6>(g, gi, b0, first, p0, w, input, acc),
                        (2, 6) => a8_tile_512::<2, 6>(g, gi, b0, first, p0, w, input, acc),
                        (1, 6) => a8_tile_512::<1, 6>(g, gi, b0, first, p0, w, input, acc),
                        (4, _) => a8_tile_512::<4, 1>(g, gi, b0, first, p0, w, input, acc),
                        (3, _) => a8_tile_512::<3, 1>(g, gi, b0, first, p0, w, input, acc),
                        (2, _) => a8_tile_512::<2, 1>(g, gi, b0, first, p0, w, input, acc),
                        _ => a8_tile_512::<1, 1>(g, gi, b0, first, p0, w, input, acc),
                    }
                }
            });
            b0 += nb;
        }
    }
}

/// One `NB x 16` channel by `P` pixel tile of the VNNI kernel.
///
/// # Safety
/// AVX-512 F/BW/VNNI present; `w` points at block `b0` of group `gi` inside checked prepared
/// weights with at least `NB` blocks left; pixels `p0 .. p0 + P` exist.
#[allow(clippy::too_many_arguments)] // the tile's coordinates, kept in registers
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn a8_tile_512<const NB: usize, const P: usize>(
    g: &Geom,
    gi: usize,
    b0: usize,
    first: usize,
    p0: usize,
    w: *const u8,
    input: &[u8],
    acc: &mut [i32],
) {
    let (cin, cout, c4n) = (g.cin_g(), g.cout_g(), a8_c4(g));
    debug_assert!(p0 + P <= g.oh() * g.ow());
    debug_assert!((b0 + NB) * 16 < cout + 16);
    let bb = a8_block_bytes(g);
    let (full, rem) = (cin / 4, cin % 4);
    let mut base = [0usize; P];
    for (j, b) in base.iter_mut().enumerate() {
        *b = pixel_base(g, p0 + j) + gi * cin;
    }
    let x = input.as_ptr();
    let mut a = [[_mm512_setzero_si512(); NB]; P];
    // One 4-channel chunk `q` of the tap: NB weight vectors, P broadcast activations.
    macro_rules! step {
        ($wt:expr, $xp:expr, $q:expr, $load:expr) => {{
            let mut wv = [_mm512_setzero_si512(); NB];
            for (b, v) in wv.iter_mut().enumerate() {
                // SAFETY: block `b0 + b` exists and chunk `q < c4n` is inside it.
                *v = unsafe { _mm512_loadu_si512($wt.add(b * bb + $q * 64) as *const _) };
            }
            for j in 0..P {
                let av = _mm512_set1_epi32($load($xp[j], $q));
                for b in 0..NB {
                    a[j][b] = _mm512_dpbusd_epi32(a[j][b], av, wv[b]);
                }
            }
        }};
    }
    // SAFETY (both loads): `xp[j]` is channel `gi*cin` of an input pixel inside the padded
    // buffer; a full chunk (`q < full`) reads 4 of its `cin` channels, the partial chunk `rem`.
    let full_load =
        |p: *const u8, q: usize| unsafe { (p.add(4 * q) as *const i32).read_unaligned() };
    let part_load = |p: *const u8, q: usize| unsafe { load4(p.add(4 * q), rem) };
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let aoff = (ky * g.w + kx) * g.c;
            // SAFETY: tap offsets stay inside the block (`kh * kw * c4n * 64` bytes).
            let wt = unsafe { w.add((ky * g.kw + kx) * c4n * 64) };
            let mut xp = [x; P];
            for j in 0..P {
                // SAFETY: the tap's pixel lies inside the padded input.
                xp[j] = unsafe { x.add(base[j] + aoff) };
            }
            for q in 0..full {
                step!(wt, xp, q, full_load);
            }
            if rem != 0 {
                step!(wt, xp, full, part_load);
            }
        }
    }
    for j in 0..P {
        let row = (p0 + j - first) * g.out_c + gi * cout;
        for b in 0..NB {
            let o0 = (b0 + b) * 16;
            let n = (cout - o0).min(16);
            let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            // SAFETY: `row + o0 + n <= acc.len()` (checked accumulator length); masked lanes
            // are not touched.
            unsafe {
                _mm512_mask_storeu_epi32(acc.as_mut_ptr().add(row + o0) as *mut _, mask, a[j][b])
            };
        }
    }
}

/// int8 convolution with AVX2 (`vpmaddubsw` + `vpmaddwd`), one 16-channel block by 4 pixels.
pub fn a8_avx2(
    g: &Geom,
    prepared: &[u8],
    input: &[u8],
    rows: Rows,
    acc: &mut [i32],
) -> Result<(), KernelError> {
    a8_check(g, prepared, input, rows, acc)?;
    if !Features::detect().avx2 {
        return Err(KernelError::Unsupported);
    }
    // SAFETY: feature checked just above; slice lengths checked by `a8_check`.
    unsafe { a8_avx2_impl(g, prepared, input, rows, acc) };
    Ok(())
}

/// # Safety
/// The CPU supports AVX2 and the slices passed [`a8_check`].
#[target_feature(enable = "avx2")]
unsafe fn a8_avx2_impl(g: &Geom, prepared: &[u8], input: &[u8], rows: Rows, acc: &mut [i32]) {
    debug_assert!(a8_check(g, prepared, input, rows, acc).is_ok());
    let (first, end) = (rows.0 * g.ow(), rows.1 * g.ow());
    let nblk = g.cout_g().div_ceil(16);
    let bb = a8_block_bytes(g);
    for gi in 0..g.groups {
        for b0 in 0..nblk {
            let w = prepared[(gi * nblk + b0) * bb..].as_ptr();
            tiles::<4>(first, end, |p0, np| {
                // SAFETY: same preconditions as this function; the tile lies inside `acc`.
                unsafe {
                    if np == 4 {
                        a8_tile_avx2::<4>(g, gi, b0, first, p0, w, input, acc)
                    } else {
                        a8_tile_avx2::<1>(g, gi, b0, first, p0, w, input, acc)
                    }
                }
            });
        }
    }
}

/// One 16-channel by `P` pixel tile of the AVX2 int8 kernel.
///
/// # Safety
/// AVX2 present; `w` points at block `b0` of group `gi` inside checked prepared weights;
/// pixels `p0 .. p0 + P` exist.
#[allow(clippy::too_many_arguments)] // the tile's coordinates, kept in registers
#[target_feature(enable = "avx2")]
unsafe fn a8_tile_avx2<const P: usize>(
    g: &Geom,
    gi: usize,
    b0: usize,
    first: usize,
    p0: usize,
    w: *const u8,
    input: &[u8],
    acc: &mut [i32],
) {
    let (cin, cout, c4n) = (g.cin_g(), g.cout_g(), a8_c4(g));
    debug_assert!(p0 + P <= g.oh() * g.ow());
    debug_assert!(b0 * 16 < cout);
    let (full, rem) = (cin / 4, cin % 4);
    let mut base = [0usize; P];
    for (j, b) in base.iter_mut().enumerate() {
        *b = pixel_base(g, p0 + j) + gi * cin;
    }
    let x = input.as_ptr();
    let ones = _mm256_set1_epi16(1);
    // One `vpmaddubsw` lane is at most `2 * 255 * (2^wb - 1)` in magnitude (never saturates
    // for wb <= 4); `group` of them still fit an i16: 64 (W1), 21 (W2), 4 (W4).
    let group = (i16::MAX as usize / (2 * 255 * ((1usize << g.wbits) - 1))).max(1);
    let mut a = [[_mm256_setzero_si256(); 2]; P];
    // SAFETY (both loads): `xp[j]` is channel `gi*cin` of an input pixel inside the padded
    // buffer; a full chunk (`q < full`) reads 4 of its `cin` channels, the partial chunk `rem`.
    let full_load =
        |p: *const u8, q: usize| unsafe { (p.add(4 * q) as *const i32).read_unaligned() };
    let part_load = |p: *const u8, q: usize| unsafe { load4(p.add(4 * q), rem) };
    // One chunk `q`: both 8-channel halves of the block, P pixels.
    macro_rules! single {
        ($wt:expr, $xp:expr, $q:expr, $load:expr) => {{
            // SAFETY: chunk `q < c4n` is inside the block.
            let (w0, w1) = unsafe {
                (
                    _mm256_loadu_si256($wt.add($q * 64) as *const _),
                    _mm256_loadu_si256($wt.add($q * 64 + 32) as *const _),
                )
            };
            for j in 0..P {
                let x0 = _mm256_set1_epi32($load($xp[j], $q));
                let lo = _mm256_madd_epi16(_mm256_maddubs_epi16(x0, w0), ones);
                let hi = _mm256_madd_epi16(_mm256_maddubs_epi16(x0, w1), ones);
                a[j][0] = _mm256_add_epi32(a[j][0], lo);
                a[j][1] = _mm256_add_epi32(a[j][1], hi);
            }
        }};
    }
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let aoff = (ky * g.w + kx) * g.c;
            // SAFETY: tap offsets stay inside the block.
            let wt = unsafe { w.add((ky * g.kw + kx) * c4n * 64) };
            let mut xp = [x; P];
            for j in 0..P {
                // SAFETY: the tap's pixel lies inside the padded input.
                xp[j] = unsafe { x.add(base[j] + aoff) };
            }
            let mut q = 0;
            // Runs of up to `group` chunks summed in i16 lanes (exact: see `group`), then
            // widened to i32 with one `vpmaddwd` per run.
            while q < full {
                let n = (full - q).min(group);
                let mut s16 = [[_mm256_setzero_si256(); 2]; P];
                for c in q..q + n {
                    // SAFETY: chunk `c < full <= c4n` is inside the block.
                    let (w0, w1) = unsafe {
                        (
                            _mm256_loadu_si256(wt.add(c * 64) as *const _),
                            _mm256_loadu_si256(wt.add(c * 64 + 32) as *const _),
                        )
                    };
                    for j in 0..P {
                        let x0 = _mm256_set1_epi32(full_load(xp[j], c));
                        s16[j][0] = _mm256_add_epi16(s16[j][0], _mm256_maddubs_epi16(x0, w0));
                        s16[j][1] = _mm256_add_epi16(s16[j][1], _mm256_maddubs_epi16(x0, w1));
                    }
                }
                for j in 0..P {
                    a[j][0] = _mm256_add_epi32(a[j][0], _mm256_madd_epi16(s16[j][0], ones));
                    a[j][1] = _mm256_add_epi32(a[j][1], _mm256_madd_epi16(s16[j][1], ones));
                }
                q += n;
            }
            if rem != 0 {
                single!(wt, xp, full, part_load);
            }
        }
    }
    let o0 = b0 * 16;
    let n = (cout - o0).min(16);
    for j in 0..P {
        let row = (p0 + j - first) * g.out_c + gi * cout + o0;
        let mut t = [0i32; 16];
        // SAFETY: `t` holds 16 i32 (two 32-byte stores).
        unsafe {
            _mm256_storeu_si256(t.as_mut_ptr() as *mut _, a[j][0]);
            _mm256_storeu_si256(t.as_mut_ptr().add(8) as *mut _, a[j][1]);
        }
        acc[row..row + n].copy_from_slice(&t[..n]);
    }
}

// ---------------------------------------------------------------------------------------------
// bit-plane path: activation planes, prepared weight planes, XNOR and bit-serial kernels
// ---------------------------------------------------------------------------------------------

/// 64-channel words per group.
fn words(g: &Geom) -> usize {
    g.cin_g().div_ceil(64)
}

/// `u64` words of the activation planes [`pack_planes`] writes for `abits`-bit codes.
pub fn planes_len(g: &Geom, abits: u8) -> usize {
    g.h * g.w * g.groups * words(g) * abits as usize
}

/// `u64`s of one block of 8 output channels in the bit layout.
fn bits_block_words(g: &Geom) -> usize {
    g.kh * g.kw * words(g) * g.wbits as usize * 8
}

/// Bytes of the prepared weight planes ([`bits_prepare`]).
pub fn bits_prepared_len(g: &Geom) -> usize {
    g.groups * g.cout_g().div_ceil(8) * bits_block_words(g) * 8
}

/// Regroups the format's packed codes into `u64 [g][O/8][kh][kw][words][wb][8]` (little-endian
/// words, lane = output channel of the block; zero past `cout_g` and past `cin_g`), the layout
/// of [`xnor_avx512`], [`xnor_avx2`], [`bitserial_avx512`] and [`bitserial_avx2`].
pub fn bits_prepare(codes: &[u8], g: &Geom, out: &mut [u8]) -> Result<(), KernelError> {
    g.check()?;
    exact("packed codes", g.codes_len(), codes.len())?;
    let len = bits_prepared_len(g);
    need("prepared weights", len, out.len())?;
    let out = &mut out[..len];
    out.fill(0);
    let (cout, nw, wb) = (g.cout_g(), words(g), g.wbits as usize);
    let nblk = cout.div_ceil(8);
    let bw = bits_block_words(g);
    for gi in 0..g.groups {
        for o in 0..cout {
            let blk = (gi * nblk + o / 8) * bw;
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    for wd in 0..nw {
                        for p in 0..wb {
                            let v = g.code_word(codes, gi * cout + o, ky, kx, p, wd);
                            let at = blk + ((((ky * g.kw + kx) * nw + wd) * wb + p) * 8) + o % 8;
                            out[at * 8..at * 8 + 8].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Packs the padded `u8` input into bit planes `u64 [h][w][g][abits][words]` (bit `r` of each
/// code; bits above `abits` are ignored). Uses AVX2 `vpmovmskb` where available.
#[cfg(test)]
pub fn pack_planes(
    g: &Geom,
    abits: u8,
    input: &[u8],
    planes: &mut [u64],
) -> Result<(), KernelError> {
    g.check()?;
    if !matches!(abits, 1 | 2 | 4 | 8) {
        return Err(KernelError::Bits);
    }
    need("input", g.input_len(), input.len())?;
    let len = planes_len(g, abits);
    need("activation planes", len, planes.len())?;
    let (cin, nw, ab) = (g.cin_g(), words(g), abits as usize);
    let avx2 = Features::detect().avx2;
    let mut chunk = [0u8; 64];
    let mut w = [0u64; 8];
    let mut at = 0;
    for pix in 0..g.h * g.w {
        for gi in 0..g.groups {
            let src = &input[pix * g.c + gi * cin..pix * g.c + (gi + 1) * cin];
            for wd in 0..nw {
                let part = &src[wd * 64..(wd * 64 + 64).min(cin)];
                chunk[..part.len()].copy_from_slice(part);
                chunk[part.len()..].fill(0);
                if avx2 {
                    // SAFETY: AVX2 detected just above.
                    unsafe { planes_of_chunk_avx2(&chunk, &mut w) };
                } else {
                    planes_of_chunk(&chunk, &mut w);
                }
                for (r, &v) in w[..ab].iter().enumerate() {
                    planes[at + r * nw + wd] = v;
                }
            }
            at += ab * nw;
        }
    }
    Ok(())
}

#[cfg(test)]
/// Scalar twin of [`planes_of_chunk_avx2`]: `w[r]` = bit `r` of the 64 codes.
fn planes_of_chunk(chunk: &[u8; 64], w: &mut [u64; 8]) {
    *w = [0; 8];
    for (i, &q) in chunk.iter().enumerate() {
        for (r, v) in w.iter_mut().enumerate() {
            *v |= ((q >> r & 1) as u64) << i;
        }
    }
}

/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
unsafe fn planes_of_chunk_avx2(chunk: &[u8; 64], w: &mut [u64; 8]) {
    // SAFETY: `chunk` holds 64 bytes: two 32-byte loads.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(chunk.as_ptr() as *const _),
            _mm256_loadu_si256(chunk.as_ptr().add(32) as *const _),
        )
    };
    macro_rules! plane {
        ($r:literal) => {{
            let l = _mm256_movemask_epi8(_mm256_slli_epi16::<{ 7 - $r }>(lo)) as u32 as u64;
            let h = _mm256_movemask_epi8(_mm256_slli_epi16::<{ 7 - $r }>(hi)) as u32 as u64;
            w[$r] = l | h << 32;
        }};
    }
    plane!(0);
    plane!(1);
    plane!(2);
    plane!(3);
    plane!(4);
    plane!(5);
    plane!(6);
    plane!(7);
}

fn bits_check(
    g: &Geom,
    abits: u8,
    prepared: &[u8],
    planes: &[u64],
    rows: Rows,
    acc: &[i32],
) -> Result<(), KernelError> {
    g.check()?;
    check_rows(g, rows)?;
    need("prepared weights", bits_prepared_len(g), prepared.len())?;
    need("activation planes", planes_len(g, abits), planes.len())?;
    need(
        "accumulators",
        (rows.1 - rows.0) * g.ow() * g.out_c,
        acc.len(),
    )
}

/// Where a tile of the popcount kernels reads and writes.
struct BitTile<'a> {
    g: &'a Geom,
    /// Group.
    gi: usize,
    /// First 8-channel block of the tile.
    b0: usize,
    /// First output pixel of the tile.
    p0: usize,
    /// The output pixel `acc` starts at.
    first: usize,
    /// Activation bits.
    ab: usize,
    /// Prepared weights (u64 words, any alignment).
    w: *const u8,
    /// Activation planes.
    x: *const u64,
}

impl BitTile<'_> {
    /// `u64` index of the planes of pixel `p0 + j`'s window origin.
    fn base(&self, j: usize) -> usize {
        let g = self.g;
        let ow = g.ow();
        let (oy, ox) = ((self.p0 + j) / ow, (self.p0 + j) % ow);
        let per_pix = g.groups * words(g) * self.ab;
        (oy * g.sh * g.w + ox * g.sw) * per_pix + self.gi * words(g) * self.ab
    }

    /// `u64` offset of tap `(ky, kx)` in the planes.
    fn tap(&self, ky: usize, kx: usize) -> usize {
        let g = self.g;
        (ky * g.w + kx) * g.groups * words(g) * self.ab
    }

    /// `sum q` over the window of pixel `p0 + j` (valid channels only).
    ///
    /// # Safety
    /// The tile's planes pointer covers the checked planes region and the pixel exists.
    unsafe fn act_sum(&self, j: usize) -> i64 {
        let g = self.g;
        let (nw, ab) = (words(g), self.ab);
        let base = self.base(j);
        let mut s = 0i64;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let t = base + self.tap(ky, kx);
                for i in 0..nw * ab {
                    // SAFETY: the window's words are inside the planes (caller).
                    let v = unsafe { self.x.add(t + i).read() };
                    s += (v.count_ones() as i64) << (i / nw);
                }
            }
        }
        s
    }

    /// Writes one pixel's 8-channel block `b` of totals: XNOR `kvalid - 2t`, bit-serial
    /// `2t - (2^wb - 1) * sum q`.
    fn store(&self, acc: &mut [i32], j: usize, b: usize, t: &[i64; 8], xnor: bool, asum: i64) {
        let g = self.g;
        let cout = g.cout_g();
        let o0 = (self.b0 + b) * 8;
        let n = (cout - o0).min(8);
        let row = (self.p0 + j - self.first) * g.out_c + self.gi * cout + o0;
        let kvalid = (g.kh * g.kw * g.cin_g()) as i64;
        let wmax = (1i64 << g.wbits) - 1;
        for (o, &v) in t[..n].iter().enumerate() {
            acc[row + o] = if xnor {
                kvalid - 2 * v
            } else {
                2 * v - wmax * asum
            } as i32;
        }
    }
}

/// W1A1 convolution (`v(q) = 2q - 1`) with AVX-512 `vpxorq` + `vpopcntq`.
pub fn xnor_avx512(
    g: &Geom,
    prepared: &[u8],
    planes: &[u64],
    rows: Rows,
    acc: &mut [i32],
) -> Result<(), KernelError> {
    if g.wbits != 1 {
        return Err(KernelError::Bits);
    }
    bits_check(g, 1, prepared, planes, rows, acc)?;
    if !Features::detect().avx512popcnt {
        return Err(KernelError::Unsupported);
    }
    // SAFETY: feature and lengths checked above.
    unsafe { bits_avx512_impl::<true>(g, 1, prepared, planes, rows, acc) };
    Ok(())
}

/// Bit-serial `W{1,2,4} x A{1,2,4,8}` convolution with AVX-512 `vpandq` + `vpopcntq`:
/// `sum num*q = sum_{p,r} 2^(p+r+1) popcount(w_p & a_r) - (2^wb - 1) sum q` (with 1-bit
/// activations this is the unsigned `sum num*q`, not the sign convention).
pub fn bitserial_avx512(
    g: &Geom,
    abits: u8,
    prepared: &[u8],
    planes: &[u64],
    rows: Rows,
    acc: &mut [i32],
) -> Result<(), KernelError> {
    if !matches!(abits, 1 | 2 | 4 | 8) {
        return Err(KernelError::Bits);
    }
    bits_check(g, abits, prepared, planes, rows, acc)?;
    if !Features::detect().avx512popcnt {
        return Err(KernelError::Unsupported);
    }
    // SAFETY: feature and lengths checked above.
    unsafe { bits_avx512_impl::<false>(g, abits, prepared, planes, rows, acc) };
    Ok(())
}

/// # Safety
/// AVX-512 F/BW/VPOPCNTDQ present and [`bits_check`] passed.
#[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq")]
unsafe fn bits_avx512_impl<const XNOR: bool>(
    g: &Geom,
    abits: u8,
    prepared: &[u8],
    planes: &[u64],
    rows: Rows,
    acc: &mut [i32],
) {
    debug_assert!(bits_check(g, abits, prepared, planes, rows, acc).is_ok());
    let (first, end) = (rows.0 * g.ow(), rows.1 * g.ow());
    let nblk = g.cout_g().div_ceil(8);
    let bw = bits_block_words(g);
    for gi in 0..g.groups {
        let mut b0 = 0;
        while b0 < nblk {
            let nb = (nblk - b0).min(4);
            let w = prepared[(gi * nblk + b0) * bw * 8..].as_ptr();
            tiles::<6>(first, end, |p0, np| {
                let t = BitTile {
                    g,
                    gi,
                    b0,
                    p0,
                    first,
                    ab: abits as usize,
                    w,
                    x: planes.as_ptr(),
                };
                // SAFETY: same preconditions as this function; the tile lies inside `acc`.
                unsafe {
                    match (nb, np) {
                        (4, 6) => bits_tile_512::<XNOR, 4, 6>(&t, acc),
                        (3, 6) => bits_tile_512::<XNOR, 3, 6>(&t, acc),
                        (2, 6) => bits_tile_512::<XNOR, 2, 6>(&t, acc),
                        (1, 6) => bits_tile_512::<XNOR, 1, 6>(&t, acc),
                        (4, _) => bits_tile_512::<XNOR, 4, 1>(&t, acc),
                        (3, _) => bits_tile_512::<XNOR, 3, 1>(&t, acc),
                        (2, _) => bits_tile_512::<XNOR, 2, 1>(&t, acc),
                        _ => bits_tile_512::<XNOR, 1, 1>(&t, acc),
                    }
                }
            });
            b0 += nb;
        }
    }
}

/// One `NB x 8` channel by `P` pixel tile of the AVX-512 popcount kernels.
///
/// # Safety
/// AVX-512 F/BW/VPOPCNTDQ present; the tile's pointers cover checked regions, blocks
/// `b0 .. b0 + NB` and pixels `p0 .. p0 + P` exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vpopcntdq")]
unsafe fn bits_tile_512<const XNOR: bool, const NB: usize, const P: usize>(
    t: &BitTile<'_>,
    acc: &mut [i32],
) {
    let g = t.g;
    debug_assert!(t.p0 + P <= g.oh() * g.ow());
    debug_assert!((t.b0 + NB - 1) * 8 < g.cout_g());
    let (nw, wb, ab) = (words(g), g.wbits as usize, t.ab);
    let bw = bits_block_words(g);
    let mut base = [0usize; P];
    for (j, b) in base.iter_mut().enumerate() {
        *b = t.base(j);
    }
    let wp = t.w as *const u64;
    let mut tot = [[_mm512_setzero_si512(); NB]; P];
    let pairs = if XNOR { 1 } else { wb * ab };
    for pr in 0..pairs {
        let (p, r) = (pr / ab, pr % ab);
        let mut s = [[_mm512_setzero_si512(); NB]; P];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let tap = t.tap(ky, kx);
                let mut xp = [t.x; P];
                for j in 0..P {
                    // SAFETY: plane `r` of the tap's input pixel lies inside the planes.
                    xp[j] = unsafe { t.x.add(base[j] + tap + r * nw) };
                }
                // SAFETY: plane `p` of the tap inside block `b0` of the weights.
                let wt = unsafe { wp.add(((ky * g.kw + kx) * nw * wb + p) * 8) };
                for wd in 0..nw {
                    let mut wv = [_mm512_setzero_si512(); NB];
                    for (b, v) in wv.iter_mut().enumerate() {
                        // SAFETY: block `b0 + b`, word `wd` of the tap's plane `p`.
                        *v =
                            unsafe { _mm512_loadu_si512(wt.add(b * bw + wd * wb * 8) as *const _) };
                    }
                    for j in 0..P {
                        // SAFETY: word `wd < nw` of the pixel's plane.
                        let av = _mm512_set1_epi64(unsafe { xp[j].add(wd).read() } as i64);
                        for b in 0..NB {
                            let m = if XNOR {
                                _mm512_xor_si512(av, wv[b])
                            } else {
                                _mm512_and_si512(av, wv[b])
                            };
                            s[j][b] = _mm512_add_epi64(s[j][b], _mm512_popcnt_epi64(m));
                        }
                    }
                }
            }
        }
        let sh = _mm_cvtsi64_si128((p + r) as i64);
        for j in 0..P {
            for b in 0..NB {
                tot[j][b] = _mm512_add_epi64(tot[j][b], _mm512_sll_epi64(s[j][b], sh));
            }
        }
    }
    for j in 0..P {
        // SAFETY: the pixel exists and its window lies inside the planes.
        let asum = if XNOR { 0 } else { unsafe { t.act_sum(j) } };
        for b in 0..NB {
            let mut v = [0i64; 8];
            // SAFETY: `v` holds 8 i64.
            unsafe { _mm512_storeu_si512(v.as_mut_ptr() as *mut _, tot[j][b]) };
            t.store(acc, j, b, &v, XNOR, asum);
        }
    }
}

/// W1A1 convolution (`v(q) = 2q - 1`) with AVX2: XOR and a `vpshufb` nibble popcount.
pub fn xnor_avx2(
    g: &Geom,
    prepared: &[u8],
    planes: &[u64],
    rows: Rows,
    acc: &mut [i32],
) -> Result<(), KernelError> {
    if g.wbits != 1 {
        return Err(KernelError::Bits);
    }
    bits_check(g, 1, prepared, planes, rows, acc)?;
    if !Features::detect().avx2 {
        return Err(KernelError::Unsupported);
    }
    // SAFETY: feature and lengths checked above.
    unsafe { bits_avx2_impl::<true>(g, 1, prepared, planes, rows, acc) };
    Ok(())
}

/// Bit-serial `W{1,2,4} x A{1,2,4,8}` convolution with AVX2 (AND and a `vpshufb` popcount);
/// same arithmetic as [`bitserial_avx512`].
pub fn bitserial_avx2(
    g: &Geom,
    abits: u8,
    prepared: &[u8],
    planes: &[u64],
    rows: Rows,
    acc: &mut [i32],
) -> Result<(), KernelError> {
    if !matches!(abits, 1 | 2 | 4 | 8) {
        return Err(KernelError::Bits);
    }
    bits_check(g, abits, prepared, planes, rows, acc)?;
    if !Features::detect().avx2 {
        return Err(KernelError::Unsupported);
    }
    // SAFETY: feature and lengths checked above.
    unsafe { bits_avx2_impl::<false>(g, abits, prepared, planes, rows, acc) };
    Ok(())
}

/// # Safety
/// AVX2 present and [`bits_check`] passed.
#[target_feature(enable = "avx2")]
unsafe fn bits_avx2_impl<const XNOR: bool>(
    g: &Geom,
    abits: u8,
    prepared: &[u8],
    planes: &[u64],
    rows: Rows,
    acc: &mut [i32],
) {
    debug_assert!(bits_check(g, abits, prepared, planes, rows, acc).is_ok());
    let (first, end) = (rows.0 * g.ow(), rows.1 * g.ow());
    let nblk = g.cout_g().div_ceil(8);
    let bw = bits_block_words(g);
    for gi in 0..g.groups {
        for b0 in 0..nblk {
            let w = prepared[(gi * nblk + b0) * bw * 8..].as_ptr();
            tiles::<4>(first, end, |p0, np| {
                let t = BitTile {
                    g,
                    gi,
                    b0,
                    p0,
                    first,
                    ab: abits as usize,
                    w,
                    x: planes.as_ptr(),
                };
                // SAFETY: same preconditions as this function; the tile lies inside `acc`.
                unsafe {
                    if np == 4 {
                        bits_tile_avx2::<XNOR, 1, 4>(&t, acc)
                    } else {
                        bits_tile_avx2::<XNOR, 1, 1>(&t, acc)
                    }
                }
            });
        }
    }
}

/// Byte-wise popcount of `v` (`vpshufb` on nibbles), each byte `0..=8`.
///
/// # Safety
/// AVX2 present.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn popcnt8_avx2(v: __m256i, lut: __m256i, low: __m256i) -> __m256i {
    let lo = _mm256_and_si256(v, low);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
    _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi))
}

/// One `NB x 8` channel by `P` pixel tile of the AVX2 popcount kernels (two `u64x4` halves per
/// block). Byte counts are summed in `u8` lanes for up to 31 words, then widened with
/// `vpsadbw`.
///
/// # Safety
/// AVX2 present; the tile's pointers cover checked regions, blocks `b0 .. b0 + NB` and pixels
/// `p0 .. p0 + P` exist.
#[target_feature(enable = "avx2")]
unsafe fn bits_tile_avx2<const XNOR: bool, const NB: usize, const P: usize>(
    t: &BitTile<'_>,
    acc: &mut [i32],
) {
    let g = t.g;
    debug_assert!(t.p0 + P <= g.oh() * g.ow());
    debug_assert!((t.b0 + NB - 1) * 8 < g.cout_g());
    let (nw, wb, ab) = (words(g), g.wbits as usize, t.ab);
    let bw = bits_block_words(g);
    let lut = _mm256_setr_epi8(
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3,
        3, 4,
    );
    let low = _mm256_set1_epi8(0x0f);
    let zero = _mm256_setzero_si256();
    let mut base = [0usize; P];
    for (j, b) in base.iter_mut().enumerate() {
        *b = t.base(j);
    }
    let wp = t.w as *const u64;
    let mut tot = [[[0i64; 8]; NB]; P];
    let pairs = if XNOR { 1 } else { wb * ab };
    for pr in 0..pairs {
        let (p, r) = (pr / ab, pr % ab);
        let mut s = [[[zero; 2]; NB]; P];
        let mut c8 = [[[zero; 2]; NB]; P];
        let mut pending = 0;
        // Widens the byte counts (each below 256 after at most 31 words) into `s`.
        macro_rules! flush {
            () => {
                for j in 0..P {
                    for b in 0..NB {
                        for h in 0..2 {
                            let wide = _mm256_sad_epu8(c8[j][b][h], zero);
                            s[j][b][h] = _mm256_add_epi64(s[j][b][h], wide);
                            c8[j][b][h] = zero;
                        }
                    }
                }
            };
        }
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let tap = t.tap(ky, kx);
                let mut xp = [t.x; P];
                for j in 0..P {
                    // SAFETY: plane `r` of the tap's input pixel lies inside the planes.
                    xp[j] = unsafe { t.x.add(base[j] + tap + r * nw) };
                }
                // SAFETY: plane `p` of the tap inside block `b0` of the weights.
                let wt = unsafe { wp.add(((ky * g.kw + kx) * nw * wb + p) * 8) };
                for wd in 0..nw {
                    let mut wv = [[zero; 2]; NB];
                    for (b, v) in wv.iter_mut().enumerate() {
                        // SAFETY: block `b0 + b`, word `wd` of the tap's plane `p` (8 lanes).
                        unsafe {
                            let q = wt.add(b * bw + wd * wb * 8);
                            v[0] = _mm256_loadu_si256(q as *const _);
                            v[1] = _mm256_loadu_si256(q.add(4) as *const _);
                        }
                    }
                    for j in 0..P {
                        // SAFETY: word `wd < nw` of the pixel's plane.
                        let av = _mm256_set1_epi64x(unsafe { xp[j].add(wd).read() } as i64);
                        for b in 0..NB {
                            for h in 0..2 {
                                let m = if XNOR {
                                    _mm256_xor_si256(av, wv[b][h])
                                } else {
                                    _mm256_and_si256(av, wv[b][h])
                                };
                                // SAFETY: AVX2 present (this function's precondition).
                                let c = unsafe { popcnt8_avx2(m, lut, low) };
                                c8[j][b][h] = _mm256_add_epi8(c8[j][b][h], c);
                            }
                        }
                    }
                    pending += 1;
                    if pending == 31 {
                        flush!();
                        pending = 0;
                    }
                }
            }
        }
        flush!();
        for j in 0..P {
            for b in 0..NB {
                let mut v = [0i64; 8];
                // SAFETY: `v` holds 8 i64 (two 32-byte stores).
                unsafe {
                    _mm256_storeu_si256(v.as_mut_ptr() as *mut _, s[j][b][0]);
                    _mm256_storeu_si256(v.as_mut_ptr().add(4) as *mut _, s[j][b][1]);
                }
                for (o, x) in v.iter().enumerate() {
                    tot[j][b][o] += x << (p + r);
                }
            }
        }
    }
    for j in 0..P {
        // SAFETY: the pixel exists and its window lies inside the planes.
        let asum = if XNOR { 0 } else { unsafe { t.act_sum(j) } };
        for b in 0..NB {
            t.store(acc, j, b, &tot[j][b], XNOR, asum);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dispatch glue (kernels/CONTRACT.md)
// ---------------------------------------------------------------------------------------------

impl Geom {
    /// The kernel geometry of the driver's shape.
    pub(crate) fn of(s: &ConvShape) -> Geom {
        Geom {
            h: s.hp,
            w: s.wp,
            c: s.c,
            out_c: s.cout,
            groups: s.groups,
            kh: s.kh,
            kw: s.kw,
            sh: s.sh,
            sw: s.sw,
            wbits: s.wbits,
        }
    }
}

/// The x86 kernels this CPU runs for `kind` (any shape: 1-bit sign activations go through
/// the unsigned kernel and [`sign_fix`], XNOR on non-W1A1 shapes through bit-serial).
pub(crate) fn by_kind(kind: KernelKind) -> Option<ConvKernel> {
    let f = Features::detect();
    let (ok, prepared_len, prepare, run): (bool, fn(&ConvShape) -> usize, _, Run) = match kind {
        KernelKind::Int8DotVnni => (
            f.avx512vnni,
            glue_a8_len,
            glue_a8_prepare as fn(&Conv<'_>, &ConvShape, &mut [u8]),
            Run::Bytes(glue_a8_vnni),
        ),
        KernelKind::Int8DotAvx2 => (
            f.avx2,
            glue_a8_len,
            glue_a8_prepare,
            Run::Bytes(glue_a8_avx2),
        ),
        KernelKind::XnorAvx512 | KernelKind::BitSerialAvx512 => (
            f.avx512popcnt,
            glue_bits_len,
            glue_bits_prepare,
            Run::Bits(glue_bits_avx512),
        ),
        KernelKind::XnorAvx2 | KernelKind::BitSerialAvx2 => (
            f.avx2,
            glue_bits_len,
            glue_bits_prepare,
            Run::Bits(glue_bits_avx2),
        ),
        _ => return None,
    };
    ok.then_some(ConvKernel {
        kind,
        prepared_len,
        prepare,
        run,
        reads_codes: false,
    })
}

/// The best x86 kernel for `algo` on this CPU and shape (AVX-512 before AVX2), or `None`.
pub(crate) fn select(algo: Algo, s: &ConvShape) -> Option<ConvKernel> {
    if Geom::of(s).check().is_err() || !matches!(s.abits, 1 | 2 | 4 | 8) {
        return None;
    }
    let kinds = match algo {
        Algo::Xnor => [KernelKind::XnorAvx512, KernelKind::XnorAvx2],
        Algo::BitSerial => [KernelKind::BitSerialAvx512, KernelKind::BitSerialAvx2],
        Algo::Int8Dot => [KernelKind::Int8DotVnni, KernelKind::Int8DotAvx2],
        _ => return None,
    };
    kinds.into_iter().find_map(by_kind)
}

/// The driver's bit packer with AVX2 (`vpmovmskb`: 32 channels per instruction and plane):
/// the same result as `portable::pack_bits` (unpadded HWC input, `pad` codes around it, planes
/// as in CONTRACT.md). Returns `false`, touching nothing, when the CPU lacks AVX2 or a slice is
/// shorter than the shape needs; the caller then runs the portable packer.
pub(crate) fn pack_bits(s: &ConvShape, x: &[u8], pad: u8, out: &mut [u64]) -> bool {
    let (h, w, c, cin, cw, ab) = (s.h(), s.w(), s.c, s.cin_g, s.cw, s.abits as usize);
    let px = s.groups * ab * cw;
    if !Features::detect().avx2
        || ab > 8
        || cin * s.groups != c
        || out.len() < s.hp * s.wp * px
        || x.len() < h * w * c
    {
        return false;
    }
    // The words of a pad pixel: plane `p` is all ones over the valid channels when bit `p` of
    // `pad` is set.
    let valid = |wd: usize| match cin - wd * 64 {
        n if n >= 64 => u64::MAX,
        n => (1u64 << n) - 1,
    };
    let mut chunk = [0u8; 64];
    let mut planes = [0u64; 8];
    for y in 0..s.hp {
        for xx in 0..s.wp {
            let dst = &mut out[(y * s.wp + xx) * px..(y * s.wp + xx + 1) * px];
            let inside = y >= s.ph && y < s.ph + h && xx >= s.pw && xx < s.pw + w;
            if !inside {
                for g in 0..s.groups {
                    for p in 0..ab {
                        for wd in 0..cw {
                            dst[(g * ab + p) * cw + wd] =
                                if pad >> p & 1 == 1 { valid(wd) } else { 0 };
                        }
                    }
                }
                continue;
            }
            let src = &x[((y - s.ph) * w + (xx - s.pw)) * c..][..c];
            for g in 0..s.groups {
                for wd in 0..cw {
                    let part = &src[g * cin + wd * 64..g * cin + (wd * 64 + 64).min(cin)];
                    chunk[..part.len()].copy_from_slice(part);
                    chunk[part.len()..].fill(0);
                    // SAFETY: AVX2 detected above.
                    unsafe { planes_of_chunk_avx2(&chunk, &mut planes) };
                    for p in 0..ab {
                        dst[(g * ab + p) * cw + wd] = planes[p];
                    }
                }
            }
        }
    }
    true
}

/// Turns `sum num*q` into `sum num*(2q - 1) = 2 sum num*q - wsum` for 1-bit sign inputs.
fn sign_fix(s: &ConvShape, wsum: &[u8], acc: &mut [i32]) {
    for row in acc.chunks_exact_mut(s.cout) {
        for (v, d) in row.iter_mut().zip(wsum.chunks_exact(4)) {
            let ws = i32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            *v = v.wrapping_mul(2).wrapping_sub(ws);
        }
    }
}

fn glue_a8_len(s: &ConvShape) -> usize {
    a8_prepared_len(&Geom::of(s)) + 4 * s.cout
}

fn glue_a8_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let g = Geom::of(s);
    let n = a8_prepared_len(&g);
    let r = a8_prepare(conv.codes, &g, out);
    debug_assert!(r.is_ok(), "int8 prepare: {r:?}");
    super::write_wsum(conv, s, out.get_mut(n..).unwrap_or(&mut []));
}

fn glue_a8_run(
    s: &ConvShape,
    x: &[u8],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
    vnni: bool,
) {
    let g = Geom::of(s);
    let n = a8_prepared_len(&g).min(w.len());
    let (w, wsum) = w.split_at(n);
    let r = if vnni {
        a8_avx512vnni(&g, w, x, (y0, y1), acc)
    } else {
        a8_avx2(&g, w, x, (y0, y1), acc)
    };
    debug_assert!(r.is_ok(), "int8 kernel: {r:?}");
    if s.abits == 1 {
        sign_fix(s, wsum, acc);
    }
}

fn glue_a8_vnni(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    glue_a8_run(s, x, w, y0, y1, acc, true)
}

fn glue_a8_avx2(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    glue_a8_run(s, x, w, y0, y1, acc, false)
}

fn glue_bits_len(s: &ConvShape) -> usize {
    bits_prepared_len(&Geom::of(s)) + 4 * s.cout
}

fn glue_bits_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    let g = Geom::of(s);
    let n = bits_prepared_len(&g);
    let r = bits_prepare(conv.codes, &g, out);
    debug_assert!(r.is_ok(), "bit prepare: {r:?}");
    super::write_wsum(conv, s, out.get_mut(n..).unwrap_or(&mut []));
}

fn glue_bits_run(
    s: &ConvShape,
    x: &[u64],
    w: &[u8],
    y0: usize,
    y1: usize,
    acc: &mut [i32],
    avx512: bool,
) {
    let g = Geom::of(s);
    let n = bits_prepared_len(&g).min(w.len());
    let (w, wsum) = w.split_at(n);
    let rows = (y0, y1);
    let r = match (s.wbits == 1 && s.abits == 1, avx512) {
        (true, true) => xnor_avx512(&g, w, x, rows, acc),
        (true, false) => xnor_avx2(&g, w, x, rows, acc),
        (false, true) => bitserial_avx512(&g, s.abits, w, x, rows, acc),
        (false, false) => bitserial_avx2(&g, s.abits, w, x, rows, acc),
    };
    debug_assert!(r.is_ok(), "bit kernel: {r:?}");
    if s.abits == 1 && s.wbits != 1 {
        sign_fix(s, wsum, acc);
    }
}

fn glue_bits_avx512(s: &ConvShape, x: &[u64], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    glue_bits_run(s, x, w, y0, y1, acc, true)
}

fn glue_bits_avx2(s: &ConvShape, x: &[u64], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    glue_bits_run(s, x, w, y0, y1, acc, false)
}

/// The driver's requantization (`quant::requant_body`, same result) compiled with AVX2, so
/// that LLVM vectorises its i64 arithmetic (`vpmuldq`, `vpcmpgtq`) 4 lanes wide. Returns
/// `false`, touching nothing, when the CPU lacks AVX2; the caller then runs the portable body.
pub(crate) fn requant(
    raw: &slb_format::RawQuant,
    aff: Option<&slb_format::ChannelAffine<'_>>,
    outq: &crate::quant::QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) -> bool {
    if !Features::detect().avx2 {
        return false;
    }
    // SAFETY: `requant_avx2` only requires AVX2, detected just above; its body is safe Rust
    // (bounds-checked slices).
    unsafe { requant_avx2(raw, aff, outq, cout, acc, dst) };
    true
}

#[target_feature(enable = "avx2")]
unsafe fn requant_avx2(
    raw: &slb_format::RawQuant,
    aff: Option<&slb_format::ChannelAffine<'_>>,
    outq: &crate::quant::QParams,
    cout: usize,
    acc: &[i32],
    dst: &mut [u8],
) {
    crate::quant::requant_body(raw, aff, outq, cout, acc, dst);
}

/// The residual add (`quant::add_rows_body`, same result) compiled with AVX2; `false`,
/// touching nothing, when the CPU lacks AVX2.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_rows(
    a: &[u8],
    b: &[u8],
    qa: &crate::quant::QParams,
    qb: &crate::quant::QParams,
    p: &slb_format::AddParams<'_>,
    qo: &crate::quant::QParams,
    c: usize,
    out: &mut [u8],
) -> bool {
    if !Features::detect().avx2 {
        return false;
    }
    // SAFETY: `add_rows_avx2` only requires AVX2, detected just above; its body is safe Rust.
    unsafe { add_rows_avx2(a, b, qa, qb, p, qo, c, out) };
    true
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn add_rows_avx2(
    a: &[u8],
    b: &[u8],
    qa: &crate::quant::QParams,
    qb: &crate::quant::QParams,
    p: &slb_format::AddParams<'_>,
    qo: &crate::quant::QParams,
    c: usize,
    out: &mut [u8],
) {
    crate::quant::add_rows_body(a, b, qa, qb, p, qo, c, out);
}

#[cfg(test)]
mod tests {
    //! Every SIMD kernel against the plain loop nest, bit for bit, over awkward shapes. A CPU
    //! without a kernel's feature prints "skipped" for it; that is not a pass.
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// The plain loop nest over the format's packed codes (`sign`: `v(q) = 2q - 1`).
    fn reference(g: &Geom, codes: &[u8], input: &[u8], sign: bool) -> Vec<i32> {
        let (cin, cout) = (g.cin_g(), g.cout_g());
        let mut acc = vec![0i32; g.acc_len()];
        for oy in 0..g.oh() {
            for ox in 0..g.ow() {
                for o in 0..g.out_c {
                    let gi = o / cout;
                    let mut s = 0i32;
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let pix = (oy * g.sh + ky) * g.w + ox * g.sw + kx;
                            for i in 0..cin {
                                let q = input[pix * g.c + gi * cin + i] as i32;
                                let v = if sign { 2 * q - 1 } else { q };
                                s += g.numerator(codes, o, ky, kx, i) * v;
                            }
                        }
                    }
                    acc[(oy * g.ow() + ox) * g.out_c + o] = s;
                }
            }
        }
        acc
    }

    /// A random conv: geometry, the format's packed codes, padded input codes of `abits`.
    #[derive(Debug, Clone)]
    struct Case {
        g: Geom,
        abits: u8,
        codes: Vec<u8>,
        input: Vec<u8>,
        rows: Rows,
    }

    impl Case {
        /// The reference accumulators of the case's rows.
        fn want(&self, sign: bool) -> Vec<i32> {
            let all = reference(&self.g, &self.codes, &self.input, sign);
            let row = self.g.ow() * self.g.out_c;
            all[self.rows.0 * row..self.rows.1 * row].to_vec()
        }
        fn acc_len(&self) -> usize {
            (self.rows.1 - self.rows.0) * self.g.ow() * self.g.out_c
        }
    }

    fn case(
        wbits: impl Strategy<Value = u8>,
        abits: impl Strategy<Value = u8>,
    ) -> impl Strategy<Value = Case> {
        let chans = prop::sample::select(vec![1usize, 3, 4, 8, 31, 32, 33, 63, 64, 65, 129]);
        let outs = prop::sample::select(vec![1usize, 3, 8, 9, 15, 16, 17, 33, 64, 65]);
        (
            chans,
            outs,
            1usize..=3,
            prop::sample::select(vec![(1usize, 1usize), (3, 3), (1, 3), (3, 1), (2, 2)]),
            1usize..=2,
            1usize..=2,
            wbits,
            abits,
            0usize..=5,
            0usize..=5,
            any::<u64>(),
        )
            .prop_map(
                |(cin, cout, groups, (kh, kw), sh, sw, wbits, abits, eh, ew, seed)| {
                    let g = Geom {
                        h: kh + eh,
                        w: kw + ew,
                        c: cin * groups,
                        out_c: cout * groups,
                        groups,
                        kh,
                        kw,
                        sh,
                        sw,
                        wbits,
                    };
                    let mut s = seed | 1;
                    let mut next = move || {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        s
                    };
                    let codes: Vec<u8> = (0..g.out_c * kh * kw * cin)
                        .map(|_| (next() % (1 << wbits)) as u8)
                        .collect();
                    let codes = slb_format::pack_codes(
                        &codes,
                        g.out_c as u32,
                        [kh as u16, kw as u16],
                        cin as u32,
                        wbits,
                    )
                    .expect("valid codes");
                    // Extreme codes are common: all-max inputs probe saturation.
                    let top = (1u32 << abits) - 1;
                    let input = (0..g.input_len())
                        .map(|_| match next() % 4 {
                            0 => top as u8,
                            1 => 0,
                            _ => (next() % (top as u64 + 1)) as u8,
                        })
                        .collect();
                    // Half the cases run all rows, the others a random range (maybe empty).
                    let oh = g.oh();
                    let rows = if next() % 2 == 0 {
                        (0, oh)
                    } else {
                        let y0 = (next() % (oh as u64 + 1)) as usize;
                        (y0, y0 + (next() % ((oh - y0) as u64 + 1)) as usize)
                    };
                    Case {
                        g,
                        abits,
                        codes,
                        input,
                        rows,
                    }
                },
            )
    }

    fn skipped(name: &str) {
        std::println!("skipped: {name} (CPU lacks the feature)");
    }

    fn run_a8(c: &Case, avx512: bool) -> Option<Vec<i32>> {
        let f = Features::detect();
        if (avx512 && !f.avx512vnni) || (!avx512 && !f.avx2) {
            return None;
        }
        let mut w = vec![0xa5u8; a8_prepared_len(&c.g) + 3];
        a8_prepare(&c.codes, &c.g, &mut w).unwrap();
        // Guard values past the accumulator must survive.
        let mut acc = vec![i32::MIN; c.acc_len() + 5];
        if avx512 {
            a8_avx512vnni(&c.g, &w, &c.input, c.rows, &mut acc).unwrap();
        } else {
            a8_avx2(&c.g, &w, &c.input, c.rows, &mut acc).unwrap();
        }
        assert!(acc[c.acc_len()..].iter().all(|&v| v == i32::MIN));
        acc.truncate(c.acc_len());
        Some(acc)
    }

    fn run_bits(c: &Case, avx512: bool, xnor: bool) -> Option<Vec<i32>> {
        let f = Features::detect();
        if (avx512 && !f.avx512popcnt) || (!avx512 && !f.avx2) {
            return None;
        }
        let mut w = vec![0x5au8; bits_prepared_len(&c.g) + 1];
        bits_prepare(&c.codes, &c.g, &mut w).unwrap();
        let mut planes = vec![u64::MAX; planes_len(&c.g, c.abits) + 7];
        pack_planes(&c.g, c.abits, &c.input, &mut planes).unwrap();
        let mut acc = vec![i32::MIN; c.acc_len() + 5];
        match (xnor, avx512) {
            (true, true) => xnor_avx512(&c.g, &w, &planes, c.rows, &mut acc).unwrap(),
            (true, false) => xnor_avx2(&c.g, &w, &planes, c.rows, &mut acc).unwrap(),
            (false, true) => {
                bitserial_avx512(&c.g, c.abits, &w, &planes, c.rows, &mut acc).unwrap()
            }
            (false, false) => bitserial_avx2(&c.g, c.abits, &w, &planes, c.rows, &mut acc).unwrap(),
        }
        assert!(acc[c.acc_len()..].iter().all(|&v| v == i32::MIN));
        acc.truncate(c.acc_len());
        Some(acc)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn a8_avx2_matches_reference(c in case(prop::sample::select(vec![1u8, 2, 4]), prop::sample::select(vec![2u8, 4, 8]))) {
            match run_a8(&c, false) {
                Some(acc) => prop_assert_eq!(acc, c.want(false)),
                None => skipped("a8_avx2"),
            }
        }

        #[test]
        fn a8_avx512vnni_matches_reference(c in case(prop::sample::select(vec![1u8, 2, 4]), prop::sample::select(vec![2u8, 4, 8]))) {
            match run_a8(&c, true) {
                Some(acc) => prop_assert_eq!(acc, c.want(false)),
                None => skipped("a8_avx512vnni"),
            }
        }

        #[test]
        fn xnor_avx2_matches_reference(c in case(Just(1u8), Just(1u8))) {
            match run_bits(&c, false, true) {
                Some(acc) => prop_assert_eq!(acc, c.want(true)),
                None => skipped("xnor_avx2"),
            }
        }

        #[test]
        fn xnor_avx512_matches_reference(c in case(Just(1u8), Just(1u8))) {
            match run_bits(&c, true, true) {
                Some(acc) => prop_assert_eq!(acc, c.want(true)),
                None => skipped("xnor_avx512"),
            }
        }

        #[test]
        fn bitserial_avx2_matches_reference(c in case(prop::sample::select(vec![1u8, 2, 4]), prop::sample::select(vec![1u8, 2, 4, 8]))) {
            match run_bits(&c, false, false) {
                Some(acc) => prop_assert_eq!(acc, c.want(false)),
                None => skipped("bitserial_avx2"),
            }
        }

        #[test]
        fn bitserial_avx512_matches_reference(c in case(prop::sample::select(vec![1u8, 2, 4]), prop::sample::select(vec![1u8, 2, 4, 8]))) {
            match run_bits(&c, true, false) {
                Some(acc) => prop_assert_eq!(acc, c.want(false)),
                None => skipped("bitserial_avx512"),
            }
        }

        #[test]
        fn pack_planes_avx2_matches_scalar(chunk in prop::array::uniform32(any::<u8>()), chunk2 in prop::array::uniform32(any::<u8>())) {
            let mut c = [0u8; 64];
            c[..32].copy_from_slice(&chunk);
            c[32..].copy_from_slice(&chunk2);
            let mut a = [0u64; 8];
            planes_of_chunk(&c, &mut a);
            if Features::detect().avx2 {
                let mut b = [0u64; 8];
                // SAFETY: AVX2 detected.
                unsafe { planes_of_chunk_avx2(&c, &mut b) };
                prop_assert_eq!(a, b);
            } else {
                skipped("planes_of_chunk_avx2");
            }
        }
    }

    /// The contract wrappers (`by_kind`), including 1-bit sign inputs on the int8 and
    /// bit-serial kernels, against the reference with `v(q) = 2q - 1` or `q`.
    fn glue_case(c: &Case, kind: KernelKind) -> Option<Vec<i32>> {
        let k = by_kind(kind)?;
        let g = &c.g;
        let conv = Conv {
            input: 0,
            output: 1,
            out_channels: g.out_c as u32,
            in_channels: g.c as u32,
            kernel: [g.kh as u16, g.kw as u16],
            stride: [g.sh as u16, g.sw as u16],
            padding: [0, 0],
            groups: g.groups as u32,
            weight_bits: g.wbits,
            codes: &c.codes,
            requant: slb_format::Requant {
                raw: slb_format::RawQuant {
                    mult: 1,
                    shift: 1,
                    zero_point: 0,
                    bits: 8,
                    scale: 1.0,
                },
                affine: None,
            },
        };
        let s = ConvShape {
            hp: g.h,
            wp: g.w,
            c: g.c,
            oh: g.oh(),
            ow: g.ow(),
            cout: g.out_c,
            kh: g.kh,
            kw: g.kw,
            sh: g.sh,
            sw: g.sw,
            groups: g.groups,
            cin_g: g.cin_g(),
            cout_g: g.cout_g(),
            wbits: g.wbits,
            abits: c.abits,
            cw: g.cin_g().div_ceil(64),
            ph: 0,
            pw: 0,
        };
        let mut w = vec![0u8; (k.prepared_len)(&s)];
        (k.prepare)(&conv, &s, &mut w);
        let mut acc = vec![0i32; c.acc_len()];
        match k.run {
            Run::Bytes(f) => f(&s, &c.input, &w, c.rows.0, c.rows.1, &mut acc),
            Run::Bits(f) => {
                let mut planes = vec![0u64; planes_len(g, c.abits)];
                pack_planes(g, c.abits, &c.input, &mut planes).unwrap();
                f(&s, &planes, &w, c.rows.0, c.rows.1, &mut acc)
            }
        }
        Some(acc)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn contract_wrappers_match_reference(
            c in case(prop::sample::select(vec![1u8, 2, 4]), prop::sample::select(vec![1u8, 2, 8])),
        ) {
            for kind in [
                KernelKind::Int8DotAvx2,
                KernelKind::Int8DotVnni,
                KernelKind::BitSerialAvx2,
                KernelKind::BitSerialAvx512,
                KernelKind::XnorAvx2,
                KernelKind::XnorAvx512,
            ] {
                match glue_case(&c, kind) {
                    Some(acc) => prop_assert_eq!(acc, c.want(c.abits == 1), "{:?}", kind),
                    None => skipped(&std::format!("{kind:?}")),
                }
            }
        }
    }

    /// A bit-plane kernel entry point, for the speed table.
    type BitKernel = fn(&Geom, u8, &[u8], &[u64], Rows, &mut [i32]) -> Result<(), KernelError>;

    /// Thread CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`, Linux), so that a loaded machine
    /// does not count waiting for a core.
    fn cpu_ns() -> f64 {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
        }
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `ts` is a writable timespec; 3 is CLOCK_THREAD_CPUTIME_ID on Linux.
        let rc = unsafe { clock_gettime(3, &mut ts) };
        assert_eq!(rc, 0);
        ts.sec as f64 * 1e9 + ts.nsec as f64
    }

    /// Best of 5 batches of ~20 ms: ns per call.
    fn time(mut f: impl FnMut()) -> f64 {
        f();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = cpu_ns();
            let mut n = 0;
            while cpu_ns() - t0 < 2e7 {
                f();
                n += 1;
            }
            best = best.min((cpu_ns() - t0) / n as f64);
        }
        best
    }

    /// Kernel-only speed (MAC/ns, thread CPU time) on the ResNet18-CIFAR layer shapes, for
    /// every x86 kernel this CPU has; not a correctness test. Run with
    /// `cargo test -p slb-runtime --release kernel_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn kernel_speed() {
        let f = Features::detect();
        std::println!("{f:?}");
        std::println!("| shape | bits | kernel | MAC/ns | us |");
        std::println!("|---|---|---|---:|---:|");
        for (c, s) in [(64usize, 32usize), (128, 16), (256, 8), (512, 4)] {
            for k in [3usize, 1] {
                let p = k / 2;
                for (wb, ab) in [(1u8, 1u8), (1, 8), (2, 8), (4, 8), (2, 2), (1, 4)] {
                    let g = Geom {
                        h: s + 2 * p,
                        w: s + 2 * p,
                        c,
                        out_c: c,
                        groups: 1,
                        kh: k,
                        kw: k,
                        sh: 1,
                        sw: 1,
                        wbits: wb,
                    };
                    let macs = (g.oh() * g.ow() * c * c * k * k) as f64;
                    let codes: Vec<u8> =
                        (0..g.codes_len()).map(|i| (i * 7919 % 251) as u8).collect();
                    let mask = ((1u16 << ab) - 1) as u8;
                    let input: Vec<u8> = (0..g.input_len())
                        .map(|i| (i * 31 % 256) as u8 & mask)
                        .collect();
                    let rows = (0, g.oh());
                    let mut acc = vec![0i32; g.acc_len()];
                    let mut wa = vec![0u8; a8_prepared_len(&g)];
                    a8_prepare(&codes, &g, &mut wa).unwrap();
                    let mut wbits = vec![0u8; bits_prepared_len(&g)];
                    bits_prepare(&codes, &g, &mut wbits).unwrap();
                    let mut planes = vec![0u64; planes_len(&g, ab)];
                    pack_planes(&g, ab, &input, &mut planes).unwrap();
                    let mut runs: Vec<(&str, f64)> = Vec::new();
                    if ab > 1 {
                        if f.avx512vnni {
                            runs.push((
                                "int8-dot/avx512-vnni",
                                time(|| a8_avx512vnni(&g, &wa, &input, rows, &mut acc).unwrap()),
                            ));
                        }
                        if f.avx2 {
                            runs.push((
                                "int8-dot/avx2",
                                time(|| a8_avx2(&g, &wa, &input, rows, &mut acc).unwrap()),
                            ));
                        }
                    }
                    let bits: [(&str, bool, BitKernel); 2] = if ab == 1 {
                        [
                            ("xnor/avx512", f.avx512popcnt, |g, _, w, x, r, a| {
                                xnor_avx512(g, w, x, r, a)
                            }),
                            ("xnor/avx2", f.avx2, |g, _, w, x, r, a| {
                                xnor_avx2(g, w, x, r, a)
                            }),
                        ]
                    } else {
                        [
                            ("bitserial/avx512", f.avx512popcnt, bitserial_avx512),
                            ("bitserial/avx2", f.avx2, bitserial_avx2),
                        ]
                    };
                    for (name, ok, run) in bits {
                        if ok {
                            runs.push((
                                name,
                                time(|| run(&g, ab, &wbits, &planes, rows, &mut acc).unwrap()),
                            ));
                        }
                    }
                    for (name, t) in runs {
                        std::println!(
                            "| c{c}-s{s}-k{k} | W{wb}A{ab} | {name} | {:.1} | {:.0} |",
                            macs / t,
                            t / 1e3
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The AVX2 driver packer equals the portable one (padding, groups, odd channels).
        #[test]
        fn pack_bits_matches_portable(
            c in case(Just(1u8), prop::sample::select(vec![1u8, 2, 4, 8])),
            ph in 0usize..=2,
            pw in 0usize..=2,
            pad in any::<u8>(),
        ) {
            let g = &c.g;
            let s = ConvShape {
                hp: g.h + 2 * ph,
                wp: g.w + 2 * pw,
                c: g.c,
                oh: 1,
                ow: 1,
                cout: g.out_c,
                kh: g.kh,
                kw: g.kw,
                sh: 1,
                sw: 1,
                groups: g.groups,
                cin_g: g.cin_g(),
                cout_g: g.cout_g(),
                wbits: 1,
                abits: c.abits,
                cw: g.cin_g().div_ceil(64),
                ph,
                pw,
            };
            let pad = pad & ((1u16 << c.abits) - 1) as u8;
            let n = s.hp * s.wp * s.groups * c.abits as usize * s.cw;
            let mut want = vec![7u64; n];
            super::super::portable::pack_bits(&s, &c.input, pad, &mut want);
            let mut got = vec![9u64; n];
            if pack_bits(&s, &c.input, pad, &mut got) {
                prop_assert_eq!(got, want);
            } else {
                skipped("pack_bits (avx2)");
            }
        }
    }

    /// Bit order of the planes, pinned with one-hot codes.
    #[test]
    fn planes_one_hot() {
        let mut c = [0u8; 64];
        c[37] = 0b1000_0100;
        let mut w = [0u64; 8];
        planes_of_chunk(&c, &mut w);
        assert_eq!(w, [0, 0, 1 << 37, 0, 0, 0, 0, 1 << 37]);
    }

    /// The largest accumulators the format allows: all-max codes, 4-bit weights at the extreme.
    #[test]
    fn a8_extremes_do_not_saturate() {
        let g = Geom {
            h: 3,
            w: 3,
            c: 512,
            out_c: 17,
            groups: 1,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            wbits: 4,
        };
        for k in [0u8, 15] {
            let codes = slb_format::pack_codes(&vec![k; 17 * 9 * 512], 17, [3, 3], 512, 4).unwrap();
            let c = Case {
                g,
                abits: 8,
                codes,
                input: vec![255; g.input_len()],
                rows: (0, 1),
            };
            let want = reference(&g, &c.codes, &c.input, false);
            assert_eq!(
                want[0],
                if k == 0 {
                    -15 * 255 * 9 * 512
                } else {
                    15 * 255 * 9 * 512
                }
            );
            for avx512 in [false, true] {
                match run_a8(&c, avx512) {
                    Some(acc) => assert_eq!(acc, want),
                    None => skipped("a8 extremes"),
                }
            }
        }
    }

    #[test]
    fn errors_not_panics() {
        let g = Geom {
            h: 2,
            w: 2,
            c: 4,
            out_c: 4,
            groups: 3,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            wbits: 1,
        };
        assert_eq!(a8_prepare(&[], &g, &mut []), Err(KernelError::Geometry));
        let g = Geom { groups: 1, ..g };
        let mut acc = [0i32; 3];
        let w = vec![0u8; a8_prepared_len(&g)];
        assert!(matches!(
            a8_avx2(&g, &w, &[0; 16], (0, 2), &mut acc),
            Err(KernelError::Length { .. })
        ));
        assert_eq!(
            bitserial_avx2(&g, 3, &[], &[], (0, 0), &mut []),
            Err(KernelError::Bits)
        );
    }
}
