//! `Model::parse` on arbitrary bytes, and on the same bytes with a repaired container.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slb_format::Model;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Model::parse(data) {
        common::walk(&m);
    }
    if let Some(b) = common::resealed(data) {
        if let Ok(m) = Model::parse(&b) {
            common::walk(&m);
        }
    }
});
