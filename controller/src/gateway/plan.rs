//! The OrderGateway reconciler's decisions, as pure functions: whether it may proceed
//! ([`admit`]), then one [`plan`] of a pass (names, the principal's ACL changes, the gateway
//! and relay Deployments, the Service, the PodDisruptionBudget), and the [`status`] the
//! observed Deployments give.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Lifecycle, LifecycleHandler, PodSpec, PodTemplateSpec,
    Service, ServicePort, ServiceSpec, SleepAction,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::consumer::plan::{
    DATABASE_DIR, KAFKA_DIR, PodsNoun, WorkerImage, WorkerPod, Workload, pod_template_hash,
    workload_conditions,
};
use crate::context::Settings;
use crate::crd::OrderGateway;
use crate::crd::conditions::{self, reason};
use crate::crd::order_gateway::OrderGatewayStatus;
use crate::error::Error;
use crate::kafka::{Acl, AclOperation, ResourceKind};
use crate::pods;
use crate::principal::{AclDiff, Principal, held_by};
use crate::workload::{replicas_of, scaled_note};

/// The port the gateway listens on in its pod (API, /metrics and probes).
pub const GATEWAY_PORT: i32 = 8080;
/// The port of the relay's /metrics and probes.
pub const RELAY_PORT: i32 = crate::consumer::plan::WORKER_HTTP_PORT as i32;
/// Seconds a gateway pod has to answer the requests it holds when it is stopped.
pub const GATEWAY_GRACE_SECONDS: i64 = 30;
/// Seconds a stopping gateway pod keeps serving before it is sent SIGTERM: the time for the
/// Service's endpoints to drop it everywhere, so a rollout refuses no request (a pod that
/// stopped accepting at once would still be sent new connections for a moment).
pub const GATEWAY_DRAIN_SECONDS: i64 = 5;
/// How often the kubelet asks a gateway's `/readyz`: more often than a worker's, as the
/// Service sends requests only to ready pods.
pub const GATEWAY_READINESS_PERIOD_SECONDS: i32 = 2;
/// The port a URL may leave out.
pub const HTTP_DEFAULT_PORT: i32 = 80;
pub const GATEWAY_LABEL: &str = "pubsubkafka.io/gateway";
/// Annotation on the pod templates whose change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = crate::consumer::plan::CONFIG_HASH_ANNOTATION;

/// Names of everything the operator creates for one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Its Kafka principal and credentials Secret.
    pub kafka: Principal,
    /// The gateway Deployment, its Service and its PodDisruptionBudget.
    pub gateway: String,
    /// The outbox relay Deployment.
    pub relay: String,
}

impl Names {
    pub fn of(gateway: &OrderGateway) -> Self {
        let name = gateway.name_any();
        Self {
            kafka: Principal::of(gateway),
            relay: format!("{name}-relay"),
            gateway: name,
        }
    }
}

/// The seed architecture's producer ACLs: WRITE and DESCRIBE on the topic, nothing else. Kafka
/// 3.0 and later let a principal with WRITE on a topic use the idempotent producer, so no
/// IDEMPOTENT_WRITE on the cluster is needed.
pub fn gateway_acls(principal: &str, topic: &str) -> BTreeSet<Acl> {
    [AclOperation::Write, AclOperation::Describe]
        .into_iter()
        .map(|operation| Acl {
            resource: ResourceKind::Topic,
            name: topic.to_owned(),
            principal: principal.to_owned(),
            operation,
        })
        .collect()
}

/// Labels of every object of one gateway; `component` is `gateway` or `relay`.
pub fn labels(gateway: &OrderGateway, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (GATEWAY_LABEL.to_owned(), gateway.name_any()),
        (
            "app.kubernetes.io/name".to_owned(),
            format!("pubsubkafka-{component}"),
        ),
        ("app.kubernetes.io/instance".to_owned(), gateway.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "pubsubkafka-controller".to_owned(),
        ),
    ])
}

fn selector_labels(gateway: &OrderGateway, component: &str) -> BTreeMap<String, String> {
    labels(gateway, component)
        .into_iter()
        .filter(|(k, _)| k == GATEWAY_LABEL || k == "app.kubernetes.io/name")
        .collect()
}

