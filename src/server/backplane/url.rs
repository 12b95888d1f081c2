//! The backplane's address, `CHAT_BACKPLANE_URL`: checked when the settings are read, so that a
//! typo stops start-up (exit 2) instead of leaving the server quietly without cross-task chat.

use std::fmt;
use std::str::FromStr;

use redis::{ConnectionAddr, IntoConnectionInfo};

/// Why a `CHAT_BACKPLANE_URL` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// The scheme is not `redis://` or `rediss://`.
    #[error("CHAT_BACKPLANE_URL must start with redis:// or rediss:// (TLS), e.g. rediss://my-cache.serverless.use1.cache.amazonaws.com:6379")]
    Scheme,
    /// The URL does not parse as a Redis URL (the client's reason follows).
    #[error("CHAT_BACKPLANE_URL is not a valid Redis URL: {0}")]
    Invalid(String),
    /// No host.
    #[error("CHAT_BACKPLANE_URL names no host")]
    NoHost,
    /// Port 0, which no server listens on.
    #[error("CHAT_BACKPLANE_URL names port 0: the port must be in 1..=65535 (Redis and Valkey listen on 6379)")]
    Port,
    /// `rediss://…#insecure`: TLS without certificate checks.
    #[error("CHAT_BACKPLANE_URL ends in #insecure, which asks for TLS without certificate checks: refused, since anyone on the path could then read the chat and the password in the URL (and this build has no such mode, so it would never connect). Use rediss:// with a certificate the public roots trust (ElastiCache's are), or redis:// on a network you trust")]
    Insecure,
}

/// A checked `redis://` or `rediss://` URL. It may carry a user and a password, so it shows
/// (`Display`, `Debug`) only its scheme, host and port.
#[derive(Clone, PartialEq, Eq)]
pub struct BackplaneUrl {
    /// The URL as given (with its credentials), for the client.
    url: String,
    /// `scheme://host:port`, for the log.
    shown: String,
    /// Whether the connection uses TLS (`rediss://`).
    tls: bool,
}

impl BackplaneUrl {
    /// The full URL, credentials included: for the client only, never for a log line.
    pub(crate) fn secret(&self) -> &str {
        &self.url
    }

    /// Whether the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl FromStr for BackplaneUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = s.trim();
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("redis://") || lower.starts_with("rediss://")) {
            return Err(UrlError::Scheme);
        }
        let info = url
            .into_connection_info()
            .map_err(|e| UrlError::Invalid(e.to_string()))?;
        let (shown, tls) = match info.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => return Err(UrlError::Insecure),
            ConnectionAddr::Tcp(_, 0) | ConnectionAddr::TcpTls { port: 0, .. } => {
                return Err(UrlError::Port)
            }
            ConnectionAddr::Tcp(host, port) => (format!("redis://{host}:{port}"), false),
            ConnectionAddr::TcpTls { host, port, .. } => (format!("rediss://{host}:{port}"), true),
            _ => return Err(UrlError::Scheme),
        };
        if shown.contains("://:") {
            return Err(UrlError::NoHost);
        }
        Ok(Self {
            url: url.to_string(),
            shown,
            tls,
        })
    }
}

impl fmt::Display for BackplaneUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for BackplaneUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackplaneUrl({})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_and_rediss_urls_are_taken_and_shown_without_credentials() {
        let plain: BackplaneUrl = "redis://127.0.0.1:6379".parse().unwrap();
        assert!(!plain.is_tls());
        assert_eq!(plain.to_string(), "redis://127.0.0.1:6379");
        let tls: BackplaneUrl = "rediss://app:s3cret@cache.example.com:6379/0"
            .parse()
            .unwrap();
        assert!(tls.is_tls());
        assert_eq!(tls.to_string(), "rediss://cache.example.com:6379");
        assert!(!format!("{tls:?}").contains("s3cret"));
        assert!(tls.secret().contains("s3cret"));
        let default_port: BackplaneUrl = "redis://localhost".parse().unwrap();
        assert_eq!(default_port.to_string(), "redis://localhost:6379");
    }

    #[test]
    fn other_schemes_and_malformed_urls_are_refused_naming_the_setting() {
        for bad in [
            "http://cache:6379",
            "unix:///tmp/redis.sock",
            "redis+unix:///tmp/redis.sock",
            "cache:6379",
            "",
        ] {
            let e = bad.parse::<BackplaneUrl>().unwrap_err();
            assert_eq!(e, UrlError::Scheme, "{bad}");
            assert!(e.to_string().contains("CHAT_BACKPLANE_URL"));
        }
        for bad in ["redis://", "redis://host:notaport", "rediss://:6379"] {
            let e = bad.parse::<BackplaneUrl>().unwrap_err();
            assert!(e.to_string().contains("CHAT_BACKPLANE_URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn port_0_is_refused_with_the_range() {
        for bad in ["redis://cache:0", "rediss://u:p@cache:0/0"] {
            let e = bad.parse::<BackplaneUrl>().unwrap_err();
            assert_eq!(e, UrlError::Port, "{bad}");
            assert!(e.to_string().contains("1..=65535"), "{e}");
        }
        assert!("redis://cache:1".parse::<BackplaneUrl>().is_ok());
    }

    #[test]
    fn tls_without_certificate_checks_is_refused() {
        for bad in [
            "rediss://cache/#insecure",
            "rediss://u:p@cache:6379/0#insecure",
        ] {
            let e = bad.parse::<BackplaneUrl>().unwrap_err();
            assert_eq!(e, UrlError::Insecure, "{bad}");
            assert!(e.to_string().contains("#insecure"), "{e}");
        }
    }
}
