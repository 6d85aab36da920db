//! The packed-model subcommands of `slb`: `eval`, `inspect` and `bench`. They read model files
//! with `slb-format` and execute them with the `no_std` runtime, on the host.

pub mod bench;
pub mod eval;
pub mod inspect;

use std::path::Path;

use anyhow::{Context, Result};

/// Reads a model file, naming it in every error. Reads the header first and checks it (magic,
/// version, flags) and the file's length against the payload length it declares before
/// reading the rest, so a huge or endless file (`/dev/zero`, an 8 GB sparse file) is refused
/// after 16 bytes; no more than the declared length plus one byte is ever read (at most the
/// format's maximum, 4 GiB + 16 bytes).
pub fn read_model_file(path: &Path) -> Result<Vec<u8>> {
    use slb_format::{Error as FormatError, Model, HEADER_LEN, TRAILER_LEN};
    use std::io::Read;
    let invalid = || format!("{} is not a valid model", path.display());
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot open model file {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + TRAILER_LEN);
    (&mut f)
        .take((HEADER_LEN + TRAILER_LEN) as u64)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    let needed = match Model::parse(&bytes) {
        // The header is sound and names the payload length: the whole file's length.
        Err(FormatError::Truncated { needed, got }) if got == HEADER_LEN + TRAILER_LEN => needed,
        Err(e) => return Err(e).with_context(invalid),
        Ok(_) => return Ok(bytes),
    };
    if meta.is_file() {
        let len = meta.len();
        if len < needed as u64 {
            return Err(FormatError::Truncated {
                needed,
                got: usize::try_from(len).unwrap_or(usize::MAX),
            })
            .with_context(invalid);
        }
        if len > needed as u64 {
            return Err(FormatError::TrailingBytes {
                extra: usize::try_from(len - needed as u64).unwrap_or(usize::MAX),
            })
            .with_context(invalid);
        }
    }
    (&mut f)
        .take((needed - bytes.len()) as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    Model::parse(&bytes).with_context(invalid)?;
    Ok(bytes)
}
