//! Template images: resolving and pulling them, and building the Debian base image.
//!
//! The base image is built without a registry:
//!
//! 1. `debootstrap --variant=minbase` writes a Debian bookworm tree into a temporary directory
//!    under the cache directory, keeping downloaded packages in `<cache_dir>/debootstrap-debs`.
//! 2. APT caches are removed from the tree.
//! 3. `tar -c` of the tree is streamed into the Engine API's import (`POST /images/create` with
//!    `fromSrc=-`), tagged [`BASE_IMAGE`].
//! 4. The temporary tree is removed, whether the build worked or not.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::models::CreateImageInfo;
use bollard::query_parameters::CreateImageOptions;
use bollard::{body_try_stream, Docker};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::io::ReaderStream;

use super::{docker_message, is_not_found, RUNTIME};
use crate::error::path_io_error;
use crate::{Progress, RuntimeError};

/// Image of the `base` template, built by [`build_base_image`].
pub const BASE_IMAGE: &str = "gitvm-base:bookworm";

/// Template name that stands for [`BASE_IMAGE`].
const BASE_TEMPLATE: &str = "base";

/// A pull that sends nothing for this long has stalled and fails.
const PULL_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum duration of a pull that keeps making progress. An estimate that errs on the long
/// side: large images on slow links take many minutes.
const PULL_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Debian mirror debootstrap downloads from.
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// Debian suite of the base image.
const DEBIAN_SUITE: &str = "bookworm";

/// Packages added to debootstrap's minimal set: a shell, core tools, Python and Git for agents,
/// CA certificates for HTTPS, and `ps`.
const BASE_PACKAGES: &str = "bash,coreutils,python3,git,ca-certificates,procps";

/// Lines of a failed command's output quoted in its error.
const OUTPUT_TAIL_LINES: usize = 20;

/// Resolves `template` to a local image reference, pulling it when it is not local.
pub(super) async fn prepare(
    docker: &Docker,
    template: &str,
    progress: Progress,
) -> Result<String, RuntimeError> {
    if template == BASE_TEMPLATE {
        return match image_exists(docker, BASE_IMAGE).await? {
            true => Ok(BASE_IMAGE.to_string()),
            false => Err(RuntimeError::TemplateNotFound {
                template: template.to_string(),
                reason: "the base image is not built yet; run `gitvm template build base`"
                    .to_string(),
            }),
        };
    }

    let reference = with_default_tag(template);
    if image_exists(docker, &reference).await? {
        return Ok(reference);
    }
    pull(docker, template, &reference, progress).await?;
    Ok(reference)
}

/// Builds [`BASE_IMAGE`] with debootstrap and returns its reference. Returns the existing image
/// unless `force` is set.
///
/// Needs root (debootstrap creates device nodes and chroots) and the `debootstrap` and `tar`
/// commands. Temporary files live under `cache_dir`, which also keeps downloaded packages for
/// the next build. Output lines of debootstrap and of the import go to `progress`.
///
/// ```no_run
/// # async fn example(docker: &bollard::Docker) -> Result<(), gitvm_runtime::RuntimeError> {
/// use std::sync::Arc;
/// use gitvm_runtime::docker::build_base_image;
///
/// let image = build_base_image(
///     docker,
///     "/var/cache/gitvm".as_ref(),
///     false,
///     Arc::new(|line: &str| println!("{line}")),
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub async fn build_base_image(
    docker: &Docker,
    cache_dir: &Path,
    force: bool,
    progress: Progress,
) -> Result<String, RuntimeError> {
    if !force && image_exists(docker, BASE_IMAGE).await? {
        progress(&format!("{BASE_IMAGE} already exists"));
        return Ok(BASE_IMAGE.to_string());
    }
    let debootstrap = find_command("debootstrap").ok_or_else(|| {
        build_error(
            "debootstrap is not installed; install it with `apt-get install debootstrap`"
                .to_string(),
        )
    })?;

    let debs = cache_dir.join("debootstrap-debs");
    std::fs::create_dir_all(&debs).map_err(|source| RuntimeError::Io {
        context: format!("creating the package cache {}", debs.display()),
        source,
    })?;
    let tree = tempfile::Builder::new()
        .prefix("base-rootfs-")
        .tempdir_in(cache_dir)
        .map_err(|source| RuntimeError::Io {
            context: format!("creating a temporary directory in {}", cache_dir.display()),
            source,
        })?;
    let tree_path = tree.path().to_path_buf();
    tracing::info!(tree = %tree_path.display(), image = BASE_IMAGE, "building the base image");

    let result = build_in(docker, &debootstrap, &debs, &tree_path, &progress).await;

    // debootstrap mounts /proc and /sys inside the tree and may leave them mounted when it
    // fails. Removing the tree through those mounts would touch the host's files.
    unmount_under(&tree_path).await;
    if let Err(err) = tree.close() {
        tracing::warn!(tree = %tree_path.display(), error = %err, "removing the temporary tree failed");
    }

    if let Ok(image) = &result {
        tracing::info!(image = %image, "base image built");
    }
    result
}

