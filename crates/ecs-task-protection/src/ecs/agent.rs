//! The ECS container agent's task protection endpoint:
//! `PUT/GET ${ECS_AGENT_URI}/task-protection/v1/state`.
//!
//! The agent answers HTTP 200 for success *and* for a failure that ECS reported for the task, so
//! the body decides, never the status code alone. Errors carry ECS's status code and an error
//! code (`ThrottlingException`, `AccessDeniedException`, …) that is mapped to an
//! [`ErrorKind`].

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use crate::protection::{BackendError, ErrorKind, ProtectionBackend, ProtectionState};

/// Talks to the ECS agent endpoint.
#[derive(Debug, Clone)]
pub struct AgentBackend {
    url: String,
    client: reqwest::Client,
}

impl AgentBackend {
    /// A backend for the agent at `agent_uri` (the value of `ECS_AGENT_URI`).
    ///
    /// `request_timeout` bounds each HTTP request (the manager applies its own call timeout too).
    pub fn new(agent_uri: &str, request_timeout: Duration) -> Result<Self, BackendError> {
        let base = agent_uri.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(BackendError::new(
                ErrorKind::Config,
                format!("ECS_AGENT_URI must be an http:// URL, got {agent_uri:?}"),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .pool_max_idle_per_host(1)
            .build()
            .map_err(|e| BackendError::new(ErrorKind::Config, e.to_string()))?;
        Ok(Self {
            url: format!("{base}/task-protection/v1/state"),
            client,
        })
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<ProtectionState, BackendError> {
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport_error)?;
        parse_answer(status.as_u16(), &body)
    }
}

#[async_trait]
impl ProtectionBackend for AgentBackend {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn describe(&self) -> String {
        format!("ECS agent endpoint {}", self.url)
    }

    async fn set_protection(
        &self,
        enabled: bool,
        expires_in_minutes: u32,
    ) -> Result<ProtectionState, BackendError> {
        let body = if enabled {
            serde_json::json!({"ProtectionEnabled": true, "ExpiresInMinutes": expires_in_minutes})
        } else {
            serde_json::json!({"ProtectionEnabled": false})
        };
        self.send(self.client.put(&self.url).json(&body)).await
    }

    async fn get_protection(&self) -> Result<ProtectionState, BackendError> {
        self.send(self.client.get(&self.url)).await
    }
}

fn transport_error(e: reqwest::Error) -> BackendError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() || e.is_request() {
        ErrorKind::Unreachable
    } else if e.is_body() || e.is_decode() {
        ErrorKind::Malformed
    } else {
        ErrorKind::Unreachable
    };
    // reqwest's Display omits the cause ("error sending request"); include the chain.
    BackendError::new(kind, error_chain(&e))
}

/// `e` and each of its sources, joined with `": "`.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[derive(Deserialize)]
struct Answer {
    protection: Option<Protection>,
    failure: Option<Failure>,
    error: Option<AgentError>,
}

#[derive(Deserialize)]
struct Protection {
    #[serde(rename = "ProtectionEnabled")]
    enabled: bool,
    #[serde(rename = "ExpirationDate")]
    expiration: Option<String>,
}

#[derive(Deserialize)]
struct Failure {
    #[serde(rename = "Reason")]
    reason: Option<String>,
    #[serde(rename = "Detail")]
    detail: Option<String>,
}

#[derive(Deserialize)]
struct AgentError {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
}

/// Interprets one answer of the agent endpoint.
fn parse_answer(status: u16, body: &[u8]) -> Result<ProtectionState, BackendError> {
    let parsed: Option<Answer> = serde_json::from_slice(body).ok();
    if status == 200 {
        let answer = parsed.ok_or_else(|| {
            BackendError::new(
                ErrorKind::Malformed,
                format!(
                    "HTTP 200 with a body that is not the expected JSON: {}",
                    snippet(body)
                ),
            )
        })?;
        if let Some(failure) = answer.failure {
            return Err(super::ecs_failure(
                failure.reason.as_deref(),
                failure.detail.as_deref(),
            ));
        }
        let protection = answer.protection.ok_or_else(|| {
            BackendError::new(
                ErrorKind::Malformed,
                format!(
                    "HTTP 200 with neither protection nor failure: {}",
                    snippet(body)
                ),
            )
        })?;
        let expires_at = match protection.expiration.as_deref() {
            Some(text) => Some(parse_time(text)?),
            None => None,
        };
        return Ok(ProtectionState {
            enabled: protection.enabled,
            expires_at,
        });
    }
    let (code, message) = match parsed.and_then(|a| a.error) {
        Some(e) => (e.code.unwrap_or_default(), e.message.unwrap_or_default()),
        None => (String::new(), snippet(body)),
    };
    let kind = match (code.as_str(), status) {
        _ if super::names_deployment_blocked(&code, &message) => ErrorKind::Blocked,
        ("ThrottlingException", _) | (_, 429) => ErrorKind::Throttled,
        ("AccessDeniedException", _) | (_, 401 | 403) => ErrorKind::AccessDenied,
        ("ResourceNotFoundException", _) | (_, 404) => ErrorKind::NotFound,
        ("ServerException" | "RequestCanceled", _) | (_, 500..=599) => ErrorKind::Server,
        _ => ErrorKind::InvalidRequest,
    };
    let code = if code.is_empty() {
        "no error code".to_string()
    } else {
        code
    };
    Err(BackendError::new(
        kind,
        format!("HTTP {status} {code}: {message}"),
    ))
}

fn parse_time(text: &str) -> Result<SystemTime, BackendError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| {
            BackendError::new(
                ErrorKind::Malformed,
                format!("bad ExpirationDate {text:?}: {e}"),
            )
        })
}

