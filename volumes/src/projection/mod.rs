//! Payload building for API-data volumes: secret, configMap, downwardAPI and projected
//! (k8s-semantics §2). Pure: API objects in, a [`Payload`] or an error out. Fetching the
//! objects and writing the payload are the manager's job.

mod downward_api;
mod quantity;
pub mod quote;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, Pod, Secret, ServiceAccountTokenProjection, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::atomic_writer::{FileProjection, Payload};
use crate::error::{Error, Result};

pub use downward_api::render_item as render_downward_api_item;

/// `SecretVolumeSourceDefaultMode` and friends: 0644 for all four plugins (k8s-semantics §2.1).
pub const DEFAULT_MODE: u32 = 0o644;
/// `expirationSeconds` default, minimum and maximum (k8s-semantics §2.5).
pub const TOKEN_DEFAULT_EXPIRATION: i64 = 3600;
pub const TOKEN_MIN_EXPIRATION: i64 = 600;
pub const TOKEN_MAX_EXPIRATION: i64 = 1 << 32;

/// A token the manager must supply for a serviceAccountToken projection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    /// Empty means the issuer's own audience.
    pub audience: String,
    pub expiration_seconds: i64,
}

impl TokenKey {
    pub fn for_projection(p: &ServiceAccountTokenProjection) -> Result<Self> {
        let expiration_seconds = p.expiration_seconds.unwrap_or(TOKEN_DEFAULT_EXPIRATION);
        if !(TOKEN_MIN_EXPIRATION..=TOKEN_MAX_EXPIRATION).contains(&expiration_seconds) {
            return Err(Error::InvalidArgument {
                field: "serviceAccountToken.expirationSeconds",
                reason: format!("{expiration_seconds} is outside 600..=4294967296"),
            });
        }
        Ok(Self {
            audience: p.audience.clone().unwrap_or_default(),
            expiration_seconds,
        })
    }
}

/// Everything a payload can depend on. Objects are looked up by name in the pod's
/// namespace; a missing entry means the object does not exist.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub secrets: &'a BTreeMap<String, Secret>,
    pub config_maps: &'a BTreeMap<String, ConfigMap>,
    /// Issued tokens; token text is never logged.
    pub tokens: &'a BTreeMap<TokenKey, String>,
    /// Node allocatable (`cpu`, `memory`, `ephemeral-storage`) for limits a container
    /// leaves unset (k8s-semantics §2.4).
    pub node_allocatable: &'a BTreeMap<String, Quantity>,
}

/// The objects and tokens a volume needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
    pub tokens: BTreeSet<TokenKey>,
}

/// The API-data plugins, with their directory names and media (k8s-semantics §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Secret,
    ConfigMap,
    DownwardApi,
    Projected,
}

impl Kind {
    pub fn of(volume: &Volume) -> Option<Kind> {
        if volume.secret.is_some() {
            Some(Kind::Secret)
        } else if volume.config_map.is_some() {
            Some(Kind::ConfigMap)
        } else if volume.downward_api.is_some() {
            Some(Kind::DownwardApi)
        } else if volume.projected.is_some() {
            Some(Kind::Projected)
        } else {
            None
        }
    }

    /// `kubernetes.io~<plugin>` under the pod's volumes directory.
    pub fn plugin_dir(self) -> &'static str {
        match self {
            Kind::Secret => "kubernetes.io~secret",
            Kind::ConfigMap => "kubernetes.io~configmap",
            Kind::DownwardApi => "kubernetes.io~downward-api",
            Kind::Projected => "kubernetes.io~projected",
        }
    }

    /// Secret, downwardAPI and projected content never touches the disk; configMap stays
    /// on disk, where the kubelet puts it.
    pub fn on_tmpfs(self) -> bool {
        !matches!(self, Kind::ConfigMap)
    }
}

/// The pod's `fsGroup`, if any.
pub fn fs_group(pod: &Pod) -> Option<u32> {
    let g = pod.spec.as_ref()?.security_context.as_ref()?.fs_group?;
    u32::try_from(g).ok()
}

/// `FsUserFrom`: the common effective `runAsUser` of every container (init, regular,
/// ephemeral), or `None` when one has none or they differ (k8s-semantics §2.5).
pub fn fs_user(pod: &Pod) -> Option<u32> {
    let spec = pod.spec.as_ref()?;
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut users = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_user))
        .chain(
            spec.containers
                .iter()
                .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_user)),
        )
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_user)),
        )
        .map(|u| u.or(pod_user));
    let first = users.next()??;
    for u in users {
        if u? != first {
            return None;
        }
    }
    u32::try_from(first).ok()
}

