//! The kernel tests' harness: the conv driver's steps for one kernel (`kernel_exact`, with
//! the buffers placed as the arena has them or not), the kernels this CPU runs for a shape, and
//! random conv cases checked against `reference::conv_acc`.

use proptest::prelude::*;
use slb_format::{pack_codes, Conv, RawQuant, Requant};

use crate::kernels::{portable, reference, Algo, ConvKernel, ConvShape, KernelKind, RowOps, Run};
use crate::packed::{correct, prepare_aux};
use crate::quant::QParams;
use crate::testutil::{Guarded, Rng};

pub(crate) fn algo_kernel(algo: Algo) -> Option<ConvKernel> {
    portable::kernel(algo)
}

/// The driver's path for one conv with kernel `k` (None: the reference): prepare, pad/pack,
/// run in chunks of `rows` output rows, correct. Returns false if the kernel cannot run.
pub(crate) fn kernel_exact(
    k: Option<&ConvKernel>,
    conv: &Conv<'_>,
    s: &ConvShape,
    inq: &QParams,
    x: &[u8],
    acc: &mut [i32],
    rows: usize,
) -> bool {
    kernel_exact_at(k, conv, s, inq, x, acc, rows, Place::Aligned)
}

/// Where [`kernel_exact_at`] puts the prepared weights and the padded activation bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// 8-byte aligned, as the arena keeps them.
    Aligned,
    /// At an odd address (an unaligned arena: the kernels then read them byte-wise).
    Odd,
    /// The padded activation bytes end where an unreadable page begins ([`Guarded`]): a
    /// byte kernel that reads past its input faults.
    AtGuard,
}

/// [`kernel_exact`] with the prepared weights and the padded activation bytes placed as
/// `place` says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn kernel_exact_at(
    k: Option<&ConvKernel>,
    conv: &Conv<'_>,
    s: &ConvShape,
    inq: &QParams,
    x: &[u8],
    acc: &mut [i32],
    rows: usize,
    place: Place,
) -> bool {
    let misalign = place == Place::Odd;
    let Some(k) = k else {
        reference::conv_acc(conv, s, inq, x, acc);
        return true;
    };
    if !crate::kernels::kind_fits(k.kind, s) {
        return false;
    }
    // u64 buffers keep everything 8-byte aligned, as the arena does.
    let wl = (k.prepared_len)(s);
    let mut wbuf = vec![0u64; wl.div_ceil(8)];
    let w = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut wbuf)[..wl];
    (k.prepare)(conv, s, w);
    let mut moved = vec![0u64; wl.div_ceil(8) + 1];
    let w: &[u8] = if k.reads_codes {
        conv.codes
    } else if misalign {
        let odd = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut moved)[1..wl + 1];
        odd.copy_from_slice(w);
        odd
    } else {
        w
    };
    let al = s.correction_len().unwrap();
    // The driver's table word-aligned, or at an odd address when `misalign` (the correction
    // then reads it byte-wise).
    let mut auxbuf = vec![0u64; al.div_ceil(8) + 1];
    let aux = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut auxbuf)[usize::from(misalign)..][..al];
    prepare_aux(conv, s, inq.zp, None, aux);
    let aux: &[u8] = aux;
    let pad = if s.abits == 1 { 0 } else { inq.zp as u8 };
    let row = s.ow * s.cout;
    let mut y0 = 0;
    // The padded bytes word-aligned, as in the arena, or at an odd address when `misalign`
    // is set (byte kernels then load the activations byte-wise).
    let xl = s.hp * s.wp * s.c;
    let mut xbuf = vec![0u64; xl.div_ceil(8) + 1];
    let mut guarded = Guarded::new(xl);
    let xb = if place == Place::AtGuard {
        guarded.bytes()
    } else {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut xbuf)[usize::from(misalign)..][..xl]
    };
    let mut xw = vec![0u64; s.hp * s.wp * portable::bit_pixel_words(s)];
    let mut xt = vec![
        0u16;
        if let Run::Tables(t) = k.run {
            (t.len)(s)
        } else {
            0
        }
    ];
    match k.run {
        Run::Bytes(_) => portable::pad_bytes(s, x, pad, xb),
        Run::Tables(t) => (t.build)(s, x, pad, &mut xt),
        // The portable bit kernels get the portable packer, the SIMD ones the CPU's (AVX2 on
        // x86): both packers are checked here, through the kernels' results.
        Run::Bits(_) => {
            let portable_kind = matches!(
                k.kind,
                KernelKind::Xnor
                    | KernelKind::BitSerial
                    | KernelKind::XnorInPlace
                    | KernelKind::BitSerialInPlace
            );
            let ops = if portable_kind {
                RowOps::PORTABLE
            } else {
                RowOps::native()
            };
            (ops.pack_bits)(s, x, pad, &mut xw)
        }
    }
    while y0 < s.oh {
        let y1 = (y0 + rows).min(s.oh);
        let chunk = &mut acc[y0 * row..y1 * row];
        match k.run {
            Run::Bytes(f) => f(s, xb, w, y0, y1, chunk),
            Run::Bits(f) => f(s, &xw, w, y0, y1, chunk),
            Run::Tables(t) => (t.run)(s, &xt, w, y0, y1, chunk),
        }
        correct(s, inq, aux, chunk, y0, y1);
        y0 = y1;
    }
    true
}

