//! One image file to one augmented `u8` HWC image on the host, for the streaming loader: the
//! decoders (zune-jpeg, jpeg-decoder for reduced-size decodes, `image`'s PNG decoder) and the
//! ImageNet transforms as torchvision defines them (`RandomResizedCrop` + horizontal flip for
//! training, `Resize` + `CenterCrop` for evaluation), resampled with `fast_image_resize`.
//!
//! Decoder choice (measured, docs/PERFORMANCE.md): zune-jpeg decodes ImageNet-sized JPEGs as
//! fast as libjpeg-turbo within about 10 % and needs no system library; it has no DCT scaling,
//! so a JPEG whose crop is at least twice the output side in both directions is decoded by
//! jpeg-decoder at 1/2, 1/4 or 1/8 size instead (the IDCT of the full size is skipped; this is
//! what a large photo costs). zune-jpeg runs in strict mode: a truncated JPEG is an error, never
//! a grey-filled image.

use std::cell::RefCell;

use fast_image_resize as fr;
use rand::Rng;

use super::{MAX_IMAGE_FILE_BYTES, MAX_IMAGE_SIDE};

/// How one image becomes a `side x side` RGB image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// torchvision's `RandomResizedCrop(side, scale, ratio)` then `RandomHorizontalFlip()`
    /// (with `flip`).
    Train {
        /// Output side.
        side: u32,
        /// Range of the crop's area, as a fraction of the image's (torchvision: 0.08..1).
        scale: (f64, f64),
        /// Range of the crop's aspect ratio w/h (torchvision: 3/4..4/3).
        ratio: (f64, f64),
        /// Flip horizontally with probability 1/2.
        flip: bool,
    },
    /// torchvision's `Resize(resize)` (shorter side to `resize`) then `CenterCrop(side)`, done
    /// as one resampling of the centre region.
    Eval {
        /// Output side.
        side: u32,
        /// The shorter side after the resize.
        resize: u32,
    },
}

impl Transform {
    /// The ImageNet training transform at `side` (224): scale 0.08..1, ratio 3/4..4/3, flip.
    pub fn imagenet_train(side: u32) -> Transform {
        Transform::Train {
            side,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
        }
    }

    /// The ImageNet evaluation transform at `side`: resize to `side * 256 / 224`, centre crop.
    pub fn imagenet_eval(side: u32) -> Transform {
        Transform::Eval {
            side,
            resize: ((side as f64) * 256.0 / 224.0).round() as u32,
        }
    }

    /// The output side.
    pub fn side(&self) -> u32 {
        match *self {
            Transform::Train { side, .. } | Transform::Eval { side, .. } => side,
        }
    }
}

/// A crop rectangle in source pixels: left, top, width, height.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

/// torchvision's `RandomResizedCrop.get_params` on a `width x height` image: ten tries at a
/// random area and log-uniform aspect ratio, then the centre crop clamped to `ratio`.
pub fn random_resized_crop(
    rng: &mut impl Rng,
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> Rect {
    let (wf, hf) = (width as f64, height as f64);
    let area = wf * hf;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, lr0, lr1).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= wf && h <= hf {
            let y = rng.gen_range(0..=(height - h as u32)) as f64;
            let x = rng.gen_range(0..=(width - w as u32)) as f64;
            return Rect { x, y, w, h };
        }
    }
    let in_ratio = wf / hf;
    let (w, h) = if in_ratio < ratio.0 {
        (wf, (wf / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((hf * ratio.1).round(), hf)
    } else {
        (wf, hf)
    };
    Rect {
        x: ((wf - w) / 2.0).floor(),
        y: ((hf - h) / 2.0).floor(),
        w,
        h,
    }
}

fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.gen_range(lo..hi)
    } else {
        lo
    }
}

