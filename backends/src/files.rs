//! Writing files that other processes read at any moment (subnet.env, the CNI conflist and
//! plugin binary): never half a file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Write `content` to `target` with `mode`, unless it already holds exactly that with that
/// mode (returns whether it wrote). The bytes go to a hidden temporary file in the same
/// directory (its name ends in `.tmp`, so no `*.conf`/`*.conflist` reader picks it up), which
/// is flushed, given its mode and renamed over the target; the directory is then synced so the
/// rename survives a crash. A reader sees the old file or the new one. Missing parent
/// directories are created (with the default mode; make one first for other modes).
pub fn write_atomically(target: &Path, content: &[u8], mode: u32) -> std::io::Result<bool> {
    if std::fs::read(target).is_ok_and(|old| old == content)
        && std::fs::metadata(target).is_ok_and(|m| m.permissions().mode() & 0o777 == mode)
    {
        return Ok(false);
    }
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(dir)?;
        // Created with the mode (the umask may take bits away, never add them), so a file
        // meant for its owner alone is never readable by others, not even for a moment; then
        // given exactly the mode.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}
