//! The Kafka admin adapter: every cluster operation the reconcilers need, as async methods with
//! owned Rust inputs and outputs.
//!
//! rdkafka's `AdminClient` lacks ACLs, incremental config changes, SCRAM credentials, topic ids
//! and group offsets, and its topic operations drop the broker's error message. This module calls
//! librdkafka's admin API directly on the `AdminClient`'s own handle (so connection, TLS and SASL
//! are shared) with a private result queue per call. Each call runs on a blocking thread: it
//! builds the native request objects, enqueues the operation, polls its queue until the result
//! event arrives, copies the result out, and frees every native object before returning.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rdkafka_sys as sys;
use sys::{
    RDKafka, RDKafkaConfigResource, RDKafkaEvent, RDKafkaQueue, RDKafkaRespErr, RDKafkaTopicResult,
};
use sys::{RDKafkaAdminOptions, RDKafkaTopicPartitionList};

type RDKafkaError = sys::rd_kafka_error_t;
type RDKafkaAdminOp = sys::rd_kafka_admin_op_t;
type RDKafkaAclBinding = sys::rd_kafka_AclBinding_t;
type RDKafkaResourceType = sys::rd_kafka_ResourceType_t;
type RDKafkaResourcePatternType = sys::rd_kafka_ResourcePatternType_t;
type RDKafkaAclOperation = sys::rd_kafka_AclOperation_t;
type RDKafkaAclPermissionType = sys::rd_kafka_AclPermissionType_t;
type RDKafkaAlterConfigOpType = sys::rd_kafka_AlterConfigOpType_t;
type RDKafkaScramMechanism = sys::rd_kafka_ScramMechanism_t;
type RDKafkaConfigSource = sys::rd_kafka_ConfigSource_t;
type RDKafkaOffsetSpec = sys::rd_kafka_OffsetSpec_t;

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
        Ok(Self {
            client: Arc::new(client),
            config: config.clone(),
            timeout,
        })
    }

    /// Runs `f` with the native handle on a blocking thread.
    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Native) -> Result<T> + Send + 'static,
    {
        let client = Arc::clone(&self.client);
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let native = Native {
                rk: client.inner().native_ptr(),
                timeout,
            };
            f(&native)
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
        let name = cstring(topic)?;
        self.call(move |n| unsafe { n.describe_topic(&name) })
            .await
            .map_err(|e| e.needing("DESCRIBE", topic_resource(topic)))
    }

    /// Creates a topic with `configs`; the broker's message explains a refusal.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<()> {
        let name = cstring(topic)?;
        let configs = cstring_pairs(configs)?;
        self.call(move |n| unsafe {
            n.create_topic(&name, partitions, replication_factor, &configs)
        })
        .await
        .map_err(|e| e.needing("CREATE", topic_resource(topic)))
    }

    /// Grows `topic` to `total` partitions.
    pub async fn create_partitions(&self, topic: &str, total: i32) -> Result<()> {
        let name = cstring(topic)?;
        self.call(move |n| unsafe { n.create_partitions(&name, total) })
            .await
            .map_err(|e| e.needing("ALTER", topic_resource(topic)))
    }

    /// Deletes `topic`; a topic that is already gone is not an error.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let name = cstring(topic)?;
        match self.call(move |n| unsafe { n.delete_topic(&name) }).await {
            Err(e) if e.code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(()),
            other => other.map_err(|e| e.needing("DELETE", topic_resource(topic))),
        }
    }

    /// Every config entry of `topic`, by name.
    pub async fn describe_topic_config(
        &self,
        topic: &str,
    ) -> Result<BTreeMap<String, ConfigEntry>> {
        let name = cstring(topic)?;
        self.call(move |n| unsafe { n.describe_topic_config(&name) })
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
        self.call(move |n| unsafe { n.alter_topic_config(&name, &set, &delete) })
            .await
            .map_err(|e| e.needing("ALTER_CONFIGS", topic_resource(topic)))
    }

    /// Creates ALLOW ACLs (creating an existing ACL is a no-op in Kafka).
    pub async fn create_acls(&self, acls: &[Acl]) -> Result<()> {
        if acls.is_empty() {
            return Ok(());
        }
        let acls = acls.to_vec();
        self.call(move |n| unsafe { n.create_acls(&acls) })
            .await
            .map_err(|e| e.needing("ALTER", cluster))
    }

    /// ALLOW ACLs on literal resources matching `filter`.
    pub async fn describe_acls(&self, filter: &AclFilter) -> Result<Vec<Acl>> {
        let filter = filter.clone();
        self.call(move |n| unsafe { n.describe_acls(&filter) })
            .await
            .map_err(|e| e.needing("DESCRIBE", cluster))
    }

    /// Deletes the ALLOW ACLs matching any of `filters`; returns how many went.
    pub async fn delete_acls(&self, filters: &[AclFilter]) -> Result<usize> {
        if filters.is_empty() {
            return Ok(0);
        }
        let filters = filters.to_vec();
        self.call(move |n| unsafe { n.delete_acls(&filters) })
            .await
            .map_err(|e| e.needing("ALTER", cluster))
    }

    /// Creates or replaces `user`'s SCRAM-SHA-512 credential (random salt, 8192 iterations).
    pub async fn upsert_scram_user(&self, user: &str, password: &str) -> Result<()> {
        let user = cstring(user)?;
        let password = password.as_bytes().to_vec();
        self.call(move |n| unsafe { n.alter_scram(&user, Some(&password)) })
            .await
            .map_err(|e| e.needing("ALTER", cluster))
    }

    /// True when `user` has a SCRAM credential.
    pub async fn scram_user_exists(&self, user: &str) -> Result<bool> {
        let user = cstring(user)?;
        self.call(move |n| unsafe { n.scram_user_exists(&user) })
            .await
            .map_err(|e| e.needing("DESCRIBE", cluster))
    }

    /// Removes `user`'s SCRAM-SHA-512 credential; an unknown user is not an error.
    pub async fn delete_scram_user(&self, user: &str) -> Result<()> {
        let user = cstring(user)?;
        match self
            .call(move |n| unsafe { n.alter_scram(&user, None) })
            .await
        {
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
                let attempt = left.min(GROUP_ATTEMPT).max(Duration::from_millis(100));
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
                        std::thread::sleep(Duration::from_millis(200));
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

    /// The high watermark (next offset) of each of `topic`'s `partitions`.
    pub async fn end_offsets(&self, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i64>> {
        let name = cstring(topic)?;
        self.call(move |n| unsafe { n.end_offsets(&name, partitions) })
            .await
            .map_err(|e| e.needing("DESCRIBE", topic_resource(topic)))
    }
}

/// One attempt of an offset fetch; the queue is served for refusals between attempts.
const GROUP_ATTEMPT: Duration = Duration::from_secs(1);

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

/// Copies a C string owned by librdkafka; null becomes empty.
unsafe fn owned(s: *const c_char) -> String {
    if s.is_null() {
        String::new()
    } else {
        // SAFETY: librdkafka returns NUL-terminated strings valid while their result lives.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }
}

/// Reads a librdkafka `(pointer, count)` array into a slice.
unsafe fn array<'a, T>(ptr: *mut *const T, count: usize) -> &'a [*const T] {
    if ptr.is_null() || count == 0 {
        &[]
    } else {
        // SAFETY: librdkafka hands out `count` valid pointers that live as long as the event.
        unsafe { std::slice::from_raw_parts(ptr, count) }
    }
}

/// An `rd_kafka_error_t` (owned by its result) as an `AdminError`, or `None` for success.
unsafe fn error_object(err: *const RDKafkaError) -> Option<AdminError> {
    if err.is_null() {
        return None;
    }
    // SAFETY: a non-null error object from a live result.
    let (code, message) = unsafe {
        (
            sys::rd_kafka_error_code(err),
            owned(sys::rd_kafka_error_string(err)),
        )
    };
    if code == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        None
    } else {
        Some(AdminError::from_code(code.into(), message))
    }
}

/// A topic-level result (create, delete, create partitions) as `Result`.
unsafe fn topic_result(result: *const RDKafkaTopicResult) -> Result<()> {
    // SAFETY: a live topic result.
    let code = unsafe { sys::rd_kafka_topic_result_error(result) };
    if code == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        let message = unsafe { owned(sys::rd_kafka_topic_result_error_string(result)) };
        Err(AdminError::from_code(code.into(), message))
    }
}

/// A result event; destroyed on drop.
struct Event(*mut RDKafkaEvent);

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: owned event from rd_kafka_queue_poll.
        unsafe { sys::rd_kafka_event_destroy(self.0) }
    }
}

