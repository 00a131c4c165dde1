//! Reading JSON with errors that name file and line, and writing files atomically.

use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;

/// Reads and parses a JSON file; the error names the file, and the line and column.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|err| format!("{}:{}:{}: {err}", path.display(), err.line(), err.column()))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`: a
/// reader sees the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = temporary_path(path)?;
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|err| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {err}", path.display())
    })
}

/// The temporary file [`write_atomically`] writes before renaming it over `path`:
/// `.NAME.tmp-PID` in the same directory (a rename never crosses file systems).
pub fn temporary_path(path: &Path) -> Result<std::path::PathBuf, String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file path", path.display()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}