/// The start of `body` (200 characters at most), for an error message.
pub(super) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    if s.is_empty() {
        s.push_str("(empty body)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_with_expiry() {
        let s = parse_answer(
            200,
            br#"{"protection":{"ExpirationDate":"2022-10-06T02:29:16Z","ProtectionEnabled":true,"TaskArn":"arn:aws:ecs:us-east-1:111122223333:task/c/abc"}}"#,
        )
        .unwrap();
        assert!(s.enabled);
        let exp = time::OffsetDateTime::from(s.expires_at.unwrap());
        assert_eq!(exp.unix_timestamp(), 1_665_023_356);
    }

    #[test]
    fn release_with_null_expiry() {
        let s = parse_answer(
            200,
            br#"{"protection":{"ExpirationDate":null,"ProtectionEnabled":false,"TaskArn":"x"}}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            ProtectionState {
                enabled: false,
                expires_at: None
            }
        );
    }

    #[test]
    fn http_200_failure_is_a_rejection() {
        let e = parse_answer(
            200,
            br#"{"failure":{"Arn":"arn:x","Detail":null,"Reason":"TASK_NOT_VALID"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Failure);
        assert!(e.message.contains("TASK_NOT_VALID"));
        assert!(e.hint().is_some());
    }

    #[test]
    fn error_codes_map_to_kinds() {
        let body = |code: &str| {
            format!(r#"{{"requestID":"r","error":{{"Arn":"a","Code":"{code}","Message":"m"}}}}"#)
        };
        let kind = |status, code: &str| {
            parse_answer(status, body(code).as_bytes())
                .unwrap_err()
                .kind
        };
        assert_eq!(kind(400, "ThrottlingException"), ErrorKind::Throttled);
        assert_eq!(
            kind(400, "InvalidParameterException"),
            ErrorKind::InvalidRequest
        );
        assert_eq!(kind(403, "AccessDeniedException"), ErrorKind::AccessDenied);
        assert_eq!(kind(404, "ResourceNotFoundException"), ErrorKind::NotFound);
        assert_eq!(kind(500, "ServerException"), ErrorKind::Server);
        assert_eq!(kind(504, "RequestCanceled"), ErrorKind::Server);
    }

    #[test]
    fn unparsable_bodies_are_malformed_or_classified_by_status() {
        assert_eq!(
            parse_answer(200, b"<html>").unwrap_err().kind,
            ErrorKind::Malformed
        );
        assert_eq!(
            parse_answer(200, b"{}").unwrap_err().kind,
            ErrorKind::Malformed
        );
        assert_eq!(
            parse_answer(502, b"bad gateway").unwrap_err().kind,
            ErrorKind::Server
        );
        assert_eq!(
            parse_answer(
                200,
                br#"{"protection":{"ProtectionEnabled":true,"ExpirationDate":"tomorrow"}}"#
            )
            .unwrap_err()
            .kind,
            ErrorKind::Malformed
        );
    }
}
