//! Inner-loop instruction counts of the dot products a conv kernel can use on a Cortex-M4, on
//! one conv layer's worth of work (64 output channels x 64 pixels, K = 3*3*64 = 576: ResNet20's
//! last stage), all bit-exact with each other:
//!
//! * `scalar`: u8 x i8 products summed in i32, the runtime's portable `int8-dot` inner loop;
//! * `smlad`: activations unpacked to 16-bit pairs with `UXTB16`, weights (odd numerators in
//!   int8) with `SXTB16`, two multiply-accumulates per `SMLAD`;
//! * `smlad2`: the same for two output channels at once, so that each activation word is loaded
//!   and unpacked once for both (CMSIS-NN's blocking);
//! * `popcount`: 1-bit weights against 8 activation bit planes (`AND` + `count_ones`, a bit
//!   trick on Cortex-M, which has no popcount instruction), the runtime's `bitserial` idea.
//!
//! Run it under `-icount shift=0`; each line prints SysTick ticks (40 instructions each) and
//! instructions per multiply-accumulate.
#![no_std]
#![no_main]

use core::hint::black_box;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use panic_semihosting as _;
use slb_cortex_m::board;

const K: usize = 576;
const OUT: usize = 64;
const PIXELS: usize = 64;
/// SysTick ticks per instruction under `-icount shift=0` (25 MHz core clock, 1 ns/instruction).
const INSNS_PER_TICK: u64 = 40;

/// 4-byte aligned buffers, so the SIMD loops can load words.
#[repr(C, align(4))]
struct Data {
    x: [[u8; K]; PIXELS],
    w: [[i8; K]; OUT],
    /// 1-bit weights (`w > 0`) as bit planes over K, and activations as 8 bit planes over K.
    wbits: [[u32; K / 32]; OUT],
    xbits: [[[u32; K / 32]; 8]; PIXELS],
}

static mut DATA: Data = Data {
    x: [[0; K]; PIXELS],
    w: [[0; K]; OUT],
    wbits: [[0; K / 32]; OUT],
    xbits: [[[0; K / 32]; 8]; PIXELS],
};

#[entry]
fn main() -> ! {
    let cp = cortex_m::Peripherals::take().expect("once");
    let ticks = board::Ticks::start(cp.SYST);
    // SAFETY: the only reference to DATA, taken once.
    let d: &mut Data = unsafe { &mut *core::ptr::addr_of_mut!(DATA) };
    fill(d);
    let macs = (K * OUT * PIXELS) as u64;
    let mut sums = [0i64; 4];
    for (m, name) in ["scalar", "smlad", "smlad2", "popcount"].iter().enumerate() {
        let t0 = ticks.now();
        let mut total = 0i64;
        for p in 0..PIXELS {
            if m == 2 {
                for o in (0..OUT).step_by(2) {
                    let (s0, s1) = dot_smlad2(black_box(&d.x[p]), &d.w[o], &d.w[o + 1]);
                    total += s0 as i64 + s1 as i64;
                }
                continue;
            }
            for o in 0..OUT {
                let s = match m {
                    0 => dot_scalar(black_box(&d.x[p]), &d.w[o]),
                    1 => dot_smlad(black_box(&d.x[p]), &d.w[o]),
                    _ => dot_popcount(black_box(&d.xbits[p]), &d.wbits[o]),
                };
                total += s as i64;
            }
        }
        let dt = ticks.now() - t0;
        sums[m] = total;
        let insns = dt * INSNS_PER_TICK;
        hprintln!(
            "dot {} macs {} ticks {} insns-per-mac-x100 {} sum {}",
            name,
            macs,
            dt,
            insns * 100 / macs,
            total
        );
    }
    let ok = sums.iter().all(|&v| v == sums[0]);
    hprintln!("dot agree {}", ok);
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {}
}

/// Deterministic activations (any byte) and 1-bit weights (numerators +1 / -1).
fn fill(d: &mut Data) {
    let mut s = 0x9E37_79B9u32;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    for p in 0..PIXELS {
        for k in 0..K {
            let v = (next() >> 24) as u8;
            d.x[p][k] = v;
            for b in 0..8 {
                if (v >> b) & 1 == 1 {
                    d.xbits[p][b][k / 32] |= 1 << (k % 32);
                }
            }
        }
    }
    for o in 0..OUT {
        for k in 0..K {
            let bit = next() >> 31;
            d.w[o][k] = if bit == 1 { 1 } else { -1 };
            if bit == 1 {
                d.wbits[o][k / 32] |= 1 << (k % 32);
            }
        }
    }
}

/// The runtime's portable inner loop: u8 x i8 products (which fit i16) summed in i32.
#[inline(never)]
fn dot_scalar(x: &[u8; K], w: &[i8; K]) -> i32 {
    x.iter()
        .zip(w)
        .map(|(&a, &b)| i32::from(a as i16 * i16::from(b)))
        .fold(0i32, |s, v| s.wrapping_add(v))
}