/// One admin request's queue and options; destroyed on drop.
struct Request {
    queue: *mut RDKafkaQueue,
    options: *mut RDKafkaAdminOptions,
    timeout: Duration,
}

impl Drop for Request {
    fn drop(&mut self) {
        // SAFETY: both were created in Request::new and are destroyed once.
        unsafe {
            sys::rd_kafka_AdminOptions_destroy(self.options);
            sys::rd_kafka_queue_destroy(self.queue);
        }
    }
}

impl Request {
    /// Waits for the result event and checks its top-level error.
    unsafe fn wait(&self) -> Result<Event> {
        // The operation times out on its own after the request timeout; poll a little longer.
        let poll_ms = (self.timeout + Duration::from_secs(5)).as_millis() as i32;
        // SAFETY: a live queue.
        let event = unsafe { sys::rd_kafka_queue_poll(self.queue, poll_ms) };
        if event.is_null() {
            return Err(AdminError::Unavailable(format!(
                "no answer from the cluster within {:?}",
                self.timeout
            )));
        }
        let event = Event(event);
        // SAFETY: a live event.
        let code = unsafe { sys::rd_kafka_event_error(event.0) };
        if code != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            let message = unsafe { owned(sys::rd_kafka_event_error_string(event.0)) };
            return Err(AdminError::from_code(code.into(), message));
        }
        Ok(event)
    }
}

