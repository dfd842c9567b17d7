//! Access tokens from the Entra token endpoint (client-credentials flow, docs/graph.md
//! "Authentication"):
//! client secret or federated workload-identity assertion, cached until shortly before
//! expiry, refreshed by one caller at a time.

use std::time::Duration;

use tokio::sync::Mutex;
// Tokio's clock, so tests can let a token age without waiting for it.
use tokio::time::Instant;
use tracing::debug;
use url::Url;

use super::config::{Credential, GraphConfig, Secret};
use super::error::{GraphError, TokenFailure, token_error_hint};
use super::http::{Http, RetryMode, excerpt};
use super::models::{TokenErrorResponse, TokenResponse};

const OPERATION: &str = "token";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A bearer token handed to one Graph call.
#[derive(Clone, Debug)]
pub(crate) struct AccessToken {
    pub(crate) value: Secret,
    /// Identifies which cache fill produced it, so a 401 only evicts the token it saw.
    generation: u64,
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
}

pub(crate) struct TokenProvider {
    token_url: Url,
    client_id: String,
    scope: String,
    credential: Credential,
    // A tokio mutex held across the fetch makes refresh single-flight: concurrent callers
    // queue behind the one fetching and then find the fresh token in the cache.
    cache: Mutex<(Option<Cached>, u64)>,
}

/// How long before expiry a token is replaced: 10 % of its lifetime, at most five minutes.
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(300))
}

impl TokenProvider {
    pub(crate) fn new(config: &GraphConfig) -> Self {
        Self::for_scope(config, config.scope.clone())
    }

    /// Tokens for another audience (Azure Resource Manager's `.default` scope) with the
    /// same credential: a second cache, refreshed on its own.
    pub(crate) fn for_scope(config: &GraphConfig, scope: String) -> Self {
        Self {
            token_url: config.token_url.clone(),
            client_id: config.client_id.clone(),
            scope,
            credential: config.credential.clone(),
            cache: Mutex::new((None, 0)),
        }
    }

    /// A valid token, from the cache or freshly fetched.
    pub(crate) async fn token(&self, http: &Http) -> Result<AccessToken, GraphError> {
        let mut guard = self.cache.lock().await;
        if let Some(cached) = &guard.0
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let (value, lifetime) = self.fetch(http).await?;
        guard.1 += 1;
        let token = AccessToken {
            value,
            generation: guard.1,
        };
        guard.0 = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(refresh_margin(lifetime)),
        });
        Ok(token)
    }

    /// Drops `stale` from the cache (after Graph answered 401 to it). A newer token fetched
    /// meanwhile by another caller is kept.
    pub(crate) async fn invalidate(&self, stale: &AccessToken) {
        let mut guard = self.cache.lock().await;
        if guard
            .0
            .as_ref()
            .is_some_and(|c| c.token.generation == stale.generation)
        {
            guard.0 = None;
        }
    }

    async fn fetch(&self, http: &Http) -> Result<(Secret, Duration), GraphError> {
        // Read per request: the kubelet rotates projected tokens and secrets can be rotated
        // in a mounted Secret without restarting us.
        let credential = self.credential.load()?;
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("scope", &self.scope),
            ("grant_type", "client_credentials"),
        ];
        match &self.credential {
            Credential::ClientSecret(_) | Credential::ClientSecretFile(_) => {
                form.push(("client_secret", credential.expose()));
            }
            Credential::FederatedTokenFile(_) => {
                form.push(("client_assertion_type", ASSERTION_TYPE));
                form.push(("client_assertion", credential.expose()));
            }
        }
        let build = || {
            http.client
                .post(self.token_url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .form(&form)
        };
        let resp = http.execute(OPERATION, RetryMode::Idempotent, &build).await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                http.count(OPERATION, |s| s.failures += 1);
                return Err(e);
            }
        };
        let result = if resp.status.is_success() {
            match serde_json::from_slice::<TokenResponse>(&resp.body) {
                Ok(t) if !t.access_token.is_empty() => {
                    debug!(expires_in = t.expires_in, "obtained Graph access token");
                    Ok((
                        Secret::new(t.access_token),
                        Duration::from_secs(t.expires_in),
                    ))
                }
                Ok(_) => Err(GraphError::Decode {
                    operation: OPERATION,
                    message: "token response has an empty access_token".to_string(),
                    request_id: resp.request_id.clone(),
                }),
                Err(e) => Err(GraphError::Decode {
                    operation: OPERATION,
                    message: format!("token response is not the expected JSON ({e})"),
                    request_id: resp.request_id.clone(),
                }),
            }
        } else {
            Err(self.map_error(&resp))
        };
        if result.is_err() {
            http.count(OPERATION, |s| s.failures += 1);
        }
        result
    }

    fn map_error(&self, resp: &super::http::RawResponse) -> GraphError {
        let status = resp.status.as_u16();
        if status == 429 {
            return GraphError::Throttled {
                operation: OPERATION,
                retry_after: resp.retry_after,
                request_id: resp.request_id.clone(),
            };
        }
        match serde_json::from_slice::<TokenErrorResponse>(&resp.body) {
            Ok(body) if !body.error.is_empty() => {
                let codes = body.error_codes.unwrap_or_default();
                GraphError::Auth(Box::new(TokenFailure {
                    status,
                    hint: token_error_hint(&body.error, &codes),
                    error: body.error,
                    error_codes: codes,
                    description: body.error_description,
                    correlation_id: body.correlation_id,
                    trace_id: body.trace_id,
                }))
            }
            _ if status >= 500 => GraphError::Server {
                operation: OPERATION,
                status,
                code: String::new(),
                message: format!("token endpoint {}: {}", self.token_url, excerpt(&resp.body)),
                retry_after: resp.retry_after,
                request_id: resp.request_id.clone(),
            },
            _ => GraphError::Auth(Box::new(TokenFailure {
                status,
                error: format!("http_{status}"),
                error_codes: Vec::new(),
                description: Some(excerpt(&resp.body)),
                correlation_id: resp.request_id.clone(),
                trace_id: None,
                hint: format!(
                    "the token endpoint {} did not answer with an OAuth error: check --authority-host / AZURE_AUTHORITY_HOST",
                    self.token_url
                ),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_ten_percent_capped_at_five_minutes() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3599)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(2)),
            Duration::from_millis(200)
        );
        assert_eq!(refresh_margin(Duration::ZERO), Duration::ZERO);
    }
}
