//! The Kafka admin adapter: every cluster operation the reconcilers need, as async methods with
//! owned Rust inputs and outputs.
//!
//! rdkafka's `AdminClient` lacks ACLs, incremental config changes, SCRAM credentials, topic ids
//! and group offsets, and its topic operations drop the broker's error message. This module calls
//! librdkafka's admin API directly on the `AdminClient`'s own handle (so connection, TLS and SASL
//! are shared) with a private result queue per call. Each call runs on a blocking thread: it
//! builds the native request objects, enqueues the operation, polls its queue until the result
//! event arrives, copies the result out, and frees every native object before returning.
//!
//! The raw librdkafka calls are in [`native`]; this module is safe code over its API.

mod batch;
mod native;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use batch::Batcher;
use native::AdminOp;

/// Failures of an admin operation, split by what a caller can do about them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// The cluster could not be reached or did not answer in time: retry later.
    #[error("Kafka is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the request; `message` is the broker's own explanation.
    #[error("{code:?}: {message}")]
    Rejected {
        code: RDKafkaErrorCode,
        message: String,
    },
    /// The request could not even be built (an argument librdkafka refused).
    #[error("invalid admin request: {0}")]
    InvalidRequest(String),
    /// The operator's own Kafka principal lacks the ACL for `operation` on `resource`.
    #[error(
        "the operator's Kafka principal lacks {operation} on {resource} (grant it the ACLs the \
         README lists under \"Kafka permissions\"): {detail}"
    )]
    NotAuthorized {
        /// Kafka's ACL operation, as `kafka-acls.sh --operation` names it.
        operation: &'static str,
        /// `topic <name>`, `group <name>` or `the cluster`.
        resource: String,
        detail: String,
    },
}

/// Broker error codes that mean "your principal has no ACL for this".
fn is_authorization(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::DelegationTokenAuthorizationFailed
    )
}

const CLUSTER: &str = "the cluster";

impl AdminError {
    fn from_code(code: RDKafkaErrorCode, message: String) -> Self {
        use RDKafkaErrorCode as C;
        match code {
            C::OperationTimedOut
            | C::RequestTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::BrokerNotAvailable
            | C::NotController
            | C::LeaderNotAvailable
            | C::NetworkException
            | C::Resolve
            | C::Authentication
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable => Self::Unavailable(format!("{code:?}: {message}")),
            _ => Self::Rejected { code, message },
        }
    }

    /// The broker error code, when the broker answered.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            Self::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Names what the operator was refused when the broker refused for lack of an ACL, so the
    /// condition says which ACL to grant.
    fn needing(self, operation: &'static str, resource: impl FnOnce() -> String) -> Self {
        match self {
            Self::Rejected { code, message } if is_authorization(code) => Self::NotAuthorized {
                operation,
                resource: resource(),
                detail: if message.is_empty() {
                    format!("{code:?}")
                } else {
                    format!("{code:?}: {message}")
                },
            },
            other => other,
        }
    }
}

fn topic_resource(topic: &str) -> impl FnOnce() -> String + '_ {
    move || format!("topic {topic}")
}

fn cluster() -> String {
    CLUSTER.to_owned()
}

pub type Result<T, E = AdminError> = std::result::Result<T, E>;

/// A topic as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    /// Kafka's topic id, base64 as Kafka's own tools print it.
    pub id: String,
    /// Replica broker ids per partition, indexed by partition id.
    pub partitions: Vec<Vec<i32>>,
}

impl TopicDescription {
    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    /// The replication factor (the smallest partition's replica count).
    pub fn replication_factor(&self) -> i32 {
        self.partitions
            .iter()
            .map(|r| r.len() as i32)
            .min()
            .unwrap_or(0)
    }
}

/// One topic config entry as described by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub value: Option<String>,
    /// Set on the topic itself (not inherited from the broker or a default).
    pub dynamic: bool,
    pub sensitive: bool,
    pub read_only: bool,
}

/// Kinds of ACL resources the operator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    Topic,
    Group,
    Cluster,
}

/// ACL operations, as Kafka names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AclOperation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

/// An ALLOW ACL on a literal resource name, for a principal from any host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acl {
    pub resource: ResourceKind,
    pub name: String,
    pub principal: String,
    pub operation: AclOperation,
}

