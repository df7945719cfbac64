//! The runtimes of a node: the ones that work here, the reasons the others do not, and the
//! default for create requests that name none.

use std::collections::BTreeMap;
use std::sync::Arc;

use gitvm_runtime::{Runtime, RuntimeError};

use crate::sandbox::NodeError;

/// Every runtime name gitvm accepts, in the order error messages list them.
pub const KNOWN: [&str; 3] = ["docker", "qemu", "firecracker"];

/// The runtimes a node can use and why the others are missing.
pub struct Runtimes {
    available: BTreeMap<&'static str, Arc<dyn Runtime>>,
    unavailable: BTreeMap<&'static str, String>,
    default: &'static str,
}

impl Runtimes {
    /// Creates an empty set whose default is `default`, one of [`KNOWN`].
    pub fn new(default: &str) -> Result<Self, NodeError> {
        Ok(Self {
            available: BTreeMap::new(),
            unavailable: BTreeMap::new(),
            default: known(default)?,
        })
    }

    /// Adds a working runtime.
    pub fn add(&mut self, runtime: Arc<dyn Runtime>) {
        self.unavailable.remove(runtime.name());
        self.available.insert(runtime.name(), runtime);
    }

    /// Records why runtime `name` cannot run on this node, with what to install.
    pub fn mark_unavailable(&mut self, name: &'static str, reason: String) {
        self.unavailable.insert(name, reason);
    }

    /// Returns the default runtime's name.
    pub fn default_name(&self) -> &'static str {
        self.default
    }

    /// Returns the names of the runtimes that work here.
    pub fn names(&self) -> Vec<&'static str> {
        self.available.keys().copied().collect()
    }

    /// Returns the runtimes that work here.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Runtime>> {
        self.available.values()
    }

    /// Returns why each runtime that does not work here is missing.
    pub fn unavailable(&self) -> &BTreeMap<&'static str, String> {
        &self.unavailable
    }

    /// Returns runtime `name`, or the default when `name` is `None`. An unknown name is an
    /// invalid request; a known runtime that does not work here is unavailable, with the reason.
    pub fn get(&self, name: Option<&str>) -> Result<&Arc<dyn Runtime>, NodeError> {
        let name = match name {
            Some(name) => known(name)?,
            None => self.default,
        };
        if let Some(runtime) = self.available.get(name) {
            return Ok(runtime);
        }
        let reason = self
            .unavailable
            .get(name)
            .cloned()
            .unwrap_or_else(|| "this node was not started with it".to_owned());
        Err(NodeError::Runtime(RuntimeError::Unavailable {
            runtime: name,
            reason: format!(
                "{reason} (runtimes available on this node: {})",
                self.names().join(", ")
            ),
        }))
    }
}

fn known(name: &str) -> Result<&'static str, NodeError> {
    KNOWN
        .iter()
        .find(|known| **known == name)
        .copied()
        .ok_or_else(|| {
            NodeError::InvalidRequest(format!(
                "invalid runtime `{name}`: choose one of {}",
                KNOWN.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_unavailable_runtimes_have_clear_errors() {
        let mut runtimes = Runtimes::new("docker").unwrap();
        runtimes.mark_unavailable("qemu", "qemu-system-x86_64 is not installed".to_owned());

        let err = runtimes.get(Some("vmware")).err().unwrap().to_string();
        assert!(err.contains("invalid runtime `vmware`"), "{err}");
        assert!(err.contains("docker, qemu, firecracker"), "{err}");

        let err = runtimes.get(Some("qemu")).err().unwrap().to_string();
        assert!(err.contains("qemu-system-x86_64 is not installed"), "{err}");

        let err = runtimes.get(None).err().unwrap().to_string();
        assert!(err.contains("runtime `docker` is unavailable"), "{err}");
        assert!(Runtimes::new("lxc").is_err());
    }
}
