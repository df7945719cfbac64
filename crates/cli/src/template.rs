//! `gitvm template build`: builds template images locally, with progress.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::TemplateCommand;

pub async fn run(command: TemplateCommand) -> Result<ExitCode> {
    let TemplateCommand::Build(args) = command;
    if args.name != "base" {
        bail!(
            "unknown template `{}`: only `base` can be built; other images are pulled when a sandbox is created from them",
            args.name
        );
    }

    // On a terminal a spinner shows the latest line; elsewhere (CI logs) every line is kept.
    let bar = ProgressBar::new_spinner();
    let progress: gitvm_runtime::Progress = if std::io::stderr().is_terminal() {
        bar.set_style(ProgressStyle::with_template(
            "{spinner} {elapsed:>4} {wide_msg}",
        )?);
        bar.enable_steady_tick(Duration::from_millis(120));
        let progress_bar = bar.clone();
        Arc::new(move |line: &str| progress_bar.set_message(line.trim().to_string()))
    } else {
        Arc::new(|line: &str| eprintln!("{}", line.trim_end()))
    };

    let data_dir = args
        .data_dir
        .unwrap_or_else(gitvm_node::NodeConfig::default_data_dir);
    let cache_dir = data_dir.join("cache");
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cannot create the cache directory {}", cache_dir.display()))?;
    let docker = gitvm_runtime::docker::connect_daemon_default().await?;
    let result = gitvm_runtime::docker::build_base_image(
        &docker,
        &cache_dir,
        args.force,
        Arc::clone(&progress),
    )
    .await;
    let image = match result {
        Ok(image) => image,
        Err(err) => {
            bar.finish_and_clear();
            return Err(err.into());
        }
    };

    if args.microvm {
        // The same files and cache keys as a server started from this binary would use.
        let agent_bin =
            std::env::current_exe().context("cannot locate the running gitvm binary")?;
        let config = gitvm_runtime::qemu::QemuConfig {
            data_dir: data_dir.clone(),
            cache_dir: args.cache_dir.unwrap_or(cache_dir),
            qemu_bin: "qemu-system-x86_64".into(),
            init_bin: gitvm_node::NodeConfig::sibling_binary("gitvm-init"),
            agent_bin,
            kernel: gitvm_runtime::qemu::KernelSource::Debian {
                mirror: args.debian_mirror,
                suite: gitvm_node::QemuSettings::default().debian_suite,
            },
            accel: gitvm_runtime::qemu::AccelChoice::Auto,
            ready_timeout: Duration::from_secs(30),
            kernel_args: String::new(),
        };
        let result = gitvm_runtime::qemu::prepare_guest(&docker, &image, &config, progress).await;
        bar.finish_and_clear();
        let files = result?;
        println!("{image}");
        println!("kernel     {}", files.kernel.display());
        println!("initramfs  {}", files.initramfs.display());
        println!("root disk  {}", files.disk.display());
        return Ok(ExitCode::SUCCESS);
    }
    bar.finish_and_clear();
    println!("{image}");
    Ok(ExitCode::SUCCESS)
}