/// Four bytes at `i` as a little-endian word.
#[inline(always)]
fn word(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// `SMLAD`: `acc + lo(a)*lo(b) + hi(a)*hi(b)` on signed 16-bit halves.
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let r: i32;
    // SAFETY: a pure arithmetic instruction of ARMv7E-M (the DSP extension every Cortex-M4
    // has); it reads and writes registers only.
    unsafe {
        core::arch::asm!("smlad {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a,
            b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack));
    }
    r
}

/// `UXTB16` (`ror` 0 or 8): bytes 0 and 2 (or 1 and 3) zero-extended into 16-bit halves.
#[inline(always)]
fn uxtb16<const ROR8: bool>(a: u32) -> u32 {
    let r: u32;
    // SAFETY: as in `smlad`.
    unsafe {
        if ROR8 {
            core::arch::asm!("uxtb16 {r}, {a}, ror #8", r = lateout(reg) r, a = in(reg) a,
                options(pure, nomem, nostack));
        } else {
            core::arch::asm!("uxtb16 {r}, {a}", r = lateout(reg) r, a = in(reg) a,
                options(pure, nomem, nostack));
        }
    }
    r
}

/// `SXTB16`: as `uxtb16`, sign-extended.
#[inline(always)]
fn sxtb16<const ROR8: bool>(a: u32) -> u32 {
    let r: u32;
    // SAFETY: as in `smlad`.
    unsafe {
        if ROR8 {
            core::arch::asm!("sxtb16 {r}, {a}, ror #8", r = lateout(reg) r, a = in(reg) a,
                options(pure, nomem, nostack));
        } else {
            core::arch::asm!("sxtb16 {r}, {a}", r = lateout(reg) r, a = in(reg) a,
                options(pure, nomem, nostack));
        }
    }
    r
}

/// Two `SMLAD`s per four bytes: activations and weights unpacked to 16-bit pairs in registers.
#[inline(never)]
fn dot_smlad(x: &[u8; K], w: &[i8; K]) -> i32 {
    // SAFETY: i8 and u8 have the same size and alignment.
    let wb: &[u8; K] = unsafe { &*(w as *const [i8; K] as *const [u8; K]) };
    let (mut a0, mut a1) = (0i32, 0i32);
    let mut i = 0;
    while i + 8 <= K {
        let xa = word(x, i);
        let wa = word(wb, i);
        let xb = word(x, i + 4);
        let wbb = word(wb, i + 4);
        a0 = smlad(uxtb16::<false>(xa), sxtb16::<false>(wa), a0);
        a1 = smlad(uxtb16::<true>(xa), sxtb16::<true>(wa), a1);
        a0 = smlad(uxtb16::<false>(xb), sxtb16::<false>(wbb), a0);
        a1 = smlad(uxtb16::<true>(xb), sxtb16::<true>(wbb), a1);
        i += 8;
    }
    let mut s = a0.wrapping_add(a1);
    while i < K {
        s = s.wrapping_add(i32::from(x[i]) * i32::from(w[i]));
        i += 1;
    }
    s
}

/// [`dot_smlad`] for two weight rows: each activation word is loaded and unpacked once.
#[inline(never)]
fn dot_smlad2(x: &[u8; K], w0: &[i8; K], w1: &[i8; K]) -> (i32, i32) {
    // SAFETY: i8 and u8 have the same size and alignment.
    let (v0, v1): (&[u8; K], &[u8; K]) = unsafe {
        (
            &*(w0 as *const [i8; K] as *const [u8; K]),
            &*(w1 as *const [i8; K] as *const [u8; K]),
        )
    };
    let (mut a0, mut a1, mut b0, mut b1) = (0i32, 0i32, 0i32, 0i32);
    let mut i = 0;
    while i + 4 <= K {
        let xa = word(x, i);
        let (xl, xh) = (uxtb16::<false>(xa), uxtb16::<true>(xa));
        let wa = word(v0, i);
        a0 = smlad(xl, sxtb16::<false>(wa), a0);
        a1 = smlad(xh, sxtb16::<true>(wa), a1);
        let wb = word(v1, i);
        b0 = smlad(xl, sxtb16::<false>(wb), b0);
        b1 = smlad(xh, sxtb16::<true>(wb), b1);
        i += 4;
    }
    let (mut s0, mut s1) = (a0.wrapping_add(a1), b0.wrapping_add(b1));
    while i < K {
        s0 = s0.wrapping_add(i32::from(x[i]) * i32::from(w0[i]));
        s1 = s1.wrapping_add(i32::from(x[i]) * i32::from(w1[i]));
        i += 1;
    }
    (s0, s1)
}

/// 1-bit weights (`+1` where the bit is set, `-1` elsewhere) against 8 activation planes:
/// `sum = sum_b 2^b * (2 * popcount(x_b & w) - popcount(x_b))`.
#[inline(never)]
fn dot_popcount(x: &[[u32; K / 32]; 8], w: &[u32; K / 32]) -> i32 {
    let mut s = 0i32;
    for (b, plane) in x.iter().enumerate() {
        let mut both = 0u32;
        let mut all = 0u32;
        for (xv, wv) in plane.iter().zip(w) {
            both += (xv & wv).count_ones();
            all += xv.count_ones();
        }
        s += ((2 * both as i32) - all as i32) << b;
    }
    s
}