/// The source region `Resize(resize)` + `CenterCrop(side)` keep of a `width x height` image.
pub fn center_crop_rect(width: u32, height: u32, resize: u32, side: u32) -> Rect {
    let (wf, hf) = (width as f64, height as f64);
    // torchvision: the shorter side becomes `resize`, the longer `int(resize * long / short)`.
    let (ow, oh) = if width <= height {
        (resize as f64, (resize as f64 * hf / wf).floor())
    } else {
        ((resize as f64 * wf / hf).floor(), resize as f64)
    };
    let s = side as f64;
    // CenterCrop: top = round((oh - side) / 2), left = round((ow - side) / 2).
    let left = ((ow - s) / 2.0).round();
    let top = ((oh - s) / 2.0).round();
    let (sx, sy) = (wf / ow, hf / oh);
    Rect {
        x: (left * sx).max(0.0),
        y: (top * sy).max(0.0),
        w: (s * sx).min(wf),
        h: (s * sy).min(hf),
    }
}

/// Why one file did not become an image.
pub type DecodeError = String;

/// The image formats the streaming loader reads, by their first bytes (not by the extension:
/// ImageNet holds a PNG named `.JPEG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Jpeg,
    Png,
}

fn sniff(bytes: &[u8]) -> Result<Format, DecodeError> {
    if bytes.is_empty() {
        return Err("the file is empty (0 bytes)".into());
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(Format::Png)
    } else {
        Err("neither a JPEG nor a PNG (unknown first bytes)".into())
    }
}

/// A decoded RGB image.
struct Rgb {
    data: Vec<u8>,
    width: u32,
    height: u32,
}

fn zune_options() -> zune_jpeg::zune_core::options::DecoderOptions {
    zune_jpeg::zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_IMAGE_SIDE as usize)
        .set_max_height(MAX_IMAGE_SIDE as usize)
        .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::RGB)
}

/// The size of an image from its header alone.
fn dimensions(bytes: &[u8], format: Format) -> Result<(u32, u32), DecodeError> {
    let (w, h) = match format {
        Format::Jpeg => {
            let mut d = zune_jpeg::JpegDecoder::new_with_options(
                std::io::Cursor::new(bytes),
                zune_options(),
            );
            d.decode_headers().map_err(|e| format!("bad JPEG: {e:?}"))?;
            let i = d.info().ok_or("bad JPEG: no frame header")?;
            (u32::from(i.width), u32::from(i.height))
        }
        Format::Png => {
            image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png)
                .into_dimensions()
                .map_err(|e| format!("bad PNG: {e}"))?
        }
    };
    if w == 0 || h == 0 || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(format!(
            "{w}x{h} pixels (each side must be 1 to {MAX_IMAGE_SIDE})"
        ));
    }
    Ok((w, h))
}

/// A JPEG decoded in full to RGB by zune-jpeg in strict mode (a truncated or damaged file is an
/// error, never a partly grey image): `(pixels, width, height)`. The in-memory loader decodes
/// its JPEGs with it too.
pub fn decode_jpeg_rgb(bytes: &[u8]) -> Result<(Vec<u8>, u32, u32), DecodeError> {
    let rgb = decode_full(bytes, Format::Jpeg)?;
    Ok((rgb.data, rgb.width, rgb.height))
}

/// Full-size decode to RGB: zune-jpeg (strict) or `image`'s PNG decoder (alpha dropped, as
/// PIL's `convert("RGB")` that torchvision's loader calls; 16-bit and grey converted).
fn decode_full(bytes: &[u8], format: Format) -> Result<Rgb, DecodeError> {
    match format {
        Format::Jpeg => {
            let mut d = zune_jpeg::JpegDecoder::new_with_options(
                std::io::Cursor::new(bytes),
                zune_options(),
            );
            let data = d.decode().map_err(|e| format!("bad JPEG: {e:?}"))?;
            let i = d.info().ok_or("bad JPEG: no frame header")?;
            let (width, height) = (u32::from(i.width), u32::from(i.height));
            if data.len() != width as usize * height as usize * 3 {
                return Err(format!(
                    "bad JPEG: {} bytes decoded for {width}x{height} RGB",
                    data.len()
                ));
            }
            Ok(Rgb {
                data,
                width,
                height,
            })
        }
        Format::Png => {
            let mut r = image::ImageReader::with_format(
                std::io::Cursor::new(bytes),
                image::ImageFormat::Png,
            );
            let mut limits = image::Limits::default();
            limits.max_image_width = Some(MAX_IMAGE_SIDE);
            limits.max_image_height = Some(MAX_IMAGE_SIDE);
            r.limits(limits);
            let img = r.decode().map_err(|e| format!("bad PNG: {e}"))?.into_rgb8();
            Ok(Rgb {
                width: img.width(),
                height: img.height(),
                data: img.into_raw(),
            })
        }
    }
}

