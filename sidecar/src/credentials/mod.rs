//! The credential swap: the agent holds a placeholder, the sidecar holds the real token.
//!
//! Toward Google hosts only (`*.googleapis.com`, `source.developers.google.com`), a
//! placeholder in `Authorization: Bearer …` or in a git basic-auth password is replaced by a
//! real access token from the token broker. Other secrets ([`brokered`], `spec.credentials`)
//! are swapped the same way toward the hosts their entry lists. Other hosts and other
//! credentials are left as the agent sent them. The real token is never logged, recorded or
//! returned to the agent.

pub mod brokered;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderValue;
use http::header::{AUTHORIZATION, HeaderMap};
use std::future::Future;
use std::pin::Pin;

/// Where real access tokens come from: the metadata server, through the [`crate::broker`].
pub trait TokenSource: Send + Sync + 'static {
    /// A valid access token for the pod's Google service account.
    fn token(&self) -> Pin<Box<dyn Future<Output = anyhow::Result<String>> + Send + '_>>;
}

/// Where a placeholder was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swap {
    /// `Authorization: Bearer <placeholder>`.
    Bearer,
    /// `Authorization: Basic base64(user:<placeholder>)`, as git sends it.
    GitBasic,
}

/// The agent's placeholder: random per sidecar start, worthless outside this pod.
#[derive(Clone)]
pub struct Placeholder(String);

impl Placeholder {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the system RNG works");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("cassette-placeholder.{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether requests to `host` get real credentials.
pub fn is_google_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "googleapis.com"
        || host.ends_with(".googleapis.com")
        || host == "source.developers.google.com"
}

/// Which swap the request needs, if any: the placeholder must be present.
pub fn needed(headers: &HeaderMap, placeholder: &Placeholder) -> Option<Swap> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") && rest.trim() == placeholder.as_str() {
        return Some(Swap::Bearer);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASE64.decode(rest.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (_user, password) = decoded.split_once(':')?;
        if password == placeholder.as_str() {
            return Some(Swap::GitBasic);
        }
    }
    None
}

/// Put the real token where the placeholder was.
pub fn apply(
    headers: &mut HeaderMap,
    swap: Swap,
    token: &str,
) -> Result<(), http::header::InvalidHeaderValue> {
    let value = match swap {
        Swap::Bearer => format!("Bearer {token}"),
        Swap::GitBasic => {
            // Google's git endpoints take the access token as the password with any user.
            let user = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .and_then(|(_, b64)| BASE64.decode(b64.trim()).ok())
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|d| d.split_once(':').map(|(u, _)| u.to_string()))
                .unwrap_or_else(|| "oauth2accesstoken".into());
            format!("Basic {}", BASE64.encode(format!("{user}:{token}")))
        }
    };
    let mut value = HeaderValue::from_str(&value)?;
    value.set_sensitive(true);
    headers.insert(AUTHORIZATION, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_google_hosts_get_real_credentials() {
        for host in [
            "storage.googleapis.com",
            "pubsub.googleapis.com.",
            "STORAGE.GOOGLEAPIS.COM",
            "source.developers.google.com",
        ] {
            assert!(is_google_host(host), "{host}");
        }
        for host in [
            "github.com",
            "googleapis.com.evil.example",
            "evilgoogleapis.com",
            "developers.google.com",
            "metadata.google.internal",
        ] {
            assert!(!is_google_host(host), "{host}");
        }
    }

    #[test]
    fn the_bearer_placeholder_is_swapped() {
        let p = Placeholder::generate();
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            format!("Bearer {}", p.as_str()).parse().unwrap(),
        );
        assert_eq!(needed(&headers, &p), Some(Swap::Bearer));
        apply(&mut headers, Swap::Bearer, "ya29.real").unwrap();
        assert_eq!(headers[AUTHORIZATION], "Bearer ya29.real");
    }

    #[test]
    fn the_git_basic_password_is_swapped_and_the_user_kept() {
        let p = Placeholder::generate();
        let mut headers = HeaderMap::new();
        let basic = BASE64.encode(format!("git-agent:{}", p.as_str()));
        headers.insert(AUTHORIZATION, format!("Basic {basic}").parse().unwrap());
        assert_eq!(needed(&headers, &p), Some(Swap::GitBasic));
        apply(&mut headers, Swap::GitBasic, "ya29.real").unwrap();
        let expected = format!("Basic {}", BASE64.encode("git-agent:ya29.real"));
        assert_eq!(headers[AUTHORIZATION], expected.as_str());
    }

    #[test]
    fn other_credentials_are_left_alone() {
        let p = Placeholder::generate();
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            "Bearer ya29.agent-own-token".parse().unwrap(),
        );
        assert_eq!(needed(&headers, &p), None);
        headers.insert(
            AUTHORIZATION,
            format!("Basic {}", BASE64.encode("u:pw")).parse().unwrap(),
        );
        assert_eq!(needed(&headers, &p), None);
        headers.remove(AUTHORIZATION);
        assert_eq!(needed(&headers, &p), None);
    }
}
