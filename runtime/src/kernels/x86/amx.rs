//! The int8 dot with Intel AMX (`tdpbusd`): one instruction multiplies a tile of up to 16
//! output pixels by 64 input channels (`u8` codes) with a tile of 64 input channels by 16
//! output channels (`i8` numerators) into 16 x 16 `i32` sums, 16,384 multiply-adds, the same
//! exact integer products as `vpdpbusd`.
//!
//! The weights are the int8 dot's layout (`[g][O/16][kh][kw][cin/4][16][4]`, then `wsum`):
//! with 64 input channels a tap and block of 16 output channels, 16 rows of 64 bytes, which
//! is the layout `tdpbusd` reads its second operand in. 1-bit weights are kept as the sign
//! masks of those rows (a `u64` a row, 8x smaller: the 512-channel layers' 2.4 MB of bytes
//! each came from L3 on every inference) and expanded into a tile a step, one step ahead.
//! The activations are read in place from the padded HWC bytes: a tile's rows are `m` pixels,
//! `sw * c` bytes apart, 64 channels each. So the kernel takes convs of one group with `cin` a
//! multiple of 64 and `cout` a multiple of 16 ([`super::super::amx_fits`]).
//!
//! A register tile is two chunks of pixels by two blocks of 16 output channels: tiles 0-3
//! accumulate, 4-5 hold the chunks' activations and 6-7 the blocks' weights of one tap and 64
//! input channels. A chunk is `m = min(16, ow)` pixels of one output row, the last of a row
//! ending at the row's end (it may overlap the one before, which it then computes again: the
//! same sums), stored straight into the accumulators; or, at stride 1 on rows narrower than
//! 16 pixels, 16 consecutive pixels of the padded input in row-major order taken as window
//! origins, whose `wp - ow` pixels between two rows' outputs are computed and dropped (at 4x4
//! outputs two tiles of 16 rows instead of four of 4: the W1A8 network 13 % faster), stored
//! through a tile-sized buffer. Blocks are the outer loop and chunks the inner, so that a
//! pair of blocks' weights stays in the caches while every chunk of the call passes over
//! them (each chunk pair expands them again); the calls take up to 64 KiB of accumulators
//! ([`super::super::acc_chunk`]): a 4x4 layer in one call.
//!
//! Linux hands AMX's register state to a process only once it asks (`arch_prctl`
//! `ARCH_REQ_XCOMP_PERM`); `Features` asks when it detects the CPU, and reports AMX only when
//! that succeeded.

use core::arch::asm;

use super::*;

/// `ldtilecfg`'s operand: palette 1, every tile 64 bytes wide, tiles 0-5 of `m` rows (the
/// accumulators and the activations), tiles 6-7 of 16 (the weights: 64 channels in groups
/// of 4).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(m: usize) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = if t >= 6 { 16 } else { m as u8 };
        }
        TileConfig(c)
    }
}

/// Asks Linux for AMX's tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`); true if granted. Without it the first tile instruction faults.
#[cfg(all(feature = "std", target_os = "linux"))]
pub(crate) fn request_amx() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the `arch_prctl` system call with a request code and a feature number reads and
    // writes no memory of this process; `syscall` clobbers `rcx` and `r11`.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Whether the CPU has AMX's tiles and its int8 products (CPUID leaf 7: `AMX-TILE`, EDX bit
/// 24, and `AMX-INT8`, bit 25). Read directly: `is_x86_feature_detected!("amx-int8")` is
/// still unstable in Rust 1.95.
#[cfg(all(feature = "std", target_os = "linux"))]
pub(super) fn cpu_has_amx_int8() -> bool {
    // CPUID is present on every x86-64 CPU; leaf 0 gives the highest leaf.
    let (max, leaf7) = (__cpuid(0).eax, __cpuid_count(7, 0));
    max >= 7 && leaf7.edx >> 24 & 3 == 3
}

/// Bytes of the 1-bit weights as sign masks: a `u64` per block of 16 output channels, tap and
/// group of 4 input channels.
fn sign_bytes(s: &ConvShape) -> usize {
    s.cout_g.div_ceil(16) * s.kh * s.kw * s.cin_g.div_ceil(4) * 8
}

/// Bytes of the weights before `wsum`: sign masks for 1-bit weights, else the int8 layout.
fn amx_weight_bytes(s: &ConvShape) -> usize {
    if s.wbits == 1 {
        sign_bytes(s)
    } else {
        int8_weight_bytes(s)
    }
}

/// The prepared length of [`KernelKind::Int8DotAmx`]: the weights, then `wsum`.
pub(super) fn amx_prepared_len(s: &ConvShape) -> usize {
    amx_weight_bytes(s) + 4 * s.cout
}

