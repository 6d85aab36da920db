//! One test per class of malformed container: truncation, trailing bytes, header, CRC, payload
//! length and encoding, record counts. Each returns its typed error, none panics. The model-level
//! classes (bits, quantization, geometry, tensor graph, sizes) are in `malformed_graph.rs`.

mod common;

use common::*;
use slb_format::*;

#[test]
fn valid_model_parses_and_crc_is_ieee() {
    let b = Tiny::new().bytes();
    parse(&b).unwrap();
    assert_eq!(reseal(b.clone()), b);
    assert_eq!(crc32fast_hash(b"123456789"), 0xCBF4_3926);
}

#[test]
fn truncated_at_every_length() {
    let b = Tiny::new().bytes();
    for n in 0..b.len() {
        // Shorter than header and trailer: those 16 bytes are needed; then the whole file.
        let needed = if n < HEADER_LEN + TRAILER_LEN {
            16
        } else {
            b.len()
        };
        assert_eq!(
            parse(&b[..n]).unwrap_err(),
            Error::Truncated { needed, got: n },
            "length {n}"
        );
    }
    // Exactly 16 bytes is a whole container with an empty payload, which is not a `Payload`.
    let mut empty = b[..HEADER_LEN + TRAILER_LEN].to_vec();
    empty[8..12].fill(0);
    assert_eq!(
        parse(&reseal(empty)).unwrap_err(),
        Error::Malformed { what: "payload" }
    );
}

#[test]
fn trailing_bytes() {
    let good = Tiny::new().bytes();
    for extra in [1, 2, 100] {
        let mut b = good.clone();
        b.resize(good.len() + extra, 0);
        assert_eq!(parse(&b).unwrap_err(), Error::TrailingBytes { extra });
    }
}

#[test]
fn wrong_magic() {
    let good = Tiny::new().bytes();
    for i in 0..4 {
        let mut b = good.clone();
        b[i] ^= 0x20;
        assert!(matches!(parse(&b), Err(Error::BadMagic(_))), "byte {i}");
    }
    // Even a short file with the wrong magic says so.
    assert_eq!(
        parse(b"PK\x03\x04\0\0").unwrap_err(),
        Error::BadMagic(*b"PK\x03\x04")
    );
}

#[test]
fn version_newer_or_zero() {
    let good = Tiny::new().bytes();
    for v in [0u16, 2, 0x0100, u16::MAX] {
        let mut b = good.clone();
        b[4..6].copy_from_slice(&v.to_le_bytes());
        assert_eq!(
            parse(&b).unwrap_err(),
            Error::UnsupportedVersion {
                found: v,
                supported: VERSION
            }
        );
    }
}

#[test]
fn reserved_flags() {
    let good = Tiny::new().bytes();
    for f in [1u16, 0x8000] {
        let mut b = good.clone();
        b[6..8].copy_from_slice(&f.to_le_bytes());
        assert_eq!(parse(&b).unwrap_err(), Error::UnknownFlags(f));
    }
}

#[test]
fn bad_crc_every_byte() {
    let good = Tiny::new().bytes();
    let n = good.len() - HEADER_LEN - TRAILER_LEN;
    for i in HEADER_LEN..good.len() {
        for flip in [0x01u8, 0x80] {
            let mut b = good.clone();
            b[i] ^= flip;
            match parse(&b) {
                Err(Error::ChecksumMismatch { stored, computed }) => {
                    assert_ne!(stored, computed);
                    assert_eq!(computed, crc32fast_hash(&b[HEADER_LEN..HEADER_LEN + n]));
                }
                other => panic!("byte {i}: {other:?}"),
            }
        }
    }
}

#[test]
fn payload_length_field_corrupt() {
    let good = Tiny::new().bytes();
    let n = (good.len() - HEADER_LEN - TRAILER_LEN) as u32;
    let with_len = |len: u32| {
        let mut b = good.clone();
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b
    };
    assert!(matches!(
        parse(&with_len(n + 1)),
        Err(Error::Truncated { .. })
    ));
    assert_eq!(
        parse(&with_len(n - 1)).unwrap_err(),
        Error::TrailingBytes { extra: 1 }
    );
    assert!(matches!(
        parse(&with_len(u32::MAX)),
        Err(Error::Truncated { .. })
    ));
}

#[test]
fn payload_not_postcard() {
    let good = Tiny::new().bytes();
    // A payload cut short (resealed, so the CRC matches).
    let mut b = good[..good.len() - TRAILER_LEN - 7].to_vec();
    b.extend_from_slice(&[0; 4]);
    assert!(matches!(parse(&reseal(b)), Err(Error::Malformed { .. })));
    // Extra bytes inside the payload.
    let mut b = good[..good.len() - TRAILER_LEN].to_vec();
    b.push(0);
    b.extend_from_slice(&[0; 4]);
    assert!(matches!(parse(&reseal(b)), Err(Error::Malformed { .. })));
    // Garbage, including an invalid UTF-8 name.
    let mut b = good[..HEADER_LEN].to_vec();
    b.extend_from_slice(&[2, 0xff, 0xfe, 0, 0, 0, 0]);
    assert!(matches!(parse(&reseal(b)), Err(Error::Malformed { .. })));
}

#[test]
fn record_count_disagrees_with_table() {
    let tiny = Tiny::new();
    // Find the tensor count byte (12) right before the tensor table length in the payload:
    // simplest is to rebuild with one tensor dropped from the table but the layers unchanged,
    // which is an unknown tensor; the count itself is checked by editing the encoded count.
    let good = tiny.bytes();
    let layers_len = {
        let p = tiny.parts();
        p.layers.len() as u8
    };
    // The layer count is a single varint byte followed by the layer table length varint.
    let pos = (HEADER_LEN..good.len())
        .rev()
        .find(|&i| good[i] == layers_len && parse_with_count(&good, i).is_some())
        .expect("layer count byte");
    for count in [layers_len - 1, layers_len + 1] {
        let mut b = good.clone();
        b[pos] = count;
        let b = reseal(b);
        assert!(
            matches!(
                parse(&b),
                Err(Error::Malformed {
                    what: "layer table"
                })
            ),
            "{:?}",
            parse(&b)
        );
    }
}

/// True when `i` is the layer count byte: changing it makes the layer table fail to decode.
fn parse_with_count(good: &[u8], i: usize) -> Option<()> {
    let mut b = good.to_vec();
    b[i] = b[i].wrapping_add(1);
    match parse(&reseal(b)) {
        Err(Error::Malformed {
            what: "layer table",
        }) => Some(()),
        _ => None,
    }
}
