//! Startup and shutdown of a node: store, runtime, reconcile, reaper, then the API.

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context};
use gitvm_runtime::docker::{DockerConfig, DockerRuntime};
use gitvm_runtime::qemu::{AccelChoice, KernelSource, QemuConfig, QemuRuntime};
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::lock::DataDirLock;
use crate::runtimes::Runtimes;
use crate::sandbox::{validate, HostLimits, Node, Settings};
use crate::store::Store;
use crate::{reaper, reconcile, NodeConfig};

/// Runs a node until SIGINT or SIGTERM. Sandboxes keep running after it returns; the next
/// start reconciles them.
///
/// Prints one line to stdout once the API accepts connections:
/// `gitvm server listening on http://ADDR`.
pub async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    validate::timeout(config.default_timeout_secs).context("invalid --default-timeout")?;
    check_api_key(&config)?;
    if !config.agent_bin.is_file() {
        bail!(
            "agent binary {} not found; build it with `cargo build -p gitvm-cli` or pass --agent-bin",
            config.agent_bin.display()
        );
    }

    // Held until this function returns, so that a second node on the same directory fails
    // here instead of reconciling away this node's sandboxes.
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    let store = Store::open(&config.data_dir).await?;
    let node_id = store.node_id().await?;
    let runtimes = start_runtimes(&config, &node_id).await?;

    let settings = Settings {
        default_timeout_secs: config.default_timeout_secs,
        default_template: config.default_template.clone(),
        limits: HostLimits::detect(),
    };
    let node = Arc::new(Node::new(store, runtimes, settings));

    let summary = reconcile::reconcile(&node)
        .await
        .context("cannot reconcile the store with the runtime")?;
    tracing::info!(?summary, "reconciled sandboxes with the runtime");
    let reaper = reaper::spawn(Arc::clone(&node));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "gitvm server listening on http://{addr}")?;
        stdout.flush()?;
    }
    tracing::info!(%addr, node_id, data_dir = %config.data_dir.display(), runtimes = ?node.runtimes().names(), default_runtime = node.runtimes().default_name(), "node started");

    let state = AppState {
        node,
        api_key: config.api_key.map(Arc::from),
    };
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    reaper.abort();
    served.context("the API server failed")?;
    tracing::info!(%addr, "node stopped; sandboxes keep running");
    Ok(())
}

/// Rejects an empty API key, which would otherwise be indistinguishable from no key, and warns
/// when the API is open on an address other hosts can reach.
fn check_api_key(config: &NodeConfig) -> anyhow::Result<()> {
    match config.api_key.as_deref() {
        Some("") => bail!("--api-key is empty; pass a non-empty key or leave the option out"),
        Some(_) => {}
        None if !config.listen.ip().is_loopback() => tracing::warn!(
            listen = %config.listen,
            "no API key set and the API listens on a non-loopback address: anyone on the network can run commands in sandboxes; pass --api-key"
        ),
        None => {}
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};

    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; stop the node with SIGINT");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// Starts every runtime that works on this host and records why the others do not. Fails when
/// the default runtime is unavailable, naming what to install or start.
async fn start_runtimes(config: &NodeConfig, node_id: &str) -> anyhow::Result<Runtimes> {
    let mut runtimes = Runtimes::new(&config.default_runtime)
        .map_err(|err| anyhow::anyhow!("invalid --default-runtime: {err}"))?;

    let docker = match DockerRuntime::connect(DockerConfig {
        data_dir: config.data_dir.clone(),
        agent_bin: config.agent_bin.clone(),
        node_id: node_id.to_owned(),
        ready_timeout: config.ready_timeout,
    })
    .await
    {
        Ok(docker) => {
            let docker = Arc::new(docker);
            runtimes.add(docker.clone());
            Some(docker)
        }
        Err(err) => {
            tracing::warn!(error = %err, "the docker runtime is unavailable");
            runtimes.mark_unavailable("docker", unavailable_reason(err));
            None
        }
    };

    let qemu = &config.qemu;
    let accel = match qemu.accel.as_str() {
        "kvm" => AccelChoice::Kvm,
        "tcg" => AccelChoice::Tcg,
        "auto" => AccelChoice::Auto,
        other => bail!("invalid --qemu-accel `{other}`: choose auto, kvm or tcg"),
    };
    let kernel = match &qemu.kernel {
        Some(kernel) => KernelSource::Path {
            kernel: kernel.clone(),
            modules: qemu.kernel_modules.clone(),
        },
        None => KernelSource::Debian {
            mirror: qemu.debian_mirror.clone(),
            suite: qemu.debian_suite.clone(),
        },
    };
    let qemu_config = QemuConfig {
        data_dir: config.data_dir.clone(),
        cache_dir: config.cache_dir(),
        qemu_bin: qemu.qemu_bin.clone(),
        agent_bin: config.agent_bin.clone(),
        init_bin: qemu.init_bin.clone(),
        kernel,
        accel,
        ready_timeout: config.ready_timeout,
        kernel_args: qemu.kernel_args.clone(),
    };
    match QemuRuntime::new(qemu_config, docker).await {
        Ok(runtime) => runtimes.add(Arc::new(runtime)),
        Err(err) => {
            tracing::info!(error = %err, "the qemu runtime is unavailable");
            runtimes.mark_unavailable("qemu", unavailable_reason(err));
        }
    }
    runtimes.mark_unavailable(
        "firecracker",
        "this version of gitvm has no Firecracker runtime yet; use `qemu` for microVMs".to_owned(),
    );

    if let Some(reason) = runtimes.unavailable().get(runtimes.default_name()) {
        bail!(
            "the default runtime `{}` cannot run on this node: {reason}",
            runtimes.default_name()
        );
    }
    Ok(runtimes)
}

/// Returns the reason part of a runtime's start failure, without the runtime name that
/// [`Runtimes::get`] adds again.
fn unavailable_reason(err: gitvm_runtime::RuntimeError) -> String {
    match err {
        gitvm_runtime::RuntimeError::Unavailable { reason, .. } => reason,
        other => other.to_string(),
    }
}