/// Writes a line to the test binary's stderr past the harness's output capture, so that it
/// shows in a passing run too.
pub(super) fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Every kernel kind this build and CPU can run for the shape (portable first). Kinds that are
/// not available are reported once as skipped; `isa_variants_match_the_cpu` makes sure that
/// none the CPU supports is among them.
pub(super) fn kernels_for(s: &ConvShape) -> Vec<ConvKernel> {
    let mut v = Vec::new();
    for kind in KernelKind::ALL {
        let Some(algo) = kind.algo() else { continue };
        if algo == Algo::Reference || !crate::kernels::kind_fits(kind, s) {
            continue;
        }
        match crate::kernels::by_kind(kind) {
            Some(k) => v.push(k),
            None => {
                let mut seen = SKIPPED.lock().unwrap();
                if seen.insert(kind.name()) {
                    report(&format!(
                        "kernels: skipped {} (not available in this build or CPU)",
                        kind.name()
                    ));
                }
            }
        }
    }
    v
}

pub(super) static SKIPPED: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

#[derive(Debug, Clone)]
pub(super) struct Case {
    pub(super) cin_g: u32,
    pub(super) groups: u32,
    pub(super) cout_g: u32,
    pub(super) k: (u16, u16),
    pub(super) stride: (u16, u16),
    pub(super) pad: (u16, u16),
    pub(super) h: u32,
    pub(super) w: u32,
    pub(super) wbits: u8,
    pub(super) abits: u8,
    pub(super) zp: i32,
    pub(super) rows: usize,
    pub(super) seed: u64,
}

impl Case {
    /// A 3x3 conv, stride 1, same padding, on a 3x3 input, one group, two output rows a call,
    /// the input's zero point 1 (0 for 1-bit codes): the tests name what differs (`..`).
    pub(super) fn new(cin_g: u32, cout_g: u32, wbits: u8, abits: u8, seed: u64) -> Case {
        Case {
            cin_g,
            groups: 1,
            cout_g,
            k: (3, 3),
            stride: (1, 1),
            pad: (1, 1),
            h: 3,
            w: 3,
            wbits,
            abits,
            zp: if abits == 1 { 0 } else { 1 },
            rows: 2,
            seed,
        }
    }
}

pub(super) fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![1u32, 3, 31, 32, 33, 63, 64, 65]),
        1u32..=3,
        1u32..=5,
        (1u16..=3, 1u16..=3),
        (1u16..=2, 1u16..=2),
        (0u16..=2, 0u16..=2),
        (1u32..=6, 1u32..=6),
        prop::sample::select(vec![1u8, 2, 4]),
        prop::sample::select(vec![1u8, 2, 4, 8]),
        any::<u64>(),
        1usize..=4,
    )
        .prop_map(
            |(cin_g, groups, cout_g, k, stride, pad, (h, w), wbits, abits, seed, rows)| {
                let qmax = (1i32 << abits) - 1;
                let zp = if abits == 1 {
                    0
                } else {
                    (seed % (qmax as u64 + 1)) as i32
                };
                Case {
                    cin_g,
                    groups,
                    cout_g,
                    k,
                    stride,
                    pad,
                    h,
                    w,
                    wbits,
                    abits,
                    zp,
                    rows,
                    seed,
                }
            },
        )
        .prop_filter("kernel fits the padded input", |c| {
            c.h + 2 * c.pad.0 as u32 >= c.k.0 as u32 && c.w + 2 * c.pad.1 as u32 >= c.k.1 as u32
        })
}

pub(super) fn check_case(c: &Case) -> usize {
    check_case_with(c, kernels_for)
}

