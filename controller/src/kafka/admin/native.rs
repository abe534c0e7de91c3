//! librdkafka's admin API, as the adapter uses it: every raw call of the admin adapter is here.
//!
//! Objects Rust creates (request objects, options, queues, events) are owned by [`Native`],
//! which destroys them on drop. Objects librdkafka hands out inside a result event are borrowed
//! views (`&'e` references to `#[repr(transparent)]` wrappers, as `record.rs` reads headers),
//! valid while the event is. Everything is safe to call but [`Native::from_raw`] and the
//! private readers of raw pointers.

use std::ffi::{CStr, c_char};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka_sys as sys;

use super::{Acl, AclFilter, AclOperation, AdminError, ResourceKind, Result};

pub(super) use sys::rd_kafka_admin_op_t as AdminOp;

/// A librdkafka object type that Rust may own, and how it is destroyed.
pub(super) trait Destroy {
    /// Destroys the object.
    ///
    /// # Safety
    /// `ptr` is a live object of this type that the caller owns; nothing uses it afterwards.
    unsafe fn destroy(ptr: *mut Self);
}

macro_rules! destroyed_with {
    ($($kind:ty => $destroy:path,)*) => {$(
        impl Destroy for $kind {
            unsafe fn destroy(ptr: *mut Self) {
                // SAFETY: as the caller promises.
                unsafe { $destroy(ptr) }
            }
        }
    )*};
}

destroyed_with! {
    sys::rd_kafka_queue_t => sys::rd_kafka_queue_destroy,
    sys::rd_kafka_AdminOptions_t => sys::rd_kafka_AdminOptions_destroy,
    sys::rd_kafka_event_t => sys::rd_kafka_event_destroy,
    sys::rd_kafka_error_t => sys::rd_kafka_error_destroy,
    sys::rd_kafka_TopicCollection_t => sys::rd_kafka_TopicCollection_destroy,
    sys::rd_kafka_NewTopic_t => sys::rd_kafka_NewTopic_destroy,
    sys::rd_kafka_NewPartitions_t => sys::rd_kafka_NewPartitions_destroy,
    sys::rd_kafka_DeleteTopic_t => sys::rd_kafka_DeleteTopic_destroy,
    sys::rd_kafka_ConfigResource_t => sys::rd_kafka_ConfigResource_destroy,
    // Also `rd_kafka_AclBindingFilter_t`: the same type.
    sys::rd_kafka_AclBinding_t => sys::rd_kafka_AclBinding_destroy,
    sys::rd_kafka_UserScramCredentialAlteration_t =>
        sys::rd_kafka_UserScramCredentialAlteration_destroy,
    sys::rd_kafka_topic_partition_list_t => sys::rd_kafka_topic_partition_list_destroy,
}

/// A librdkafka object that Rust owns: destroyed on drop.
pub(super) struct Native<T: Destroy>(NonNull<T>);

impl<T: Destroy> Native<T> {
    /// Takes ownership of `ptr`; `None` when it is null.
    ///
    /// # Safety
    /// `ptr` is null or a live object that the caller owns and hands over: nothing else
    /// destroys it.
    unsafe fn from_raw(ptr: *mut T) -> Option<Self> {
        NonNull::new(ptr).map(Self)
    }

    /// Takes ownership of what a librdkafka constructor returned; null means it failed.
    ///
    /// # Safety
    /// As for [`Native::from_raw`].
    unsafe fn created(ptr: *mut T, what: &str) -> Result<Self> {
        // SAFETY: as the caller promises.
        unsafe { Self::from_raw(ptr) }
            .ok_or_else(|| AdminError::InvalidRequest(format!("librdkafka refused {what}")))
    }

    fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }
}

impl<T: Destroy> Drop for Native<T> {
    fn drop(&mut self) {
        // SAFETY: we own the object, and this is its only destruction.
        unsafe { T::destroy(self.as_ptr()) }
    }
}

/// Copies a C string owned by librdkafka; null becomes empty.
///
/// # Safety
/// `s` is null or a NUL-terminated string that is valid for the call.
unsafe fn owned(s: *const c_char) -> String {
    if s.is_null() {
        String::new()
    } else {
        // SAFETY: as the caller promises.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }
}

/// A code and message as an `AdminError`, or `None` for success.
///
/// # Safety
/// `message` is as [`owned`] requires; it is only read on an error.
unsafe fn failure(code: sys::rd_kafka_resp_err_t, message: *const c_char) -> Option<AdminError> {
    (code != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| {
        // SAFETY: as the caller promises.
        AdminError::from_code(code.into(), unsafe { owned(message) })
    })
}

/// An `rd_kafka_error_t` as an `AdminError`, or `None` for success.
///
/// # Safety
/// `err` is null or a live error object.
unsafe fn error_object(err: *const sys::rd_kafka_error_t) -> Option<AdminError> {
    if err.is_null() {
        return None;
    }
    // SAFETY: a live error object, whose string lives as long as it does.
    unsafe {
        failure(
            sys::rd_kafka_error_code(err),
            sys::rd_kafka_error_string(err),
        )
    }
}

const ERRSTR_LEN: usize = 512;
/// How much longer than the request timeout a result is waited for: the operation times out
/// on its own, and its answer must still arrive.
const RESULT_POLL_MARGIN: Duration = Duration::from_secs(5);

/// The buffer librdkafka writes a constructor's failure into.
struct ErrStr([c_char; ERRSTR_LEN]);

impl ErrStr {
    fn new() -> Self {
        Self([0; ERRSTR_LEN])
    }

    fn as_mut_ptr(&mut self) -> *mut c_char {
        self.0.as_mut_ptr()
    }

    fn into_error(self) -> AdminError {
        // SAFETY: the buffer starts zeroed and librdkafka NUL-terminates what it writes within
        // ERRSTR_LEN bytes, so it always holds a NUL.
        AdminError::InvalidRequest(unsafe { owned(self.0.as_ptr()) })
    }
}

/// The native handle of an rdkafka client, borrowed for as long as the client is.
#[derive(Clone, Copy)]
pub(super) struct Client<'a> {
    rk: NonNull<sys::rd_kafka_t>,
    _client: PhantomData<&'a ()>,
}

