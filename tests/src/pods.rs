//! Running a Deployment's pods as local processes, the way a kubelet would: the test API server
//! has no kubelet, so the demo and the end-to-end tests read the Deployment the operator wrote,
//! materialize its ConfigMap and Secret volumes into a directory per pod, and start one process
//! per replica with the container's own arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;

use crate::process::{Lifetime, Proc};
use crate::{Error, free_port};

/// One replica started from a Deployment.
#[derive(Debug)]
pub struct LocalPod {
    pub name: String,
    pub http_port: u16,
    pub proc_: Proc,
}

/// Starts the replicas of Deployment `name` in `namespace` with `binary` as the container's
/// entrypoint, each in `root/<pod>`; mount paths in arguments and in mounted files are
/// rewritten to the pod's directory.
pub async fn start_deployment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    binary: &Path,
    root: &Path,
    lifetime: Lifetime,
) -> Result<Vec<LocalPod>, Error> {
    let kube_err = |e: kube::Error| Error::Kube(e.to_string());
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(kube_err)?;
    let spec = deployment
        .spec
        .ok_or_else(|| Error::Kube(format!("{name} has no spec")))?;
    let replicas = spec.replicas.unwrap_or(1);
    let pod_spec = spec
        .template
        .spec
        .ok_or_else(|| Error::Kube(format!("{name} has no pod spec")))?;
    let container = pod_spec
        .containers
        .first()
        .ok_or_else(|| Error::Kube(format!("{name} has no container")))?;

    // Volume name -> files (key -> bytes).
    let mut volumes: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for volume in pod_spec.volumes.unwrap_or_default() {
        let files = if let Some(cm) = &volume.config_map {
            let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get(&cm.name)
                .await
                .map_err(kube_err)?;
            map.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        } else if let Some(secret) = &volume.secret {
            let secret_name = secret.secret_name.clone().unwrap_or_default();
            let s = Api::<Secret>::namespaced(client.clone(), namespace)
                .get(&secret_name)
                .await
                .map_err(kube_err)?;
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        } else {
            BTreeMap::new()
        };
        volumes.insert(volume.name, files);
    }
    let mounts: Vec<(String, String)> = container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.name, m.mount_path))
        .collect();

    let mut pods = Vec::new();
    for index in 0..replicas {
        let pod = format!("{name}-{index}");
        let pod_dir = root.join(&pod);
        let local = |path: &str| -> PathBuf { pod_dir.join(path.trim_start_matches('/')) };
        let rewrite = |text: &str| -> String {
            mounts.iter().fold(text.to_owned(), |acc, (_, mount)| {
                acc.replace(mount.as_str(), &local(mount).display().to_string())
            })
        };
        for (volume, mount) in &mounts {
            let dir = local(mount);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating a mount dir", e))?;
            for (key, bytes) in volumes.get(volume).into_iter().flatten() {
                let path = dir.join(key);
                match std::str::from_utf8(bytes) {
                    // Mounted config refers to other mounts by their pod paths.
                    Ok(text) => crate::write_private(&path, &rewrite(text))?,
                    Err(_) => std::fs::write(&path, bytes)
                        .map_err(|e| Error::io("writing a mounted file", e))?,
                }
            }
        }
        let http_port = free_port()?;
        let mut cmd = Command::new(binary);
        cmd.args(
            container
                .args
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|a| rewrite(a)),
        )
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http_port}"))
        .env("POD_NAME", &pod)
        .env("PSK_LOG_FORMAT", "json");
        let log = root.join(format!("{pod}.log"));
        let proc_ = Proc::spawn(&pod, cmd, &log, lifetime, None)?;
        pods.push(LocalPod {
            name: pod,
            http_port,
            proc_,
        });
    }
    Ok(pods)
}

/// Records `ready` running replicas in the Deployment's status, as the Deployment controller
/// would once the kubelet reports the pods ready.
pub async fn report_ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    ready: i32,
) -> Result<(), Error> {
    use kube::api::{Patch, PatchParams};
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "status": {"replicas": ready, "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": ready}
            })),
        )
        .await
        .map_err(|e| Error::Kube(e.to_string()))?;
    Ok(())
}
