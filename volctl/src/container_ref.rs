//! Which container of which pod `volctl logs` and `volctl exec` mean, read from the
//! pod object the node keeps current (its status names every run's container id).

use anyhow::{Context as _, bail};
use serde_json::Value;
use strata_store::EmbeddedStore;
use strata_store::k8s_openapi::api::core::v1::Pod;

/// One container of a pod, with the status strata-node last wrote for it.
#[derive(Debug)]
pub struct ContainerRef {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    /// `status.containerStatuses[]` (or the init list's) entry; Null before the first.
    pub status: Value,
}

impl ContainerRef {
    /// The runtime id of the running run, when the container runs now.
    pub fn running_id(&self) -> Option<&str> {
        if self.status["state"]["running"].is_null() {
            return None;
        }
        self.status["containerID"]
            .as_str()?
            .strip_prefix("strata://")
    }

    /// Why it does not run, in kubectl's words: "waiting to start: ImagePullBackOff".
    pub fn not_running(&self) -> String {
        let st = &self.status["state"];
        if let Some(r) = st["waiting"]["reason"].as_str() {
            format!("is waiting to start: {r}")
        } else if st["terminated"]["reason"] == strata_node::runner::NODE_SHUTDOWN {
            "was stopped with the node (volctl down); `volctl up` runs it again".into()
        } else if !st["terminated"].is_null() {
            format!(
                "has terminated (exit code {})",
                st["terminated"]["exitCode"].as_i64().unwrap_or(-1)
            )
        } else {
            "has not started yet".into()
        }
    }
}

/// The pod's container `name`, or its first one when `name` is None (saying so on
/// stderr when there are others, as kubectl does).
pub async fn resolve(
    store: &EmbeddedStore,
    namespace: &str,
    pod: &str,
    name: Option<&str>,
) -> anyhow::Result<ContainerRef> {
    use strata_store::Store as _;
    let p: Pod = match store.get(namespace, pod).await {
        Ok(p) => p,
        Err(e) if e.is_not_found() => bail!("pods {pod:?} not found in namespace {namespace:?}"),
        Err(e) => return Err(e).with_context(|| format!("reading pod {namespace}/{pod}")),
    };
    let v = serde_json::to_value(&p).context("pod as JSON")?;
    let names = |key: &str| -> Vec<String> {
        v["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    };
    let (apps, inits) = (names("containers"), names("initContainers"));
    let choices = || {
        apps.iter()
            .cloned()
            .chain(inits.iter().map(|i| format!("{i} (init)")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let container = match name {
        Some(n) if apps.iter().chain(&inits).any(|c| c == n) => n.to_string(),
        Some(n) => bail!(
            "container {n:?} is not valid for pod {pod:?}; choose one of: {}",
            choices()
        ),
        None => {
            let first = apps
                .first()
                .with_context(|| format!("pod {pod:?} has no containers"))?
                .clone();
            if apps.len() + inits.len() > 1 {
                eprintln!(
                    "Defaulted container {first:?} out of: {} (use -c to choose)",
                    choices()
                );
            }
            first
        }
    };
    let status = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|k| v["status"][k].as_array().into_iter().flatten())
        .find(|s| s["name"] == container.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    Ok(ContainerRef {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        container,
        status,
    })
}