impl<'a> Client<'a> {
    pub(super) fn of<C: ClientContext>(client: &'a rdkafka::client::Client<C>) -> Self {
        let Some(rk) = NonNull::new(client.native_ptr()) else {
            unreachable!("an rdkafka client has a native handle");
        };
        Self {
            rk,
            _client: PhantomData,
        }
    }

    /// A request for `op`: its options (with `timeout` as the request timeout) and the private
    /// queue its result arrives on.
    pub(super) fn request(self, op: AdminOp, timeout: Duration) -> Result<Request<'a>> {
        // SAFETY: the handle is live while the client is borrowed; both objects are ours.
        let (queue, options) = unsafe {
            (
                Native::created(sys::rd_kafka_queue_new(self.rk.as_ptr()), "a queue")?,
                Native::created(
                    sys::rd_kafka_AdminOptions_new(self.rk.as_ptr(), op),
                    "admin options",
                )?,
            )
        };
        let mut errstr = ErrStr::new();
        // SAFETY: live options; errstr is ERRSTR_LEN long.
        let code = unsafe {
            sys::rd_kafka_AdminOptions_set_request_timeout(
                options.as_ptr(),
                timeout.as_millis() as i32,
                errstr.as_mut_ptr(),
                ERRSTR_LEN,
            )
        };
        if code != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(errstr.into_error());
        }
        Ok(Request {
            client: self,
            queue,
            options,
            timeout,
        })
    }
}

/// One admin request's options and result queue.
pub(super) struct Request<'a> {
    client: Client<'a>,
    queue: Native<sys::rd_kafka_queue_t>,
    options: Native<sys::rd_kafka_AdminOptions_t>,
    timeout: Duration,
}

/// One of librdkafka's admin operations on an array of request objects.
type ArrayOp<T> = unsafe extern "C" fn(
    *mut sys::rd_kafka_t,
    *mut *mut T,
    usize,
    *const sys::rd_kafka_AdminOptions_t,
    *mut sys::rd_kafka_queue_t,
);

/// One of librdkafka's admin operations on a single request object.
type SingleOp<T> = unsafe extern "C" fn(
    *mut sys::rd_kafka_t,
    *mut T,
    *const sys::rd_kafka_AdminOptions_t,
    *mut sys::rd_kafka_queue_t,
);

