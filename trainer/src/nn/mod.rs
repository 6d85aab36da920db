//! Network pieces: SLB convolutions, activation quantizers, the four networks.

pub mod fused;
pub mod net;
pub mod quant;

pub use net::{Arch, Block, Net, NetConfig, QConv, Stage};
pub use quant::{ActKind, ActQuant, QuantMode, SlbConv};
