//! The board plumbing alone: print over semihosting, calibrate the tick counter against a busy
//! loop of known length, and exit with status 0.
//!
//! Under `-icount shift=0` (one instruction per nanosecond of virtual time) the line
//! `delay 4000000 ticks T` (a two-instruction loop run 4000000 times: 8000000 instructions)
//! gives the instructions per SysTick tick as `8000000 / T`
//! (40 when SysTick runs on MPS2's 25 MHz core clock).
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use panic_semihosting as _;
use slb_cortex_m::board;

#[entry]
fn main() -> ! {
    hprintln!("hello from a Cortex-M4F");
    if let Some(cp) = cortex_m::Peripherals::take() {
        let ticks = board::Ticks::start(cp.SYST);
        for n in [4_000_000u32, 40_000_000] {
            let t0 = ticks.now();
            // A two-instruction loop (`subs`, `bne`) run n + 1 times: 2n + 2 instructions.
            cortex_m::asm::delay(n);
            let dt = ticks.now() - t0;
            hprintln!(
                "delay {} ticks {} (instructions per tick: {})",
                n,
                dt,
                (2 * n as u64 + 2) / dt.max(1)
            );
        }
    }
    debug::exit(debug::EXIT_SUCCESS);
    loop {}
}