/// The operations enqueue the request objects they take: librdkafka copies them, so they are
/// destroyed on return.
impl Request<'_> {
    /// Enqueues `op` on `objects`.
    ///
    /// # Safety
    /// `op` is a librdkafka admin operation that takes (handle, array of `T`, its length,
    /// options, queue) and copies the objects before returning.
    unsafe fn enqueue<T: Destroy>(&self, objects: Vec<Native<T>>, op: ArrayOp<T>) {
        let mut raw: Vec<*mut T> = objects.iter().map(Native::as_ptr).collect();
        // SAFETY: the handle, options and queue are live; `raw` holds `raw.len()` live objects;
        // `op` is as the caller promises.
        unsafe {
            op(
                self.client.rk.as_ptr(),
                raw.as_mut_ptr(),
                raw.len(),
                self.options.as_ptr(),
                self.queue.as_ptr(),
            )
        }
    }

    /// Enqueues `op` on `object`.
    ///
    /// # Safety
    /// `op` is a librdkafka admin operation that takes (handle, object, options, queue) and
    /// copies the object before returning.
    unsafe fn enqueue_one<T: Destroy>(&self, object: Native<T>, op: SingleOp<T>) {
        // SAFETY: the handle, options, queue and object are live; `op` is as the caller
        // promises.
        unsafe {
            op(
                self.client.rk.as_ptr(),
                object.as_ptr(),
                self.options.as_ptr(),
                self.queue.as_ptr(),
            )
        }
    }

    pub(super) fn create_topics(&self, topics: Vec<NewTopic>) {
        // SAFETY: CreateTopics takes such an array and copies it.
        unsafe { self.enqueue(topics, sys::rd_kafka_CreateTopics) }
    }

    pub(super) fn create_partitions(&self, partitions: Vec<NewPartitions>) {
        // SAFETY: CreatePartitions takes such an array and copies it.
        unsafe { self.enqueue(partitions, sys::rd_kafka_CreatePartitions) }
    }

    pub(super) fn delete_topics(&self, topics: Vec<DeleteTopic>) {
        // SAFETY: DeleteTopics takes such an array and copies it.
        unsafe { self.enqueue(topics, sys::rd_kafka_DeleteTopics) }
    }

    pub(super) fn describe_configs(&self, resources: Vec<ConfigResource>) {
        // SAFETY: DescribeConfigs takes such an array and copies it.
        unsafe { self.enqueue(resources, sys::rd_kafka_DescribeConfigs) }
    }

    pub(super) fn incremental_alter_configs(&self, resources: Vec<ConfigResource>) {
        // SAFETY: IncrementalAlterConfigs takes such an array and copies it.
        unsafe { self.enqueue(resources, sys::rd_kafka_IncrementalAlterConfigs) }
    }

    pub(super) fn create_acls(&self, acls: Vec<AclBinding>) {
        // SAFETY: CreateAcls takes such an array and copies it.
        unsafe { self.enqueue(acls, sys::rd_kafka_CreateAcls) }
    }

    pub(super) fn delete_acls(&self, filters: Vec<AclBinding>) {
        // SAFETY: DeleteAcls takes such an array (of filters) and copies it.
        unsafe { self.enqueue(filters, sys::rd_kafka_DeleteAcls) }
    }

    pub(super) fn alter_user_scram_credentials(&self, alterations: Vec<ScramAlteration>) {
        // SAFETY: AlterUserScramCredentials takes such an array and copies it.
        unsafe { self.enqueue(alterations, sys::rd_kafka_AlterUserScramCredentials) }
    }

    pub(super) fn describe_topics(&self, topics: TopicCollection) {
        // SAFETY: the handle, options, queue and collection are live; librdkafka copies the
        // collection.
        unsafe {
            sys::rd_kafka_DescribeTopics(
                self.client.rk.as_ptr(),
                topics.as_ptr(),
                self.options.as_ptr(),
                self.queue.as_ptr(),
            )
        }
    }

    pub(super) fn describe_acls(&self, filter: AclBinding) {
        // SAFETY: DescribeAcls takes such a filter and copies it.
        unsafe { self.enqueue_one(filter, sys::rd_kafka_DescribeAcls) }
    }

    pub(super) fn describe_user_scram_credentials(&self, users: &[&CStr]) {
        let mut names: Vec<*const c_char> = users.iter().map(|u| u.as_ptr()).collect();
        // SAFETY: the handle, options and queue are live; `names` holds `names.len()` strings
        // valid for the call, which librdkafka copies.
        unsafe {
            sys::rd_kafka_DescribeUserScramCredentials(
                self.client.rk.as_ptr(),
                names.as_mut_ptr(),
                names.len(),
                self.options.as_ptr(),
                self.queue.as_ptr(),
            )
        }
    }

    pub(super) fn describe_consumer_groups(&self, groups: &[&CStr]) {
        let mut names: Vec<*const c_char> = groups.iter().map(|g| g.as_ptr()).collect();
        // SAFETY: the handle, options and queue are live; `names` holds `names.len()` strings
        // valid for the call, which librdkafka copies.
        unsafe {
            sys::rd_kafka_DescribeConsumerGroups(
                self.client.rk.as_ptr(),
                names.as_mut_ptr(),
                names.len(),
                self.options.as_ptr(),
                self.queue.as_ptr(),
            )
        }
    }

    pub(super) fn list_offsets(&self, partitions: PartitionList) {
        // SAFETY: ListOffsets takes such a list and copies it.
        unsafe { self.enqueue_one(partitions, sys::rd_kafka_ListOffsets) }
    }

    /// Waits for the result event and checks its top-level error.
    pub(super) fn wait(&self) -> Result<Event> {
        // The operation times out on its own after the request timeout; poll a little longer.
        let poll_ms = (self.timeout + RESULT_POLL_MARGIN).as_millis() as i32;
        // SAFETY: a live queue; the event it returns is ours.
        let event =
            unsafe { Native::from_raw(sys::rd_kafka_queue_poll(self.queue.as_ptr(), poll_ms)) };
        let Some(event) = event else {
            return Err(AdminError::Unavailable(format!(
                "no answer from the cluster within {:?}",
                self.timeout
            )));
        };
        // SAFETY: a live event; its error string lives as long as it does.
        let failed = unsafe {
            failure(
                sys::rd_kafka_event_error(event.as_ptr()),
                sys::rd_kafka_event_error_string(event.as_ptr()),
            )
        };
        match failed {
            Some(e) => Err(e),
            None => Ok(event),
        }
    }
}

pub(super) type TopicCollection = Native<sys::rd_kafka_TopicCollection_t>;

impl TopicCollection {
    pub(super) fn of_names(names: &[&CStr]) -> Result<Self> {
        let mut names: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        // SAFETY: `names` holds `names.len()` strings valid for the call, which librdkafka
        // copies; the collection is ours.
        unsafe {
            Self::created(
                sys::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), names.len()),
                "a topic collection",
            )
        }
    }
}

pub(super) type NewTopic = Native<sys::rd_kafka_NewTopic_t>;

impl NewTopic {
    pub(super) fn new(name: &CStr, partitions: i32, replication_factor: i32) -> Result<Self> {
        let mut errstr = ErrStr::new();
        // SAFETY: the name is valid for the call (librdkafka copies it); errstr is ERRSTR_LEN
        // long; the topic is ours.
        let topic = unsafe {
            Self::from_raw(sys::rd_kafka_NewTopic_new(
                name.as_ptr(),
                partitions,
                replication_factor,
                errstr.as_mut_ptr(),
                ERRSTR_LEN,
            ))
        };
        topic.ok_or_else(|| errstr.into_error())
    }

