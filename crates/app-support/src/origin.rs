//! Which web pages may open a WebSocket to this server (the `Origin` check).
//!
//! Browsers send `Origin` with every WebSocket handshake and let any page connect anywhere; the
//! server has to say no itself. Without a check, any web site could make its visitors' browsers
//! connect: hold protection, and post to the chat. Clients that are not browsers send no
//! `Origin`, and are let in.

use std::str::FromStr;

/// The origins allowed to open a WebSocket (`ALLOWED_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AllowedOrigins {
    /// Only the page's own origin: the `Origin`'s host and port must be the request's `Host`
    /// (the default: the page served at `/` works behind any load balancer or domain name).
    #[default]
    SameHost,
    /// Any origin (`*`).
    Any,
    /// These origins exactly (`scheme://host[:port]`, compared without regard to case).
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Whether a handshake with this `Origin` and `Host` is allowed. A missing `Origin` (not a
    /// browser) is.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
            AllowedOrigins::SameHost => {
                let Some(host) = host else { return false };
                let Some((scheme, authority)) = origin.split_once("://") else {
                    return false;
                };
                let default_port = match scheme.to_ascii_lowercase().as_str() {
                    "https" => ":443",
                    "http" => ":80",
                    _ => return false,
                };
                let strip = |a: &str| -> String {
                    let a = a.to_ascii_lowercase();
                    a.strip_suffix(default_port)
                        .map_or(a.clone(), str::to_string)
                };
                strip(authority) == strip(host)
            }
        }
    }
}

impl FromStr for AllowedOrigins {
    type Err = String;

    /// `same-host`, `*`, or a comma-separated list of `scheme://host[:port]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "" | "same-host" => return Ok(AllowedOrigins::SameHost),
            "*" => return Ok(AllowedOrigins::Any),
            _ => {}
        }
        let mut list = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let valid = entry.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
            });
            if !valid {
                return Err(format!(
                    "{entry:?} is not an origin: use same-host, *, or scheme://host[:port] entries separated by commas"
                ));
            }
            list.push(entry.to_string());
        }
        if list.is_empty() {
            // Only commas: every browser would be refused, the page's own included.
            return Err(format!(
                "ALLOWED_ORIGINS names no origin ({s:?}), which would refuse every browser: use same-host, *, or scheme://host[:port] entries separated by commas"
            ));
        }
        Ok(AllowedOrigins::List(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_allows_the_page_s_own_origin_only() {
        let same = AllowedOrigins::SameHost;
        assert!(same.allows(Some("http://localhost:3000"), Some("localhost:3000")));
        assert!(same.allows(Some("https://Game.Example.com"), Some("game.example.com")));
        assert!(same.allows(
            Some("https://game.example.com"),
            Some("game.example.com:443")
        ));
        assert!(!same.allows(Some("https://evil.example"), Some("game.example.com")));
        assert!(!same.allows(Some("http://localhost:3001"), Some("localhost:3000")));
        assert!(!same.allows(Some("null"), Some("localhost:3000")));
        assert!(!same.allows(Some("http://localhost:3000"), None));
        // Not a browser: no Origin.
        assert!(same.allows(None, Some("localhost:3000")));
    }

    #[test]
    fn a_list_allows_exactly_its_entries_and_star_allows_all() {
        let list: AllowedOrigins = "https://a.example, http://localhost:3000".parse().unwrap();
        assert!(list.allows(Some("https://A.example"), Some("x")));
        assert!(list.allows(Some("http://localhost:3000"), Some("x")));
        assert!(!list.allows(Some("https://b.example"), Some("b.example")));
        let any: AllowedOrigins = "*".parse().unwrap();
        assert!(any.allows(Some("https://anything.example"), None));
        assert_eq!("same-host".parse(), Ok(AllowedOrigins::SameHost));
    }

    #[test]
    fn a_bad_entry_is_refused_with_the_expected_form() {
        let e = "a.example".parse::<AllowedOrigins>().unwrap_err();
        assert!(e.contains("scheme://host[:port]"), "{e}");
        assert!("https://a.example/path".parse::<AllowedOrigins>().is_err());
        assert!("ftp://a.example".parse::<AllowedOrigins>().is_err());
    }

    #[test]
    fn a_list_with_no_origin_in_it_is_refused() {
        for empty in [",", " , ,", ",,,"] {
            let e = empty.parse::<AllowedOrigins>().unwrap_err();
            assert!(e.contains("no origin") && e.contains("same-host"), "{e}");
        }
        // A trailing comma is fine when an origin is there.
        assert_eq!(
            "https://a.example,".parse(),
            Ok(AllowedOrigins::List(vec!["https://a.example".into()]))
        );
    }
}