/// Which ACLs to describe or delete: `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFilter {
    pub resource: Option<(ResourceKind, String)>,
    pub principal: Option<String>,
    pub operation: Option<AclOperation>,
}

impl From<&Acl> for AclFilter {
    fn from(acl: &Acl) -> Self {
        Self {
            resource: Some((acl.resource, acl.name.clone())),
            principal: Some(acl.principal.clone()),
            operation: Some(acl.operation),
        }
    }
}

/// The admin adapter. Cheap to clone; one connection underneath.
#[derive(Clone)]
pub struct KafkaAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
    config: ClientConfig,
    timeout: Duration,
    batches: Arc<Batches>,
}

/// The requests that concurrent reconciles share ([`batch`]): the ones every KafkaTopic pass
/// makes.
struct Batches {
    describe_topics: Batcher<CString, Option<TopicDescription>>,
    create_topics: Batcher<NewTopic, ()>,
    describe_configs: Batcher<CString, TopicConfig>,
}

impl Batches {
    fn new(client: &Arc<AdminClient<DefaultClientContext>>, timeout: Duration) -> Self {
        /// A batch runner: `op` on a session of `client`.
        fn runner<I: 'static, O: 'static>(
            client: &Arc<AdminClient<DefaultClientContext>>,
            timeout: Duration,
            op: fn(&Session<'_>, Vec<I>) -> Vec<Result<O>>,
        ) -> batch::Run<I, O> {
            let client = Arc::clone(client);
            Box::new(move |items| {
                let session = Session {
                    client: native::Client::of(client.inner()),
                    timeout,
                };
                op(&session, items)
            })
        }
        fn name(topic: &CString) -> &[u8] {
            topic.as_bytes()
        }
        Self {
            describe_topics: Batcher::new(
                runner(client, timeout, |s, topics| s.describe_topics(&topics)),
                name,
            ),
            create_topics: Batcher::new(
                runner(client, timeout, |s, topics| s.create_topics(topics)),
                |topic: &NewTopic| topic.name.as_bytes(),
            ),
            describe_configs: Batcher::new(
                runner(client, timeout, |s, topics| {
                    s.describe_topic_configs(&topics)
                }),
                name,
            ),
        }
    }
}

impl std::fmt::Debug for KafkaAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAdmin")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaAdmin {
    /// Connects with `config` (bootstrap servers, security settings). Every operation gives up
    /// after `timeout` with [`AdminError::Unavailable`].
    pub fn new(config: &ClientConfig, timeout: Duration) -> Result<Self> {
        let client = config
            .clone()
            .create::<AdminClient<DefaultClientContext>>()
            .map_err(|e| AdminError::InvalidRequest(format!("creating the admin client: {e}")))?;
        let client = Arc::new(client);
        Ok(Self {
            batches: Arc::new(Batches::new(&client, timeout)),
            client,
            config: config.clone(),
            timeout,
        })
    }