    pub(super) fn set_config(&mut self, key: &CStr, value: &CStr) {
        // SAFETY: a live topic; the strings are valid for the call and copied. It only fails
        // for a null name.
        unsafe { sys::rd_kafka_NewTopic_set_config(self.as_ptr(), key.as_ptr(), value.as_ptr()) };
    }
}

pub(super) type NewPartitions = Native<sys::rd_kafka_NewPartitions_t>;

impl NewPartitions {
    pub(super) fn new(topic: &CStr, total: usize) -> Result<Self> {
        let mut errstr = ErrStr::new();
        // SAFETY: the name is valid for the call (librdkafka copies it); errstr is ERRSTR_LEN
        // long; the object is ours.
        let partitions = unsafe {
            Self::from_raw(sys::rd_kafka_NewPartitions_new(
                topic.as_ptr(),
                total,
                errstr.as_mut_ptr(),
                ERRSTR_LEN,
            ))
        };
        partitions.ok_or_else(|| errstr.into_error())
    }
}

pub(super) type DeleteTopic = Native<sys::rd_kafka_DeleteTopic_t>;

impl DeleteTopic {
    pub(super) fn new(topic: &CStr) -> Result<Self> {
        // SAFETY: the name is valid for the call (librdkafka copies it); the object is ours.
        unsafe {
            Self::created(
                sys::rd_kafka_DeleteTopic_new(topic.as_ptr()),
                "a topic deletion",
            )
        }
    }
}

pub(super) type ConfigResource = Native<sys::rd_kafka_ConfigResource_t>;

impl ConfigResource {
    pub(super) fn topic(name: &CStr) -> Result<Self> {
        // SAFETY: the name is valid for the call (librdkafka copies it); the resource is ours.
        unsafe {
            Self::created(
                sys::rd_kafka_ConfigResource_new(
                    sys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                    name.as_ptr(),
                ),
                "a config resource",
            )
        }
    }

    /// Adds an incremental change of `key`: set to `Some(value)`, or deleted (`None`).
    pub(super) fn add_incremental(&mut self, key: &CStr, value: Option<&CStr>) -> Result<()> {
        use sys::rd_kafka_AlterConfigOpType_t as Op;
        let op = match value {
            Some(_) => Op::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
            None => Op::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE,
        };
        // SAFETY: a live resource; the strings are valid for the call (or null for no value)
        // and copied; a returned error object is ours.
        let err = unsafe {
            Native::from_raw(sys::rd_kafka_ConfigResource_add_incremental_config(
                self.as_ptr(),
                key.as_ptr(),
                op,
                value.map_or(ptr::null(), CStr::as_ptr),
            ))
        };
        match err {
            None => Ok(()),
            // SAFETY: a live error object.
            Some(err) => Err(unsafe { error_object(err.as_ptr()) }
                .unwrap_or_else(|| AdminError::InvalidRequest(format!("config {key:?} refused")))),
        }
    }
}

pub(super) type ScramAlteration = Native<sys::rd_kafka_UserScramCredentialAlteration_t>;

const SCRAM_SHA_512: sys::rd_kafka_ScramMechanism_t =
    sys::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_512;

impl ScramAlteration {
    /// Creates or replaces `user`'s SCRAM-SHA-512 credential (random salt, 8192 iterations).
    pub(super) fn upsert(user: &CStr, password: &[u8]) -> Result<Self> {
        // SAFETY: the name and password are valid for the call and copied; a null salt asks
        // for a random one; the alteration is ours.
        unsafe {
            Self::created(
                sys::rd_kafka_UserScramCredentialUpsertion_new(
                    user.as_ptr(),
                    SCRAM_SHA_512,
                    8192,
                    password.as_ptr(),
                    password.len(),
                    ptr::null(),
                    0,
                ),
                "a SCRAM upsertion",
            )
        }
    }

    /// Removes `user`'s SCRAM-SHA-512 credential.
    pub(super) fn delete(user: &CStr) -> Result<Self> {
        // SAFETY: the name is valid for the call and copied; the alteration is ours.
        unsafe {
            Self::created(
                sys::rd_kafka_UserScramCredentialDeletion_new(user.as_ptr(), SCRAM_SHA_512),
                "a SCRAM deletion",
            )
        }
    }
}

pub(super) type PartitionList = Native<sys::rd_kafka_topic_partition_list_t>;

impl PartitionList {
    /// `topic`'s partitions 0..count, each asking for its latest offset (ListOffsets).
    pub(super) fn latest(topic: &CStr, count: i32) -> Result<Self> {
        // SAFETY: the list is ours.
        let list = unsafe {
            Self::created(
                sys::rd_kafka_topic_partition_list_new(count.max(1)),
                "a partition list",
            )?
        };
        for partition in 0..count {
            // SAFETY: a live list; the name is valid for the call and copied. The element
            // returned lives in the list, which nothing else touches meanwhile.
            unsafe {
                let tp = sys::rd_kafka_topic_partition_list_add(
                    list.as_ptr(),
                    topic.as_ptr(),
                    partition,
                );
                (*tp).offset = sys::rd_kafka_OffsetSpec_t::RD_KAFKA_OFFSET_SPEC_LATEST as i64;
            }
        }
        Ok(list)
    }
}

