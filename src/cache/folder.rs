//! The cache folder before sled opens it: enough free space to store what a build pays for, and
//! what an error opening it means (another process holds it, or it is damaged).

use std::path::Path;

use super::CacheError;

/// Free space a cache folder must have before a build starts (MB); `TICKETBUILD_CACHE_MIN_FREE_MB`
/// overrides it. A build that cannot store what it pays for would pay twice, so a nearly full disk
/// is refused before the first call rather than discovered after it.
pub(crate) const MIN_FREE_MB: u64 = 64;

pub(super) fn check_free_space(path: &Path) -> Result<(), CacheError> {
    let needed_mb = std::env::var("TICKETBUILD_CACHE_MIN_FREE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_FREE_MB);
    // A file system that cannot report its free space is not refused for that.
    let Ok(free) = fs2::available_space(path) else {
        return Ok(());
    };
    let free_mb = free / (1024 * 1024);
    if free_mb < needed_mb {
        return Err(CacheError::Full {
            path: path.to_path_buf(),
            free_mb,
            needed_mb,
        });
    }
    Ok(())
}

pub(super) fn open_error(path: &Path, error: sled::Error) -> CacheError {
    // The full path: "cache" alone does not say which project's cache is busy.
    let path = &path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let reason = error.to_string();
    let locked = match &error {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock || reason.contains("lock")
        }
        _ => false,
    };
    if locked {
        CacheError::Locked {
            path: path.to_path_buf(),
        }
    } else {
        CacheError::Open {
            path: path.to_path_buf(),
            reason,
        }
    }
}
