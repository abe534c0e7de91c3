//! The Helm chart: lint, its manifests accepted by the real API server, its RBAC enough (and
//! used for real) for the operator to reconcile the dev examples, and leader election.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use kube::api::{Api, PostParams};
use pubsubkafka_controller::crd::{KafkaTopic, OrderConsumer};
use serde::Deserialize;
use testenv::operator::{self, Operator};
use testenv::{KubeInfo, eventually, tools};

const WAIT: Duration = Duration::from_secs(90);

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/pubsubkafka")
}

fn helm(args: &[&str]) -> String {
    let out = Command::new(tools::helm().expect("helm is installed by make tools"))
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("pubsubkafka-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("pubsubkafka-helm-config"),
        )
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl(kube: &KubeInfo, args: &[&str], stdin: &str) -> Result<String, String> {
    kube.kubectl_with_stdin(args, stdin)
}

#[test]
fn the_chart_lints_and_ships_the_generated_crds() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    helm(&["lint", "--strict", chart]);
    helm(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
    ]);
    // The Prometheus Operator's kinds render where its API is served (see
    // monitoring_objects_need_the_prometheus_operators_api).
    helm(&[
        "template",
        "x",
        chart,
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
    ]);
    // Tracing on: the operator gets the standard OTEL_* variables, the workers' endpoint too.
    let traced = helm(&[
        "template",
        "x",
        chart,
        "--show-only",
        "templates/deployment.yaml",
        "--set",
        "tracing.otlpEndpoint=http://otel:4318,tracing.workerOtlpEndpoint=http://node-agent:4318",
    ]);
    assert!(
        traced.contains(
            "name: OTEL_EXPORTER_OTLP_ENDPOINT\n              value: \"http://otel:4318\""
        ),
        "{traced}"
    );
    assert!(
        traced.contains(
            "name: PSK_WORKER_OTLP_ENDPOINT\n              value: \"http://node-agent:4318\""
        ),
        "{traced}"
    );
    let untraced = helm(&[
        "template",
        "x",
        chart,
        "--show-only",
        "templates/deployment.yaml",
    ]);
    assert!(!untraced.contains("OTEL_"), "tracing is off by default");
    // Tenancy: namespaced by default, open on request; anything else is refused by the schema.
    assert!(
        untraced.contains("name: PSK_DEFAULT_ACCESS_POLICY\n              value: \"namespaced\""),
        "{untraced}"
    );
    let open = helm(&[
        "template",
        "x",
        chart,
        "--show-only",
        "templates/deployment.yaml",
        "--set",
        "defaultAccessPolicy=open",
    ]);
    assert!(
        open.contains("name: PSK_DEFAULT_ACCESS_POLICY\n              value: \"open\""),
        "{open}"
    );
    for crd in pubsubkafka_controller::crd::all() {
        let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap());
        let shipped =
            std::fs::read_to_string(PathBuf::from(chart).join("crds").join(&name)).unwrap();
        assert_eq!(
            shipped,
            pubsubkafka_controller::crd::to_yaml(&crd),
            "{name} in the chart is stale"
        );
    }
    // values.schema.json refuses a bad value, naming it.
    let out = Command::new(tools::helm().unwrap())
        .args([
            "template",
            "x",
            chart,
            "--set",
            "kafka.securityProtocol=TLS",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("securityProtocol"));
    let out = Command::new(tools::helm().unwrap())
        .args([
            "template",
            "x",
            chart,
            "--set",
            "defaultAccessPolicy=everyone",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("defaultAccessPolicy"));
}

/// The rule group of the chart's PrometheusRule rendered with `values`.
fn rendered_rule_groups(values: &[&str]) -> serde_yaml::Value {
    let chart = chart().display().to_string();
    let mut args = vec![
        "template",
        "x",
        &chart,
        "--show-only",
        "templates/monitoring.yaml",
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--set",
        "metrics.prometheusRule.enabled=true",
    ];
    for v in values {
        args.extend(["--set", v]);
    }
    let rendered = helm(&args);
    let rule = serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "PrometheusRule")
        .expect("the chart renders a PrometheusRule");
    rule["spec"].clone()
}

