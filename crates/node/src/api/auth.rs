//! API key check: when the node has a key, every route but `/health` needs it in `X-API-Key`
//! or as `Authorization: Bearer KEY`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Rejects requests without the node's API key with 401 `unauthorized`.
pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.api_key.as_deref() else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }

    match presented_key(req.headers()) {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => next.run(req).await,
        presented => {
            let reason = if presented.is_some() {
                "invalid API key"
            } else {
                "missing API key"
            };
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{reason}; send it as `X-API-Key: KEY` or `Authorization: Bearer KEY`"),
            )
            .into_response()
        }
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-api-key") {
        return value.to_str().ok();
    }
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    bearer_token(authorization)
}

/// Extracts the token of an `Authorization` value whose scheme is `Bearer`, in any letter case
/// since RFC 7235 makes auth schemes case-insensitive.
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(token.trim_start_matches(' '))
}

/// Compares two byte strings in time that depends only on their lengths, so that response
/// timing does not reveal how many leading bytes of a guessed key are right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, byte) in a.iter().enumerate() {
        diff |= byte ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, constant_time_eq};

    #[test]
    fn bearer_scheme_matched_in_any_case() {
        assert_eq!(bearer_token("Bearer KEY"), Some("KEY"));
        assert_eq!(bearer_token("bearer KEY"), Some("KEY"));
        assert_eq!(bearer_token("BEARER KEY"), Some("KEY"));
        assert_eq!(bearer_token("Bearer   KEY"), Some("KEY"));
        assert_eq!(bearer_token("Basic KEY"), None);
        assert_eq!(bearer_token("BearerKEY"), None);
    }

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