/// The handle and settings a blocking admin call works with.
struct Native {
    rk: *mut RDKafka,
    timeout: Duration,
}

const ERRSTR_LEN: usize = 512;

fn errstr_buf() -> Vec<c_char> {
    vec![0; ERRSTR_LEN]
}

unsafe fn errstr_text(buf: &[c_char]) -> String {
    // SAFETY: librdkafka NUL-terminates what it writes; the buffer starts zeroed.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

impl Native {
    unsafe fn request(&self, op: RDKafkaAdminOp) -> Result<Request> {
        // SAFETY: rk is the live handle of the AdminClient the caller holds.
        let (queue, options) = unsafe {
            (
                sys::rd_kafka_queue_new(self.rk),
                sys::rd_kafka_AdminOptions_new(self.rk, op),
            )
        };
        let request = Request {
            queue,
            options,
            timeout: self.timeout,
        };
        let mut errstr = errstr_buf();
        // SAFETY: live options; errstr is ERRSTR_LEN long.
        let code = unsafe {
            sys::rd_kafka_AdminOptions_set_request_timeout(
                options,
                self.timeout.as_millis() as i32,
                errstr.as_mut_ptr(),
                ERRSTR_LEN,
            )
        };
        if code != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(AdminError::InvalidRequest(unsafe { errstr_text(&errstr) }));
        }
        Ok(request)
    }

    unsafe fn describe_topic(&self, topic: &CString) -> Result<Option<TopicDescription>> {
        unsafe {
            let request = self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_ANY)?;
            let mut names = [topic.as_ptr()];
            let collection = sys::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1);
            sys::rd_kafka_DescribeTopics(self.rk, collection, request.options, request.queue);
            sys::rd_kafka_TopicCollection_destroy(collection);
            let event = request.wait()?;
            let result = sys::rd_kafka_event_DescribeTopics_result(event.0);
            let mut count = 0;
            let topics = array(
                sys::rd_kafka_DescribeTopics_result_topics(result, &mut count),
                count,
            );
            let Some(&desc) = topics.first() else {
                return Ok(None);
            };
            if let Some(err) = error_object(sys::rd_kafka_TopicDescription_error(desc)) {
                return match err.code() {
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
                    _ => Err(err),
                };
            }
            let uuid = sys::rd_kafka_TopicDescription_topic_id(desc);
            let id = if uuid.is_null() {
                String::new()
            } else {
                owned(sys::rd_kafka_Uuid_base64str(uuid))
            };
            let mut pcount = 0;
            let infos = array(
                sys::rd_kafka_TopicDescription_partitions(desc, &mut pcount),
                pcount,
            );
            let mut partitions = vec![Vec::new(); infos.len()];
            for &info in infos {
                let index = sys::rd_kafka_TopicPartitionInfo_partition(info) as usize;
                let mut rcount = 0;
                let replicas = array(
                    sys::rd_kafka_TopicPartitionInfo_replicas(info, &mut rcount),
                    rcount,
                );
                let ids = replicas
                    .iter()
                    .map(|&node| sys::rd_kafka_Node_id(node))
                    .collect();
                if let Some(slot) = partitions.get_mut(index) {
                    *slot = ids;
                }
            }
            Ok(Some(TopicDescription {
                name: owned(sys::rd_kafka_TopicDescription_name(desc)),
                id,
                partitions,
            }))
        }
    }

    unsafe fn create_topic(
        &self,
        topic: &CString,
        partitions: i32,
        replication_factor: i32,
        configs: &[(CString, CString)],
    ) -> Result<()> {
        unsafe {
            let request = self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_CREATETOPICS)?;
            let mut errstr = errstr_buf();
            let new_topic = sys::rd_kafka_NewTopic_new(
                topic.as_ptr(),
                partitions,
                replication_factor,
                errstr.as_mut_ptr(),
                ERRSTR_LEN,
            );
            if new_topic.is_null() {
                return Err(AdminError::InvalidRequest(errstr_text(&errstr)));
            }
            for (key, value) in configs {
                sys::rd_kafka_NewTopic_set_config(new_topic, key.as_ptr(), value.as_ptr());
            }
            let mut topics = [new_topic];
            sys::rd_kafka_CreateTopics(
                self.rk,
                topics.as_mut_ptr(),
                1,
                request.options,
                request.queue,
            );
            sys::rd_kafka_NewTopic_destroy(new_topic);
            let event = request.wait()?;
            let result = sys::rd_kafka_event_CreateTopics_result(event.0);
            let mut count = 0;
            let results = array(
                sys::rd_kafka_CreateTopics_result_topics(result, &mut count),
                count,
            );
            results.first().map_or(Ok(()), |&r| topic_result(r))
        }
    }

    unsafe fn create_partitions(&self, topic: &CString, total: i32) -> Result<()> {
        unsafe {
            let request = self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_CREATEPARTITIONS)?;
            let mut errstr = errstr_buf();
            let parts = sys::rd_kafka_NewPartitions_new(
                topic.as_ptr(),
                total.max(0) as usize,
                errstr.as_mut_ptr(),
                ERRSTR_LEN,
            );
            if parts.is_null() {
                return Err(AdminError::InvalidRequest(errstr_text(&errstr)));
            }
            let mut all = [parts];
            sys::rd_kafka_CreatePartitions(
                self.rk,
                all.as_mut_ptr(),
                1,
                request.options,
                request.queue,
            );
            sys::rd_kafka_NewPartitions_destroy(parts);
            let event = request.wait()?;
            let result = sys::rd_kafka_event_CreatePartitions_result(event.0);
            let mut count = 0;
            let results = array(
                sys::rd_kafka_CreatePartitions_result_topics(result, &mut count),
                count,
            );
            results.first().map_or(Ok(()), |&r| topic_result(r))
        }
    }

    unsafe fn delete_topic(&self, topic: &CString) -> Result<()> {
        unsafe {
            let request = self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_DELETETOPICS)?;
            let del = sys::rd_kafka_DeleteTopic_new(topic.as_ptr());
            let mut all = [del];
            sys::rd_kafka_DeleteTopics(
                self.rk,
                all.as_mut_ptr(),
                1,
                request.options,
                request.queue,
            );
            sys::rd_kafka_DeleteTopic_destroy(del);
            let event = request.wait()?;
            let result = sys::rd_kafka_event_DeleteTopics_result(event.0);
            let mut count = 0;
            let results = array(
                sys::rd_kafka_DeleteTopics_result_topics(result, &mut count),
                count,
            );
            results.first().map_or(Ok(()), |&r| topic_result(r))
        }
    }

    unsafe fn describe_topic_config(
        &self,
        topic: &CString,
    ) -> Result<BTreeMap<String, ConfigEntry>> {
        unsafe {
            let request = self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS)?;
            let resource = sys::rd_kafka_ConfigResource_new(
                RDKafkaResourceType::RD_KAFKA_RESOURCE_TOPIC,
                topic.as_ptr(),
            );
            let mut all = [resource];
            sys::rd_kafka_DescribeConfigs(
                self.rk,
                all.as_mut_ptr(),
                1,
                request.options,
                request.queue,
            );
            sys::rd_kafka_ConfigResource_destroy(resource);
            let event = request.wait()?;
            let result = sys::rd_kafka_event_DescribeConfigs_result(event.0);
            let mut count = 0;
            let resources = array(
                sys::rd_kafka_DescribeConfigs_result_resources(result, &mut count),
                count,
            );
            let Some(&res) = resources.first() else {
                return Ok(BTreeMap::new());
            };
            config_resource_error(res)?;
            let mut ecount = 0;
            let entries = array(
                sys::rd_kafka_ConfigResource_configs(res, &mut ecount),
                ecount,
            );
            let mut out = BTreeMap::new();
            for &entry in entries {
                let value = sys::rd_kafka_ConfigEntry_value(entry);
                out.insert(
                    owned(sys::rd_kafka_ConfigEntry_name(entry)),
                    ConfigEntry {
                        value: (!value.is_null()).then(|| owned(value)),
                        dynamic: sys::rd_kafka_ConfigEntry_source(entry)
                            == RDKafkaConfigSource::RD_KAFKA_CONFIG_SOURCE_DYNAMIC_TOPIC_CONFIG,
                        sensitive: sys::rd_kafka_ConfigEntry_is_sensitive(entry) != 0,
                        read_only: sys::rd_kafka_ConfigEntry_is_read_only(entry) != 0,
                    },
                );
            }
            Ok(out)
        }
    }

    unsafe fn alter_topic_config(
        &self,
        topic: &CString,
        set: &[(CString, CString)],
        delete: &[CString],
    ) -> Result<()> {
        unsafe {
            let request =
                self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS)?;
            let resource = sys::rd_kafka_ConfigResource_new(
                RDKafkaResourceType::RD_KAFKA_RESOURCE_TOPIC,
                topic.as_ptr(),
            );
            let ops = set
                .iter()
                .map(|(k, v)| {
                    (
                        k,
                        v.as_ptr(),
                        RDKafkaAlterConfigOpType::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                    )
                })
                .chain(delete.iter().map(|k| {
                    (
                        k,
                        ptr::null(),
                        RDKafkaAlterConfigOpType::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE,
                    )
                }));
            for (key, value, op) in ops {
                let err = sys::rd_kafka_ConfigResource_add_incremental_config(
                    resource,
                    key.as_ptr(),
                    op,
                    value,
                );
                if !err.is_null() {
                    let failure = error_object(err);
                    sys::rd_kafka_error_destroy(err);
                    sys::rd_kafka_ConfigResource_destroy(resource);
                    return Err(failure.unwrap_or_else(|| {
                        AdminError::InvalidRequest(format!("config {key:?} refused"))
                    }));
                }
            }
            let mut all = [resource];
            sys::rd_kafka_IncrementalAlterConfigs(
                self.rk,
                all.as_mut_ptr(),
                1,
                request.options,
                request.queue,
            );
            sys::rd_kafka_ConfigResource_destroy(resource);
            let event = request.wait()?;
            let result = sys::rd_kafka_event_IncrementalAlterConfigs_result(event.0);
            let mut count = 0;
            let resources = array(
                sys::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count),
                count,
            );
            resources
                .first()
                .map_or(Ok(()), |&r| config_resource_error(r))
        }
    }

    unsafe fn create_acls(&self, acls: &[Acl]) -> Result<()> {
        unsafe {
            let request = self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_CREATEACLS)?;
            let mut bindings = Vec::with_capacity(acls.len());
            for acl in acls {
                match new_binding(acl, false) {
                    Ok(b) => bindings.push(b),
                    Err(e) => {
                        sys::rd_kafka_AclBinding_destroy_array(
                            bindings.as_mut_ptr(),
                            bindings.len(),
                        );
                        return Err(e);
                    }
                }
            }
            sys::rd_kafka_CreateAcls(
                self.rk,
                bindings.as_mut_ptr(),
                bindings.len(),
                request.options,
                request.queue,
            );
            sys::rd_kafka_AclBinding_destroy_array(bindings.as_mut_ptr(), bindings.len());
            let event = request.wait()?;
            let result = sys::rd_kafka_event_CreateAcls_result(event.0);
            let mut count = 0;
            for &r in array(
                sys::rd_kafka_CreateAcls_result_acls(result, &mut count),
                count,
            ) {
                if let Some(err) = error_object(sys::rd_kafka_acl_result_error(r)) {
                    return Err(err);
                }
            }
            Ok(())
        }
    }

    unsafe fn describe_acls(&self, filter: &AclFilter) -> Result<Vec<Acl>> {
        unsafe {
            let request = self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_DESCRIBEACLS)?;
            let native = new_filter(filter)?;
            sys::rd_kafka_DescribeAcls(self.rk, native, request.options, request.queue);
            sys::rd_kafka_AclBinding_destroy(native);
            let event = request.wait()?;
            let result = sys::rd_kafka_event_DescribeAcls_result(event.0);
            let mut count = 0;
            Ok(array(
                sys::rd_kafka_DescribeAcls_result_acls(result, &mut count),
                count,
            )
            .iter()
            .filter_map(|&b| read_binding(b))
            .collect())
        }
    }

    unsafe fn delete_acls(&self, filters: &[AclFilter]) -> Result<usize> {
        unsafe {
            let request = self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_DELETEACLS)?;
            let mut natives = Vec::with_capacity(filters.len());
            for filter in filters {
                match new_filter(filter) {
                    Ok(f) => natives.push(f),
                    Err(e) => {
                        sys::rd_kafka_AclBinding_destroy_array(natives.as_mut_ptr(), natives.len());
                        return Err(e);
                    }
                }
            }
            sys::rd_kafka_DeleteAcls(
                self.rk,
                natives.as_mut_ptr(),
                natives.len(),
                request.options,
                request.queue,
            );
            sys::rd_kafka_AclBinding_destroy_array(natives.as_mut_ptr(), natives.len());
            let event = request.wait()?;
            let result = sys::rd_kafka_event_DeleteAcls_result(event.0);
            let mut count = 0;
            let mut deleted = 0;
            for &response in array(
                sys::rd_kafka_DeleteAcls_result_responses(result, &mut count),
                count,
            ) {
                if let Some(err) =
                    error_object(sys::rd_kafka_DeleteAcls_result_response_error(response))
                {
                    return Err(err);
                }
                let mut matched = 0;
                sys::rd_kafka_DeleteAcls_result_response_matching_acls(response, &mut matched);
                deleted += matched;
            }
            Ok(deleted)
        }
    }

    /// Upserts (`Some(password)`) or deletes (`None`) a SCRAM-SHA-512 credential.
    unsafe fn alter_scram(&self, user: &CString, password: Option<&[u8]>) -> Result<()> {
        unsafe {
            let request =
                self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS)?;
            let mechanism = RDKafkaScramMechanism::RD_KAFKA_SCRAM_MECHANISM_SHA_512;
            let alteration = match password {
                Some(password) => sys::rd_kafka_UserScramCredentialUpsertion_new(
                    user.as_ptr(),
                    mechanism,
                    8192,
                    password.as_ptr(),
                    password.len(),
                    ptr::null(),
                    0,
                ),
                None => sys::rd_kafka_UserScramCredentialDeletion_new(user.as_ptr(), mechanism),
            };
            let mut all = [alteration];
            sys::rd_kafka_AlterUserScramCredentials(
                self.rk,
                all.as_mut_ptr(),
                1,
                request.options,
                request.queue,
            );
            sys::rd_kafka_UserScramCredentialAlteration_destroy(alteration);
            let event = request.wait()?;
            let result = sys::rd_kafka_event_AlterUserScramCredentials_result(event.0);
            let mut count = 0;
            for &response in array(
                sys::rd_kafka_AlterUserScramCredentials_result_responses(result, &mut count),
                count,
            ) {
                if let Some(err) = error_object(
                    sys::rd_kafka_AlterUserScramCredentials_result_response_error(response),
                ) {
                    return Err(err);
                }
            }
            Ok(())
        }
    }

    unsafe fn scram_user_exists(&self, user: &CString) -> Result<bool> {
        unsafe {
            let request =
                self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_DESCRIBEUSERSCRAMCREDENTIALS)?;
            let mut users = [user.as_ptr()];
            sys::rd_kafka_DescribeUserScramCredentials(
                self.rk,
                users.as_mut_ptr(),
                1,
                request.options,
                request.queue,
            );
            let event = request.wait()?;
            let result = sys::rd_kafka_event_DescribeUserScramCredentials_result(event.0);
            let mut count = 0;
            let descriptions = array(
                sys::rd_kafka_DescribeUserScramCredentials_result_descriptions(result, &mut count),
                count,
            );
            let Some(&description) = descriptions.first() else {
                return Ok(false);
            };
            match error_object(sys::rd_kafka_UserScramCredentialsDescription_error(
                description,
            )) {
                Some(e) if e.code() == Some(RDKafkaErrorCode::ResourceNotFound) => Ok(false),
                Some(e) => Err(e),
                None => Ok(
                    sys::rd_kafka_UserScramCredentialsDescription_scramcredentialinfo_count(
                        description,
                    ) > 0,
                ),
            }
        }
    }

    unsafe fn end_offsets(&self, topic: &CString, partitions: i32) -> Result<BTreeMap<i32, i64>> {
        unsafe {
            let request = self.request(RDKafkaAdminOp::RD_KAFKA_ADMIN_OP_ANY)?;
            let list = partition_list(
                topic,
                partitions,
                Some(RDKafkaOffsetSpec::RD_KAFKA_OFFSET_SPEC_LATEST as i64),
            );
            sys::rd_kafka_ListOffsets(self.rk, list, request.options, request.queue);
            sys::rd_kafka_topic_partition_list_destroy(list);
            let event = request.wait()?;
            let result = sys::rd_kafka_event_ListOffsets_result(event.0);
            let mut count = 0;
            let mut out = BTreeMap::new();
            for &info in array(
                sys::rd_kafka_ListOffsets_result_infos(result, &mut count),
                count,
            ) {
                let tp = &*sys::rd_kafka_ListOffsetsResultInfo_topic_partition(info);
                if tp.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return Err(AdminError::from_code(
                        tp.err.into(),
                        format!("listing the end offset of partition {}", tp.partition),
                    ));
                }
                out.insert(tp.partition, tp.offset);
            }
            Ok(out)
        }
    }
}

