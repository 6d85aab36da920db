//! SLB trainer (work in progress).