    /// Runs `f` with the client's native handle on a blocking thread.
    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Session<'_>) -> Result<T> + Send + 'static,
    {
        let client = Arc::clone(&self.client);
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let session = Session {
                client: native::Client::of(client.inner()),
                timeout,
            };
            f(&session)
        })
        .await
        .map_err(|e| AdminError::InvalidRequest(format!("admin task failed: {e}")))?
    }

    /// True when a broker answers a metadata request within the timeout (the `kafka_up` probe).
    pub async fn reachable(&self) -> bool {
        let client = Arc::clone(&self.client);
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, timeout).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Describes `topic`, or `None` when it does not exist.
    pub async fn describe_topic(&self, topic: &str) -> Result<Option<TopicDescription>> {
        self.batches
            .describe_topics
            .call(cstring(topic)?)
            .await
            .map_err(|e| e.needing("DESCRIBE", topic_resource(topic)))
    }

    /// Describes `topic` until it shows at least `partitions` partitions. A broker answers from
    /// its own copy of the cluster's metadata, which can trail a change by a second or more.
    /// After 10 s, the last description (`None` if the topic never showed).
    pub async fn describe_grown(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<Option<TopicDescription>> {
        let mut last = None;
        for _ in 0..40 {
            if let Some(d) = self.describe_topic(topic).await? {
                if d.partition_count() >= partitions {
                    return Ok(Some(d));
                }
                last = Some(d);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(last)
    }

    /// Creates a topic with `configs`; the broker's message explains a refusal.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<()> {
        let new_topic = NewTopic {
            name: cstring(topic)?,
            partitions,
            replication_factor,
            configs: cstring_pairs(configs)?,
        };
        self.batches
            .create_topics
            .call(new_topic)
            .await
            .map_err(|e| e.needing("CREATE", topic_resource(topic)))
    }

    /// Grows `topic` to `total` partitions.
    pub async fn create_partitions(&self, topic: &str, total: i32) -> Result<()> {
        let name = cstring(topic)?;
        self.call(move |n| n.create_partitions(&name, total))
            .await
            .map_err(|e| e.needing("ALTER", topic_resource(topic)))
    }

    /// Grows `topic` to at least `total` partitions; false when it already had them. Kafka
    /// refuses to grow a topic to the partitions it has. That refusal is what a caller gets when
    /// an earlier change of its own had not shown in the metadata it planned from yet, so it is
    /// not an error once the topic shows them.
    pub async fn grow_partitions(&self, topic: &str, total: i32) -> Result<bool> {
        match self.create_partitions(topic, total).await {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(RDKafkaErrorCode::InvalidPartitions) => {
                match self.describe_grown(topic, total).await? {
                    Some(d) if d.partition_count() >= total => Ok(false),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes `topic`; a topic that is already gone is not an error.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let name = cstring(topic)?;
        match self.call(move |n| n.delete_topic(&name)).await {
            Err(e) if e.code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(()),
            other => other.map_err(|e| e.needing("DELETE", topic_resource(topic))),
        }
    }

    /// Every config entry of `topic`, by name.
    pub async fn describe_topic_config(
        &self,
        topic: &str,
    ) -> Result<BTreeMap<String, ConfigEntry>> {
        self.batches
            .describe_configs
            .call(cstring(topic)?)
            .await
            .map_err(|e| e.needing("DESCRIBE_CONFIGS", topic_resource(topic)))
    }

    /// Sets `set` and removes `delete` on `topic` in one incremental request.
    pub async fn alter_topic_config(
        &self,
        topic: &str,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<()> {
        let name = cstring(topic)?;
        let set = cstring_pairs(set)?;
        let delete = delete
            .iter()
            .map(|k| cstring(k))
            .collect::<Result<Vec<_>>>()?;
        self.call(move |n| n.alter_topic_config(&name, &set, &delete))
            .await
            .map_err(|e| e.needing("ALTER_CONFIGS", topic_resource(topic)))
    }

    /// Creates ALLOW ACLs (creating an existing ACL is a no-op in Kafka).
    pub async fn create_acls(&self, acls: &[Acl]) -> Result<()> {
        if acls.is_empty() {
            return Ok(());
        }
        let acls = acls.to_vec();
        self.call(move |n| n.create_acls(&acls))
            .await
            .map_err(|e| e.needing("ALTER", cluster))
    }

    /// ALLOW ACLs on literal resources matching `filter`.
    pub async fn describe_acls(&self, filter: &AclFilter) -> Result<Vec<Acl>> {
        let filter = filter.clone();
        self.call(move |n| n.describe_acls(&filter))
            .await
            .map_err(|e| e.needing("DESCRIBE", cluster))
    }

    /// Deletes the ALLOW ACLs matching any of `filters`; returns how many went.
    pub async fn delete_acls(&self, filters: &[AclFilter]) -> Result<usize> {
        if filters.is_empty() {
            return Ok(0);
        }
        let filters = filters.to_vec();
        self.call(move |n| n.delete_acls(&filters))
            .await
            .map_err(|e| e.needing("ALTER", cluster))
    }

    /// Creates or replaces `user`'s SCRAM-SHA-512 credential (random salt, 8192 iterations).
    pub async fn upsert_scram_user(&self, user: &str, password: &str) -> Result<()> {
        let user = cstring(user)?;
        let password = password.as_bytes().to_vec();
        self.call(move |n| n.alter_scram(&user, Some(&password)))
            .await
            .map_err(|e| e.needing("ALTER", cluster))
    }

    /// True when `user` has a SCRAM credential.
    pub async fn scram_user_exists(&self, user: &str) -> Result<bool> {
        let user = cstring(user)?;
        self.call(move |n| n.scram_user_exists(&user))
            .await
            .map_err(|e| e.needing("DESCRIBE", cluster))
    }

    /// Removes `user`'s SCRAM-SHA-512 credential; an unknown user is not an error.
    pub async fn delete_scram_user(&self, user: &str) -> Result<()> {
        let user = cstring(user)?;
        match self.call(move |n| n.alter_scram(&user, None)).await {
            Err(e) if e.code() == Some(RDKafkaErrorCode::ResourceNotFound) => Ok(()),
            other => other.map_err(|e| e.needing("ALTER", cluster)),
        }
    }

    /// The offsets `group` committed on `topic`'s `partitions` (`None`: nothing committed).
    ///
    /// Asked through a consumer of that group that never subscribes: librdkafka's
    /// ListConsumerGroupOffsets crashes an admin client when the group coordinator moves
    /// (it answers NOT_COORDINATOR while a fresh cluster loads its offsets topic).
    ///
    /// A principal without DESCRIBE on the group is refused at FindCoordinator; librdkafka
    /// retries that internally, reports it only as an error event on the consumer's queue, and
    /// the request itself ends in `OperationTimedOut`. So the request is made in short attempts
    /// and the queue is served between them: the refusal becomes [`AdminError::NotAuthorized`]
    /// naming the group, not an outage.
    pub async fn group_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<BTreeMap<i32, Option<i64>>> {
        let mut config = self.config.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let topic = topic.to_owned();
        let group = group.to_owned();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config
                .create()
                .map_err(|e| AdminError::InvalidRequest(format!("creating a consumer: {e}")))?;
            let mut wanted = TopicPartitionList::new();
            for partition in 0..partitions {
                wanted.add_partition(&topic, partition);
            }
            let deadline = std::time::Instant::now() + timeout;
            let committed = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let attempt = left.min(GROUP_ATTEMPT).max(GROUP_ATTEMPT_MIN);
                let result = consumer.committed_offsets(wanted.clone(), attempt);
                if let Some((code, refused)) = refusal(&consumer, &group, &topic) {
                    return Err(AdminError::Rejected {
                        code,
                        message: format!("fetching committed offsets: {code}"),
                    }
                    .needing("DESCRIBE", || refused));
                }
                match result {
                    Ok(committed) => break committed,
                    // The coordinator answers NOT_COORDINATOR while it moves or loads, and an
                    // attempt may end before it answers at all: ask again until the deadline.
                    Err(e)
                        if std::time::Instant::now() < deadline
                            && e.rdkafka_error_code().is_some_and(|c| {
                                matches!(
                                    c,
                                    RDKafkaErrorCode::NotCoordinator
                                        | RDKafkaErrorCode::CoordinatorLoadInProgress
                                        | RDKafkaErrorCode::CoordinatorNotAvailable
                                        | RDKafkaErrorCode::OperationTimedOut
                                )
                            }) =>
                    {
                        std::thread::sleep(GROUP_RETRY_PAUSE);
                    }
                    Err(e) => {
                        return Err(match e.rdkafka_error_code() {
                            Some(code) => AdminError::from_code(
                                code,
                                format!("fetching committed offsets: {e}"),
                            )
                            .needing("DESCRIBE", || format!("group {group}")),
                            None => AdminError::Unavailable(e.to_string()),
                        });
                    }
                }
            };
            Ok(committed
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => (e.partition(), Some(o)),
                    _ => (e.partition(), None),
                })
                .collect())
        })
        .await
        .map_err(|e| AdminError::InvalidRequest(format!("offset task failed: {e}")))?
    }

    /// The client id of each member of consumer group `group` (none when it has no members or
    /// does not exist), from the group coordinator.
    ///
    /// Asked with DescribeConsumerGroups: librdkafka sends ConsumerGroupDescribe, which knows
    /// groups of the consumer protocol (KIP-848, `group.protocol=consumer`), and falls back to
    /// the classic DescribeGroups for classic groups. The classic request alone answers a
    /// consumer-protocol group as Dead with no members.
    ///
    /// Kafka describes a consumer-protocol group only to a principal that may also DESCRIBE
    /// every topic the group subscribes to; it refuses with TOPIC_AUTHORIZATION_FAILED
    /// otherwise.
    pub async fn group_client_ids(&self, group: &str) -> Result<Vec<String>> {
        let name = cstring(group)?;
        self.call(move |n| n.group_client_ids(&name))
            .await
            .map_err(|e| match e.code() {
                Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {
                    e.needing("DESCRIBE", || format!("the topics of group {group}"))
                }
                _ => e.needing("DESCRIBE", || format!("group {group}")),
            })
    }

    /// The high watermark (next offset) of each of `topic`'s `partitions`.
    pub async fn end_offsets(&self, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i64>> {
        let name = cstring(topic)?;
        self.call(move |n| n.end_offsets(&name, partitions))
            .await
            .map_err(|e| e.needing("DESCRIBE", topic_resource(topic)))
    }
}

/// One attempt of an offset fetch; the queue is served for refusals between attempts.
const GROUP_ATTEMPT: Duration = Duration::from_secs(1);
/// The shortest attempt, when the deadline is near.
const GROUP_ATTEMPT_MIN: Duration = Duration::from_millis(100);
/// The pause before asking a coordinator that is moving or loading again.
const GROUP_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// An authorization refusal the consumer's queue holds, with the resource it concerns.
fn refusal(
    consumer: &BaseConsumer,
    group: &str,
    topic: &str,
) -> Option<(RDKafkaErrorCode, String)> {
    let mut found = None;
    // Errors arrive as events on the consumer's queue; nothing is subscribed, so polling only
    // serves them.
    while let Some(event) = consumer.poll(Duration::ZERO) {
        let Err(e) = event else { continue };
        match e.rdkafka_error_code() {
            Some(code @ RDKafkaErrorCode::GroupAuthorizationFailed) => {
                found = Some((code, format!("group {group}")));
            }
            Some(code @ RDKafkaErrorCode::TopicAuthorizationFailed) => {
                found = found.or(Some((code, format!("topic {topic}"))));
            }
            _ => {}
        }
    }
    found
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| AdminError::InvalidRequest(format!("{s:?} contains a NUL byte")))
}