/// A reduced-size decode (1/`k`, `k` in 2, 4, 8) by jpeg-decoder's scaled IDCT, for 8-bit
/// grey or RGB JPEGs; `None` when the file is of another kind (the caller decodes it in full).
fn decode_scaled(bytes: &[u8], width: u32, height: u32, k: u32) -> Option<Rgb> {
    let mut d = jpeg_decoder::Decoder::new(bytes);
    d.read_info().ok()?;
    let info = d.info()?;
    if !matches!(
        info.pixel_format,
        jpeg_decoder::PixelFormat::RGB24 | jpeg_decoder::PixelFormat::L8
    ) {
        return None;
    }
    let (w, h) = d
        .scale(
            width.div_ceil(k).max(1) as u16,
            height.div_ceil(k).max(1) as u16,
        )
        .ok()?;
    let raw = d.decode().ok()?;
    let (w, h) = (u32::from(w), u32::from(h));
    let px = w as usize * h as usize;
    let data = match d.info()?.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 if raw.len() == px * 3 => raw,
        jpeg_decoder::PixelFormat::L8 if raw.len() == px => {
            raw.iter().flat_map(|&v| [v, v, v]).collect()
        }
        _ => return None,
    };
    Some(Rgb {
        data,
        width: w,
        height: h,
    })
}

/// The DCT scale (1, 2, 4 or 8) at which a crop of `rect` still has at least `side` pixels in
/// both directions.
fn dct_scale(rect: &Rect, side: u32) -> u32 {
    let need = side as f64;
    [8u32, 4, 2]
        .into_iter()
        .find(|&k| rect.w / k as f64 >= need && rect.h / k as f64 >= need)
        .unwrap_or(1)
}

thread_local! {
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

/// Decodes `bytes` and writes the transformed `side x side` RGB image into `out` (HWC, exactly
/// `side * side * 3` bytes). The randomness of the training transform comes from `rng`.
pub fn decode_into(
    bytes: &[u8],
    t: &Transform,
    rng: &mut impl Rng,
    out: &mut [u8],
) -> Result<(), DecodeError> {
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(format!(
            "{} bytes (the limit is {MAX_IMAGE_FILE_BYTES})",
            bytes.len()
        ));
    }
    let side = t.side();
    assert_eq!(out.len(), side as usize * side as usize * 3);
    let format = sniff(bytes)?;
    let (width, height) = dimensions(bytes, format)?;
    let (rect, flip) = match *t {
        Transform::Train {
            scale, ratio, flip, ..
        } => {
            let r = random_resized_crop(rng, width, height, scale, ratio);
            (r, flip && rng.gen_bool(0.5))
        }
        Transform::Eval { side, resize } => (center_crop_rect(width, height, resize, side), false),
    };
    let k = if format == Format::Jpeg {
        dct_scale(&rect, side)
    } else {
        1
    };
    let (img, rect) = match (k > 1)
        .then(|| decode_scaled(bytes, width, height, k))
        .flatten()
    {
        Some(img) => {
            // The scaled image is ceil(width / k) wide: map the crop by the real ratio.
            let (sx, sy) = (
                img.width as f64 / width as f64,
                img.height as f64 / height as f64,
            );
            let r = Rect {
                x: rect.x * sx,
                y: rect.y * sy,
                w: (rect.w * sx).min(img.width as f64),
                h: (rect.h * sy).min(img.height as f64),
            };
            (img, r)
        }
        None => (decode_full(bytes, format)?, rect),
    };
    if (img.width, img.height) != (width, height) && k == 1 {
        return Err(format!(
            "the header says {width}x{height} but {}x{} decoded",
            img.width, img.height
        ));
    }
    let src = fr::images::ImageRef::new(img.width, img.height, &img.data, fr::PixelType::U8x3)
        .map_err(|e| format!("internal: {e}"))?;
    let mut dst = fr::images::Image::from_slice_u8(side, side, out, fr::PixelType::U8x3)
        .map_err(|e| format!("internal: {e}"))?;
    let opts = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(rect.x, rect.y, rect.w, rect.h);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &opts))
        .map_err(|e| format!("resize: {e}"))?;
    if flip {
        flip_rows(out, side as usize);
    }
    Ok(())
}