/// Runs the steps of [`build_base_image`] on an empty `tree`.
async fn build_in(
    docker: &Docker,
    debootstrap: &Path,
    debs: &Path,
    tree: &Path,
    progress: &Progress,
) -> Result<String, RuntimeError> {
    let mut command = Command::new(debootstrap);
    command
        .arg("--variant=minbase")
        .arg(format!("--include={BASE_PACKAGES}"))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(DEBIAN_SUITE)
        .arg(tree)
        .arg(DEBIAN_MIRROR);
    let tail = run_streaming(command, progress).await.map_err(|reason| {
        build_error(format!(
            "debootstrap failed ({reason}); it needs root and HTTP access to {DEBIAN_MIRROR}"
        ))
    })?;
    tracing::debug!(lines = tail.len(), "debootstrap finished");

    clean_apt_caches(tree)?;

    // tempfile creates the directory with mode 0700, and tar records it as the image's `/`.
    set_mode(tree, 0o755)?;

    import_tree(docker, tree, progress).await
}

/// Streams `tar -c` of `tree` into Docker's import and tags the result [`BASE_IMAGE`].
async fn import_tree(
    docker: &Docker,
    tree: &Path,
    progress: &Progress,
) -> Result<String, RuntimeError> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(tree)
        .arg("--numeric-owner")
        // Docker mounts its own /dev in every container; device nodes in a layer are useless.
        .arg("--exclude=./dev/*")
        .arg("-c")
        .arg(".")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            build_error(format!(
                "running `tar` failed: {err}; install it with `apt-get install tar`"
            ))
        })?;
    let stdout = tar.stdout.take().expect("tar stdout is piped");
    let stderr = tar.stderr.take().expect("tar stderr is piped");
    let stderr_task = tokio::spawn(read_all(stderr));

    let (repo, tag) = BASE_IMAGE.split_once(':').expect("BASE_IMAGE has a tag");
    let options = CreateImageOptions {
        from_src: Some("-".to_string()),
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        changes: vec![
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "CMD [\"/bin/bash\"]".to_string(),
        ],
        ..Default::default()
    };
    let body = body_try_stream(ReaderStream::new(stdout));
    let mut stream = docker.create_image(Some(options), Some(body), None);

    let mut import_error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => progress(&progress_line(&info)),
            Err(err) => {
                import_error = Some(docker_message(&err));
                break;
            }
        }
    }
    drop(stream);

    let status = tar
        .wait()
        .await
        .map_err(|err| build_error(format!("waiting for `tar` failed: {err}")))?;
    let tar_stderr = stderr_task.await.unwrap_or_default();
    if let Some(message) = import_error {
        return Err(build_error(format!("docker import failed: {message}")));
    }
    if !status.success() {
        // The import may have stored a truncated tree under the tag, which must not be used.
        remove_image_quietly(docker, BASE_IMAGE).await;
        return Err(build_error(format!(
            "`tar` of the tree failed with {status}: {}",
            tar_stderr.trim()
        )));
    }
    Ok(BASE_IMAGE.to_string())
}

