use gitvm_proto::Sandbox;

use super::{transition, validate, Node, NodeError, Operation};
use crate::timestamp;

impl Node {
    /// Sets a sandbox's time to live to `timeout` seconds from now; 0 means it never expires.
    pub async fn set_timeout(&self, id: &str, timeout: i64) -> Result<Sandbox, NodeError> {
        let timeout = validate::timeout(timeout)?;
        let _guard = self.lock(id).await;
        let sandbox = self.record(id).await?.sandbox;
        transition::check(&sandbox, Operation::SetTimeout)?;

        let expires_at = timestamp::expiry(timestamp::now(), timeout).map(timestamp::format);
        self.store
            .set_expiry(id, timeout, expires_at.as_deref())
            .await?;
        tracing::info!(
            sandbox_id = %id,
            runtime = %sandbox.runtime,
            timeout,
            expires_at = expires_at.as_deref().unwrap_or("never"),
            "sandbox timeout changed"
        );
        self.get(id).await
    }
}
