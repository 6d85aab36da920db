//! The container writer behind [`crate::ModelBuilder`] and the helpers that lay out its arrays
//! (needs `alloc`).

use alloc::vec::Vec;

use crate::model::Payload;
use crate::{
    packed_len, row_bytes, Error, InputSpec, Layer, Result, Site, TensorDesc, HEADER_LEN, MAGIC,
    VERSION,
};

/// Everything a model file holds, borrowed from a [`crate::ModelBuilder`].
pub(crate) struct ModelSpec<'s> {
    pub(crate) name: &'s str,
    pub(crate) input: InputSpec<'s>,
    pub(crate) tensors: &'s [TensorDesc],
    pub(crate) layers: &'s [Layer<'s>],
    pub(crate) output: u16,
}

/// Encodes a model file without validating it (the container is correct, the description is
/// as given).
pub(crate) fn encode_unchecked(spec: &ModelSpec<'_>) -> Result<Vec<u8>> {
    let too_many = Error::InvalidParam {
        layer: Site::Model,
        what: "tensor or layer count (more than 65535)",
    };
    let tensor_count = u16::try_from(spec.tensors.len()).map_err(|_| too_many)?;
    let layer_count = u16::try_from(spec.layers.len()).map_err(|_| too_many)?;
    let enc = |what: &'static str| Error::Malformed { what };
    let mut tensors = Vec::new();
    for t in spec.tensors {
        tensors.extend(postcard::to_allocvec(t).map_err(|_| enc("tensor"))?);
    }
    let mut layers = Vec::new();
    for l in spec.layers {
        layers.extend(postcard::to_allocvec(l).map_err(|_| enc("layer"))?);
    }
    let payload = Payload {
        name: spec.name,
        input: spec.input,
        tensor_count,
        tensors: &tensors,
        layer_count,
        layers: &layers,
        output: spec.output,
    };
    let body = postcard::to_allocvec(&payload).map_err(|_| enc("payload"))?;
    let len = u32::try_from(body.len()).map_err(|_| Error::Overflow {
        layer: Site::Model,
        what: "payload length",
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    Ok(out)
}

/// Little-endian bytes of an `f32` slice, for [`crate::F32s`].
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of an `i32` slice, for [`crate::I32s`].
pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Packs one code per byte, given in OHWI order (`[out][kh][kw][in_per_group]`), into the
/// bit-plane layout of [`crate::CodeReader`]. Codes must be below `2^bits`.
pub fn pack_codes(
    codes: &[u8],
    out: u32,
    kernel: [u16; 2],
    in_per_group: u32,
    bits: u8,
) -> Result<Vec<u8>> {
    let len = packed_len(out, kernel, in_per_group, bits).ok_or(Error::Overflow {
        layer: Site::Model,
        what: "packed weight size",
    })?;
    let cin = in_per_group as usize;
    let positions = out as usize * kernel[0] as usize * kernel[1] as usize;
    if codes.len() != positions * cin {
        return Err(Error::Length {
            layer: Site::Model,
            what: "unpacked codes",
            expected: positions * cin,
            got: codes.len(),
        });
    }
    if !matches!(bits, 1 | 2 | 4) || codes.iter().any(|&k| k >> bits != 0) {
        return Err(Error::BadBits {
            layer: Site::Model,
            what: "weight code",
            bits,
        });
    }
    let row = row_bytes(in_per_group);
    let mut packed = alloc::vec![0u8; len];
    if row == 0 {
        return Ok(packed);
    }
    // Byte-wise, eight channels at a time: the same bits as setting bit `i` of each row through
    // bitvec's `Lsb0` view, which `CodeReader` reads (`tests/pack.rs` pins the order).
    let b = bits as usize;
    for (chunk, rows) in codes
        .chunks_exact(cin)
        .zip(packed.chunks_exact_mut(b * row))
    {
        for (p, plane) in rows.chunks_exact_mut(row).enumerate() {
            for (byte, eight) in plane.iter_mut().zip(chunk.chunks(8)) {
                *byte = eight
                    .iter()
                    .enumerate()
                    .fold(0u8, |acc, (j, &k)| acc | (((k >> p) & 1) << j));
            }
        }
    }
    Ok(packed)
}