fn cstring_pairs(map: &BTreeMap<String, String>) -> Result<Vec<(CString, CString)>> {
    map.iter()
        .map(|(k, v)| Ok((cstring(k)?, cstring(v)?)))
        .collect()
}

/// The client handle and settings a blocking admin call works with.
struct Session<'a> {
    client: native::Client<'a>,
    timeout: Duration,
}

impl Session<'_> {
    fn request(&self, op: AdminOp) -> Result<native::Request<'_>> {
        self.client.request(op, self.timeout)
    }

    /// Describes `topics` in one request; answers each, in order (`None`: no such topic).
    fn describe_topics(&self, topics: &[CString]) -> Vec<Result<Option<TopicDescription>>> {
        let names: Vec<&CStr> = topics.iter().map(CString::as_c_str).collect();
        let described = (|| {
            let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_ANY)?;
            request.describe_topics(native::TopicCollection::of_names(&names)?);
            let event = request.wait()?;
            let mut by_name: HashMap<String, Result<Option<TopicDescription>>> = HashMap::new();
            for desc in event.describe_topics_result() {
                let answer = match desc.error() {
                    Some(err) if err.code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                        Ok(None)
                    }
                    Some(err) => Err(err),
                    None => Ok(Some(description(desc))),
                };
                by_name.insert(desc.name(), answer);
            }
            Ok(by_name)
        })();
        answer_each(topics, described, Ok(None))
    }

    /// Creates `topics` in one request; answers each, in order. A topic librdkafka refuses to
    /// build (a partition count out of its range) is answered alone; the others still go.
    fn create_topics(&self, topics: Vec<NewTopic>) -> Vec<Result<()>> {
        let mut refused = HashMap::new();
        let mut natives = Vec::new();
        for t in &topics {
            match native::NewTopic::new(&t.name, t.partitions, t.replication_factor) {
                Ok(mut native) => {
                    for (key, value) in &t.configs {
                        native.set_config(key, value);
                    }
                    natives.push(native);
                }
                Err(e) => {
                    refused.insert(t.name.to_string_lossy().into_owned(), Err(e));
                }
            }
        }
        let names: Vec<CString> = topics.into_iter().map(|t| t.name).collect();
        let created = (|| {
            if natives.is_empty() {
                return Ok(refused);
            }
            let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_CREATETOPICS)?;
            request.create_topics(natives);
            let event = request.wait()?;
            let mut answers = refused;
            answers.extend(
                event
                    .create_topics_result()
                    .into_iter()
                    .map(|r| (r.name(), r.error().map_or(Ok(()), Err))),
            );
            Ok(answers)
        })();
        answer_each(&names, created, Err(unanswered()))
    }

    fn create_partitions(&self, topic: &CStr, total: i32) -> Result<()> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_CREATEPARTITIONS)?;
        let partitions = native::NewPartitions::new(topic, total.max(0) as usize)?;
        request.create_partitions(vec![partitions]);
        let event = request.wait()?;
        first_topic_result(&event.create_partitions_result())
    }

    fn delete_topic(&self, topic: &CStr) -> Result<()> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_DELETETOPICS)?;
        request.delete_topics(vec![native::DeleteTopic::new(topic)?]);
        let event = request.wait()?;
        first_topic_result(&event.delete_topics_result())
    }

    /// Every config entry of each of `topics`, by name, in one request; answers each, in
    /// order.
    fn describe_topic_configs(&self, topics: &[CString]) -> Vec<Result<TopicConfig>> {
        let described = (|| {
            let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS)?;
            let resources = topics
                .iter()
                .map(|t| native::ConfigResource::topic(t))
                .collect::<Result<Vec<_>>>()?;
            request.describe_configs(resources);
            let event = request.wait()?;
            Ok(event
                .describe_configs_result()
                .into_iter()
                .map(|resource| {
                    let answer = match resource.error() {
                        Some(err) => Err(err),
                        None => Ok(resource
                            .entries()
                            .into_iter()
                            .map(|entry| {
                                (
                                    entry.name(),
                                    ConfigEntry {
                                        value: entry.value(),
                                        dynamic: entry.is_topic_config(),
                                        sensitive: entry.is_sensitive(),
                                        read_only: entry.is_read_only(),
                                    },
                                )
                            })
                            .collect()),
                    };
                    (resource.name(), answer)
                })
                .collect::<HashMap<_, _>>())
        })();
        answer_each(topics, described, Ok(BTreeMap::new()))
    }

    fn alter_topic_config(
        &self,
        topic: &CStr,
        set: &[(CString, CString)],
        delete: &[CString],
    ) -> Result<()> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS)?;
        let mut resource = native::ConfigResource::topic(topic)?;
        let changes = set
            .iter()
            .map(|(key, value)| (key, Some(value.as_c_str())))
            .chain(delete.iter().map(|key| (key, None)));
        for (key, value) in changes {
            resource.add_incremental(key, value)?;
        }
        request.incremental_alter_configs(vec![resource]);
        let event = request.wait()?;
        event
            .incremental_alter_configs_result()
            .first()
            .and_then(|r| r.error())
            .map_or(Ok(()), Err)
    }

    fn create_acls(&self, acls: &[Acl]) -> Result<()> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_CREATEACLS)?;
        let bindings = acls
            .iter()
            .map(native::AclBinding::allow)
            .collect::<Result<Vec<_>>>()?;
        request.create_acls(bindings);
        let event = request.wait()?;
        first_error(event.create_acls_result().iter().map(|r| r.error()))
    }

    fn describe_acls(&self, filter: &AclFilter) -> Result<Vec<Acl>> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_DESCRIBEACLS)?;
        request.describe_acls(native::AclBinding::filter(filter)?);
        let event = request.wait()?;
        Ok(event
            .describe_acls_result()
            .iter()
            .filter_map(|b| b.acl())
            .collect())
    }

    fn delete_acls(&self, filters: &[AclFilter]) -> Result<usize> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_DELETEACLS)?;
        let natives = filters
            .iter()
            .map(native::AclBinding::filter)
            .collect::<Result<Vec<_>>>()?;
        request.delete_acls(natives);
        let event = request.wait()?;
        let mut deleted = 0;
        for response in event.delete_acls_result() {
            if let Some(err) = response.error() {
                return Err(err);
            }
            deleted += response.matched();
        }
        Ok(deleted)
    }

    /// Upserts (`Some(password)`) or deletes (`None`) a SCRAM-SHA-512 credential.
    fn alter_scram(&self, user: &CStr, password: Option<&[u8]>) -> Result<()> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS)?;
        let alteration = match password {
            Some(password) => native::ScramAlteration::upsert(user, password)?,
            None => native::ScramAlteration::delete(user)?,
        };
        request.alter_user_scram_credentials(vec![alteration]);
        let event = request.wait()?;
        first_error(
            event
                .alter_user_scram_credentials_result()
                .iter()
                .map(|r| r.error()),
        )
    }

    fn scram_user_exists(&self, user: &CStr) -> Result<bool> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_DESCRIBEUSERSCRAMCREDENTIALS)?;
        request.describe_user_scram_credentials(&[user]);
        let event = request.wait()?;
        let descriptions = event.describe_user_scram_credentials_result();
        let Some(description) = descriptions.first() else {
            return Ok(false);
        };
        match description.error() {
            Some(e) if e.code() == Some(RDKafkaErrorCode::ResourceNotFound) => Ok(false),
            Some(e) => Err(e),
            None => Ok(description.credential_count() > 0),
        }
    }

    /// The client id of each member of `group`; none when it does not exist or is dead (a
    /// dead group has no members).
    fn group_client_ids(&self, group: &CStr) -> Result<Vec<String>> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS)?;
        request.describe_consumer_groups(&[group]);
        let event = request.wait()?;
        // Rotation retires a credential when no member uses it: an answer without the group is
        // not "no members".
        let answer = event.describe_consumer_groups_result();
        let Some(described) = answer
            .into_iter()
            .find(|g| g.name().as_bytes() == group.to_bytes())
        else {
            return Err(AdminError::Unavailable(
                "Kafka's answer named no result for the group".into(),
            ));
        };
        match described.error() {
            Some(e) if e.code() == Some(RDKafkaErrorCode::GroupIdNotFound) => Ok(Vec::new()),
            Some(e) => Err(e),
            None => Ok(described
                .members()
                .into_iter()
                .map(|m| m.client_id())
                .collect()),
        }
    }

    fn end_offsets(&self, topic: &CStr, partitions: i32) -> Result<BTreeMap<i32, i64>> {
        let request = self.request(AdminOp::RD_KAFKA_ADMIN_OP_ANY)?;
        request.list_offsets(native::PartitionList::latest(topic, partitions)?);
        let event = request.wait()?;
        let mut out = BTreeMap::new();
        for info in event.list_offsets_result() {
            if let Some(code) = info.error_code() {
                return Err(AdminError::from_code(
                    code,
                    format!("listing the end offset of partition {}", info.partition()),
                ));
            }
            out.insert(info.partition(), info.offset());
        }
        Ok(out)
    }
}

