//! Service account tokens for projected volumes: issued on first use, cached per pod
//! and refreshed on their own timer (k8s-semantics §2.5).

use std::collections::BTreeSet;
use std::time::SystemTime;

use strata_store::Store;
use strata_store::k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use strata_store::meta;

use super::{VolumeManager, store_err};
use crate::error::{Error, Result};
use crate::projection::TokenKey;
use crate::token::{self, IssuedToken, TokenRequest};

impl<S: Store> VolumeManager<S> {
    /// A token for the pod, from the cache while it needs no refresh (k8s-semantics §2.5).
    pub(super) async fn token_for(&self, pod: &Pod, key: &TokenKey) -> Result<String> {
        let uid = meta::uid(&pod.metadata).to_owned();
        let now = (self.inner.cfg.clock)();
        let cached = self
            .inner
            .tokens
            .lock()
            .expect("lock")
            .get(&(uid.clone(), key.clone()))
            .cloned();
        if let Some(tok) = &cached
            && !token::requires_refresh(tok, now, token::jitter_secs())
        {
            return Ok(tok.token.clone());
        }
        match self.issue_token(pod, key, now).await {
            Ok(tok) => {
                let text = tok.token.clone();
                self.inner
                    .tokens
                    .lock()
                    .expect("lock")
                    .insert((uid, key.clone()), tok);
                self.inner.token_wake.notify_one();
                Ok(text)
            }
            // A failed refresh keeps using the cached token until it expires.
            Err(e) => match cached {
                Some(tok)
                    if tok.expires_at
                        > now
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0) =>
                {
                    tracing::warn!(error = %e, "token refresh failed; keeping the current token");
                    Ok(tok.token)
                }
                _ => Err(e),
            },
        }
    }

    pub(super) async fn issue_token(
        &self,
        pod: &Pod,
        key: &TokenKey,
        now: SystemTime,
    ) -> Result<IssuedToken> {
        let ns = meta::namespace(&pod.metadata).to_owned();
        let sa_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        // TokenRequest needs the service account to exist, as upstream.
        let sa: ServiceAccount = self.inner.store.get(&ns, &sa_name).await.map_err(|e| {
            if e.is_not_found() {
                Error::Token(format!("service account {ns}/{sa_name} not found"))
            } else {
                store_err(e)
            }
        })?;
        let req = TokenRequest {
            namespace: ns,
            service_account_name: sa_name,
            service_account_uid: sa.metadata.uid.unwrap_or_default(),
            pod_name: meta::name(&pod.metadata).to_owned(),
            pod_uid: meta::uid(&pod.metadata).to_owned(),
            node_name: self.inner.cfg.node_name.clone(),
            node_uid: None,
            audiences: if key.audience.is_empty() {
                Vec::new()
            } else {
                vec![key.audience.clone()]
            },
            expiration_seconds: key.expiration_seconds,
        };
        self.inner.issuer.issue(&req, now)
    }

    /// Re-syncs the pods holding a token that needs a refresh; returns when the next
    /// refresh is due.
    pub async fn refresh_tokens(&self) -> Option<SystemTime> {
        let now = (self.inner.cfg.clock)();
        let due: BTreeSet<String> = self
            .inner
            .tokens
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, t)| token::requires_refresh(t, now, token::jitter_secs()))
            .map(|((uid, _), _)| uid.clone())
            .collect();
        let pods: Vec<Pod> = {
            let map = self.inner.pods.lock().expect("lock");
            due.iter()
                .filter_map(|u| map.get(u).and_then(|e| e.pod.clone()))
                .collect()
        };
        for pod in pods {
            if let Err(e) = self.sync_pod(&pod).await {
                tracing::warn!(error = %e, "token refresh sync failed");
            }
        }
        self.inner
            .tokens
            .lock()
            .expect("lock")
            .values()
            .map(token::refresh_at)
            .min()
    }
}
