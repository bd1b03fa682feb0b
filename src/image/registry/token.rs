//! Credentials into an `Authorization` header: an identity token as it is, else the bearer token from the token
//! service the registry's `WWW-Authenticate` challenge names (asked with the credentials, if any), else basic
//! auth. Secrets never reach a log or a message.

use super::answers::{error_body, header_retry_after, read_capped};
use super::{Registry, RegistryError};
use crate::image::auth::Credentials;
use crate::image::limits::MAX_TOKEN;

/// The bearer challenge of a `WWW-Authenticate` header: where to ask for a token.
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

fn bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let challenges = http_auth::parse_challenges(header).ok()?;
    let c = challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case("bearer"))?;
    let param = |name: &str| {
        c.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_unescaped())
    };
    Some(BearerChallenge {
        realm: param("realm")?,
        service: param("service"),
    })
}

/// A token service's answer: Docker's `token` or OAuth2's `access_token`.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// Why a token service's answer cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenAnswerError {
    #[error("expected JSON with a token")]
    Json(#[source] serde_json::Error),
    #[error("it has no token")]
    NoToken,
    #[error("the token is not a header value")]
    NotAHeaderValue,
}

impl Registry {
    /// Sets the `Authorization` header for this repository: the identity token of the credentials, or a bearer
    /// token from the token service the registry's challenge names (asked with the credentials, if any), or
    /// basic auth when the registry asks for that.
    pub(super) async fn authenticate(&self) -> Result<(), RegistryError> {
        let header = match &self.creds {
            Credentials::Token(t) => Some(format!("Bearer {t}")),
            _ => self.with_retries("authenticate", || self.negotiate()).await?,
        };
        *self.authorization.lock().await = header;
        Ok(())
    }

    fn basic_header(&self) -> Option<String> {
        match &self.creds {
            Credentials::Basic { username, password } => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
                ))
            }
            _ => None,
        }
    }

    /// Asks `/v2/` how to authenticate and does it: the `Authorization` header to send, if any.
    async fn negotiate(&self) -> Result<Option<String>, RegistryError> {
        let url = format!("{}://{}/v2/", self.scheme, self.host);
        let resp = self.http.get(&url).send().await.map_err(|e| self.request_error(e))?;
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_challenge);
        // The body of the /v2/ answer is never read.
        drop(resp);
        let Some(challenge) = challenge else {
            return Ok(self.basic_header());
        };
        let scope = format!("repository:{}:pull", self.reference.repository());
        let mut query = vec![("scope", scope.as_str())];
        if let Some(s) = &challenge.service {
            query.push(("service", s.as_str()));
        }
        tracing::debug!(realm = %challenge.realm, service = ?challenge.service, scope, "asking for a token");
        let mut req = self.http.get(&challenge.realm).query(&query);
        if let Credentials::Basic { username, password } = &self.creds {
            req = req.basic_auth(username, Some(password));
        }
        let resp = req.send().await.map_err(|e| self.request_error(e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let after = header_retry_after(&resp);
            let body = error_body(resp).await;
            return Err(self.status_error(status, &challenge.realm, &body, after));
        }
        let what = format!("the token answer of {}", challenge.realm);
        let body = read_capped(resp, MAX_TOKEN)
            .await
            .map_err(|e| self.request_error(e))?
            .map_err(|limit| self.too_large(&what, limit))?;
        let bad = |source: TokenAnswerError| RegistryError::TokenAnswer {
            registry: self.host.clone(),
            realm: challenge.realm.clone(),
            source,
        };
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| bad(TokenAnswerError::Json(e)))?;
        let token = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token)
            .ok_or_else(|| bad(TokenAnswerError::NoToken))?;
        let header = format!("Bearer {token}");
        reqwest::header::HeaderValue::from_str(&header).map_err(|_| bad(TokenAnswerError::NotAHeaderValue))?;
        Ok(Some(header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = bearer_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="x""#)
            .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert!(bearer_challenge(r#"Basic realm="registry""#).is_none());
        assert!(bearer_challenge("Bearer service=\"no realm\"").is_none());
    }
}