/// The weights of [`KernelKind::Int8DotAmx`]: 2- and 4-bit weights in the int8 dot's layout;
/// 1-bit weights as the sign masks of its rows, eight times smaller, which the kernel expands
/// into a tile per tap and 64 input channels as it goes (`[O/16][kh][kw][cin/4]` `u64`: bit
/// `j` set where byte `j` of the int8 layout's 64-byte row, output channel `j / 4` of the block
/// and input channel `4 r + j % 4`, is -1); then `wsum`.
pub(super) fn amx_prepare(conv: &Conv<'_>, s: &ConvShape, out: &mut [u8]) {
    if s.wbits != 1 {
        return int8_prepare(conv, s, out);
    }
    let (len, full) = (sign_bytes(s), amx_prepared_len(s));
    let Some(dst) = out.get_mut(..full) else {
        return;
    };
    dst[..len].fill(0);
    let codes = CodeReader::new(conv);
    let c4n = s.cin_g.div_ceil(4);
    for o in 0..s.cout_g {
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                for i in 0..s.cin_g {
                    if codes.numerator(o, ky, kx, i) < 0 {
                        let row = ((o / 16 * s.kh + ky) * s.kw + kx) * c4n + i / 4;
                        let bit = (o % 16) * 4 + i % 4;
                        dst[row * 8 + bit / 8] |= 1 << (bit % 8);
                    }
                }
            }
        }
    }
    write_wsum(conv, s, &mut dst[len..]);
}

/// [`KernelKind::Int8DotAmx`].
pub(super) fn int8_amx(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    assert!(
        crate::kernels::amx_fits(s),
        "AMX int8 dot: one group, input channels a multiple of 64, outputs of 16"
    );
    // SAFETY: `by_kind` hands this kernel out only where AMX-TILE/INT8 and AVX-512 F/BW are
    // present and the OS granted AMX's state; `int8_call` checks the call against the contract.
    unsafe { int8_call(s, x, w, y0, y1, acc, int8_amx_impl, amx_weight_bytes(s)) }
}