unsafe fn config_resource_error(res: *const RDKafkaConfigResource) -> Result<()> {
    // SAFETY: a live config resource of a result.
    let code = unsafe { sys::rd_kafka_ConfigResource_error(res) };
    if code == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        let message = unsafe { owned(sys::rd_kafka_ConfigResource_error_string(res)) };
        Err(AdminError::from_code(code.into(), message))
    }
}

/// A new partition list of `topic`'s partitions 0..count, each with `offset` if given.
unsafe fn partition_list(
    topic: &CString,
    count: i32,
    offset: Option<i64>,
) -> *mut RDKafkaTopicPartitionList {
    unsafe {
        let list = sys::rd_kafka_topic_partition_list_new(count.max(1));
        for partition in 0..count {
            let tp = sys::rd_kafka_topic_partition_list_add(list, topic.as_ptr(), partition);
            if let Some(offset) = offset {
                (*tp).offset = offset;
            }
        }
        list
    }
}

fn native_resource(kind: ResourceKind) -> RDKafkaResourceType {
    match kind {
        ResourceKind::Topic => RDKafkaResourceType::RD_KAFKA_RESOURCE_TOPIC,
        ResourceKind::Group => RDKafkaResourceType::RD_KAFKA_RESOURCE_GROUP,
        ResourceKind::Cluster => RDKafkaResourceType::RD_KAFKA_RESOURCE_BROKER,
    }
}