/// deploy/prometheus/rules.yml, which Prometheus loads and promtool tests, is the chart's rule
/// group with its default values: one source. `PSK_BLESS=1` (`make rules`) rewrites the file.
#[test]
fn the_plain_prometheus_rules_file_is_the_charts_rule_group() {
    let file = chart().join("../../deploy/prometheus/rules.yml");
    let groups = rendered_rule_groups(&[]);
    if std::env::var_os("PSK_BLESS").is_some() {
        let text = format!(
            "# Generated from charts/pubsubkafka/templates/monitoring.yaml with the chart's default\n\
             # values by `make rules`; edit the chart, not this file. Tested by rules.test.yml.\n{}",
            serde_yaml::to_string(&groups).unwrap()
        );
        std::fs::write(&file, text).unwrap();
    }
    let shipped: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
    )
    .unwrap();
    assert_eq!(
        shipped, groups,
        "deploy/prometheus/rules.yml differs from the chart's PrometheusRule: run `make rules`"
    );
    // The thresholds stay values of the chart.
    let custom = rendered_rule_groups(&[
        "metrics.prometheusRule.consumerLagThreshold=250",
        "metrics.prometheusRule.processingP99Seconds=2",
    ]);
    let exprs: Vec<String> = custom["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        exprs
            .iter()
            .any(|e| e.ends_with("kafka_consumer_lag)) > 250")),
        "{exprs:?}"
    );
    assert!(
        exprs.iter().any(|e| e.ends_with("[5m]))) > 2")),
        "{exprs:?}"
    );
}

#[tokio::test]
async fn the_rendered_chart_is_accepted_by_the_api_server() {
    let stack = testenv::shared();
    let ns = testenv::unique_name("chart");
    let client = stack.kube.client().await.unwrap();
    operator::create_namespace(&client, &ns).await;
    let release = testenv::unique_name("psk");
    let rendered = helm(&[
        "template",
        &release,
        chart().to_str().unwrap(),
        "--namespace",
        &ns,
    ]);
    kubectl(
        &stack.kube,
        &["apply", "--dry-run=server", "-f", "-"],
        &rendered,
    )
    .unwrap_or_else(|e| panic!("the chart's manifests were refused: {e}"));
    let monitoring = helm(&[
        "template",
        &release,
        chart().to_str().unwrap(),
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--set",
        "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
    ]);
    assert!(monitoring.contains("KafkaConsumerLagHigh") && monitoring.contains("> 1000"));
    assert!(monitoring.contains("increase(kafka_dlq_messages_total[1m])) > 0"));
    assert!(
        monitoring.contains("kafka_processing_duration_seconds_bucket")
            && monitoring.contains("> 5")
    );
}

