//! The SLB runtime (work in progress).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(missing_docs)]
