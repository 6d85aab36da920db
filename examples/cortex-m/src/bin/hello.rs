//! The board plumbing alone: print over semihosting and exit with status 0.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use panic_semihosting as _;

#[entry]
fn main() -> ! {
    hprintln!("hello from a Cortex-M4F");
    debug::exit(debug::EXIT_SUCCESS);
    loop {}
}