/// Applies the chart's RBAC for real on `api`, and returns a client with its ServiceAccount's
/// token.
async fn chart_identity(api: &KubeInfo, ns: &str, release: &str) -> kube::Client {
    let admin = api.client().await.unwrap();
    operator::create_namespace(&admin, ns).await;
    let rendered = helm(&[
        "template",
        release,
        chart().to_str().unwrap(),
        "--namespace",
        ns,
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ]);
    kubectl(api, &["apply", "-f", "-"], &rendered).unwrap_or_else(|e| panic!("{e}"));
    let token = service_account_token(&admin, ns, &format!("{release}-controller")).await;
    let kubeconfig = kube::config::Kubeconfig::read_from(&api.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    kube::Client::try_from(config).unwrap()
}

/// A token of ServiceAccount `ns/account`, as its pods get one.
async fn service_account_token(admin: &kube::Client, ns: &str, account: &str) -> String {
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), ns);
    let request = k8s_openapi::api::authentication::v1::TokenRequest {
        spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
            audiences: Some(vec!["https://kubernetes.default.svc".into()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token: k8s_openapi::api::authentication::v1::TokenRequest = accounts
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .unwrap();
    token.status.and_then(|s| s.token).unwrap()
}

#[tokio::test]
async fn the_operator_reconciles_the_dev_examples_with_only_the_charts_rbac() {
    // An API server of its own: this operator watches every namespace, as installed.
    let dir = tempfile::tempdir().unwrap();
    let api = testenv::KubeApi::start(dir.path(), testenv::Lifetime::Owned).unwrap();
    let admin = api.info.client().await.unwrap();
    operator::install_crds(&admin).await;
    let client = chart_identity(&api.info, "pubsubkafka-system", "psk").await;

    let kafka = &testenv::shared().kafka;
    // The examples' topics belong to this test on the shared Kafka; a topic left by an earlier
    // run would need `adopt` (no resource of this fresh API server manages it).
    let kafka_admin = kafka.kafka_admin();
    for topic in ["orders", "users", "orders-dlq", "users-dlq"] {
        if kafka_admin.describe_topic(topic).await.unwrap().is_some() {
            kafka_admin.delete_topic(topic).await.unwrap();
        }
    }
    let mut args = operator::args(kafka, "unused", Duration::from_secs(3));
    args.watch_namespace = None;
    // As the chart installs it: the examples' KafkaAccessPolicy makes them comply.
    args.default_access_policy = pubsubkafka_controller::tenancy::DefaultAccessPolicy::Namespaced;
    args.leader_elect = true;
    args.leader_election_namespace = "pubsubkafka-system".into();
    let _operator = Operator::start_with_client(client, args).await;

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/dev");
    let out = api
        .info
        .kubectl()
        .args(["apply", "-f"])
        .arg(&examples)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let topics: Api<KafkaTopic> = Api::namespaced(admin.clone(), "shop");
    let consumers: Api<OrderConsumer> = Api::namespaced(admin.clone(), "shop");
    eventually(
        "the dev examples Ready under the chart's RBAC",
        WAIT,
        || async {
            let t = topics
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let c = consumers
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut pending: Vec<String> = t
                .items
                .iter()
                .filter(|t| !t.is_ready())
                .map(|t| {
                    format!(
                        "{}: {:?}",
                        t.topic_name(),
                        t.status.as_ref().map(|s| &s.conditions)
                    )
                })
                .collect();
            // Reconciled: this API server runs no pod, so no consumer is Ready.
            pending.extend(c.items.iter().filter_map(|c| {
                let ready = c.status.as_ref().is_some_and(|s| {
                    pubsubkafka_controller::crd::conditions::is_reconciled(&s.conditions)
                });
                (!ready).then(|| {
                    format!(
                        "{:?}: {:?}",
                        c.metadata.name,
                        c.status.as_ref().map(|s| &s.conditions)
                    )
                })
            }));
            // Gateways: reconciled under the chart's RBAC (this API server runs no pods, so
            // they never become Ready).
            let gateways: Api<pubsubkafka_controller::crd::OrderGateway> =
                Api::namespaced(admin.clone(), "shop");
            let g = gateways
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            pending.extend(g.items.iter().filter_map(|g| {
                let reconciled = g.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == pubsubkafka_controller::crd::conditions::RECONCILED
                            && c.status == "True"
                    })
                });
                (!reconciled).then(|| {
                    format!(
                        "{:?}: {:?}",
                        g.metadata.name,
                        g.status.as_ref().map(|s| &s.conditions)
                    )
                })
            }));
            (t.items.len() == 2 && c.items.len() == 2 && g.items.len() == 2 && pending.is_empty())
                .then_some(())
                .ok_or(format!("{pending:?}"))
        },
    )
    .await;

    // The Lease names this operator as the leader.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin, "pubsubkafka-system");
    let lease = leases.get("pubsubkafka-controller").await.unwrap();
    assert!(lease.spec.unwrap().holder_identity.is_some());
}