/// # Safety
/// AMX-TILE/INT8 and AVX-512 F/BW present, AMX granted; the call passed
/// [`ConvShape::assert_call`] and [`super::super::amx_fits`].
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn int8_amx_impl(s: &ConvShape, x: &[u8], w: &[u8], y0: usize, y1: usize, acc: &mut [i32]) {
    if y0 >= y1 {
        return;
    }
    // Rows of 16 pixels of the padded input's row-major order where a row of outputs is
    // narrower than 16 (stride 1: pixel `q`'s window starts at padded pixel `q`, the `wp - ow`
    // pixels between two rows' outputs computed and dropped), else chunks of 16 pixels of one
    // output row.
    let last = (s.oh - 1) * s.wp + s.ow - 1;
    let linear = s.ow < 16 && s.sw == 1 && s.sh == 1 && last >= 15;
    let m = if linear { 16 } else { s.ow.min(16) };
    let cfg = TileConfig::new(m);
    let (per_row, first, chunks) = if linear {
        // From the call's first output to its last, the last chunk ending at the output's last
        // pixel (so that no window reads past the padded input).
        let (q0, q1) = (y0 * s.wp, (y1 - 1) * s.wp + s.ow);
        (0, q0, (q1 - q0).div_ceil(16))
    } else {
        let per_row = s.ow.div_ceil(m);
        (per_row, 0, (y1 - y0) * per_row)
    };
    let chunk = |i: usize| {
        if linear {
            Chunk::Linear((first + 16 * i).min(last - 15))
        } else {
            let (r, k) = (y0 + i / per_row, i % per_row);
            Chunk::Row(r, (k * m).min(s.ow - m))
        }
    };
    let nblk = s.cout / 16;
    // SAFETY: AMX present and granted (caller); the configuration is 64 readable bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    // Blocks outside, chunks inside: a pair of blocks' weights (18 KiB at 64 input channels,
    // 144 KiB at 512) stay in the caches while every chunk of the call passes over them.
    let mut b = 0;
    while b < nblk {
        let pair = b + 1 < nblk;
        let mut i = 0;
        while i < chunks {
            let two = i + 1 < chunks;
            let (c0, c1) = (chunk(i), chunk(if two { i + 1 } else { i }));
            // SAFETY: as above; chunks `c0`, `c1` lie in the call's rows and blocks `b`,
            // `b + 1` (if `pair`) exist.
            unsafe { tile_pair(s, x, w, (y0, y1), acc, (c0, c1, two), (b, pair)) };
            i += 2;
        }
        b += 2;
    }
    // SAFETY: AMX present; releases the tile state configured above.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// A register tile's rows of pixels.
#[derive(Clone, Copy)]
enum Chunk {
    /// `m` pixels of output row `.0` from pixel `.1`.
    Row(usize, usize),
    /// 16 pixels of the padded input's row-major order from `.0`, as window origins (stride
    /// 1); those whose window is an output of the call are stored.
    Linear(usize),
}

impl Chunk {
    /// Byte offset of the chunk's first window in the padded input.
    fn origin(self, s: &ConvShape) -> usize {
        match self {
            Chunk::Row(r, p) => (r * s.sh * s.wp + p * s.sw) * s.c,
            Chunk::Linear(q) => q * s.c,
        }
    }

    /// Stores accumulator tile `T` (block `blk`) into the outputs of the call's rows
    /// `y0..y1`.
    ///
    /// # Safety
    /// AMX configured; the chunk lies in the call's rows (a `Row` chunk: its `m` outputs),
    /// block `blk` exists, `acc` holds the call's rows.
    #[inline(always)]
    unsafe fn store<const T: usize>(
        self,
        s: &ConvShape,
        acc: &mut [i32],
        (y0, y1): (usize, usize),
        blk: usize,
    ) {
        let row = s.cout * 4;
        let out = acc.as_mut_ptr() as *mut u8;
        // SAFETY: as the caller states: a `Row` chunk's `m` rows of 16 `i32` lie in `acc`;
        // a `Linear` chunk goes through a tile-sized buffer, and its rows that are outputs of
        // the call are copied.
        unsafe {
            match self {
                Chunk::Row(r, p) => {
                    let at = out.add(((r - y0) * s.ow + p) * row + blk * 64);
                    tile_store::<T>(at, row);
                }
                Chunk::Linear(q) => {
                    let mut buf = Align64([[0i32; 16]; 16]);
                    tile_store::<T>(buf.0.as_mut_ptr() as *mut u8, 64);
                    for (j, v) in buf.0.iter().enumerate() {
                        let (oy, ox) = ((q + j) / s.wp, (q + j) % s.wp);
                        if ox < s.ow && oy >= y0 && oy < y1 {
                            let at = ((oy - y0) * s.ow + ox) * s.cout + blk * 16;
                            if let Some(d) = acc.get_mut(at..at + 16) {
                                d.copy_from_slice(v);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `tilestored` of accumulator tile `T` (0-3) at `p`, rows `stride` bytes apart.
///
/// # Safety
/// AMX configured; the tile's rows writable at `p`.
#[inline(always)]
unsafe fn tile_store<const T: usize>(p: *mut u8, stride: usize) {
    // SAFETY: as the caller states.
    unsafe {
        match T {
            0 => {
                asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
            1 => {
                asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
            2 => {
                asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
            _ => {
                asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
        }
    }
}

/// Expands the 16 sign masks at `m` into a weight tile of `+1` and `-1` bytes.
///
/// # Safety
/// AVX-512 F/BW present; 16 `u64` readable at `m`.
#[inline(always)]
unsafe fn expand(m: *const u8, tile: &mut [u8; 1024]) {
    // SAFETY: AVX-512 F/BW present; 128 readable bytes at `m` (caller); the stores write the
    // tile's 16 rows of 64 bytes.
    unsafe {
        let (plus, minus) = (_mm512_set1_epi8(1), _mm512_set1_epi8(-1));
        for r in 0..16 {
            let k = (m.add(8 * r) as *const u64).read_unaligned();
            let v = _mm512_mask_blend_epi8(k, plus, minus);
            _mm512_storeu_si512(tile.as_mut_ptr().add(64 * r) as *mut _, v);
        }
    }
}

/// Expands the sign masks at `m` into `tiles[0]` and, if `pair`, the next block's (`bb`
/// bytes on) into `tiles[1]`.
///
/// # Safety
/// AVX-512 F/BW present; 16 `u64` readable at `m` (and at `m + bb` if `pair`).
#[inline(always)]
unsafe fn expand_pair(m: *const u8, bb: usize, pair: bool, tiles: &mut [[u8; 1024]; 2]) {
    // SAFETY: as the caller states.
    unsafe {
        expand(m, &mut tiles[0]);
        if pair {
            expand(m.add(bb), &mut tiles[1]);
        }
    }
}

/// One step of a register tile: the activations of chunk 0 at `a0` (and chunk 1 at `a1`),
/// rows `astride` bytes apart, times the weight tiles at `w0` (and `w1`), added to tiles 0
/// (chunk 0, block 0), 1 (chunk 0, block 1), 2 (chunk 1, block 0) and 3 (chunk 1, block 1).
///
/// # Safety
/// AMX configured by [`int8_amx_impl`]; the tiles' rows readable at the pointers.
#[inline(always)]
unsafe fn step(
    a0: *const u8,
    a1: Option<*const u8>,
    astride: usize,
    w0: *const u8,
    w1: Option<*const u8>,
) {
    // SAFETY: as the caller states.
    unsafe {
        asm!(
            "tileloadd tmm4, [{a} + {st}*1]",
            "tileloadd tmm6, [{w} + {ws}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            a = in(reg) a0,
            w = in(reg) w0,
            st = in(reg) astride,
            ws = in(reg) 64usize,
            options(nostack, readonly)
        );
        if let Some(w1) = w1 {
            asm!(
                "tileloadd tmm7, [{w} + {ws}*1]",
                "tdpbusd tmm1, tmm4, tmm7",
                w = in(reg) w1,
                ws = in(reg) 64usize,
                options(nostack, readonly)
            );
        }
        if let Some(a1) = a1 {
            asm!(
                "tileloadd tmm5, [{a} + {st}*1]",
                "tdpbusd tmm2, tmm5, tmm6",
                a = in(reg) a1,
                st = in(reg) astride,
                options(nostack, readonly)
            );
            if w1.is_some() {
                asm!("tdpbusd tmm3, tmm5, tmm7", options(nostack, nomem));
            }
        }
    }
}

/// Sums of chunks `c0` (and `c1` if `two`) by blocks `b` (and `b + 1` if `pair`) over every
/// tap and 64 input channels, stored into their accumulators.
///
/// # Safety
/// AMX present and configured by [`int8_amx_impl`]; the chunks lie in the call's rows from
/// `y0`, the blocks exist, the call passed [`ConvShape::assert_call`].
#[inline(always)]
unsafe fn tile_pair(
    s: &ConvShape,
    x: &[u8],
    w: &[u8],
    ys: (usize, usize),
    acc: &mut [i32],
    (c0, c1, two): (Chunk, Chunk, bool),
    (b, pair): (usize, bool),
) {
    let c4n = s.cin_g / 4;
    // A block's weight bytes: 64 a row (the int8 layout) or 8 (sign masks).
    let sign = s.wbits == 1;
    let bb = s.kh * s.kw * c4n * if sign { 8 } else { 64 };
    // The sign masks' tiles of two steps (a tap and 64 input channels), expanded (blocks `b`,
    // `b + 1`).
    let mut tiles = Align64([[[0u8; 1024]; 2]; 2]);
    let astride = s.sw * s.c;
    let (o0, o1) = (c0.origin(s), c1.origin(s));
    // SAFETY: every tile load reads inside the padded input (the chunk's last pixel's window
    // at channels `64 kb .. 64 kb + 64 <= c`) or inside block `b` / `b + 1` of the weights;
    // the stores write `m` rows of 16 `i32` of the chunks' accumulators (`assert_call`).
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        // Step `q`: tap `q / kbn`, input channels `64 (q % kbn) ..`; its weight rows.
        let kbn = s.cin_g / 64;
        let rows = |q: usize| (q / kbn) * c4n + 16 * (q % kbn);
        // A step's sign masks are expanded one step ahead, so that its tile loads do not wait
        // for the stores of the expansion (a tile load is not forwarded from them). (Not a
        // closure: closures do not take the function's target features, and `expand` would
        // not be inlined.)
        let masks = |q: usize| wp.add(b * bb + rows(q) * 8);
        let steps = s.kh * s.kw * kbn;
        if sign {
            expand_pair(masks(0), bb, pair, &mut tiles.0[0]);
        }
        for q in 0..steps {
            let (t, kb) = (q / kbn, q % kbn);
            let tap = ((t / s.kw) * s.wp + t % s.kw) * s.c + 64 * kb;
            let a0 = xp.add(o0 + tap);
            let (w0, w1) = if sign {
                let buf = &tiles.0[q % 2];
                (buf[0].as_ptr(), buf[1].as_ptr())
            } else {
                let w0 = wp.add(b * bb + rows(q) * 64);
                (w0, w0.add(bb))
            };
            let a1 = two.then(|| xp.add(o1 + tap));
            step(a0, a1, astride, w0, pair.then_some(w1));
            if sign && q + 1 < steps {
                expand_pair(masks(q + 1), bb, pair, &mut tiles.0[(q + 1) % 2]);
            }
        }
        c0.store::<0>(s, acc, ys, b);
        if pair {
            c0.store::<1>(s, acc, ys, b + 1);
        }
        if two {
            c1.store::<2>(s, acc, ys, b);
            if pair {
                c1.store::<3>(s, acc, ys, b + 1);
            }
        }
    }
}
