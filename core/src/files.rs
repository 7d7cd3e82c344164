//! Reading files with a size cap checked before the read (manuals, specs and the
//! files their `$ref`s name).

use std::path::Path;

use crate::error::{Error, Result};

/// Read a file whose size is checked against `max_size` before reading.
pub fn read_capped(path: &Path, max_size: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        return Err(Error::InvalidArgument(format!("{} is a directory; use discover to scan it", path.display())));
    }
    if meta.len() > max_size {
        return Err(Error::InvalidArgument(too_large(meta.len(), max_size)));
    }
    std::fs::read(path).map_err(|e| io_error(path, e))
}

pub(crate) fn too_large(size: u64, cap: u64) -> String {
    format!("file is {} bytes, over the {} byte cap (discovery.max_file_size)", size, cap)
}

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("{}: no such file or directory", path.display())),
        _ => Error::InvalidArgument(format!("cannot read {}: {e}", path.display())),
    }
}
