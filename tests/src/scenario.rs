//! One test's world: a fresh namespace in the stack's API server, the CRDs installed, an
//! operator scoped to that namespace (optional), an admin client on Kafka, and `kubectl` as a
//! user would run it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use pubsubkafka_controller::kafka::KafkaAdmin;

use crate::operator::{self, Operator};
use crate::{KafkaInfo, KubeInfo};

pub struct Scenario {
    pub kube: KubeInfo,
    pub client: kube::Client,
    pub ns: String,
    pub admin: KafkaAdmin,
    pub operator: Option<Operator>,
}

impl Scenario {
    /// A namespace and an operator (resync 3 s) on the shared stack's Kafka.
    pub async fn new(prefix: &str) -> Self {
        Self::with(prefix, &crate::shared().kafka, true).await
    }

    /// A namespace, and an operator if `with_operator`, against `kafka`.
    pub async fn with(prefix: &str, kafka: &KafkaInfo, with_operator: bool) -> Self {
        let stack = crate::shared();
        let client = stack.kube.client().await.expect("client");
        operator::install_crds(&client).await;
        let ns = crate::unique_name(prefix);
        operator::create_namespace(&client, &ns).await;
        let operator = if with_operator {
            let args = operator::args(kafka, &ns, Duration::from_secs(3));
            Some(Operator::start(&stack.kube, args).await)
        } else {
            None
        };
        let admin = KafkaAdmin::new(
            &kafka
                .admin_connection()
                .client_config()
                .expect("admin config"),
            Duration::from_secs(10),
        )
        .expect("admin client");
        Self {
            kube: stack.kube.clone(),
            client,
            ns,
            admin,
            operator,
        }
    }

    /// `kubectl <args>` in the scenario's namespace with `stdin`: Ok(stdout) or Err(stderr).
    pub fn kubectl(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut args = args.to_vec();
        args.extend(["-n", &self.ns]);
        self.kube.kubectl_with_stdin(&args, stdin)
    }

    /// `kubectl apply -f -` of `yaml`: Ok(stdout) or Err(stderr).
    pub fn kubectl_apply(&self, yaml: &str) -> Result<String, String> {
        self.kubectl(&["apply", "-f", "-"], yaml)
    }

    /// `kubectl apply` that must succeed.
    pub fn apply_ok(&self, yaml: &str) {
        if let Err(e) = self.kubectl_apply(yaml) {
            panic!("kubectl apply failed: {e}\n{yaml}");
        }
    }
}

/// On the real node, a test's worker pods would run (or retry their image) until their
/// namespace goes: the namespace is deleted with the scenario (without waiting; finalizers of
/// an operator that stopped with the test may keep its custom resources, never its pods).
impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = self
            .kube
            .kubectl()
            .args(["delete", "namespace", &self.ns, "--wait=false"])
            .output();
    }
}

/// The condition of `type_` in `conditions`, if any.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}