/// The gateway pods' selector as a label query (status.selector, for the scale subresource).
pub fn selector(gateway: &OrderGateway) -> String {
    format!(
        "{GATEWAY_LABEL}={},app.kubernetes.io/name=pubsubkafka-gateway",
        gateway.name_any()
    )
}

/// Metadata of a child object named `name`, owned by the gateway.
pub fn child_meta(gateway: &OrderGateway, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: gateway.namespace(),
        labels: Some(labels(gateway, component)),
        owner_references: Some(vec![
            gateway
                .controller_owner_ref(&())
                .expect("a stored OrderGateway has a name and uid"),
        ]),
        ..ObjectMeta::default()
    }
}

/// The gateway container's arguments.
pub fn gateway_args(gateway: &OrderGateway, topic: &str) -> Vec<String> {
    let spec = &gateway.spec;
    let domain = spec.domain.as_arg();
    let mut args = vec![
        "gateway".to_owned(),
        "--listen".to_owned(),
        format!("0.0.0.0:{GATEWAY_PORT}"),
        "--serve".to_owned(),
        domain.to_owned(),
        format!("--{domain}-topic"),
        topic.to_owned(),
        "--max-body-bytes".to_owned(),
        spec.limits.max_body_bytes.to_string(),
        "--max-orders-per-request".to_owned(),
        spec.limits.max_orders_per_request.to_string(),
    ];
    if let Some(outbox) = &spec.outbox {
        args.extend([
            "--outbox".to_owned(),
            "--database-url-file".to_owned(),
            format!("{DATABASE_DIR}/{}", outbox.connection_secret.key),
        ]);
    }
    args
}

/// The relay container's arguments: it publishes only this gateway's topic.
pub fn relay_args(gateway: &OrderGateway, topic: &str) -> Option<Vec<String>> {
    let outbox = gateway.spec.outbox.as_ref()?;
    Some(vec![
        "outbox-relay".to_owned(),
        "--database-url-file".to_owned(),
        format!("{DATABASE_DIR}/{}", outbox.connection_secret.key),
        "--topics".to_owned(),
        topic.to_owned(),
        "--http-addr".to_owned(),
        format!("0.0.0.0:{RELAY_PORT}"),
    ])
}

/// Everything one of the gateway's Deployments is made of.
#[derive(Debug, Clone)]
pub struct PodInput<'a> {
    pub names: &'a Names,
    pub image: WorkerImage<'a>,
    pub kafka: pods::KafkaAccess<'a>,
    pub otlp_endpoint: Option<&'a str>,
    /// The pod template's hash: arguments and the versions of the mounted Secrets.
    pub config_hash: &'a str,
}