/// Mirrors each row of a `side x side` RGB image in place.
fn flip_rows(img: &mut [u8], side: usize) {
    for row in img.chunks_exact_mut(side * 3) {
        for x in 0..side / 2 {
            let (a, b) = (x * 3, (side - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_resized_crop_stays_inside_and_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for (w, h) in [
            (500, 375),
            (375, 500),
            (224, 224),
            (1, 1),
            (4000, 30),
            (30, 4000),
        ] {
            for _ in 0..500 {
                let r = random_resized_crop(&mut rng, w, h, (0.08, 1.0), (0.75, 4.0 / 3.0));
                assert!(r.w >= 1.0 && r.h >= 1.0, "{r:?}");
                assert!(r.x >= 0.0 && r.y >= 0.0, "{r:?}");
                assert!(
                    r.x + r.w <= w as f64 && r.y + r.h <= h as f64,
                    "{w}x{h}: {r:?}"
                );
                let a = r.w * r.h / (w as f64 * h as f64);
                if (w, h) == (500, 375) {
                    // Ten tries always succeed on such an image: area and ratio as asked
                    // (up to the rounding of the sides).
                    assert!((0.07..=1.0).contains(&a), "{a}");
                    let ratio = r.w / r.h;
                    assert!((0.72..=1.39).contains(&ratio), "{ratio}");
                }
            }
        }
    }

    #[test]
    fn center_crop_matches_resize_then_crop() {
        // 500x375 -> resize 256 gives 341x256, centre 224 at left round(58.5) = 58 (banker's
        // rounding in Python gives 58 too), top 16.
        let r = center_crop_rect(500, 375, 256, 224);
        let s = 375.0 / 256.0;
        assert!((r.y - 16.0 * s).abs() < 1e-9);
        assert!((r.h - 224.0 * s).abs() < 1e-9);
        let sx = 500.0 / 341.0;
        assert!((r.x - 59.0 * sx).abs() < 1e-9 || (r.x - 58.0 * sx).abs() < 1e-9);
        assert!((r.w - 224.0 * sx).abs() < 1e-9);
        // A square image: the centre 7/8.
        let r = center_crop_rect(256, 256, 256, 224);
        assert_eq!((r.x, r.y, r.w, r.h), (16.0, 16.0, 224.0, 224.0));
    }

    #[test]
    fn dct_scale_keeps_at_least_the_output_side() {
        let r = |w, h| Rect {
            x: 0.0,
            y: 0.0,
            w,
            h,
        };
        assert_eq!(dct_scale(&r(500.0, 375.0), 224), 1);
        assert_eq!(dct_scale(&r(448.0, 448.0), 224), 2);
        assert_eq!(dct_scale(&r(3000.0, 2000.0), 224), 8);
        assert_eq!(dct_scale(&r(1000.0, 900.0), 224), 4);
    }

    #[test]
    fn flip_mirrors_rows() {
        let orig: Vec<u8> = (0..27).collect(); // 3x3 RGB
        let mut img = orig.clone();
        flip_rows(&mut img, 3);
        assert_eq!(&img[0..9], &[6, 7, 8, 3, 4, 5, 0, 1, 2]);
        flip_rows(&mut img, 3);
        assert_eq!(img, orig);
    }

    #[test]
    fn sniff_names_empty_and_unknown_files() {
        assert!(sniff(&[]).unwrap_err().contains("empty"));
        assert!(sniff(b"GIF89a").unwrap_err().contains("neither"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Ok(Format::Jpeg));
    }
}