/// Pulls `reference`, forwarding progress lines. A pull that stalls for
/// [`PULL_STALL_TIMEOUT`] or runs past [`PULL_TIMEOUT`] fails; failures are not retried.
async fn pull(
    docker: &Docker,
    template: &str,
    reference: &str,
    progress: Progress,
) -> Result<(), RuntimeError> {
    let not_found = |reason: String| RuntimeError::TemplateNotFound {
        template: template.to_string(),
        reason,
    };
    tracing::info!(template = %template, image = %reference, "pulling image");

    let options = CreateImageOptions {
        from_image: Some(reference.to_string()),
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(options), None, None);
    let deadline = Instant::now() + PULL_TIMEOUT;

    loop {
        let wait = PULL_STALL_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let item = match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(image = %reference, "pull timed out");
                return Err(not_found(format!(
                    "pulling `{reference}` timed out: no progress for {} s or longer than {} min in total",
                    PULL_STALL_TIMEOUT.as_secs(),
                    PULL_TIMEOUT.as_secs() / 60
                )));
            }
        };
        match item {
            Ok(info) => progress(&progress_line(&info)),
            Err(err) => {
                tracing::warn!(image = %reference, error = %err, "pull failed");
                return Err(not_found(format!(
                    "pulling `{reference}` failed: {}; check the name, or build the image locally",
                    docker_message(&err)
                )));
            }
        }
    }

    // A pull stream can end without an error and without the image, such as when the
    // connection drops; the inspect below catches that.
    if !image_exists(docker, reference).await? {
        return Err(not_found(format!(
            "the pull of `{reference}` ended but the image is not present"
        )));
    }
    tracing::info!(image = %reference, "image pulled");
    Ok(())
}

/// Checks whether `reference` names a local image.
async fn image_exists(docker: &Docker, reference: &str) -> Result<bool, RuntimeError> {
    match docker.inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(err) if is_not_found(&err) => Ok(false),
        Err(err) => Err(RuntimeError::Backend {
            runtime: RUNTIME,
            operation: "inspect image",
            id: reference.to_string(),
            message: docker_message(&err),
        }),
    }
}

