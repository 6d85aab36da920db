//! `Model::parse` on arbitrary bytes, and on the same bytes with a repaired container.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slb_format::Model;

use slb_fuzz::{resealed, walk};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Model::parse(data) {
        walk(&m);
    }
    if let Some(b) = resealed(data) {
        if let Ok(m) = Model::parse(&b) {
            walk(&m);
        }
    }
});