/// The cluster resource's fixed name in Kafka's ACL model.
const CLUSTER_NAME: &CStr = c"kafka-cluster";

fn resource_type(kind: ResourceKind) -> sys::rd_kafka_ResourceType_t {
    use sys::rd_kafka_ResourceType_t as N;
    match kind {
        ResourceKind::Topic => N::RD_KAFKA_RESOURCE_TOPIC,
        ResourceKind::Group => N::RD_KAFKA_RESOURCE_GROUP,
        ResourceKind::Cluster => N::RD_KAFKA_RESOURCE_BROKER,
    }
}

fn acl_operation(op: AclOperation) -> sys::rd_kafka_AclOperation_t {
    use sys::rd_kafka_AclOperation_t as N;
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

fn operation_from_native(op: sys::rd_kafka_AclOperation_t) -> Option<AclOperation> {
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
    .find(|candidate| acl_operation(*candidate) == op)
}

fn resource_from_native(kind: sys::rd_kafka_ResourceType_t) -> Option<ResourceKind> {
    [
        ResourceKind::Topic,
        ResourceKind::Group,
        ResourceKind::Cluster,
    ]
    .into_iter()
    .find(|candidate| resource_type(*candidate) == kind)
}

/// An ACL binding, or (made with [`AclBinding::filter`]) a binding filter.
pub(super) type AclBinding = Native<sys::rd_kafka_AclBinding_t>;

impl AclBinding {
    /// The ALLOW binding of `acl`, on a literal resource name, for any host.
    pub(super) fn allow(acl: &Acl) -> Result<Self> {
        let name = match acl.resource {
            ResourceKind::Cluster => CLUSTER_NAME.to_owned(),
            _ => super::cstring(&acl.name)?,
        };
        let principal = super::cstring(&acl.principal)?;
        let mut errstr = ErrStr::new();
        // SAFETY: all strings are valid for the call and copied; errstr is ERRSTR_LEN long; the
        // binding is ours.
        let binding = unsafe {
            Self::from_raw(sys::rd_kafka_AclBinding_new(
                resource_type(acl.resource),
                name.as_ptr(),
                sys::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                principal.as_ptr(),
                c"*".as_ptr(),
                acl_operation(acl.operation),
                sys::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                errstr.as_mut_ptr(),
                ERRSTR_LEN,
            ))
        };
        binding.ok_or_else(|| errstr.into_error())
    }

    /// The filter of ALLOW bindings on literal resource names matching `filter`.
    pub(super) fn filter(filter: &AclFilter) -> Result<Self> {
        let (kind, name) = match &filter.resource {
            Some((kind, name)) => (
                resource_type(*kind),
                Some(match kind {
                    ResourceKind::Cluster => CLUSTER_NAME.to_owned(),
                    _ => super::cstring(name)?,
                }),
            ),
            None => (sys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_ANY, None),
        };
        let principal = filter
            .principal
            .as_deref()
            .map(super::cstring)
            .transpose()?;
        let operation = filter.operation.map_or(
            sys::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY,
            acl_operation,
        );
        let mut errstr = ErrStr::new();
        // SAFETY: strings valid for the call and copied, or null (match anything); errstr is
        // ERRSTR_LEN long; the filter is ours.
        let binding = unsafe {
            Self::from_raw(sys::rd_kafka_AclBindingFilter_new(
                kind,
                name.as_deref().map_or(ptr::null(), CStr::as_ptr),
                sys::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                principal.as_deref().map_or(ptr::null(), CStr::as_ptr),
                ptr::null(),
                operation,
                sys::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                errstr.as_mut_ptr(),
                ERRSTR_LEN,
            ))
        };
        binding.ok_or_else(|| errstr.into_error())
    }
}

/// A result event.
pub(super) type Event = Native<sys::rd_kafka_event_t>;

/// A read-only view of an object that librdkafka keeps in a result event: `&'e Self` is valid
/// while the event is.
///
/// # Safety
/// Implementors are `#[repr(transparent)]` over `Raw`.
unsafe trait View: Sized {
    type Raw;

    fn raw(&self) -> *const Self::Raw {
        ptr::from_ref(self).cast()
    }
}

macro_rules! views {
    ($($(#[$doc:meta])* $name:ident($raw:ty);)*) => {$(
        $(#[$doc])*
        #[repr(transparent)]
        pub(super) struct $name($raw);

        // SAFETY: transparent over the raw type.
        unsafe impl View for $name {
            type Raw = $raw;
        }
    )*};
}

views! {
    /// A topic's outcome in a CreateTopics, CreatePartitions or DeleteTopics result.
    TopicResult(sys::rd_kafka_topic_result_t);
    /// A topic in a DescribeTopics result.
    TopicInfo(sys::rd_kafka_TopicDescription_t);
    PartitionInfo(sys::rd_kafka_TopicPartitionInfo_t);
    Node(sys::rd_kafka_Node_t);
    /// A resource in a DescribeConfigs or IncrementalAlterConfigs result.
    ConfigResult(sys::rd_kafka_ConfigResource_t);
    ConfigSetting(sys::rd_kafka_ConfigEntry_t);
    AclResult(sys::rd_kafka_acl_result_t);
    /// A binding in a DescribeAcls result.
    Binding(sys::rd_kafka_AclBinding_t);
    DeleteAclsResponse(sys::rd_kafka_DeleteAcls_result_response_t);
    ScramResponse(sys::rd_kafka_AlterUserScramCredentials_result_response_t);
    ScramDescription(sys::rd_kafka_UserScramCredentialsDescription_t);
    OffsetInfo(sys::rd_kafka_ListOffsetsResultInfo_t);
    /// A group in a DescribeConsumerGroups result.
    GroupInfo(sys::rd_kafka_ConsumerGroupDescription_t);
    MemberInfo(sys::rd_kafka_MemberDescription_t);
}

/// One of librdkafka's accessors of an array that an object of type `R` owns.
type Lister<R, T> = unsafe extern "C" fn(*const R, *mut usize) -> *mut *const T;

/// The objects `list` reads from `owner`, as views.
///
/// # Safety
/// `owner` is a live object that outlives `'a`, and `list` is librdkafka's accessor of an array
/// of objects that `owner` owns.
unsafe fn list<'a, R, V: View>(owner: *const R, list: Lister<R, V::Raw>) -> Vec<&'a V> {
    let mut count = 0;
    // SAFETY: as the caller promises.
    let array = unsafe { list(owner, &mut count) };
    if array.is_null() {
        return Vec::new();
    }
    // SAFETY: librdkafka's array holds `count` pointers, which live as long as `owner`.
    let array = unsafe { std::slice::from_raw_parts(array, count) };
    array
        .iter()
        // SAFETY: each is null or a live object, valid for 'a; `V` is transparent over it.
        .filter_map(|&p| unsafe { p.cast::<V>().as_ref() })
        .collect()
}

/// One of librdkafka's accessors of an event's result of one kind (null for other kinds).
type ResultOf<R> = unsafe extern "C" fn(*mut sys::rd_kafka_event_t) -> *const R;

impl Event {
    /// The objects of the event's result that `lister` lists, none for another kind of event.
    ///
    /// # Safety
    /// `result` is librdkafka's accessor of a result kind, and `lister` its accessor of an
    /// array that the result owns.
    unsafe fn results<R, V: View>(
        &self,
        result: ResultOf<R>,
        lister: Lister<R, V::Raw>,
    ) -> Vec<&V> {
        // SAFETY: a live event; `result` is as the caller promises.
        let result = unsafe { result(self.as_ptr()) };
        if result.is_null() {
            return Vec::new();
        }
        // SAFETY: the result is the event itself, which lives while `self` is borrowed.
        unsafe { list(result, lister) }
    }

    pub(super) fn create_topics_result(&self) -> Vec<&TopicResult> {
        // SAFETY: CreateTopics' result, which owns its topic results.
        unsafe {
            self.results(
                sys::rd_kafka_event_CreateTopics_result,
                sys::rd_kafka_CreateTopics_result_topics,
            )
        }
    }

    pub(super) fn create_partitions_result(&self) -> Vec<&TopicResult> {
        // SAFETY: CreatePartitions' result, which owns its topic results.
        unsafe {
            self.results(
                sys::rd_kafka_event_CreatePartitions_result,
                sys::rd_kafka_CreatePartitions_result_topics,
            )
        }
    }

    pub(super) fn delete_topics_result(&self) -> Vec<&TopicResult> {
        // SAFETY: DeleteTopics' result, which owns its topic results.
        unsafe {
            self.results(
                sys::rd_kafka_event_DeleteTopics_result,
                sys::rd_kafka_DeleteTopics_result_topics,
            )
        }
    }

    pub(super) fn describe_topics_result(&self) -> Vec<&TopicInfo> {
        // SAFETY: DescribeTopics' result, which owns its descriptions.
        unsafe {
            self.results(
                sys::rd_kafka_event_DescribeTopics_result,
                sys::rd_kafka_DescribeTopics_result_topics,
            )
        }
    }

    pub(super) fn describe_configs_result(&self) -> Vec<&ConfigResult> {
        // SAFETY: DescribeConfigs' result, which owns its resources.
        unsafe {
            self.results(
                sys::rd_kafka_event_DescribeConfigs_result,
                sys::rd_kafka_DescribeConfigs_result_resources,
            )
        }
    }

    pub(super) fn incremental_alter_configs_result(&self) -> Vec<&ConfigResult> {
        // SAFETY: IncrementalAlterConfigs' result, which owns its resources.
        unsafe {
            self.results(
                sys::rd_kafka_event_IncrementalAlterConfigs_result,
                sys::rd_kafka_IncrementalAlterConfigs_result_resources,
            )
        }
    }

    pub(super) fn create_acls_result(&self) -> Vec<&AclResult> {
        // SAFETY: CreateAcls' result, which owns its ACL results.
        unsafe {
            self.results(
                sys::rd_kafka_event_CreateAcls_result,
                sys::rd_kafka_CreateAcls_result_acls,
            )
        }
    }

    pub(super) fn describe_acls_result(&self) -> Vec<&Binding> {
        // SAFETY: DescribeAcls' result, which owns its bindings.
        unsafe {
            self.results(
                sys::rd_kafka_event_DescribeAcls_result,
                sys::rd_kafka_DescribeAcls_result_acls,
            )
        }
    }

    pub(super) fn delete_acls_result(&self) -> Vec<&DeleteAclsResponse> {
        // SAFETY: DeleteAcls' result, which owns its responses.
        unsafe {
            self.results(
                sys::rd_kafka_event_DeleteAcls_result,
                sys::rd_kafka_DeleteAcls_result_responses,
            )
        }
    }

    pub(super) fn alter_user_scram_credentials_result(&self) -> Vec<&ScramResponse> {
        // SAFETY: AlterUserScramCredentials' result, which owns its responses.
        unsafe {
            self.results(
                sys::rd_kafka_event_AlterUserScramCredentials_result,
                sys::rd_kafka_AlterUserScramCredentials_result_responses,
            )
        }
    }

    pub(super) fn describe_user_scram_credentials_result(&self) -> Vec<&ScramDescription> {
        // SAFETY: DescribeUserScramCredentials' result, which owns its descriptions.
        unsafe {
            self.results(
                sys::rd_kafka_event_DescribeUserScramCredentials_result,
                sys::rd_kafka_DescribeUserScramCredentials_result_descriptions,
            )
        }
    }

    pub(super) fn list_offsets_result(&self) -> Vec<&OffsetInfo> {
        // SAFETY: ListOffsets' result, which owns its infos.
        unsafe {
            self.results(
                sys::rd_kafka_event_ListOffsets_result,
                sys::rd_kafka_ListOffsets_result_infos,
            )
        }
    }

    pub(super) fn describe_consumer_groups_result(&self) -> Vec<&GroupInfo> {
        // SAFETY: DescribeConsumerGroups' result, which owns its descriptions.
        unsafe {
            self.results(
                sys::rd_kafka_event_DescribeConsumerGroups_result,
                sys::rd_kafka_DescribeConsumerGroups_result_groups,
            )
        }
    }
}

// The views' accessors. Each reads the live object that `self` borrows from its event (`&self`
// keeps the event alive); the strings, arrays and error objects librdkafka returns belong to
// that object and are copied or read before the borrow ends.

impl TopicResult {
    pub(super) fn name(&self) -> String {
        // SAFETY: `self` is a live object of the event.
        unsafe { owned(sys::rd_kafka_topic_result_name(self.raw())) }
    }

    pub(super) fn error(&self) -> Option<AdminError> {
        // SAFETY: `self` is a live object of the event.
        unsafe {
            failure(
                sys::rd_kafka_topic_result_error(self.raw()),
                sys::rd_kafka_topic_result_error_string(self.raw()),
            )
        }
    }
}

impl TopicInfo {
    pub(super) fn error(&self) -> Option<AdminError> {
        // SAFETY: `self` is a live object of the event; the error object is the description's.
        unsafe { error_object(sys::rd_kafka_TopicDescription_error(self.raw())) }
    }

    pub(super) fn name(&self) -> String {
        // SAFETY: `self` is a live object of the event.
        unsafe { owned(sys::rd_kafka_TopicDescription_name(self.raw())) }
    }

    /// Kafka's topic id in base64; empty when the broker sent none.
    pub(super) fn id(&self) -> String {
        // SAFETY: `self` is a live object of the event.
        let uuid = unsafe { sys::rd_kafka_TopicDescription_topic_id(self.raw()) };
        if uuid.is_null() {
            return String::new();
        }
        // SAFETY: a live id of the description; its base64 string lives as long as it does.
        unsafe { owned(sys::rd_kafka_Uuid_base64str(uuid)) }
    }

    pub(super) fn partitions(&self) -> Vec<&PartitionInfo> {
        // SAFETY: `self` is a live object of the event.
        unsafe { list(self.raw(), sys::rd_kafka_TopicDescription_partitions) }
    }
}

impl PartitionInfo {
    pub(super) fn partition(&self) -> i32 {
        // SAFETY: `self` is a live object of the event.
        unsafe { sys::rd_kafka_TopicPartitionInfo_partition(self.raw()) }
    }

    /// The broker ids of the partition's replicas.
    pub(super) fn replicas(&self) -> Vec<i32> {
        // SAFETY: `self` is a live object of the event, which owns the replicas' nodes.
        let nodes: Vec<&Node> =
            unsafe { list(self.raw(), sys::rd_kafka_TopicPartitionInfo_replicas) };
        nodes
            .into_iter()
            // SAFETY: a live node of the event.
            .map(|node| unsafe { sys::rd_kafka_Node_id(node.raw()) })
            .collect()
    }
}

impl ConfigResult {
    pub(super) fn name(&self) -> String {
        // SAFETY: `self` is a live object of the event.
        unsafe { owned(sys::rd_kafka_ConfigResource_name(self.raw())) }
    }

    pub(super) fn error(&self) -> Option<AdminError> {
        // SAFETY: `self` is a live object of the event.
        unsafe {
            failure(
                sys::rd_kafka_ConfigResource_error(self.raw()),
                sys::rd_kafka_ConfigResource_error_string(self.raw()),
            )
        }
    }

    pub(super) fn entries(&self) -> Vec<&ConfigSetting> {
        // SAFETY: `self` is a live object of the event.
        unsafe { list(self.raw(), sys::rd_kafka_ConfigResource_configs) }
    }
}

impl ConfigSetting {
    pub(super) fn name(&self) -> String {
        // SAFETY: `self` is a live object of the event.
        unsafe { owned(sys::rd_kafka_ConfigEntry_name(self.raw())) }
    }

    pub(super) fn value(&self) -> Option<String> {
        // SAFETY: `self` is a live object of the event.
        let value = unsafe { sys::rd_kafka_ConfigEntry_value(self.raw()) };
        // SAFETY: a non-null string of the entry, NUL-terminated.
        (!value.is_null()).then(|| unsafe { owned(value) })
    }

    /// Set on the topic itself (not inherited from the broker or a default).
    pub(super) fn is_topic_config(&self) -> bool {
        // SAFETY: `self` is a live object of the event.
        let source = unsafe { sys::rd_kafka_ConfigEntry_source(self.raw()) };
        source == sys::rd_kafka_ConfigSource_t::RD_KAFKA_CONFIG_SOURCE_DYNAMIC_TOPIC_CONFIG
    }

    pub(super) fn is_sensitive(&self) -> bool {
        // SAFETY: `self` is a live object of the event.
        unsafe { sys::rd_kafka_ConfigEntry_is_sensitive(self.raw()) != 0 }
    }

    pub(super) fn is_read_only(&self) -> bool {
        // SAFETY: `self` is a live object of the event.
        unsafe { sys::rd_kafka_ConfigEntry_is_read_only(self.raw()) != 0 }
    }
}

impl AclResult {
    pub(super) fn error(&self) -> Option<AdminError> {
        // SAFETY: `self` is a live object of the event; the error object is the result's.
        unsafe { error_object(sys::rd_kafka_acl_result_error(self.raw())) }
    }
}

impl Binding {
    /// The binding as an [`Acl`]; `None` for a resource kind or operation the operator does
    /// not write.
    pub(super) fn acl(&self) -> Option<Acl> {
        let b = self.raw();
        // SAFETY: `self` is a live object of the event.
        unsafe {
            Some(Acl {
                resource: resource_from_native(sys::rd_kafka_AclBinding_restype(b))?,
                name: owned(sys::rd_kafka_AclBinding_name(b)),
                principal: owned(sys::rd_kafka_AclBinding_principal(b)),
                operation: operation_from_native(sys::rd_kafka_AclBinding_operation(b))?,
            })
        }
    }
}

impl DeleteAclsResponse {
    pub(super) fn error(&self) -> Option<AdminError> {
        // SAFETY: `self` is a live object of the event; the error object is the response's.
        unsafe { error_object(sys::rd_kafka_DeleteAcls_result_response_error(self.raw())) }
    }

    /// How many ACLs the filter matched (and deleted).
    pub(super) fn matched(&self) -> usize {
        let mut count = 0;
        // SAFETY: `self` is a live object of the event; only the count is read.
        unsafe { sys::rd_kafka_DeleteAcls_result_response_matching_acls(self.raw(), &mut count) };
        count
    }
}

impl ScramResponse {
    pub(super) fn error(&self) -> Option<AdminError> {
        // SAFETY: `self` is a live object of the event; the error object is the response's.
        unsafe {
            error_object(sys::rd_kafka_AlterUserScramCredentials_result_response_error(self.raw()))
        }
    }
}

impl ScramDescription {
    pub(super) fn error(&self) -> Option<AdminError> {
        // SAFETY: `self` is a live object of the event; the error object is the description's.
        unsafe {
            error_object(sys::rd_kafka_UserScramCredentialsDescription_error(
                self.raw(),
            ))
        }
    }

    pub(super) fn credential_count(&self) -> usize {
        // SAFETY: `self` is a live object of the event.
        unsafe {
            sys::rd_kafka_UserScramCredentialsDescription_scramcredentialinfo_count(self.raw())
        }
    }
}

impl OffsetInfo {
    fn topic_partition(&self) -> &sys::rd_kafka_topic_partition_t {
        // SAFETY: `self` is a live object of the event; the topic-partition is the info's, and
        // never null.
        unsafe { &*sys::rd_kafka_ListOffsetsResultInfo_topic_partition(self.raw()) }
    }

    pub(super) fn partition(&self) -> i32 {
        self.topic_partition().partition
    }

    pub(super) fn offset(&self) -> i64 {
        self.topic_partition().offset
    }

    /// The partition's error code; `None` for success.
    pub(super) fn error_code(&self) -> Option<RDKafkaErrorCode> {
        let err = self.topic_partition().err;
        (err != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| err.into())
    }
}

impl GroupInfo {
    pub(super) fn name(&self) -> String {
        // SAFETY: `self` is a live object of the event.
        unsafe { owned(sys::rd_kafka_ConsumerGroupDescription_group_id(self.raw())) }
    }

    pub(super) fn error(&self) -> Option<AdminError> {
        // SAFETY: `self` is a live object of the event; the error object is the description's.
        unsafe { error_object(sys::rd_kafka_ConsumerGroupDescription_error(self.raw())) }
    }

    pub(super) fn members(&self) -> Vec<&MemberInfo> {
        // SAFETY: `self` is a live object of the event.
        let count = unsafe { sys::rd_kafka_ConsumerGroupDescription_member_count(self.raw()) };
        (0..count)
            // SAFETY: `self` is a live object of the event and `i` is below its member count;
            // each member is null or a live object the description owns, valid while `self`
            // is borrowed; `MemberInfo` is transparent over it.
            .filter_map(|i| unsafe {
                sys::rd_kafka_ConsumerGroupDescription_member(self.raw(), i)
                    .cast::<MemberInfo>()
                    .as_ref()
            })
            .collect()
    }
}

impl MemberInfo {
    pub(super) fn client_id(&self) -> String {
        // SAFETY: `self` is a live object of the event.
        unsafe { owned(sys::rd_kafka_MemberDescription_client_id(self.raw())) }
    }
}