/// A topic's config entries, by name.
type TopicConfig = BTreeMap<String, ConfigEntry>;

/// A topic to create.
#[derive(Debug, Clone)]
struct NewTopic {
    name: CString,
    partitions: i32,
    replication_factor: i32,
    configs: Vec<(CString, CString)>,
}

fn description(desc: &native::TopicInfo) -> TopicDescription {
    let infos = desc.partitions();
    let mut partitions = vec![Vec::new(); infos.len()];
    for info in infos {
        if let Some(slot) = partitions.get_mut(info.partition() as usize) {
            *slot = info.replicas();
        }
    }
    TopicDescription {
        name: desc.name(),
        id: desc.id(),
        partitions,
    }
}

fn unanswered() -> AdminError {
    AdminError::Unavailable("Kafka's answer named no result for this topic".into())
}

/// Each of `names`' answer from a request's answers by name: the request's error for all when
/// it failed as a whole, `missing` for a name the answer leaves out.
fn answer_each<T: Clone>(
    names: &[CString],
    answers: Result<HashMap<String, Result<T>>>,
    missing: Result<T>,
) -> Vec<Result<T>> {
    match answers {
        Err(e) => names.iter().map(|_| Err(e.clone())).collect(),
        Ok(mut by_name) => names
            .iter()
            .map(|n| {
                by_name
                    .remove(n.to_string_lossy().as_ref())
                    .unwrap_or_else(|| missing.clone())
            })
            .collect(),
    }
}

/// The outcome of a single-topic request (create, delete, create partitions).
fn first_topic_result(results: &[&native::TopicResult]) -> Result<()> {
    results.first().and_then(|r| r.error()).map_or(Ok(()), Err)
}

/// The first error of a result's parts, in order.
fn first_error(errors: impl IntoIterator<Item = Option<AdminError>>) -> Result<()> {
    errors.into_iter().flatten().next().map_or(Ok(()), Err)
}
