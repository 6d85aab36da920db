//! The little of the MPS2 AN386 board the example uses: an LED as an `embedded-hal` output pin
//! (raised while inference runs) and SysTick as a wrapping-safe cycle counter.

use core::convert::Infallible;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

/// Address of the FPGA IO block's LED0 register (bits 0..1 drive the two user LEDs); QEMU
/// implements it as a plain read/write register.
const FPGAIO_LED0: *mut u32 = 0x4002_8000 as *mut u32;

/// User LED 0 of the board as a push-pull output pin.
pub struct Led0(());

impl Default for Led0 {
    fn default() -> Self {
        Self::new()
    }
}

impl Led0 {
    /// Takes the LED, switched off.
    pub fn new() -> Self {
        set_led0(false);
        Led0(())
    }

    /// Whether the LED is on, read back from the register.
    pub fn is_on(&self) -> bool {
        // SAFETY: FPGAIO_LED0 is a valid, aligned MMIO register of this board (see the board's
        // memory map); a volatile read has no side effects.
        unsafe { ptr::read_volatile(FPGAIO_LED0) & 1 == 1 }
    }
}

fn set_led0(on: bool) {
    // SAFETY: as in `is_on`; the register holds only LED bits, and this program is single
    // threaded (no interrupt handler touches it), so the read-modify-write cannot race.
    unsafe {
        let v = ptr::read_volatile(FPGAIO_LED0);
        ptr::write_volatile(FPGAIO_LED0, if on { v | 1 } else { v & !1 });
    }
}

impl embedded_hal::digital::ErrorType for Led0 {
    type Error = Infallible;
}

impl embedded_hal::digital::OutputPin for Led0 {
    fn set_low(&mut self) -> Result<(), Infallible> {
        set_led0(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        set_led0(true);
        Ok(())
    }
}

/// An output pin that counts its rising and falling edges (to show that the runtime drove it).
pub struct CountingPin<P> {
    pin: P,
    high: bool,
    /// Low-to-high transitions so far.
    pub rises: u32,
    /// High-to-low transitions so far.
    pub falls: u32,
}

impl<P: embedded_hal::digital::OutputPin> CountingPin<P> {
    /// Wraps a pin that is low.
    pub fn new(pin: P) -> Self {
        CountingPin {
            pin,
            high: false,
            rises: 0,
            falls: 0,
        }
    }

    /// Whether the pin was last driven high.
    pub fn is_high(&self) -> bool {
        self.high
    }
}

impl<P: embedded_hal::digital::ErrorType> embedded_hal::digital::ErrorType for CountingPin<P> {
    type Error = P::Error;
}

impl<P: embedded_hal::digital::OutputPin> embedded_hal::digital::OutputPin for CountingPin<P> {
    fn set_low(&mut self) -> Result<(), P::Error> {
        self.pin.set_low()?;
        if self.high {
            self.falls += 1;
        }
        self.high = false;
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), P::Error> {
        self.pin.set_high()?;
        if !self.high {
            self.rises += 1;
        }
        self.high = true;
        Ok(())
    }
}

/// SysTick reload value: the full 24 bits.
const RELOAD: u32 = 0x00FF_FFFF;
/// SysTick wrap-arounds so far (the exception handler counts them).
static WRAPS: AtomicU32 = AtomicU32::new(0);

/// A free-running 64-bit count of SysTick clock ticks (the core clock, 25 MHz on MPS2; under
/// QEMU's `-icount shift=0` one tick is 40 instructions).
pub struct Ticks {
    _syst: SYST,
}

impl Ticks {
    /// Starts SysTick on the core clock with its wrap interrupt enabled.
    pub fn start(mut syst: SYST) -> Self {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(RELOAD);
        syst.clear_current();
        syst.enable_interrupt();
        syst.enable_counter();
        // The counter reads 0 until its first reload; start counting from there.
        while SYST::get_current() == 0 {}
        Ticks { _syst: syst }
    }

    /// Ticks since `start`.
    pub fn now(&self) -> u64 {
        loop {
            let before = WRAPS.load(Ordering::Acquire);
            let cur = SYST::get_current();
            // A wrap between the two reads would pair the old count with the new value.
            if WRAPS.load(Ordering::Acquire) == before {
                return before as u64 * (RELOAD as u64 + 1) + (RELOAD - cur) as u64;
            }
        }
    }
}

#[exception]
fn SysTick() {
    // The handler is the only writer, so a load and a store suffice (Cortex-M0 has no atomic
    // read-modify-write).
    WRAPS.store(
        WRAPS.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Release,
    );
}
