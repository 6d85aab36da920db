//! Shared by the fuzz targets (`fuzz_targets/`): container repair and a walk over a parsed
//! model.

use slb_format::{CodeReader, Layer, Model, HEADER_LEN, MAGIC, TRAILER_LEN, VERSION};

/// The input with its container made valid (magic, version, flags, payload length, CRC), so
/// that mutations of the payload reach the validator instead of stopping at the checksum.
/// `None` when the input is too short to hold a container.
pub fn resealed(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < HEADER_LEN + TRAILER_LEN {
        return None;
    }
    let mut b = data.to_vec();
    let n = b.len() - HEADER_LEN - TRAILER_LEN;
    b[..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&VERSION.to_le_bytes());
    b[6..8].copy_from_slice(&0u16.to_le_bytes());
    b[8..12].copy_from_slice(&(n as u32).to_le_bytes());
    let crc = crc32(&b[HEADER_LEN..HEADER_LEN + n]);
    let end = b.len();
    b[end - 4..].copy_from_slice(&crc.to_le_bytes());
    Some(b)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &x in data {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Touches every accessor a runtime uses on a parsed model; none may panic.
pub fn walk(m: &Model<'_>) {
    let _ = m.input.class_names().count();
    let _ = m.input.num_classes();
    let _ = m.input.mean.iter().sum::<f32>();
    for t in m.tensors.iter() {
        let _ = t.shape.elements();
        let _ = t.dtype.qmax();
    }
    assert_eq!(m.tensors.iter().count(), m.tensors.len());
    assert_eq!(m.layers.iter().count(), m.layers.len());
    for l in m.layers.iter() {
        let _ = (l.op_name(), l.inputs(), l.output());
        for t in l.inputs().into_iter().flatten().chain([l.output()]) {
            assert!(m.tensor(t).is_some());
        }
        if let Layer::Conv(c) = l {
            let input = m.tensor(c.input).expect("validated").shape;
            let out = c.output_shape(input).expect("validated");
            assert_eq!(Some(out), m.tensor(c.output).map(|t| t.shape));
            let _ = c.macs(out);
            let r = CodeReader::new(&c);
            let mut sum = 0i64;
            for o in 0..c.out_channels as usize {
                for ky in 0..c.kernel[0] as usize {
                    for kx in 0..c.kernel[1] as usize {
                        for i in 0..c.in_per_group() as usize {
                            sum += i64::from(r.numerator(o, ky, kx, i));
                        }
                    }
                }
            }
            std::hint::black_box(sum);
            if let Some(a) = c.requant.affine {
                assert_eq!(a.mult.len(), c.out_channels as usize);
                assert_eq!(a.bias.iter().count(), c.out_channels as usize);
            }
        }
    }
}