fn native_operation(op: AclOperation) -> RDKafkaAclOperation {
    use RDKafkaAclOperation as N;
    match op {
        AclOperation::All => N::RD_KAFKA_ACL_OPERATION_ALL,
        AclOperation::Read => N::RD_KAFKA_ACL_OPERATION_READ,
        AclOperation::Write => N::RD_KAFKA_ACL_OPERATION_WRITE,
        AclOperation::Create => N::RD_KAFKA_ACL_OPERATION_CREATE,
        AclOperation::Delete => N::RD_KAFKA_ACL_OPERATION_DELETE,
        AclOperation::Alter => N::RD_KAFKA_ACL_OPERATION_ALTER,
        AclOperation::Describe => N::RD_KAFKA_ACL_OPERATION_DESCRIBE,
        AclOperation::DescribeConfigs => N::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
        AclOperation::AlterConfigs => N::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
        AclOperation::IdempotentWrite => N::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
    }
}

fn operation_from_native(op: RDKafkaAclOperation) -> Option<AclOperation> {
    [
        AclOperation::All,
        AclOperation::Read,
        AclOperation::Write,
        AclOperation::Create,
        AclOperation::Delete,
        AclOperation::Alter,
        AclOperation::Describe,
        AclOperation::DescribeConfigs,
        AclOperation::AlterConfigs,
        AclOperation::IdempotentWrite,
    ]
    .into_iter()
    .find(|candidate| native_operation(*candidate) == op)
}

