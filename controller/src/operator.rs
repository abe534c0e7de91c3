//! Starting the operator: connect to Kafka and the API server, check the CRDs, serve metrics,
//! and run every reconciler until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tracing::{error, info, warn};

use crate::context::{Backoff, Context, Settings};
use crate::crd::{KafkaAccessPolicy, KafkaTopic};
use crate::kafka::{AdminError, KafkaAdmin};
use crate::metrics::Metrics;
use crate::settings::Args;
use crate::{FIELD_MANAGER, consumer, gateway, http, leader, replay, topic};
use k8s_openapi::api::coordination::v1::Lease;

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("Kafka connection settings: {0}")]
    KafkaConfig(#[from] pubsubkafka_contract::config::ConfigError),
    #[error("Kafka admin client: {0}")]
    KafkaAdmin(#[from] AdminError),
    #[error(
        "the PubSubKafka CRDs are not installed in this cluster ({0}); install them with \
         `kubectl apply -f crds/` or `helm install pubsubkafka charts/pubsubkafka`"
    )]
    CrdsMissing(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("lost the leader-election Lease; restarting as a candidate")]
    LeadershipLost,
    #[error("reading the Kafka CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the operator until `shutdown` resolves.
pub async fn run(
    args: Args,
    client: kube::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let admin = KafkaAdmin::new(
        &args.kafka.connection().client_config()?,
        args.kafka_timeout,
    )?;
    let topics: Api<KafkaTopic> = match &args.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    check_crds(&topics).await?;
    check_crds(&Api::<KafkaAccessPolicy>::all(client.clone())).await?;

    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| StartError::Metrics {
            addr: args.metrics_addr,
            source,
        })?;
    info!(addr = %listener.local_addr().map_err(|source| StartError::Metrics { addr: args.metrics_addr, source })?, "serving /metrics, /healthz and /readyz");
    tokio::spawn(http::serve(listener, metrics.clone(), Arc::clone(&ready)));
    // Ready once the endpoints are up and the CRDs answer, leader or standby (the
    // controller-runtime convention): readiness gated on the Lease would keep the new pod of a
    // rolling update unready while the old one holds it, and a standby of `replicas: 2`
    // unready forever.
    ready.store(true, Ordering::Relaxed);
    // Every replica, leader or not, reports whether it reaches Kafka: `kafka_up` is never a
    // start-up 0 nor a standby's stale value, so `min(pubsubkafka_controller_kafka_up) == 0`
    // alerts only on a real outage. Reconciles update it between probes.
    let _probe = AbortOnDrop(tokio::spawn(probe_kafka(admin.clone(), metrics.clone())));

    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let kafka_ca_pem = match &args.kafka.kafka_ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| StartError::CaFile {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let selector = args.watch_selector.as_deref();
    let (topic_controller, store) = topic::controller(topics, selector);
    let (consumer_controller, consumers) =
        consumer::controller(&client, args.watch_namespace.as_deref(), selector);
    let (gateway_controller, gateways) =
        gateway::controller(&client, args.watch_namespace.as_deref(), selector);
    let replay_controller = replay::controller(&client, args.watch_namespace.as_deref(), selector);
    // KafkaAccessPolicies and Namespaces are cluster-scoped: watched whole, whatever the
    // operator's namespace. A policy change re-checks every resource at once.
    let (policies, policy_writer) = reflector::store::<KafkaAccessPolicy>();
    let (namespaces, namespace_writer) = reflector::store::<Namespace>();
    let (topic_trigger, topic_recheck) = futures::channel::mpsc::unbounded::<()>();
    let (consumer_trigger, consumer_recheck) = futures::channel::mpsc::unbounded::<()>();
    let policy_stream = reflector(
        policy_writer,
        watcher(
            Api::<KafkaAccessPolicy>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff(),
    )
    .touched_objects()
    .for_each(move |event| {
        if event.is_ok() {
            let _ = topic_trigger.unbounded_send(());
            let _ = consumer_trigger.unbounded_send(());
        }
        futures::future::ready(())
    });
    let namespace_stream = reflector(
        namespace_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff(),
    )
    .for_each(|_| futures::future::ready(()));
    let _policy_watch = AbortOnDrop(tokio::spawn(policy_stream));
    let _namespace_watch = AbortOnDrop(tokio::spawn(namespace_stream));
    let topic_controller = topic_controller.reconcile_all_on(topic_recheck);
    let consumer_controller = consumer_controller.reconcile_all_on(consumer_recheck);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        admin,
        metrics,
        settings: Settings {
            resync: args.resync_interval,
            worker_image: args.worker_image.clone(),
            worker_image_pull_secrets: args
                .worker_image_pull_secrets
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            worker_bootstrap_servers: args
                .worker_bootstrap_servers
                .clone()
                .unwrap_or_else(|| args.kafka.kafka_bootstrap_servers.clone()),
            worker_security_protocol: args.kafka.kafka_security_protocol,
            kafka_ca_pem,
            worker_otlp_endpoint: args
                .worker_otlp_endpoint
                .clone()
                .or_else(|| args.trace.otlp_endpoint.clone())
                .filter(|e| !e.trim().is_empty()),
            default_access_policy: args.default_access_policy,
        },
        backoff: Backoff::default(),
        topics: store,
        consumers,
        gateways,
        policies,
        namespaces,
        superseded: Default::default(),
        recommendations: Default::default(),
        applied: Default::default(),
    });
    let shutdown = shutdown.shared();
    // With leader election, wait for the Lease (or shutdown), and stop when it is lost.
    let leadership = if args.leader_elect {
        let election = leader::Election {
            namespace: args.leader_election_namespace.clone(),
            name: args.leader_election_lease.clone(),
            identity: args
                .leader_election_identity
                .clone()
                .unwrap_or_else(leader::Election::identity),
            duration: leader::LEASE_DURATION,
            renew: leader::LEASE_RENEW,
        };
        let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &election.namespace);
        info!(lease = %election.name, identity = %election.identity, "waiting to become the leader");
        tokio::select! {
            _ = leader::acquire(&leases, &election) => {}
            _ = shutdown.clone() => return Ok(()),
        }
        Some((leases, election))
    } else {
        None
    };
    let lost = Arc::new(AtomicBool::new(false));
    let stop = {
        let shutdown = shutdown.clone();
        let lost = Arc::clone(&lost);
        let leadership = leadership.clone();
        async move {
            match leadership {
                Some((leases, election)) => tokio::select! {
                    _ = shutdown => {}
                    _ = leader::hold(&leases, &election) => lost.store(true, Ordering::Relaxed),
                },
                None => shutdown.await,
            }
        }
        .shared()
    };
    info!(
        resync = ?args.resync_interval,
        namespace = ?args.watch_namespace,
        selector = ?args.watch_selector,
        default_access_policy = args.default_access_policy.as_str(),
        "operator started"
    );
    let reconcilers = async {
        tokio::join!(
            topic::run(Arc::clone(&ctx), topic_controller, stop.clone()),
            consumer::run(Arc::clone(&ctx), consumer_controller, stop.clone()),
            gateway::run(Arc::clone(&ctx), gateway_controller, stop.clone()),
            replay::run(ctx, replay_controller, stop.clone()),
        )
    };
    // Once told to stop, the passes in flight get DRAIN_TIMEOUT to finish; then they are
    // dropped, as a kill would (every step is safe to interrupt), so a slow Kafka call never
    // keeps the successor waiting for the Lease.
    let overdue = async {
        stop.clone().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        _ = reconcilers => {}
        _ = overdue => warn!(
            timeout = ?DRAIN_TIMEOUT,
            "reconciles still running after the shutdown's grace; stopping them"
        ),
    }
    if lost.load(Ordering::Relaxed) {
        info!("operator stopped");
        return Err(StartError::LeadershipLost);
    }
    // A clean shutdown (SIGTERM): the reconcilers have finished their passes; hand the Lease
    // over now rather than leave the successor waiting for it to expire.
    if let Some((leases, election)) = &leadership {
        match tokio::time::timeout(RELEASE_TIMEOUT, leader::release(leases, election)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "could not release the Lease; it expires on its own"),
            Err(_) => warn!("releasing the Lease timed out; it expires on its own"),
        }
    }
    info!("operator stopped");
    Ok(())
}

/// How long a stopping operator lets its reconciles in flight finish: with [`RELEASE_TIMEOUT`],
/// well within a pod's default 30 s termination grace.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a stopping operator tries to release its Lease.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often Kafka's reachability is probed for the `kafka_up` metric between reconciles.
const KAFKA_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Stops a background task when the operator's run ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn probe_kafka(admin: KafkaAdmin, metrics: Metrics) {
    loop {
        metrics.set_kafka_up(admin.reachable().await);
        tokio::time::sleep(KAFKA_PROBE_INTERVAL).await;
    }
}

async fn check_crds<K>(api: &Api<K>) -> Result<(), StartError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let crd = format!("{}.{}", K::plural(&()), K::group(&()));
            error!(%crd, "CRD missing");
            Err(StartError::CrdsMissing(format!("{crd} is not served")))
        }
        Err(e) => Err(e.into()),
    }
}
