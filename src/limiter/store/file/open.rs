//! Opening the state file: created with its mode, never through a symbolic link.

use super::super::{StoreError, StoreErrorKind};
use super::FileSettings;
use std::fs::{File, OpenOptions};
use std::path::Path;

fn open_error(path: &Path, e: &std::io::Error) -> StoreError {
    use std::io::ErrorKind::{IsADirectory, PermissionDenied};
    let kind = if matches!(e.kind(), PermissionDenied | IsADirectory) {
        StoreErrorKind::Invalid
    } else {
        StoreErrorKind::Unavailable
    };
    StoreError::new(
        kind,
        format!("cannot open the state file {}: {e}", path.display()),
    )
}

fn symlink_error(path: &Path) -> StoreError {
    StoreError::new(
        StoreErrorKind::Invalid,
        format!(
            "the state file {} is a symbolic link, which quotagate does not follow (another \
             user could point it anywhere): name the file itself",
            path.display()
        ),
    )
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Opens (creating with `settings.mode` if needed) the state file, never through a
/// symbolic link.
#[cfg(unix)]
pub(super) fn open_file(settings: &FileSettings) -> Result<File, StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = &settings.path;
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW);
    // Create it if it is missing (O_EXCL: never through a link, never someone else's
    // file), else open what is there; a file removed in between is created again.
    let mut attempts = 0;
    let file = loop {
        attempts += 1;
        match options
            .clone()
            .create_new(true)
            .mode(settings.mode)
            .open(path)
        {
            Ok(file) => {
                // The umask may have taken bits away (or, at 000, none): the mode is the
                // one asked for, exactly.
                file.set_permissions(std::fs::Permissions::from_mode(settings.mode))
                    .map_err(|e| open_error(path, &e))?;
                break file;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(open_error(path, &e)),
        }
        match options.open(path) {
            Ok(file) => break file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {}
            Err(e) if is_symlink(path) => {
                let _ = e;
                return Err(symlink_error(path));
            }
            Err(e) => return Err(open_error(path, &e)),
        }
    };
    let meta = file.metadata().map_err(|e| open_error(path, &e))?;
    if !meta.file_type().is_file() {
        return Err(StoreError::new(
            StoreErrorKind::Invalid,
            format!("the state file {} is not a regular file", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        log::warn!(
            "the state file {} has mode {mode:04o}: every user of this host may open it, read \
             its keys and lock it; chmod o-rwx it",
            path.display()
        );
    }
    Ok(file)
}

/// Opens (creating if needed) the state file, never through a symbolic link.
#[cfg(not(unix))]
pub(super) fn open_file(settings: &FileSettings) -> Result<File, StoreError> {
    let path = &settings.path;
    if is_symlink(path) {
        return Err(symlink_error(path));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| open_error(path, &e))
}