/// [`check_case`] with the kernels `kernels` gives for the shape.
pub(super) fn check_case_with(c: &Case, kernels: impl Fn(&ConvShape) -> Vec<ConvKernel>) -> usize {
    let mut rng = Rng(c.seed | 1);
    let codes: Vec<u8> = (0..weight_count(c))
        .map(|_| rng.below(1 << c.wbits) as u8)
        .collect();
    // Extreme codes (0 and max) are over-represented: they stress the accumulator's range. A
    // third of the cases keep to a quarter of the range, where every sum of 3 or 4 codes fits
    // a byte: the lookups over byte sub-tables take those, their fallbacks the others.
    let qmax = (1u64 << c.abits) - 1;
    let qmax = if c.seed.is_multiple_of(3) {
        qmax / 4
    } else {
        qmax
    };
    let x: Vec<u8> = (0..input_count(c))
        .map(|_| match rng.below(4) {
            0 => 0,
            1 => qmax as u8,
            _ => rng.below(qmax + 1) as u8,
        })
        .collect();
    check_inputs(c, &codes, &x, kernels)
}

/// Weight codes of the case's conv.
pub(super) fn weight_count(c: &Case) -> usize {
    (c.cout_g * c.groups * c.k.0 as u32 * c.k.1 as u32 * c.cin_g) as usize
}

/// Input codes of the case's conv.
pub(super) fn input_count(c: &Case) -> usize {
    (c.h * c.w * c.cin_g * c.groups) as usize
}

/// The case's conv over the packed weight codes `packed` (requantization: identity-like, the
/// kernels' sums are compared before it).
fn case_conv<'a>(c: &Case, packed: &'a [u8]) -> Conv<'a> {
    Conv {
        input: 0,
        output: 1,
        out_channels: c.cout_g * c.groups,
        in_channels: c.cin_g * c.groups,
        kernel: [c.k.0, c.k.1],
        stride: [c.stride.0, c.stride.1],
        padding: [c.pad.0, c.pad.1],
        groups: c.groups,
        weight_bits: c.wbits,
        codes: packed,
        requant: Requant {
            raw: RawQuant {
                mult: 1,
                shift: 1,
                zero_point: 0,
                bits: 8,
                scale: 1.0,
            },
            affine: None,
        },
    }
}

/// The shape of the case's conv.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn case_shape(c: &Case) -> ConvShape {
    let packed = pack_codes(
        &vec![0u8; weight_count(c)],
        c.cout_g * c.groups,
        [c.k.0, c.k.1],
        c.cin_g,
        c.wbits,
    )
    .unwrap();
    ConvShape::of(&case_conv(c, &packed), c.h as usize, c.w as usize, c.abits).unwrap()
}

/// Every kernel `kernels` gives for the case's shape against the reference, on weight codes
/// `codes` ([`weight_count`]) and input codes `x` ([`input_count`]); returns how many ran.
pub(super) fn check_inputs(
    c: &Case,
    codes: &[u8],
    x: &[u8],
    kernels: impl Fn(&ConvShape) -> Vec<ConvKernel>,
) -> usize {
    let packed = pack_codes(codes, c.cout_g * c.groups, [c.k.0, c.k.1], c.cin_g, c.wbits).unwrap();
    let conv = case_conv(c, &packed);
    let s = ConvShape::of(&conv, c.h as usize, c.w as usize, c.abits).unwrap();
    let inq = QParams {
        scale: 1.0,
        zp: c.zp,
        bits: c.abits,
    };
    let len = s.oh * s.ow * s.cout;
    let mut want = vec![0i32; len];
    reference::conv_acc(&conv, &s, &inq, x, &mut want);
    let mut ran = 0;
    for k in kernels(&s) {
        // As the arena has them; then the bit kernels again from prepared weights at an odd
        // address, the byte kernels from activations at an odd address and from activations
        // that end at an unreadable page (a read past them faults).
        let bytes = matches!(k.run, Run::Bytes(_));
        for (place, runs, what) in [
            (Place::Aligned, true, "aligned"),
            (Place::Odd, bytes || !k.reads_codes, "unaligned"),
            (Place::AtGuard, bytes, "at a guard page"),
        ] {
            if runs {
                let mut got = vec![i32::MIN; len];
                assert!(kernel_exact_at(
                    Some(&k),
                    &conv,
                    &s,
                    &inq,
                    x,
                    &mut got,
                    c.rows,
                    place
                ));
                assert_eq!(got, want, "{} ({what}) on {c:?}", k.kind.name());
            }
        }
        ran += 1;
    }
    ran
}
