//! Stack high-water mark by painting: fill the unused stack below the current stack pointer with
//! a pattern, run, then find the lowest word that changed.

use core::ptr;

const PAINT: u32 = 0xA5A5_A5A5;

extern "C" {
    /// Initial stack pointer (top of RAM), from cortex-m-rt's `link.x`.
    static _stack_start: u32;
    /// End of `.bss`, from `link.x`: the stack may grow down to here.
    static __ebss: u32;
}

/// The painted region, `[low, high)` (word addresses).
pub struct Painted {
    low: usize,
    high: usize,
}

/// Paints up to `bytes` of stack below the caller's frame (stopping above `.bss`).
#[inline(never)]
pub fn paint(bytes: usize) -> Painted {
    let sp = cortex_m::register::msp::read() as usize;
    // Leave this function's own frame (well under 256 bytes) unpainted.
    let high = (sp - 256) & !3;
    let ebss = ptr::addr_of!(__ebss) as usize;
    let low = high.saturating_sub(bytes).max((ebss + 3) & !3);
    let mut a = low;
    while a < high {
        // SAFETY: `[low, high)` is RAM between the end of `.bss` and below the live stack
        // frames (this function's frame lies above `high`), which nothing else uses.
        unsafe { ptr::write_volatile(a as *mut u32, PAINT) };
        a += 4;
    }
    Painted { low, high }
}

impl Painted {
    /// Bytes of stack used since program start at the deepest point: from the initial stack
    /// pointer down to the lowest word that no longer holds the paint. `None` if the painted
    /// region was exhausted (the real peak is larger).
    pub fn peak(&self) -> Option<usize> {
        let top = ptr::addr_of!(_stack_start) as usize;
        let mut a = self.low;
        while a < self.high {
            // SAFETY: reads of the RAM region painted by `paint`.
            if unsafe { ptr::read_volatile(a as *const u32) } != PAINT {
                return if a == self.low { None } else { Some(top - a) };
            }
            a += 4;
        }
        Some(top - self.high)
    }
}