/// The gateway Deployment (`relay: false`) or the relay's.
pub fn deployment(
    gateway: &OrderGateway,
    input: &PodInput<'_>,
    replicas: i32,
    args: Vec<String>,
    relay: bool,
) -> Deployment {
    let (component, name, port) = if relay {
        ("relay", &input.names.relay, RELAY_PORT)
    } else {
        ("gateway", &input.names.gateway, GATEWAY_PORT)
    };
    let (credentials, credentials_mount) =
        pods::secret_mount("kafka-credentials", &input.names.kafka.secret, KAFKA_DIR);
    let mut volumes = vec![credentials];
    let mut mounts = vec![credentials_mount];
    if let Some(outbox) = &gateway.spec.outbox {
        let (volume, mount) =
            pods::secret_mount("database", &outbox.connection_secret.name, DATABASE_DIR);
        volumes.push(volume);
        mounts.push(mount);
    }
    let mut env = pods::kafka_env(&input.names.kafka.user, input.kafka);
    if let Some(endpoint) = input.otlp_endpoint {
        env.push(EnvVar {
            name: "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            value: Some(endpoint.to_owned()),
            ..Default::default()
        });
    }
    let annotations = BTreeMap::from([
        (
            CONFIG_HASH_ANNOTATION.to_owned(),
            input.config_hash.to_owned(),
        ),
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), port.to_string()),
    ]);
    Deployment {
        metadata: child_meta(gateway, name, component),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(gateway, component)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(gateway, component)),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    termination_grace_period_seconds: Some(GATEWAY_GRACE_SECONDS),
                    automount_service_account_token: Some(false),
                    image_pull_secrets: pods::pull_secrets(input.image.pull_secrets),
                    security_context: Some(pods::pod_security()),
                    containers: vec![Container {
                        name: component.into(),
                        image: Some(input.image.image.to_owned()),
                        args: Some(args),
                        env: Some(env),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: port,
                            ..Default::default()
                        }]),
                        liveness_probe: Some(pods::http_probe(
                            "/healthz",
                            pods::LIVENESS_PERIOD_SECONDS,
                        )),
                        readiness_probe: Some(pods::http_probe(
                            "/readyz",
                            GATEWAY_READINESS_PERIOD_SECONDS,
                        )),
                        // Only the gateway takes traffic through a Service.
                        lifecycle: (component == "gateway").then(|| Lifecycle {
                            pre_stop: Some(LifecycleHandler {
                                sleep: Some(SleepAction {
                                    seconds: GATEWAY_DRAIN_SECONDS,
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        resources: gateway.spec.resources.clone(),
                        security_context: Some(pods::container_security()),
                        volume_mounts: Some(mounts),
                        ..Default::default()
                    }],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The Service in front of the gateway pods.
pub fn service(gateway: &OrderGateway, names: &Names) -> Service {
    Service {
        metadata: child_meta(gateway, &names.gateway, "gateway"),
        spec: Some(ServiceSpec {
            type_: Some(gateway.spec.service.type_.as_str().to_owned()),
            selector: Some(selector_labels(gateway, "gateway")),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: gateway.spec.service.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// At most one gateway pod down at a time for a voluntary disruption (a node drain): the
/// others keep answering.
pub fn disruption_budget(gateway: &OrderGateway, names: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(gateway, &names.gateway, "gateway"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(pods::MAX_UNAVAILABLE_PODS)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(gateway, "gateway")),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// What the reconciler read from the API server and its caches before deciding.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    /// The Kafka topic of the gateway's KafkaTopic, when that exists and is Ready.
    pub topic: Option<String>,
    /// The OrderConsumer of the same name that holds the principal both would use, if any.
    pub principal_holder: Option<String>,
    /// With an outbox: its connection Secret's resourceVersion, `None` while it is missing.
    pub outbox_secret: Option<String>,
    /// The gateway Deployment, Service and PodDisruptionBudget (their resourceVersions) and
    /// the relay Deployment as they are.
    pub deployment: Option<Deployment>,
    pub service_version: Option<String>,
    pub budget_version: Option<String>,
    pub relay: Option<Deployment>,
}

/// The checks before the operator touches anything for a gateway: its topic is Ready, no
/// older OrderConsumer holds its principal, its outbox Secret exists. Returns the Kafka topic.
pub fn admit(gateway: &OrderGateway, gathered: &Gathered) -> Result<String, Error> {
    let topic_name = &gateway.spec.topic_ref.name;
    let topic = gathered.topic.clone().ok_or_else(|| Error::Waiting {
        reason: reason::TOPIC_NOT_READY,
        message: format!("waiting for KafkaTopic {topic_name} to exist and be Ready"),
    })?;
    if let Some(consumer) = &gathered.principal_holder {
        let holder = format!(
            "OrderConsumer {}/{consumer}",
            gateway.namespace().unwrap_or_default()
        );
        return Err(held_by(&Principal::base(gateway), &holder, "gateway"));
    }
    if let Some(outbox) = &gateway.spec.outbox
        && gathered.outbox_secret.is_none()
    {
        return Err(Error::Waiting {
            reason: reason::SECRET_NOT_FOUND,
            message: format!(
                "waiting for the outbox connection Secret {}",
                outbox.connection_secret.name
            ),
        });
    }
    Ok(topic)
}

/// What one pass applies, in this order: the principal and its ACL changes, the gateway
/// Deployment ([`Plan::deployments`]), Service and PodDisruptionBudget, then the relay (or its
/// removal).
#[derive(Debug, Clone)]
pub struct Plan {
    pub names: Names,
    pub topic: String,
    pub acls: AclDiff,
    pub service: Service,
    pub budget: PodDisruptionBudget,
    /// The event note when the gateway's replicas change.
    pub scaled: Option<String>,
    /// The outbox was turned off: the relay goes (the rows it left stay in PostgreSQL).
    pub delete_relay: bool,
    gateway_args: Vec<String>,
    relay_args: Option<Vec<String>>,
    image: String,
    otlp_endpoint: Option<String>,
    /// The outbox connection Secret and its version, mounted in both kinds of pods.
    outbox_secret: Option<(String, Option<String>)>,
}

/// Decides a gateway's pass from what was gathered: `topic` as [`admit`] returned it and
/// `acls`, what Kafka holds for the principal.
pub fn plan(
    gateway: &OrderGateway,
    gathered: &Gathered,
    topic: &str,
    acls: &BTreeSet<Acl>,
    settings: &Settings,
) -> Plan {
    let names = Names::of(gateway);
    let relay_args = relay_args(gateway, topic);
    Plan {
        acls: AclDiff::between(
            &names.kafka.principal,
            &gateway_acls(&names.kafka.principal, topic),
            acls,
        ),
        service: service(gateway, &names),
        budget: disruption_budget(gateway, &names),
        scaled: scaled_note(
            replicas_of(gathered.deployment.as_ref()),
            gateway.spec.replicas,
            "gateway replicas",
            "the gateway",
        ),
        delete_relay: relay_args.is_none() && gathered.relay.is_some(),
        gateway_args: gateway_args(gateway, topic),
        relay_args,
        image: gateway
            .spec
            .image
            .clone()
            .unwrap_or_else(|| settings.worker_image.clone()),
        otlp_endpoint: gateway
            .spec
            .tracing
            .as_ref()
            .map(|t| t.otlp_endpoint.clone())
            .or_else(|| settings.worker_otlp_endpoint.clone()),
        outbox_secret: gateway.spec.outbox.as_ref().map(|outbox| {
            (
                outbox.connection_secret.name.clone(),
                gathered.outbox_secret.clone(),
            )
        }),
        topic: topic.to_owned(),
        names,
    }
}

impl Plan {
    /// The gateway Deployment and, with an outbox, the relay's, once the credentials Secret is
    /// applied: its `credentials_version` is in the pod templates' hash, so a new one rolls
    /// the pods.
    pub fn deployments(
        &self,
        gateway: &OrderGateway,
        settings: &Settings,
        credentials_version: Option<String>,
    ) -> (Deployment, Option<Deployment>) {
        let mut mounted = vec![(self.names.kafka.secret.clone(), credentials_version)];
        mounted.extend(self.outbox_secret.clone());
        let image = &self.image;
        let otlp_endpoint = self.otlp_endpoint.as_deref();
        let hash_of = |args: &[String]| {
            let mut text = args.join("\n");
            text.push_str(&format!("\nimage={image}\notlp={otlp_endpoint:?}"));
            text.push_str(&format!(
                "\nbootstrap={}",
                settings.worker_bootstrap_servers
            ));
            pod_template_hash(&text, &mounted)
        };
        let image = WorkerImage {
            image,
            pull_secrets: &settings.worker_image_pull_secrets,
        };
        let kafka = pods::KafkaAccess {
            bootstrap_servers: &settings.worker_bootstrap_servers,
            security_protocol: settings.worker_security_protocol,
            with_ca: settings.kafka_ca_pem.is_some(),
        };
        let render = |args: &Vec<String>, replicas: i32, relay: bool| {
            let config_hash = hash_of(args);
            let input = PodInput {
                names: &self.names,
                image,
                kafka,
                otlp_endpoint,
                config_hash: &config_hash,
            };
            deployment(gateway, &input, replicas, args.clone(), relay)
        };
        let relay = match (&self.relay_args, &gateway.spec.outbox) {
            (Some(args), Some(outbox)) => Some(render(args, outbox.relay_replicas, true)),
            _ => None,
        };
        (
            render(&self.gateway_args, gateway.spec.replicas, false),
            relay,
        )
    }
}

/// The URL clients in the cluster use: the Service's DNS name, its port and the route.
pub fn url(gateway: &OrderGateway, names: &Names) -> String {
    let port = gateway.spec.service.port;
    let host = format!(
        "{}.{}.svc",
        names.gateway,
        gateway.namespace().unwrap_or_default()
    );
    let route = match gateway.spec.domain {
        crate::crd::order_gateway::Domain::Orders => "/orders",
        crate::crd::order_gateway::Domain::Users => "/users",
    };
    if port == HTTP_DEFAULT_PORT {
        format!("http://{host}{route}")
    } else {
        format!("http://{host}:{port}{route}")
    }
}

/// The gateway pods, for conditions.
pub const GATEWAY_PODS: PodsNoun = PodsNoun {
    pods: "gateway",
    unready_because: "as the gateway does while it cannot reach the brokers (or, with an \
                      outbox, its database); clients get 503, see the gateway logs",
};

/// The outbox relay pods, for conditions.
pub const RELAY_PODS: PodsNoun = PodsNoun {
    pods: "outbox relay",
    unready_because: "as the relay does while its database or the brokers are unreachable; \
                      accepted orders wait in the outbox, see the relay logs",
};

/// A Deployment of the gateway as the controller last saw it, with its pods when some are
/// missing.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub workload: Workload,
    pub pods: Vec<WorkerPod>,
}

/// The status after a pass that applied everything: `Reconciled` says the operator did its
/// part; `Ready` and `Degraded` follow the pods as for a consumer's workers: Ready when every
/// wanted gateway pod (and relay pod, with an outbox) is available and runs the current
/// template, Degraded with the reason when one crash-loops, cannot start, or stays unready.
pub fn status(
    gateway: &OrderGateway,
    names: &Names,
    topic: &str,
    pods: &Observed,
    relay: Option<&Observed>,
    old: &[Condition],
) -> OrderGatewayStatus {
    let spec = &gateway.spec;
    let generation = gateway.metadata.generation;
    let replicas = spec.replicas;
    let reconciled = conditions::new(
        conditions::RECONCILED,
        true,
        reason::RECONCILED,
        format!(
            "{replicas} gateway replicas publish {} to {topic} as {}{}",
            spec.domain.as_arg(),
            names.kafka.principal,
            match relay {
                Some(r) => format!(
                    " through the outbox, with {} relay replicas",
                    r.workload.replicas
                ),
                None => String::new(),
            }
        ),
        generation,
    );
    let (gateway_ready, gateway_degraded) =
        workload_conditions(&pods.workload, &pods.pods, generation, GATEWAY_PODS);
    let (ready, degraded) = match relay {
        None => (gateway_ready, gateway_degraded),
        Some(relay) => {
            let (relay_ready, relay_degraded) =
                workload_conditions(&relay.workload, &relay.pods, generation, RELAY_PODS);
            let ready = match (gateway_ready.status.as_str(), relay_ready.status.as_str()) {
                ("True", "True") => Condition {
                    message: format!("{}; {}", gateway_ready.message, relay_ready.message),
                    ..gateway_ready
                },
                ("True", _) => relay_ready,
                _ => gateway_ready,
            };
            let degraded = if gateway_degraded.status == "True" {
                gateway_degraded
            } else if relay_degraded.status == "True" {
                relay_degraded
            } else {
                gateway_degraded
            };
            (ready, degraded)
        }
    };
    OrderGatewayStatus {
        observed_generation: generation,
        replicas: Some(replicas),
        ready_replicas: Some(pods.workload.ready),
        relay_ready_replicas: relay.map(|r| r.workload.ready),
        url: Some(url(gateway, names)),
        topic: Some(topic.to_owned()),
        principal: Some(names.kafka.principal.clone()),
        credentials_secret: Some(names.kafka.secret.clone()),
        credentials: gateway.status.as_ref().and_then(|s| s.credentials.clone()),
        selector: Some(selector(gateway)),
        conditions: [reconciled, ready, degraded]
            .into_iter()
            .fold(old.to_vec(), |all, c| conditions::merge(&all, c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pubsubkafka_contract::config::SecurityProtocol;

    fn gateway(yaml: &str) -> OrderGateway {
        let mut g: OrderGateway = serde_yaml::from_str(yaml).expect("fixture parses");
        g.metadata.uid = Some("0b1c".into());
        g.metadata.generation = Some(3);
        g
    }

    const ORDERS: &str = r#"
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderGateway
metadata: {name: orders-gateway, namespace: shop}
spec:
  topicRef: {name: orders}
"#;

    const USERS_OUTBOX: &str = r#"
apiVersion: pubsubkafka.io/v1alpha1
kind: OrderGateway
metadata: {name: users-gateway, namespace: shop}
spec:
  topicRef: {name: users}
  domain: Users
  replicas: 3
  service: {type: NodePort, port: 8080}
  limits: {maxBodyBytes: 65536, maxOrdersPerRequest: 10}
  outbox:
    connectionSecret: {name: gateway-db}
"#;

    #[test]
    fn defaults_are_two_replicas_on_port_80_serving_orders() {
        let g = gateway(ORDERS);
        assert_eq!(g.spec.replicas, 2);
        assert_eq!(g.spec.service.port, 80);
        assert_eq!(g.spec.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(g.spec.limits.max_orders_per_request, 1000);
        assert_eq!(
            url(&g, &Names::of(&g)),
            "http://orders-gateway.shop.svc/orders"
        );
        let g = gateway(USERS_OUTBOX);
        assert_eq!(
            url(&g, &Names::of(&g)),
            "http://users-gateway.shop.svc:8080/users"
        );
    }

    #[test]
    fn the_principal_may_only_write_and_describe_its_topic() {
        let rendered: Vec<String> = gateway_acls("User:g", "orders")
            .iter()
            .map(|a| format!("{:?} {} {:?}", a.resource, a.name, a.operation))
            .collect();
        assert_eq!(rendered, ["Topic orders Write", "Topic orders Describe"]);
    }

    #[test]
    fn arguments_follow_the_domain_limits_and_outbox() {
        let g = gateway(ORDERS);
        assert_eq!(
            gateway_args(&g, "shop-orders").join(" "),
            "gateway --listen 0.0.0.0:8080 --serve orders --orders-topic shop-orders \
             --max-body-bytes 1048576 --max-orders-per-request 1000"
        );
        assert_eq!(relay_args(&g, "shop-orders"), None);
        let g = gateway(USERS_OUTBOX);
        assert_eq!(
            gateway_args(&g, "users").join(" "),
            "gateway --listen 0.0.0.0:8080 --serve users --users-topic users \
             --max-body-bytes 65536 --max-orders-per-request 10 \
             --outbox --database-url-file /etc/pubsubkafka/database/url"
        );
        assert_eq!(
            relay_args(&g, "users").unwrap().join(" "),
            "outbox-relay --database-url-file /etc/pubsubkafka/database/url --topics users \
             --http-addr 0.0.0.0:9090"
        );
    }

    /// The pods of `names` with the example image and brokers.
    fn pod_input(names: &Names, with_ca: bool) -> PodInput<'_> {
        PodInput {
            names,
            image: WorkerImage {
                image: "pubsubkafka/worker:1",
                pull_secrets: &[],
            },
            kafka: pods::KafkaAccess {
                bootstrap_servers: "kafka:9093",
                security_protocol: SecurityProtocol::SaslSsl,
                with_ca,
            },
            otlp_endpoint: None,
            config_hash: "abc",
        }
    }

    #[test]
    fn pods_run_as_non_root_on_a_read_only_root_with_the_secrets_mounted() {
        let g = gateway(USERS_OUTBOX);
        let names = Names::of(&g);
        let input = pod_input(&names, true);
        let d = deployment(&g, &input, 3, gateway_args(&g, "users"), false);
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let mounts: Vec<&str> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, [KAFKA_DIR, DATABASE_DIR]);
        let env: BTreeMap<_, _> = container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["PSK_KAFKA_USERNAME"], "pubsubkafka.shop.users-gateway");
        assert_eq!(env["PSK_KAFKA_CA_FILE"], "/etc/pubsubkafka/kafka/ca.crt");
        assert!(
            !env.values().any(|v| v.contains("password=")),
            "no secret in the environment"
        );
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
        let relay = deployment(&g, &input, 1, relay_args(&g, "users").unwrap(), true);
        assert_eq!(relay.metadata.name.as_deref(), Some("users-gateway-relay"));
        // The Service selects the gateway pods only, never the relay's.
        let service = service(&g, &names);
        let selected = service.spec.unwrap().selector.unwrap();
        let relay_labels = relay
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        assert!(selected.iter().any(|(k, v)| relay_labels.get(k) != Some(v)));
    }

    fn observed(replicas: i32, ready: i32, rolled_out: bool) -> Observed {
        Observed {
            workload: Workload {
                replicas,
                ready,
                rolled_out,
            },
            pods: Vec::new(),
        }
    }

    #[test]
    fn ready_needs_every_wanted_gateway_and_relay_pod() {
        let g = gateway(USERS_OUTBOX);
        let names = Names::of(&g);
        let crashing = Observed {
            pods: vec![WorkerPod {
                name: "users-gateway-relay-1".into(),
                waiting: Some("CrashLoopBackOff".into()),
                restarts: 3,
                ..WorkerPod::default()
            }],
            ..observed(1, 0, true)
        };
        for (gateway_pods, relay_pods, expected) in [
            (
                observed(3, 0, false),
                observed(1, 0, false),
                (
                    "False",
                    "WorkersStarting",
                    "0 of 3 gateway pods ready",
                    "False",
                ),
            ),
            (
                observed(3, 3, false),
                observed(1, 1, true),
                (
                    "False",
                    "WorkersStarting",
                    "3 of 3 gateway pods ready",
                    "False",
                ),
            ),
            (
                observed(3, 3, true),
                crashing.clone(),
                (
                    "False",
                    "WorkerCrashLooping",
                    "0 of 1 outbox relay pods ready",
                    "True",
                ),
            ),
            (
                observed(3, 3, true),
                observed(1, 1, true),
                ("True", "WorkersReady", "3 of 3 gateway pods ready", "False"),
            ),
        ] {
            let s = status(&g, &names, "users", &gateway_pods, Some(&relay_pods), &[]);
            let find = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
            let (ready, degraded) = (find(conditions::READY), find(conditions::DEGRADED));
            assert_eq!(
                (
                    ready.status.as_str(),
                    ready.reason.as_str(),
                    degraded.status.as_str()
                ),
                (expected.0, expected.1, expected.3),
                "{gateway_pods:?} {relay_pods:?}"
            );
            assert!(ready.message.starts_with(expected.2), "{}", ready.message);
            assert_eq!(find(conditions::RECONCILED).status, "True");
        }
    }

    #[test]
    fn an_unchanged_pass_gives_the_same_status() {
        let g = gateway(ORDERS);
        let names = Names::of(&g);
        let pods = observed(2, 2, true);
        let first = status(&g, &names, "orders", &pods, None, &[]);
        let second = status(&g, &names, "orders", &pods, None, &first.conditions);
        assert!(conditions::same(&first.conditions, &second.conditions));
        assert_eq!(
            first
                .conditions
                .iter()
                .map(|c| &c.last_transition_time)
                .collect::<Vec<_>>(),
            second
                .conditions
                .iter()
                .map(|c| &c.last_transition_time)
                .collect::<Vec<_>>(),
            "transition times stay"
        );
    }

    /// What a gateway finds when its topic is Ready and nothing of it exists yet.
    fn gathered() -> Gathered {
        Gathered {
            topic: Some("shop.users".into()),
            outbox_secret: Some("42".into()),
            ..Gathered::default()
        }
    }

    #[test]
    fn a_gateway_waits_for_its_topic_and_outbox_and_yields_a_held_principal() {
        let orders = gateway(ORDERS);
        let outbox = gateway(USERS_OUTBOX);
        type Change = fn(&mut Gathered);
        let cases: [(&str, &OrderGateway, Change, Result<&str, &str>); 6] = [
            ("ready", &orders, |_| {}, Ok("shop.users")),
            (
                "ready, with its outbox Secret",
                &outbox,
                |_| {},
                Ok("shop.users"),
            ),
            (
                "no Ready KafkaTopic",
                &orders,
                |g| g.topic = None,
                Err("TopicNotReady"),
            ),
            (
                "an older consumer holds the principal",
                &orders,
                |g| g.principal_holder = Some("orders-gateway".into()),
                Err("ResourceConflict"),
            ),
            (
                "the outbox Secret is missing",
                &outbox,
                |g| g.outbox_secret = None,
                Err("SecretNotFound"),
            ),
            (
                "without an outbox, no Secret is needed",
                &orders,
                |g| g.outbox_secret = None,
                Ok("shop.users"),
            ),
        ];
        for (case, g, change, expected) in cases {
            let mut gathered = gathered();
            change(&mut gathered);
            let verdict = admit(g, &gathered);
            assert_eq!(
                verdict.as_deref().map_err(Error::reason),
                expected,
                "{case}"
            );
        }
        let conflict = admit(
            &orders,
            &Gathered {
                principal_holder: Some("orders-gateway".into()),
                ..gathered()
            },
        )
        .unwrap_err();
        assert_eq!(
            conflict.to_string(),
            "Kafka principal User:pubsubkafka.shop.orders-gateway belongs to OrderConsumer \
             shop/orders-gateway, which claimed it first; rename this gateway"
        );
    }

    #[test]
    fn the_plan_diffs_acls_scales_and_removes_a_relay_no_longer_wanted() {
        let orders = gateway(ORDERS);
        let outbox = gateway(USERS_OUTBOX);
        let granted = |g: &OrderGateway| gateway_acls(&Names::of(g).kafka.principal, "shop.users");
        let names = Names::of(&orders);
        let input = pod_input(&names, false);
        let running = |replicas: i32, relay: bool| Gathered {
            deployment: Some(deployment(&orders, &input, replicas, Vec::new(), false)),
            relay: relay.then(|| deployment(&orders, &input, 1, Vec::new(), true)),
            ..gathered()
        };
        let stale: BTreeSet<Acl> = granted(&orders)
            .into_iter()
            .chain([Acl {
                resource: ResourceKind::Topic,
                name: "shop.other".into(),
                principal: "User:pubsubkafka.shop.orders-gateway".into(),
                operation: AclOperation::Write,
            }])
            .collect();
        let cases: Vec<(&str, &OrderGateway, Gathered, BTreeSet<Acl>, &str)> = vec![
            (
                "first pass",
                &orders,
                gathered(),
                BTreeSet::new(),
                "acls +2 -0; deployed 2 gateway replicas; relay: none",
            ),
            (
                "converged",
                &orders,
                running(2, false),
                granted(&orders),
                "acls +0 -0; relay: none",
            ),
            (
                "scaled and a stale ACL",
                &orders,
                running(5, false),
                stale,
                "acls +0 -1; scaled the gateway from 5 to 2; relay: none",
            ),
            (
                "the outbox turned off: the relay goes",
                &orders,
                running(2, true),
                granted(&orders),
                "acls +0 -0; relay: delete",
            ),
            (
                "with an outbox, the relay runs",
                &outbox,
                gathered(),
                granted(&outbox),
                "acls +0 -0; deployed 3 gateway replicas; relay: 1 replicas",
            ),
        ];
        for (case, g, gathered, acls, expected) in cases {
            let plan = plan(g, &gathered, "shop.users", &acls, &Settings::example());
            let (_, relay) = plan.deployments(g, &Settings::example(), Some("1".into()));
            let relay = match (&relay, plan.delete_relay) {
                (Some(d), false) => {
                    format!("{} replicas", d.spec.as_ref().unwrap().replicas.unwrap())
                }
                (None, true) => "delete".into(),
                (None, false) => "none".into(),
                (Some(_), true) => "both".into(),
            };
            let mut summary = vec![format!(
                "acls +{} -{}",
                plan.acls.missing.len(),
                plan.acls.extra.len()
            )];
            summary.extend(plan.scaled.clone());
            summary.push(format!("relay: {relay}"));
            assert_eq!(summary.join("; "), expected, "{case}");
        }
    }

    #[test]
    fn the_pod_templates_hash_the_arguments_image_and_mounted_secrets() {
        let g = gateway(USERS_OUTBOX);
        let hash = |d: &Deployment| {
            crate::consumer::plan::config_hash_of(d)
                .expect("a config hash")
                .to_owned()
        };
        let plan = plan(
            &g,
            &gathered(),
            "shop.users",
            &BTreeSet::new(),
            &Settings::example(),
        );
        let (gateway, relay) = plan.deployments(&g, &Settings::example(), Some("1".into()));
        let relay = relay.expect("an outbox gateway has a relay");
        let mounted = [
            (
                "users-gateway-kafka-credentials".to_owned(),
                Some("1".to_owned()),
            ),
            ("gateway-db".to_owned(), Some("42".to_owned())),
        ];
        let text = |args: Vec<String>| {
            format!(
                "{}\nimage=pubsubkafka/worker:1\notlp=None\nbootstrap=kafka:9093",
                args.join("\n")
            )
        };
        assert_eq!(
            hash(&gateway),
            pod_template_hash(&text(gateway_args(&g, "shop.users")), &mounted)
        );
        assert_eq!(
            hash(&relay),
            pod_template_hash(&text(relay_args(&g, "shop.users").unwrap()), &mounted)
        );
        let (rotated, _) = plan.deployments(&g, &Settings::example(), Some("2".into()));
        assert_ne!(
            hash(&gateway),
            hash(&rotated),
            "new credentials roll the pods"
        );
    }
}