fn resource_from_native(kind: RDKafkaResourceType) -> Option<ResourceKind> {
    [
        ResourceKind::Topic,
        ResourceKind::Group,
        ResourceKind::Cluster,
    ]
    .into_iter()
    .find(|candidate| native_resource(*candidate) == kind)
}

/// The cluster resource's fixed name in Kafka's ACL model.
const CLUSTER_NAME: &str = "kafka-cluster";

unsafe fn new_binding(acl: &Acl, _filter: bool) -> Result<*mut RDKafkaAclBinding> {
    let name = cstring(if acl.resource == ResourceKind::Cluster {
        CLUSTER_NAME
    } else {
        &acl.name
    })?;
    let principal = cstring(&acl.principal)?;
    let host = cstring("*")?;
    let mut errstr = errstr_buf();
    // SAFETY: all strings are valid for the call; librdkafka copies them.
    let binding = unsafe {
        sys::rd_kafka_AclBinding_new(
            native_resource(acl.resource),
            name.as_ptr(),
            RDKafkaResourcePatternType::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
            principal.as_ptr(),
            host.as_ptr(),
            native_operation(acl.operation),
            RDKafkaAclPermissionType::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
            errstr.as_mut_ptr(),
            ERRSTR_LEN,
        )
    };
    if binding.is_null() {
        Err(AdminError::InvalidRequest(unsafe { errstr_text(&errstr) }))
    } else {
        Ok(binding)
    }
}

