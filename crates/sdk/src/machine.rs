//! A handle to one sandbox, its builder, and the [`Machine`] interface that agent frameworks
//! program against, so that gitvm can stand in for another machine provider.

use async_trait::async_trait;
use futures_util::StreamExt;
use gitvm_proto::{CreateSandboxRequest, FileEntry, Sandbox, SandboxState, Snapshot};

use crate::{Client, Error, ExecOutput, ExecuteOptions};

/// The operations an agent framework needs from a machine, whatever provides it.
#[async_trait]
pub trait Machine: Send + Sync {
    /// Machine id.
    fn id(&self) -> &str;

    /// Fetches the current lifecycle state.
    async fn state(&self) -> Result<SandboxState, Error>;

    /// Starts a stopped machine; returns once it accepts commands.
    async fn start(&self) -> Result<(), Error>;

    /// Freezes every process.
    async fn pause(&self) -> Result<(), Error>;

    /// Thaws a paused machine.
    async fn resume(&self) -> Result<(), Error>;

    /// Stops every process; files are kept.
    async fn stop(&self) -> Result<(), Error>;

    /// Runs a shell command line, feeding output to the callbacks in `options`.
    async fn execute(
        &self,
        command: &str,
        options: ExecuteOptions<'_>,
    ) -> Result<ExecOutput, Error>;

    /// Reads a whole file.
    async fn read_file(&self, path: &str) -> Result<Vec<u8>, Error>;

    /// Writes a whole file, creating parent directories.
    async fn write_file(&self, path: &str, content: Vec<u8>) -> Result<(), Error>;

    /// Lists a directory.
    async fn list_files(&self, path: &str) -> Result<Vec<FileEntry>, Error>;
}

/// Builder of a new sandbox, from [`Client::new_sandbox`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), gitvm_sdk::Error> {
/// use gitvm_sdk::{Client, Machine};
///
/// let client = Client::from_env()?;
/// let sandbox = client
///     .new_sandbox()
///     .template("base")
///     .vcpus(1)
///     .memory_mb(512)
///     .timeout(600)
///     .env("CI", "1")
///     .create()
///     .await?;
/// sandbox.write_file("/work/hello.py", b"print('hi')".to_vec()).await?;
/// let output = sandbox.execute("python3 /work/hello.py", Default::default()).await?;
/// assert_eq!(output.stdout, b"hi\n");
/// sandbox.delete().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    client: Client,
    request: CreateSandboxRequest,
}

impl SandboxBuilder {
    /// Sets the template name or image reference.
    pub fn template(mut self, template: impl Into<String>) -> Self {
        self.request.template = Some(template.into());
        self
    }

    /// Sets the runtime backend: `docker` for a container, `qemu` for a microVM.
    pub fn runtime(mut self, runtime: impl Into<String>) -> Self {
        self.request.runtime = Some(runtime.into());
        self
    }

    /// Sets outbound network access; `false` leaves only the loopback device.
    pub fn internet(mut self, internet: bool) -> Self {
        self.request.internet = Some(internet);
        self
    }

    /// Sets the number of virtual CPUs.
    pub fn vcpus(mut self, vcpus: i64) -> Self {
        self.request.vcpus = Some(vcpus);
        self
    }

    /// Sets the memory limit in MiB.
    pub fn memory_mb(mut self, memory_mb: i64) -> Self {
        self.request.memory_mb = Some(memory_mb);
        self
    }

    /// Sets the time to live in seconds; 0 means never.
    pub fn timeout(mut self, seconds: i64) -> Self {
        self.request.timeout = Some(seconds);
        self
    }

    /// Adds an environment variable for every command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.env_vars.insert(key.into(), value.into());
        self
    }

    /// Adds a metadata label.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.metadata.insert(key.into(), value.into());
        self
    }

    /// Creates the sandbox and waits until it runs.
    pub async fn create(self) -> Result<SandboxHandle, Error> {
        let sandbox = self.client.create_sandbox(&self.request).await?;
        Ok(SandboxHandle {
            client: self.client,
            id: sandbox.id,
        })
    }
}

impl Client {
    /// Starts building a sandbox with the server's defaults.
    pub fn new_sandbox(&self) -> SandboxBuilder {
        SandboxBuilder {
            client: self.clone(),
            request: CreateSandboxRequest::default(),
        }
    }

    /// Returns a handle to an existing sandbox; no request is sent.
    pub fn sandbox(&self, id: impl Into<String>) -> SandboxHandle {
        SandboxHandle {
            client: self.clone(),
            id: id.into(),
        }
    }
}

/// One sandbox on one server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SandboxHandle {
    pub(crate) client: Client,
    pub(crate) id: String,
}

impl SandboxHandle {
    /// Fetches the sandbox as the server reports it.
    pub async fn info(&self) -> Result<Sandbox, Error> {
        self.client.get_sandbox(&self.id).await
    }

    /// Sets the time to live to `seconds` from now; 0 means never.
    pub async fn set_timeout(&self, seconds: i64) -> Result<Sandbox, Error> {
        self.client.set_timeout(&self.id, seconds).await
    }

    /// Creates a directory and its parents.
    pub async fn make_dir(&self, path: &str) -> Result<(), Error> {
        self.client.make_dir(&self.id, path).await
    }

    /// Removes a file or a directory tree.
    pub async fn remove(&self, path: &str) -> Result<(), Error> {
        self.client.remove_file(&self.id, path).await
    }

    /// Captures a snapshot.
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        self.client.create_snapshot(&self.id).await
    }

    /// Deletes the sandbox.
    pub async fn delete(self) -> Result<(), Error> {
        self.client.delete_sandbox(&self.id).await
    }
}

#[async_trait]
impl Machine for SandboxHandle {
    fn id(&self) -> &str {
        &self.id
    }

    async fn state(&self) -> Result<SandboxState, Error> {
        Ok(self.info().await?.state)
    }

    async fn start(&self) -> Result<(), Error> {
        self.client.lifecycle(&self.id, "start").await.map(drop)
    }

    async fn pause(&self) -> Result<(), Error> {
        self.client.lifecycle(&self.id, "pause").await.map(drop)
    }

    async fn resume(&self) -> Result<(), Error> {
        self.client.lifecycle(&self.id, "resume").await.map(drop)
    }

    async fn stop(&self) -> Result<(), Error> {
        self.client.lifecycle(&self.id, "stop").await.map(drop)
    }

    async fn execute(
        &self,
        command: &str,
        options: ExecuteOptions<'_>,
    ) -> Result<ExecOutput, Error> {
        self.client.execute(&self.id, command, options).await
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let mut stream = self.client.read_file(&self.id, path).await?;
        let mut content = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| Error::Http {
                url: format!("{}/sandboxes/{}/files", self.client.base_url(), self.id),
                source,
            })?;
            content.extend_from_slice(&chunk);
        }
        Ok(content)
    }

    async fn write_file(&self, path: &str, content: Vec<u8>) -> Result<(), Error> {
        self.client.write_file(&self.id, path, content).await
    }

    async fn list_files(&self, path: &str) -> Result<Vec<FileEntry>, Error> {
        self.client.list_files(&self.id, path).await
    }
}
