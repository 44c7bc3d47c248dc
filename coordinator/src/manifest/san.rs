//! `San`: a subject alternative name from a manifest policy, classified the way the mesh CA issues it.

use std::net::IpAddr;

/// A subject alternative name: an IP address, a URI (anything with `://`), else a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Ip(IpAddr),
    Uri(String),
    Dns(String),
}

impl San {
    /// Classifies and checks `value`; the error says what is wrong with it.
    pub fn parse(value: &str) -> Result<San, String> {
        if let Ok(ip) = value.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        if let Some((scheme, rest)) = value.split_once("://") {
            let scheme_ok = scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if !scheme_ok
                || rest.is_empty()
                || concord_mesh_ca::check_subject_alt_name(value).is_err()
            {
                return Err(format!("{value:?} is not a valid URI"));
            }
            return Ok(San::Uri(value.to_string()));
        }
        if is_dns_name(value) && concord_mesh_ca::check_subject_alt_name(value).is_ok() {
            return Ok(San::Dns(value.to_string()));
        }
        Err(format!(
            "{value:?} is neither an IP address, a URI (scheme://...), nor a DNS name"
        ))
    }

    /// The value as written in the manifest.
    pub fn as_string(&self) -> String {
        match self {
            San::Ip(ip) => ip.to_string(),
            San::Uri(s) | San::Dns(s) => s.clone(),
        }
    }
}

/// RFC 1123 host names, with an optional leading wildcard label.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_kind() {
        assert!(matches!(San::parse("10.0.0.7"), Ok(San::Ip(_))));
        assert!(matches!(San::parse("::1"), Ok(San::Ip(_))));
        assert!(matches!(
            San::parse("spiffe://example.org/web"),
            Ok(San::Uri(_))
        ));
        assert!(matches!(
            San::parse("web.default.svc.cluster.local"),
            Ok(San::Dns(_))
        ));
        assert!(matches!(San::parse("*.web.local"), Ok(San::Dns(_))));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "a b",
            "-web",
            "web..local",
            "://x",
            "1http://x",
            "we_b",
            "1.2.3",
            "*",
            "spiffe://é",
        ] {
            assert!(San::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
