//! The gitvm node engine: the sandbox state machine over a [`gitvm_runtime::Runtime`], the
//! SQLite store, the REST API, the TTL reaper and reconciliation at start.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = gitvm_node::NodeConfig {
//!     listen: "127.0.0.1:0".parse()?,
//!     ..gitvm_node::NodeConfig::default()
//! };
//! gitvm_node::serve(config).await
//! # }
//! ```

pub mod api;
pub mod cli;
mod config;
pub mod ids;
pub mod lock;
pub mod metrics;
pub mod reaper;
pub mod reconcile;
pub mod runtimes;
pub mod sandbox;
mod server;
pub mod store;
pub mod timestamp;

pub use config::{NodeConfig, QemuSettings};
pub use server::serve;
