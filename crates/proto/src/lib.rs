//! Wire types shared by the node REST API, the agent protocol and the SDK.
//!
//! JSON field names are camelCase. Every error on the wire is an [`ErrorBody`].

pub mod agent;
pub mod api;

pub use api::*;

/// The JSON body of every error response: a stable machine-readable `code` and a message for
/// people that names the offending value and the next step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable error code in snake_case, such as `sandbox_not_found`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body from a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::ExecEvent;

    #[test]
    fn exec_events_are_tagged_camel_case() {
        let exit = ExecEvent::Exit {
            exit_code: 137,
            signal: Some("SIGKILL".into()),
            timed_out: false,
            duration_ms: 5,
        };
        assert_eq!(
            serde_json::to_string(&exit).unwrap(),
            r#"{"type":"exit","exitCode":137,"signal":"SIGKILL","timedOut":false,"durationMs":5}"#
        );
        let chunk = ExecEvent::chunk(false, b"\xff\x00\x01");
        assert_eq!(
            serde_json::to_string(&chunk).unwrap(),
            r#"{"type":"stdout","data":"/wAB"}"#
        );
        assert_eq!(chunk.bytes().unwrap().unwrap(), b"\xff\x00\x01");
    }
}
