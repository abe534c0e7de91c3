//! The parts every pod the operator runs shares (workers, gateways, relays): non-root with a
//! read-only root filesystem and no capabilities, HTTP probes on the `http` port, Secrets
//! mounted read-only, and the image pull Secrets of the operator's settings.

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, HTTPGetAction, LocalObjectReference, PodSecurityContext, Probe,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use pubsubkafka_contract::config::SecurityProtocol;

use crate::consumer::plan::KAFKA_DIR;

/// What the pods need to reach Kafka: as the operator's settings give it.
#[derive(Debug, Clone, Copy)]
pub struct KafkaAccess<'a> {
    pub bootstrap_servers: &'a str,
    pub security_protocol: SecurityProtocol,
    /// Whether the credentials Secret carries the brokers' CA (`ca.crt`).
    pub with_ca: bool,
}

/// The environment a gateway, relay or replay container reads its Kafka connection from, as
/// SCRAM user `user` with the credentials Secret mounted at `KAFKA_DIR` (the worker's flags
/// take the same names from the environment; no secret value is in it).
pub fn kafka_env(user: &str, kafka: KafkaAccess<'_>) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    let mut env = vec![
        var(
            "PSK_KAFKA_BOOTSTRAP_SERVERS",
            kafka.bootstrap_servers.to_owned(),
        ),
        var(
            "PSK_KAFKA_SECURITY_PROTOCOL",
            kafka.security_protocol.as_kafka().to_owned(),
        ),
        var("PSK_KAFKA_USERNAME", user.to_owned()),
        var("PSK_KAFKA_PASSWORD_FILE", format!("{KAFKA_DIR}/password")),
        var("PSK_LOG_FORMAT", "json".to_owned()),
    ];
    if kafka.with_ca {
        env.push(var("PSK_KAFKA_CA_FILE", format!("{KAFKA_DIR}/ca.crt")));
    }
    env
}

/// The user and group the images run as (`app` in docker/*.Dockerfile and scripts/images.sh).
pub const APP_UID: i64 = 65532;

/// How often the kubelet asks a pod's `/healthz`: a hung process is restarted after
/// [`PROBE_FAILURE_THRESHOLD`] misses, about 30 s.
pub const LIVENESS_PERIOD_SECONDS: i32 = 10;
/// Misses before a probe fails.
pub const PROBE_FAILURE_THRESHOLD: i32 = 3;
/// Pods of one Deployment a voluntary disruption (a node drain) may take down at once: the
/// others keep working.
pub const MAX_UNAVAILABLE_PODS: i32 = 1;

/// An HTTP GET probe of `path` on the container's `http` port every `period` seconds, failing
/// after [`PROBE_FAILURE_THRESHOLD`] misses.
pub fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(PROBE_FAILURE_THRESHOLD),
        ..Default::default()
    }
}

/// The pod runs as the images' `app` user, with the runtime's default seccomp profile.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(APP_UID),
        run_as_group: Some(APP_UID),
        fs_group: Some(APP_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container: no privilege escalation, a read-only root filesystem, no capabilities.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pull Secrets of `names`, none when empty.
pub fn pull_secrets(names: &[String]) -> Option<Vec<LocalObjectReference>> {
    (!names.is_empty()).then(|| {
        names
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    })
}

/// Secret `secret` as volume `volume`, mounted read-only at `path` (files readable by the
/// pod's group only).
pub fn secret_mount(volume: &str, secret: &str, path: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        VolumeMount {
            name: volume.into(),
            mount_path: path.into(),
            read_only: Some(true),
            ..Default::default()
        },
    )
}
