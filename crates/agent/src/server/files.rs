//! File routes: streamed read and write, listing, mkdir and recursive removal.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use gitvm_proto::{FileEntry, FileList, FileType};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::{json_response, no_content, ApiError, ResponseBody};

/// Bytes read from a file per response frame.
const READ_CHUNK: usize = 64 * 1024;

/// Linux's PATH_MAX: the size of a path, terminating NUL included, that system calls accept.
const PATH_MAX: usize = 4096;

/// Characters of an over-long path shown in its error message.
const SHOWN_PATH_CHARS: usize = 100;

/// Mode of a newly created file before the umask, as `open(2)` callers usually pass.
const NEW_FILE_MODE: u32 = 0o666;

/// Streams the file at `?path=`.
pub(super) async fn read(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let path = query_path(&request)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|error| ApiError::from_io("file", &path, &error))?;
    let metadata = file
        .metadata()
        .await
        .map_err(|error| ApiError::from_io("file", &path, &error))?;
    if metadata.is_dir() {
        return Err(ApiError::from_io(
            "file",
            &path,
            &io::Error::from(io::ErrorKind::IsADirectory),
        ));
    }

    let frames = ReaderStream::with_capacity(file, READ_CHUNK).map_ok(Frame::data);
    let mut response = Response::new(StreamBody::new(frames).boxed());
    if metadata.is_file() {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, metadata.len().into());
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// Streams the request body into a temporary file next to `?path=`, then renames it over the
/// target, so that a failed upload leaves the old file intact. Missing parents are created.
pub(super) async fn write(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let mut path = query_path(&request)?;
    let mut mode = None;
    match tokio::fs::symlink_metadata(&path).await {
        Ok(metadata) if metadata.is_symlink() => {
            // Writing through a link replaces its target, as shell redirection does.
            if let Ok(target) = tokio::fs::canonicalize(&path).await {
                path = target;
                mode = tokio::fs::metadata(&path)
                    .await
                    .ok()
                    .map(|m| m.mode() & 0o7777);
            }
        }
        Ok(metadata) if metadata.is_dir() => {
            return Err(ApiError::from_io(
                "file",
                &path,
                &io::Error::from(io::ErrorKind::IsADirectory),
            ))
        }
        Ok(metadata) => mode = Some(metadata.mode() & 0o7777),
        Err(_) => {}
    }
    let Some(parent) = path.parent().map(Path::to_owned) else {
        return Err(invalid_path(&path, "is not a file path"));
    };
    tokio::fs::create_dir_all(&parent).await.map_err(|error| {
        if error.kind() == io::ErrorKind::AlreadyExists {
            // create_dir_all reports an existing non-directory as EEXIST.
            ApiError::bad_request(
                "not_a_directory",
                format!(
                    "parent `{}` of file `{}` is not a directory",
                    parent.display(),
                    path.display()
                ),
            )
        } else {
            creation_error("directory", &parent, &error)
        }
    })?;

    let temp = parent.join(format!(".gitvm-upload-{:016x}", rand::random::<u64>()));
    let result = write_temp(&temp, mode, request.into_body(), &path).await;
    let result = match result {
        Ok(()) => tokio::fs::rename(&temp, &path)
            .await
            .map_err(|error| ApiError::from_io("file", &path, &error)),
        Err(error) => Err(error),
    };
    if let Err(error) = result {
        if let Err(cleanup) = tokio::fs::remove_file(&temp).await {
            tracing::warn!(temp = %temp.display(), error = %cleanup, "cannot remove temporary upload file");
        }
        return Err(error);
    }
    Ok(no_content())
}

async fn write_temp(
    temp: &Path,
    mode: Option<u32>,
    mut body: Incoming,
    target: &Path,
) -> Result<(), ApiError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(NEW_FILE_MODE)
        .open(temp)
        .await
        .map_err(|error| creation_error("file", target, &error))?;
    if let Some(mode) = mode {
        // The umask applied at open; an existing file's exact mode is kept instead.
        tokio::fs::set_permissions(temp, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(|error| ApiError::from_io("file", target, &error))?;
    }

    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            ApiError::bad_request(
                "upload_interrupted",
                format!("upload of `{}` was interrupted: {error}", target.display()),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data)
                .await
                .map_err(|error| ApiError::from_io("file", target, &error))?;
        }
    }
    // NOTE: no fsync, so a crash of the machine right after the rename can leave a short file.
    file.flush()
        .await
        .map_err(|error| ApiError::from_io("file", target, &error))
}

/// Removes the file, symlink or directory tree at `?path=`.
pub(super) async fn remove(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let path = query_path(&request)?;
    if path == Path::new("/") {
        return Err(invalid_path(
            &path,
            "is the root directory and cannot be removed",
        ));
    }
    let metadata = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|error| ApiError::from_io("path", &path, &error))?;
    let result = if metadata.is_dir() {
        tokio::fs::remove_dir_all(&path).await
    } else {
        tokio::fs::remove_file(&path).await
    };
    result.map_err(|error| ApiError::from_io("path", &path, &error))?;
    Ok(no_content())
}