/// What `volume` reads: Secrets, ConfigMaps and tokens.
pub fn references(volume: &Volume) -> Result<References> {
    let mut refs = References::default();
    if let Some(s) = &volume.secret {
        refs.secrets
            .insert(s.secret_name.clone().unwrap_or_default());
    }
    if let Some(c) = &volume.config_map {
        refs.config_maps.insert(c.name.clone());
    }
    if let Some(p) = &volume.projected {
        for src in p.sources.iter().flatten() {
            if let Some(s) = &src.secret {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(c) = &src.config_map {
                refs.config_maps.insert(c.name.clone());
            }
            if let Some(t) = &src.service_account_token {
                refs.tokens.insert(TokenKey::for_projection(t)?);
            }
        }
    }
    Ok(refs)
}

fn mode_of(mode: Option<i32>, default: u32, what: &str) -> std::result::Result<u32, String> {
    match mode {
        None => Ok(default),
        Some(m) if (0..=0o777).contains(&m) => Ok(m as u32),
        Some(m) => Err(format!("{what}: mode {m:#o} is outside 0..=0777")),
    }
}

/// Builds the payload for one secret, configMap, downwardAPI or projected volume.
///
/// Every source is tried and every error is reported together, as upstream does for
/// projected volumes; any error fails the volume and nothing is written.
pub fn build(volume: &Volume, inputs: &Inputs<'_>) -> Result<Payload> {
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    let fs_group = fs_group(inputs.pod);
    match Kind::of(volume) {
        Some(Kind::Secret) => {
            let s = volume.secret.as_ref().expect("kind checked");
            let name = s.secret_name.clone().unwrap_or_default();
            match mode_of(s.default_mode, DEFAULT_MODE, "defaultMode") {
                Ok(mode) => secret_files(
                    &name,
                    inputs.secrets.get(&name),
                    s.items.as_deref(),
                    s.optional.unwrap_or(false),
                    mode,
                    &mut payload,
                    &mut errors,
                ),
                Err(e) => errors.push(e),
            }
        }
        Some(Kind::ConfigMap) => {
            let c = volume.config_map.as_ref().expect("kind checked");
            match mode_of(c.default_mode, DEFAULT_MODE, "defaultMode") {
                Ok(mode) => config_map_files(
                    &c.name,
                    inputs.config_maps.get(&c.name),
                    c.items.as_deref(),
                    c.optional.unwrap_or(false),
                    mode,
                    &mut payload,
                    &mut errors,
                ),
                Err(e) => errors.push(e),
            }
        }
        Some(Kind::DownwardApi) => {
            let d = volume.downward_api.as_ref().expect("kind checked");
            match mode_of(d.default_mode, DEFAULT_MODE, "defaultMode") {
                Ok(mode) => downward_api::files(
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                    inputs,
                    &mut payload,
                    &mut errors,
                ),
                Err(e) => errors.push(e),
            }
        }
        Some(Kind::Projected) => {
            let p = volume.projected.as_ref().expect("kind checked");
            match mode_of(p.default_mode, DEFAULT_MODE, "defaultMode") {
                Ok(mode) => {
                    for (i, src) in p.sources.iter().flatten().enumerate() {
                        projected_source(i, src, mode, fs_group, inputs, &mut payload, &mut errors);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        None => {
            return Err(Error::InvalidArgument {
                field: "volume",
                reason: format!("{} is not an API-data volume", volume.name),
            });
        }
    }
    if errors.is_empty() {
        Ok(payload)
    } else {
        Err(Error::Projection {
            volume: volume.name.clone(),
            errors,
        })
    }
}

#[allow(clippy::too_many_arguments)]
/// One entry of `projected.sources`; a later source overwrites earlier paths (k8s-semantics §2.6).
fn projected_source(
    index: usize,
    src: &VolumeProjection,
    mode: u32,
    fs_group: Option<u32>,
    inputs: &Inputs<'_>,
    payload: &mut Payload,
    errors: &mut Vec<String>,
) {
    let set = [
        src.secret.is_some(),
        src.config_map.is_some(),
        src.downward_api.is_some(),
        src.service_account_token.is_some(),
        src.cluster_trust_bundle.is_some(),
        src.pod_certificate.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        errors.push(format!(
            "sources[{index}]: must specify exactly one volume type, has {set}"
        ));
        return;
    }
    if let Some(s) = &src.secret {
        secret_files(
            &s.name,
            inputs.secrets.get(&s.name),
            s.items.as_deref(),
            s.optional.unwrap_or(false),
            mode,
            payload,
            errors,
        );
    } else if let Some(c) = &src.config_map {
        config_map_files(
            &c.name,
            inputs.config_maps.get(&c.name),
            c.items.as_deref(),
            c.optional.unwrap_or(false),
            mode,
            payload,
            errors,
        );
    } else if let Some(d) = &src.downward_api {
        downward_api::files(
            d.items.as_deref().unwrap_or_default(),
            mode,
            inputs,
            payload,
            errors,
        );
    } else if let Some(t) = &src.service_account_token {
        let key = match TokenKey::for_projection(t) {
            Ok(k) => k,
            Err(e) => return errors.push(format!("sources[{index}]: {e}")),
        };
        let Some(token) = inputs.tokens.get(&key) else {
            return errors.push(format!(
                "sources[{index}]: no token issued for audience {:?}",
                key.audience
            ));
        };
        // k8s-semantics §2.5: 0600 when a FsUser exists or the pod has an fsGroup (0640 after the pass).
        let user = fs_user(inputs.pod);
        let mode = if user.is_some() || fs_group.is_some() {
            0o600
        } else {
            mode
        };
        payload.insert(
            t.path.clone(),
            FileProjection {
                data: token.as_bytes().to_vec(),
                mode,
                fs_user: user,
            },
        );
    } else {
        // ClusterTrustBundle and PodCertificate are beta and off by default upstream;
        // Strata has neither object kind.
        errors.push(format!(
            "sources[{index}]: clusterTrustBundle and podCertificate projections are not supported"
        ));
    }
}

/// Shared by Secret and ConfigMap: whole object or listed items, `optional`, missing keys.
#[allow(clippy::too_many_arguments)] // one call site each for Secret and ConfigMap
fn key_files<'v>(
    kind: &str,
    missing_key: &str,
    name: &str,
    found: bool,
    lookup: &dyn Fn(&str) -> Option<&'v [u8]>,
    all: &mut dyn Iterator<Item = (&'v String, &'v [u8])>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
    payload: &mut Payload,
    errors: &mut Vec<String>,
) {
    if !found {
        if !optional {
            errors.push(format!("{kind} {name:?} not found"));
        }
        return;
    }
    match items {
        None | Some([]) => {
            for (key, data) in all {
                payload.insert(
                    key.clone(),
                    FileProjection {
                        data: data.to_vec(),
                        mode,
                        fs_user: None,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let Some(data) = lookup(&item.key) else {
                    if !optional {
                        errors.push(format!("{kind} {name:?}: {missing_key}: {}", item.key));
                    }
                    continue;
                };
                match mode_of(item.mode, mode, &format!("items[{}]", item.path)) {
                    Ok(m) => {
                        payload.insert(
                            item.path.clone(),
                            FileProjection {
                                data: data.to_vec(),
                                mode: m,
                                fs_user: None,
                            },
                        );
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn secret_files(
    name: &str,
    secret: Option<&Secret>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
    payload: &mut Payload,
    errors: &mut Vec<String>,
) {
    let empty = BTreeMap::new();
    let data = secret.and_then(|s| s.data.as_ref()).unwrap_or(&empty);
    let lookup = |k: &str| data.get(k).map(|v| v.0.as_slice());
    let mut all = data.iter().map(|(k, v)| (k, v.0.as_slice()));
    key_files(
        "secret",
        "references non-existent secret key",
        name,
        secret.is_some(),
        &lookup,
        &mut all,
        items,
        optional,
        mode,
        payload,
        errors,
    );
}

#[allow(clippy::too_many_arguments)]
fn config_map_files(
    name: &str,
    cm: Option<&ConfigMap>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
    payload: &mut Payload,
    errors: &mut Vec<String>,
) {
    let empty_s = BTreeMap::new();
    let empty_b = BTreeMap::new();
    let data = cm.and_then(|c| c.data.as_ref()).unwrap_or(&empty_s);
    let binary = cm.and_then(|c| c.binary_data.as_ref()).unwrap_or(&empty_b);
    // With items, `data` is looked up before `binaryData` (k8s-semantics §2.3).
    let lookup = |k: &str| {
        data.get(k)
            .map(|v| v.as_bytes())
            .or_else(|| binary.get(k).map(|v| v.0.as_slice()))
    };
    let mut all = data
        .iter()
        .map(|(k, v)| (k, v.as_bytes()))
        .chain(binary.iter().map(|(k, v)| (k, v.0.as_slice())));
    key_files(
        "configmap",
        "configmap references non-existent config key",
        name,
        cm.is_some(),
        &lookup,
        &mut all,
        items,
        optional,
        mode,
        payload,
        errors,
    );
}

#[cfg(test)]
mod tests;