/// Adds `:latest` to a reference with neither tag nor digest, because the Engine API pulls
/// every tag of a repository when none is given.
fn with_default_tag(reference: &str) -> String {
    let last_component = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last_component.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

/// Formats one progress line from a pull or import message: status, layer id and progress bar.
fn progress_line(info: &CreateImageInfo) -> String {
    [&info.status, &info.id, &info.progress]
        .into_iter()
        .flatten()
        .filter(|part| !part.is_empty())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command`, sending each line of its stdout and stderr to `progress`. Returns the last
/// lines on success, and a reason with the exit status and the last lines on failure.
async fn run_streaming(
    mut command: Command,
    progress: &Progress,
) -> Result<VecDeque<String>, String> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("starting {program} failed: {err}"))?;

    let stdout = lines(child.stdout.take().expect("stdout is piped"));
    let stderr = lines(child.stderr.take().expect("stderr is piped"));
    let mut output = futures_util::stream::select(stdout, stderr);
    let mut tail = VecDeque::with_capacity(OUTPUT_TAIL_LINES);
    while let Some(line) = output.next().await {
        progress(&line);
        if tail.len() == OUTPUT_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }

    let status = child
        .wait()
        .await
        .map_err(|err| format!("waiting for {program} failed: {err}"))?;
    if status.success() {
        return Ok(tail);
    }
    let last_lines = Vec::from(tail).join("\n");
    Err(format!(
        "{program} exited with {status}; last lines:\n{last_lines}"
    ))
}

/// Splits `reader` into lines, decoded lossily because tool output is not always UTF-8.
fn lines(
    reader: impl AsyncRead + Unpin + Send + 'static,
) -> impl Stream<Item = String> + Unpin + Send {
    let reader = BufReader::new(reader);
    Box::pin(futures_util::stream::unfold(
        reader,
        |mut reader| async move {
            let mut buffer = Vec::new();
            match reader.read_until(b'\n', &mut buffer).await {
                Ok(0) | Err(_) => None,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer).trim_end().to_string();
                    Some((line, reader))
                }
            }
        },
    ))
}

/// Reads everything `reader` produces, decoded lossily.
async fn read_all(reader: impl AsyncRead + Unpin) -> String {
    use tokio::io::AsyncReadExt;

    let mut buffer = Vec::new();
    let mut reader = reader;
    if let Err(err) = reader.read_to_end(&mut buffer).await {
        tracing::warn!(error = %err, "reading command output failed");
    }
    String::from_utf8_lossy(&buffer).into_owned()
}

/// Removes downloaded packages and package lists from `tree`; the image does not need them and
/// `apt-get update` recreates the lists.
fn clean_apt_caches(tree: &Path) -> Result<(), RuntimeError> {
    let targets = [
        (tree.join("var/cache/apt/archives"), "deb"),
        (tree.join("var/cache/apt"), "bin"),
        (tree.join("var/lib/apt/lists"), ""),
    ];
    for (dir, extension) in targets {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(path_io_error("reading", &dir, source)),
        };
        for entry in entries {
            let path = entry
                .map_err(|source| path_io_error("reading", &dir, source))?
                .path();
            let matches = path.is_file()
                && (extension.is_empty() || path.extension().is_some_and(|ext| ext == extension))
                && path.file_name().is_some_and(|name| name != "lock");
            if matches {
                std::fs::remove_file(&path)
                    .map_err(|source| path_io_error("removing", &path, source))?;
            }
        }
    }
    Ok(())
}

/// Sets the permission bits of `path`.
fn set_mode(path: &Path, mode: u32) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;

    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| path_io_error("setting the mode of", path, source))
}

/// Lazily unmounts every mount point at or below `tree`, deepest first.
async fn unmount_under(tree: &Path) {
    let mountinfo = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(err) => {
            tracing::warn!(error = %err, "reading /proc/self/mountinfo failed; not checking for leftover mounts");
            return;
        }
    };
    // The fifth field of a mountinfo line is the mount point, with spaces written as `\040`.
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(field.replace("\\040", " ")))
        .filter(|mount| mount.starts_with(tree))
        .collect();
    mounts.sort_by_key(|mount| std::cmp::Reverse(mount.components().count()));

    for mount in mounts {
        let status = Command::new("umount").arg("-l").arg(&mount).status().await;
        match status {
            Ok(status) if status.success() => {
                tracing::info!(mount = %mount.display(), "unmounted a leftover mount of the build tree")
            }
            Ok(status) => tracing::warn!(mount = %mount.display(), %status, "umount failed"),
            Err(err) => {
                tracing::warn!(mount = %mount.display(), error = %err, "running umount failed")
            }
        }
    }
}

/// Finds `name` in `PATH` or in the sbin directories, which `PATH` lacks for many users.
fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Removes `reference`, logging instead of failing because the caller is already failing.
async fn remove_image_quietly(docker: &Docker, reference: &str) {
    let options = bollard::query_parameters::RemoveImageOptions {
        force: true,
        ..Default::default()
    };
    if let Err(err) = docker.remove_image(reference, Some(options), None).await {
        tracing::warn!(image = %reference, error = %err, "removing the partly imported image failed");
    }
}

/// Wraps `reason` as a [`RuntimeError::TemplateBuild`] of the base template.
fn build_error(reason: String) -> RuntimeError {
    RuntimeError::TemplateBuild {
        template: BASE_TEMPLATE.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tag_added_only_when_missing() {
        let cases = [
            ("debian", "debian:latest"),
            ("debian:bookworm", "debian:bookworm"),
            ("localhost:5000/team/app", "localhost:5000/team/app:latest"),
            ("localhost:5000/team/app:2", "localhost:5000/team/app:2"),
            ("debian@sha256:0123", "debian@sha256:0123"),
        ];
        for (input, expected) in cases {
            assert_eq!(with_default_tag(input), expected, "input {input}");
        }
    }

    #[test]
    fn progress_line_joins_present_fields() {
        let info = CreateImageInfo {
            status: Some("Downloading".to_string()),
            id: Some("a1b2c3".to_string()),
            progress: Some("[==>   ] 1MB/4MB".to_string()),
            ..Default::default()
        };
        assert_eq!(progress_line(&info), "Downloading a1b2c3 [==>   ] 1MB/4MB");

        let status_only = CreateImageInfo {
            status: Some("Pulling from library/debian".to_string()),
            id: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(progress_line(&status_only), "Pulling from library/debian");
    }
}