/// Lists the directory at `?path=` without following symlinks of its entries.
pub(super) async fn list(request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let path = query_path(&request)?;
    let metadata = tokio::fs::metadata(&path)
        .await
        .map_err(|error| ApiError::from_io("directory", &path, &error))?;
    if !metadata.is_dir() {
        return Err(ApiError::bad_request(
            "not_a_directory",
            format!("`{}` is not a directory", path.display()),
        ));
    }

    let mut reader = tokio::fs::read_dir(&path)
        .await
        .map_err(|error| ApiError::from_io("directory", &path, &error))?;
    let mut entries = Vec::new();
    loop {
        let entry = match reader.next_entry().await {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(error) => return Err(ApiError::from_io("directory", &path, &error)),
        };
        // An entry removed between readdir and lstat is skipped.
        let Ok(metadata) = tokio::fs::symlink_metadata(entry.path()).await else {
            continue;
        };
        entries.push(file_entry(entry.file_name(), entry.path(), &metadata));
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(json_response(StatusCode::OK, &FileList { entries }))
}

fn file_entry(name: OsString, path: PathBuf, metadata: &std::fs::Metadata) -> FileEntry {
    let file_type = metadata.file_type();
    let file_type = if file_type.is_symlink() {
        FileType::Symlink
    } else if file_type.is_dir() {
        FileType::Dir
    } else if file_type.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    let modified =
        OffsetDateTime::from_unix_timestamp(metadata.mtime()).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    FileEntry {
        name: name.to_string_lossy().into_owned(),
        path: path.to_string_lossy().into_owned(),
        file_type,
        size: metadata.len(),
        mode: metadata.mode() & 0o7777,
        modified_at: modified.format(&Rfc3339).unwrap_or_default(),
    }
}

/// Creates the directory at `?path=` and its parents, like `mkdir -p`.
pub(super) async fn make_dir(
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let path = query_path(&request)?;
    if let Ok(metadata) = tokio::fs::metadata(&path).await {
        if !metadata.is_dir() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("`{}` already exists and is not a directory", path.display()),
            ));
        }
    }
    tokio::fs::create_dir_all(&path)
        .await
        .map_err(|error| creation_error("directory", &path, &error))?;
    Ok(no_content())
}

/// Extracts and percent-decodes the absolute `path` query parameter. The decoded bytes are used
/// as they are, so any file name the kernel accepts can be addressed.
fn query_path(request: &Request<Incoming>) -> Result<PathBuf, ApiError> {
    let raw = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("path="))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_path",
                "missing `path` query parameter; pass an absolute path such as `?path=/tmp/file`",
            )
        })?;
    let path = PathBuf::from(OsString::from_vec(percent_decode(raw)));
    let length = path.as_os_str().len();
    if length >= PATH_MAX {
        // The path is not echoed whole, so that the message stays readable.
        let shown: String = path
            .to_string_lossy()
            .chars()
            .take(SHOWN_PATH_CHARS)
            .collect();
        return Err(ApiError::bad_request(
            "invalid_path",
            format!(
                "path `{shown}…` ({length} bytes) is longer than {} bytes, the limit of Linux \
                 (PATH_MAX {PATH_MAX} with the terminating NUL)",
                PATH_MAX - 1
            ),
        ));
    }
    if !path.is_absolute() {
        return Err(invalid_path(
            &path,
            "is not absolute; use an absolute path such as `/tmp/file`",
        ));
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(invalid_path(&path, "contains a NUL byte"));
    }
    Ok(path)
}

/// Maps an error of creating the file or directory `path`. Procfs and sysfs return ENOENT for
/// the creation of a new entry in a directory that exists, so ENOENT becomes `not_found` only
/// when no existing ancestor explains it, and otherwise `read_only` or `not_supported`
/// for that ancestor's file system.
fn creation_error(what: &str, path: &Path, error: &io::Error) -> ApiError {
    if error.kind() != io::ErrorKind::NotFound {
        return ApiError::from_io(what, path, error);
    }
    // Parents are created before the entry itself, so the nearest existing ancestor is where
    // the file system refused.
    let Some(existing) = path.ancestors().skip(1).find(|dir| dir.is_dir()) else {
        return ApiError::from_io(what, path, error);
    };
    if is_read_only(existing) {
        return ApiError::from_io(
            what,
            path,
            &io::Error::from(io::ErrorKind::ReadOnlyFilesystem),
        );
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "not_supported",
        format!(
            "cannot create {what} `{}`: the file system of `{}` does not allow new entries there",
            path.display(),
            existing.display()
        ),
    )
}

/// True when `dir` is on a file system mounted read-only.
fn is_read_only(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .map(|stats| {
            stats
                .flags()
                .contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
        })
        .unwrap_or(false)
}

fn invalid_path(path: &Path, problem: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_path",
        format!("path `{}` {problem}", path.display()),
    )
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays literal, and `+` is a plus
/// sign, not a space.
fn percent_decode(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                out.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|value| value as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_cases() {
        assert_eq!(percent_decode("/tmp/a%20b"), b"/tmp/a b");
        assert_eq!(percent_decode("/na%C3%AFve"), "/naïve".as_bytes());
        assert_eq!(percent_decode("/a+b"), b"/a+b");
        assert_eq!(percent_decode("/x%2"), b"/x%2");
        assert_eq!(percent_decode("/x%zz"), b"/x%zz");
        assert_eq!(percent_decode("%00"), b"\0");
        assert_eq!(percent_decode("/%25"), b"/%");
        assert_eq!(percent_decode("/%+1"), b"/%+1");
    }
}