#[tokio::test]
async fn a_standby_replica_takes_over_when_the_leader_goes() {
    let stack = testenv::shared();
    let ns = testenv::unique_name("leader");
    let client = stack.kube.client().await.unwrap();
    operator::install_crds(&client).await;
    operator::create_namespace(&client, &ns).await;
    // Two replicas campaign for one Lease.
    let replica = |identity: &str| {
        let mut args = operator::args(&stack.kafka, &ns, Duration::from_secs(3));
        args.leader_elect = true;
        args.leader_election_namespace = ns.clone();
        args.leader_election_lease = "shared".into();
        args.leader_election_identity = Some(identity.to_owned());
        args
    };
    let first = Operator::start(&stack.kube, replica("replica-a")).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    eventually("replica-a to lead", WAIT, || async {
        let lease = leases.get_opt("shared").await.map_err(|e| e.to_string())?;
        match lease.and_then(|l| l.spec?.holder_identity) {
            Some(h) if h == "replica-a" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let _second = Operator::start(&stack.kube, replica("replica-b")).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let holder = leases
        .get("shared")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(
        holder.as_deref(),
        Some("replica-a"),
        "the standby waits while the leader renews"
    );

    first.stop().await.unwrap();
    eventually(
        "replica-b to take over after the lease expires",
        Duration::from_secs(60),
        || async {
            let lease = leases.get("shared").await.map_err(|e| e.to_string())?;
            match lease.spec.and_then(|s| s.holder_identity) {
                Some(h) if h == "replica-b" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // The new leader reconciles.
    let topic = testenv::unique_name("after-failover");
    let yaml = format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {topic}\n  namespace: {ns}\nspec:\n  partitions: 1\n  replicationFactor: 1\n"
    );
    kubectl(&stack.kube, &["apply", "-f", "-"], &yaml).unwrap();
    let topics: Api<KafkaTopic> = Api::namespaced(client, &ns);
    eventually("the new leader to reconcile", WAIT, || async {
        let t = topics.get(&topic).await.map_err(|e| e.to_string())?;
        t.is_ready().then_some(()).ok_or(format!("{:?}", t.status))
    })
    .await;
}

/// `helm` with `args`, as a user runs it: (success, stdout + stderr).
fn helm_output(args: &[&str]) -> (bool, String) {
    let out = Command::new(tools::helm().expect("helm is installed by make tools"))
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("pubsubkafka-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("pubsubkafka-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("pubsubkafka-helm-data"),
        )
        .output()
        .expect("helm runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The API server serves no `monitoring.coreos.com/v1`: the README's `helm install` with the
/// Prometheus Operator's objects turned on fails before creating anything, saying why.
#[tokio::test]
async fn monitoring_objects_need_the_prometheus_operators_api() {
    let stack = testenv::shared();
    let ns = testenv::unique_name("monitoring");
    let client = stack.kube.client().await.unwrap();
    operator::create_namespace(&client, &ns).await;
    let kubeconfig = stack.kube.kubeconfig.display().to_string();
    let chart = chart().display().to_string();
    let install = |values: &str| {
        helm_output(&[
            "install",
            "psk",
            &chart,
            "--namespace",
            &ns,
            "--kubeconfig",
            &kubeconfig,
            "--dry-run=server",
            "--set",
            values,
        ])
    };
    for values in [
        "metrics.serviceMonitor.enabled=true",
        "metrics.podMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
    ] {
        let (ok, out) = install(values);
        assert!(
            !ok,
            "{values}: installed without the Prometheus Operator\n{out}"
        );
        assert!(
            out.contains("need the Prometheus Operator's CRDs (monitoring.coreos.com/v1)"),
            "{values}: {out}"
        );
        assert!(!out.contains("no matches for kind"), "failed early: {out}");
    }
    // What needs nothing installs.
    let (ok, out) = install("metrics.dashboard.enabled=true");
    assert!(ok, "{out}");
    assert!(out.contains("grafana_dashboard"), "{out}");
}

/// With `watchNamespace`, deleting that namespace deletes the operator's Role in it first; the
/// chart's small ClusterRole still lets the operator remove its finalizers, and nothing more.
#[tokio::test]
async fn watch_namespace_mode_keeps_the_rights_to_remove_finalizers() {
    let stack = testenv::shared();
    let client = stack.kube.client().await.unwrap();
    let release_ns = testenv::unique_name("psk-system");
    let watched = testenv::unique_name("shop");
    operator::create_namespace(&client, &release_ns).await;
    operator::create_namespace(&client, &watched).await;
    let release = testenv::unique_name("psk");
    let rendered = helm(&[
        "template",
        &release,
        chart().to_str().unwrap(),
        "--namespace",
        &release_ns,
        "--set",
        &format!("watchNamespace={watched}"),
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ]);
    kubectl(&stack.kube, &["apply", "-f", "-"], &rendered).unwrap_or_else(|e| panic!("{e}"));
    let account = format!("system:serviceaccount:{release_ns}:{release}-controller");
    let can = |verb: &str, resource: &str| {
        kubectl(
            &stack.kube,
            &[
                "auth", "can-i", verb, resource, "-n", &watched, "--as", &account,
            ],
            "",
        )
        .map(|out| out.trim() == "yes")
        .unwrap_or(false)
    };
    assert!(can("create", "deployments.apps"), "the Role applies first");
    // As the namespace controller would: the Role goes with the namespace's content.
    kubectl(
        &stack.kube,
        &["delete", "role,rolebinding", "--all", "-n", &watched],
        "",
    )
    .unwrap();
    for resource in [
        "orderconsumers.pubsubkafka.io",
        "ordergateways.pubsubkafka.io",
        "kafkatopics.pubsubkafka.io",
    ] {
        for verb in ["get", "list", "watch", "patch"] {
            assert!(
                can(verb, resource),
                "{verb} {resource} after the namespace's Role is gone"
            );
        }
    }
    for (verb, resource) in [
        ("list", "secrets"),
        ("create", "deployments.apps"),
        ("delete", "orderconsumers.pubsubkafka.io"),
    ] {
        assert!(!can(verb, resource), "{verb} {resource} stays namespaced");
    }
    // Cluster-wide mode needs no extra grant.
    let cluster_wide = helm(&[
        "template",
        &release,
        chart().to_str().unwrap(),
        "--show-only",
        "templates/rbac.yaml",
    ]);
    assert!(!cluster_wide.contains("-finalizers"), "{cluster_wide}");
}

/// `imagePullSecrets` reaches the operator's pod, and `workerImagePullSecrets` every worker
/// Deployment the operator creates.
#[tokio::test]
async fn image_pull_secrets_reach_the_operator_and_every_worker_pod() {
    let rendered = helm(&[
        "template",
        "x",
        chart().to_str().unwrap(),
        "--show-only",
        "templates/deployment.yaml",
        "--set",
        "imagePullSecrets[0].name=operator-registry,workerImagePullSecrets[0].name=registry-a,workerImagePullSecrets[1].name=registry-b",
    ]);
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_yaml::from_str(&rendered).unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect::<Vec<_>>(),
        ["operator-registry"]
    );
    let env = pod.containers[0].env.clone().unwrap();
    let setting = env
        .iter()
        .find(|e| e.name == "PSK_WORKER_IMAGE_PULL_SECRETS")
        .and_then(|e| e.value.clone())
        .expect("the operator is told the workers' pull secrets");
    assert_eq!(setting, "registry-a,registry-b");

    // The operator, given that setting as the chart gives it, puts them in the worker pods.
    let scenario = testenv::scenario::Scenario::with("pull", &testenv::shared().kafka, false).await;
    let mut args = operator::args(
        &testenv::shared().kafka,
        &scenario.ns,
        Duration::from_secs(3),
    );
    let parsed = pubsubkafka_controller::settings::Args::try_parse_from([
        "pubsubkafka-controller",
        "--kafka-bootstrap-servers",
        "unused:9092",
        "--worker-image-pull-secrets",
        &setting,
    ])
    .unwrap();
    args.worker_image_pull_secrets = parsed.worker_image_pull_secrets;
    let _operator = Operator::start(&scenario.kube, args).await;
    let topic = testenv::unique_name("orders");
    scenario.apply_ok(&format!(
        "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {topic}\nspec:\n  partitions: 1\n  replicationFactor: 1\n---\n\
         apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata:\n  name: store\nspec:\n  topicRef: {{name: {topic}}}\n  \
         handler:\n    http: {{url: 'http://receiver:8080/orders'}}\n"
    ));
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(scenario.client.clone(), &scenario.ns);
    let names = eventually("the worker Deployment", WAIT, || async {
        let d = deployments
            .get_opt("store-worker")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent".to_owned())?;
        Ok::<_, String>(
            d.spec
                .and_then(|s| s.template.spec)
                .and_then(|p| p.image_pull_secrets)
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>(),
        )
    })
    .await;
    assert_eq!(names, ["registry-a", "registry-b"]);
}

/// A kubeconfig for the API server of `api` that authenticates with `token`.
fn kubeconfig_with_token(api: &KubeInfo, token: &str, path: &std::path::Path) {
    let mut kubeconfig = kube::config::Kubeconfig::read_from(&api.kubeconfig).unwrap();
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.to_owned().into()),
            ..Default::default()
        });
    }
    testenv::write_private(path, &serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
}

/// `helm uninstall`'s pre-delete hook as the chart defines it: its ServiceAccount and RBAC
/// applied for real, its command (`pubsubkafka-controller cleanup`) run as the binary with that
/// account's token, after the operator reconciled consumers and topics and went away with two
/// deletions pending. Afterwards Kafka holds none of the consumers' principals or ACLs, no
/// finalizer is left, the pending deletions completed, and the topic still declared is kept.
#[tokio::test]
async fn the_uninstall_hook_leaves_no_principal_acl_or_finalizer_behind() {
    let kafka = &testenv::shared().kafka;
    let scenario = testenv::scenario::Scenario::with("uninstall", kafka, false).await;
    let admin_client = scenario.client.clone();
    let release_ns = testenv::unique_name("psk-system");
    operator::create_namespace(&admin_client, &release_ns).await;
    let release = testenv::unique_name("psk");
    let chart_path = chart().display().to_string();
    let template = |only: &str| {
        helm(&[
            "template",
            &release,
            &chart_path,
            "--namespace",
            &release_ns,
            "--set",
            &format!("watchNamespace={}", scenario.ns),
            "--show-only",
            only,
        ])
    };
    // The operator's Deployment as the chart installs it (nothing runs it here) and the hook.
    kubectl(
        &scenario.kube,
        &["apply", "-f", "-"],
        &template("templates/deployment.yaml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hook = template("templates/cleanup-hook.yaml");
    let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&hook)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect();
    for doc in &documents {
        assert_eq!(
            doc["metadata"]["annotations"]["helm.sh/hook"], "pre-delete",
            "every hook object exists only for the uninstall: {doc:?}"
        );
    }
    let job = documents
        .iter()
        .find(|d| d["kind"] == "Job")
        .expect("the hook's Job");
    let (ok, without) = helm_output(&[
        "template",
        &release,
        &chart_path,
        "--set",
        "cleanupOnUninstall=false",
    ]);
    assert!(
        ok && !without.contains("pre-delete"),
        "the hook can be turned off"
    );
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let job_args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(job_args[0], "cleanup", "{job_args:?}");
    let rights: String = documents
        .iter()
        .filter(|d| d["kind"] != "Job")
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    kubectl(&scenario.kube, &["apply", "-f", "-"], &rights).unwrap_or_else(|e| panic!("{e}"));

    // The operator reconciles two consumers and two Delete topics, then stops.
    let mut args = operator::args(kafka, &scenario.ns, Duration::from_secs(3));
    args.leader_elect = true;
    args.leader_election_namespace = release_ns.clone();
    let running = Operator::start(&scenario.kube, args).await;
    let kept = testenv::unique_name("kept");
    let doomed = testenv::unique_name("doomed");
    for topic in [&kept, &doomed] {
        scenario.apply_ok(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: {topic}\nspec:\n  partitions: 1\n  replicationFactor: 1\n  deletionPolicy: Delete\n"
        ));
    }
    for consumer in ["store", "gone"] {
        scenario.apply_ok(&format!(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\nmetadata:\n  name: {consumer}\nspec:\n  topicRef: {{name: {kept}}}\n  \
             handler:\n    http: {{url: 'http://receiver:8080/orders'}}\n"
        ));
    }
    let topics: Api<KafkaTopic> = Api::namespaced(admin_client.clone(), &scenario.ns);
    let consumers: Api<OrderConsumer> = Api::namespaced(admin_client.clone(), &scenario.ns);
    eventually("everything Ready", WAIT, || async {
        let t = topics
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let c = consumers
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let ready = t.items.iter().all(KafkaTopic::is_ready)
            && c.items.iter().all(|c| {
                // The operator's part; Ready waits for worker pods, beside the point here.
                c.status.as_ref().is_some_and(|s| {
                    pubsubkafka_controller::crd::conditions::is_reconciled(&s.conditions)
                })
            });
        (ready && t.items.len() == 2 && c.items.len() == 2)
            .then_some(())
            .ok_or("not yet".to_owned())
    })
    .await;
    running.stop().await.unwrap();
    // Deleted while no operator runs: both wait on their finalizers.
    consumers.delete("gone", &Default::default()).await.unwrap();
    topics.delete(&doomed, &Default::default()).await.unwrap();
    assert!(
        consumers
            .get("gone")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    assert!(
        topics
            .get(&doomed)
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );

    // The hook's command, as the hook's ServiceAccount.
    let dir = tempfile::tempdir().unwrap();
    let token = service_account_token(
        &admin_client,
        &release_ns,
        &format!("{release}-controller-cleanup"),
    )
    .await;
    let kubeconfig = dir.path().join("kubeconfig");
    kubeconfig_with_token(&scenario.kube, &token, &kubeconfig);
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(operator::binary())
            .args(&job_args)
            .args(testenv::worker::kafka_args(kafka))
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", &release_ns)
            .env("PSK_WATCH_NAMESPACE", &scenario.ns)
            .env("PSK_LOG_FORMAT", "text")
            .output(),
    )
    .await
    .expect("the cleanup finishes")
    .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{output}");
    assert!(
        output.contains("removed the principals, ACLs and finalizers of 2 OrderConsumers"),
        "{output}"
    );

    // The operator was scaled to zero first.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin_client.clone(), &release_ns);
    let operator_deployment = deployments
        .get(&format!("{release}-controller"))
        .await
        .unwrap();
    assert_eq!(operator_deployment.spec.unwrap().replicas, Some(0));
    // No finalizer left; the pending deletions completed.
    assert!(consumers.get_opt("gone").await.unwrap().is_none());
    assert!(topics.get_opt(&doomed).await.unwrap().is_none());
    for c in consumers.list(&Default::default()).await.unwrap().items {
        assert!(
            c.metadata.finalizers.unwrap_or_default().is_empty(),
            "{:?}",
            c.metadata.name
        );
    }
    for t in topics.list(&Default::default()).await.unwrap().items {
        assert!(
            t.metadata.finalizers.unwrap_or_default().is_empty(),
            "{:?}",
            t.metadata.name
        );
    }
    // Kafka: no principal, no ACL of either consumer; the declared topic kept, the deleted gone.
    for consumer in ["store", "gone"] {
        let user = format!("pubsubkafka.{}.{consumer}", scenario.ns);
        testenv::kafka::principal_gone(&scenario.admin, &user).await;
    }
    assert!(
        scenario
            .admin
            .describe_topic(&kept)
            .await
            .unwrap()
            .is_some()
    );
    testenv::kafka::topic_gone(&scenario.admin, &doomed).await;
    // The operator's Lease is gone with it.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin_client.clone(), &release_ns);
    assert!(
        leases
            .get_opt("pubsubkafka-controller")
            .await
            .unwrap()
            .is_none(),
        "the leader-election Lease is left behind"
    );
    for topic in [&kept, &format!("{kept}-dlq")] {
        scenario.admin.delete_topic(topic).await.unwrap();
    }
}
