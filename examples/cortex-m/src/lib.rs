//! Board support for the SLB Cortex-M example (QEMU `mps2-an386`, Cortex-M4F): an LED as an
//! `embedded-hal` output pin, SysTick as a tick counter and a stack high-water mark. The
//! programs are under `src/bin/`.
#![no_std]
#![deny(missing_docs)]

pub mod board;
pub mod stack;