unsafe fn new_filter(filter: &AclFilter) -> Result<*mut RDKafkaAclBinding> {
    let (kind, name) = match &filter.resource {
        Some((kind, name)) => (
            native_resource(*kind),
            Some(cstring(if *kind == ResourceKind::Cluster {
                CLUSTER_NAME
            } else {
                name
            })?),
        ),
        None => (RDKafkaResourceType::RD_KAFKA_RESOURCE_ANY, None),
    };
    let principal = filter.principal.as_deref().map(cstring).transpose()?;
    let operation = filter
        .operation
        .map(native_operation)
        .unwrap_or(RDKafkaAclOperation::RD_KAFKA_ACL_OPERATION_ANY);
    let mut errstr = errstr_buf();
    // SAFETY: strings valid for the call or null (match anything).
    let binding = unsafe {
        sys::rd_kafka_AclBindingFilter_new(
            kind,
            name.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
            RDKafkaResourcePatternType::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
            principal.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
            ptr::null(),
            operation,
            RDKafkaAclPermissionType::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
            errstr.as_mut_ptr(),
            ERRSTR_LEN,
        )
    };
    if binding.is_null() {
        Err(AdminError::InvalidRequest(unsafe { errstr_text(&errstr) }))
    } else {
        Ok(binding)
    }
}

unsafe fn read_binding(b: *const RDKafkaAclBinding) -> Option<Acl> {
    // SAFETY: a live binding of a result.
    unsafe {
        Some(Acl {
            resource: resource_from_native(sys::rd_kafka_AclBinding_restype(b))?,
            name: owned(sys::rd_kafka_AclBinding_name(b)),
            principal: owned(sys::rd_kafka_AclBinding_principal(b)),
            operation: operation_from_native(sys::rd_kafka_AclBinding_operation(b))?,
        })
    }
}
