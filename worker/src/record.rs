//! Records as the consumer runtime holds them, and the queue it reads them from.
//!
//! librdkafka hands out fetched records that point into its fetch buffers. [`Record`] keeps
//! them there (no copy, no allocation per record) until the record's outcome is final. A record
//! that has to wait (a retry's backoff, a key parked behind a retrying record, a retry copy not
//! yet due, a record its batch left to run alone) is copied out first with [`Record::detach`]:
//! one held record would keep its whole fetch response in memory.
//!
//! [`RecordQueue`] is the queue every assigned partition forwards its fetched records to. The
//! poll thread takes them in batches (one call for up to a few hundred records) while the
//! consumer's own queue keeps the group's events (rebalances, commit results, errors), served
//! by `BaseConsumer::poll` as before.
//!
//! librdkafka requires every record to be destroyed before the consumer is closed: the runtime
//! drops its records before its last reference to the consumer.

use std::ffi::{CStr, CString, c_void};
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message};
use rdkafka::{ClientContext, Timestamp};

/// A consumed record: in librdkafka's fetch buffer, or copied out of it.
pub struct Record(Inner);

enum Inner {
    Fetched {
        message: NonNull<rdsys::rd_kafka_message_t>,
        /// Parsed once when the record was taken, so reading them needs no `&mut`.
        headers: Option<NonNull<rdsys::rd_kafka_headers_t>>,
    },
    Copied(Box<Copied>),
}

struct Copied {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Timestamp,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    /// Owned: a copy made with `rd_kafka_headers_copy`.
    headers: Option<NonNull<rdsys::rd_kafka_headers_t>>,
}

// SAFETY: a fetched message is only read after it was taken from the queue (its headers are
// parsed at that point), and librdkafka's message and header destructors may run on any thread.
unsafe impl Send for Record {}
// SAFETY: shared references only read the message and its parsed headers, which nothing mutates
// while a `&Record` exists (`payload_mut` takes `&mut self`).
unsafe impl Sync for Record {}

impl Record {
    /// Takes ownership of a message returned by librdkafka's consume calls.
    ///
    /// # Safety
    /// `message` is a valid consumed message that nothing else destroys.
    unsafe fn from_fetched(message: NonNull<rdsys::rd_kafka_message_t>) -> Self {
        let mut headers = ptr::null_mut();
        // SAFETY: the message is valid; the headers belong to it and live as long as it does.
        let found = unsafe { rdsys::rd_kafka_message_headers(message.as_ptr(), &mut headers) };
        let headers = if found == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            NonNull::new(headers)
        } else {
            None
        };
        Self(Inner::Fetched { message, headers })
    }

    /// A copy of a message borrowed from `BaseConsumer::poll` (one fetched before its
    /// partition was forwarded to a [`RecordQueue`]).
    pub fn copy_of(message: &BorrowedMessage<'_>) -> Self {
        let Some(native) = NonNull::new(message.ptr()) else {
            unreachable!("a borrowed message has a native message");
        };
        // SAFETY: the message is valid while borrowed; the view never destroys it.
        let view = ManuallyDrop::new(unsafe { Self::from_fetched(native) });
        Self(Inner::Copied(Box::new(view.copied())))
    }

    /// The record copied out of librdkafka's fetch buffer (which it no longer holds); a copy
    /// stays as it is.
    pub fn detach(self) -> Self {
        match self.0 {
            Inner::Copied(_) => self,
            Inner::Fetched { .. } => Self(Inner::Copied(Box::new(self.copied()))),
        }
    }

    fn copied(&self) -> Copied {
        Copied {
            topic: self.topic().to_owned(),
            partition: self.partition(),
            offset: self.offset(),
            timestamp: self.timestamp(),
            key: self.key().map(<[u8]>::to_vec),
            payload: self.payload().map(<[u8]>::to_vec),
            headers: self.native_headers().and_then(|h| {
                // SAFETY: the headers are valid while `self` lives; the copy is ours.
                NonNull::new(unsafe { rdsys::rd_kafka_headers_copy(h.as_ptr()) })
            }),
        }
    }

    /// Whether the record still points into librdkafka's fetch buffer.
    pub fn is_fetched(&self) -> bool {
        matches!(self.0, Inner::Fetched { .. })
    }

    fn native_headers(&self) -> Option<NonNull<rdsys::rd_kafka_headers_t>> {
        match &self.0 {
            Inner::Fetched { headers, .. } => *headers,
            Inner::Copied(c) => c.headers,
        }
    }

    fn fetched(&self) -> Option<&rdsys::rd_kafka_message_t> {
        match &self.0 {
            // SAFETY: the message lives as long as `self`.
            Inner::Fetched { message, .. } => Some(unsafe { message.as_ref() }),
            Inner::Copied(_) => None,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        match &self.0 {
            // SAFETY: we own the message; its headers go with it.
            Inner::Fetched { message, .. } => unsafe {
                rdsys::rd_kafka_message_destroy(message.as_ptr())
            },
            Inner::Copied(c) => {
                if let Some(h) = c.headers {
                    // SAFETY: the copy is ours.
                    unsafe { rdsys::rd_kafka_headers_destroy(h.as_ptr()) }
                }
            }
        }
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.topic())
            .field("partition", &self.partition())
            .field("offset", &self.offset())
            .field("fetched", &self.is_fetched())
            .finish()
    }
}

/// # Safety
/// `data` is null or points to `len` bytes that outlive `'a`.
unsafe fn bytes<'a>(data: *const c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: as the caller promises.
    (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

impl Message for Record {
    type Headers = RecordHeaders;

    fn key(&self) -> Option<&[u8]> {
        match &self.0 {
            // SAFETY: the key lives in the message, which lives as long as `self`.
            Inner::Fetched { message, .. } => unsafe {
                bytes(message.as_ref().key, message.as_ref().key_len)
            },
            Inner::Copied(c) => c.key.as_deref(),
        }
    }

    fn payload(&self) -> Option<&[u8]> {
        match &self.0 {
            // SAFETY: the payload lives in the message, which lives as long as `self`.
            Inner::Fetched { message, .. } => unsafe {
                bytes(message.as_ref().payload, message.as_ref().len)
            },
            Inner::Copied(c) => c.payload.as_deref(),
        }
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.0 {
            Inner::Fetched { message, .. } => {
                // SAFETY: we own the message, and `&mut self` makes this the only view.
                let m = unsafe { message.as_ref() };
                (!m.payload.is_null()).then(|| {
                    // SAFETY: the payload is `len` bytes in the message, which we own and
                    // `&mut self` borrows exclusively.
                    unsafe { std::slice::from_raw_parts_mut(m.payload.cast(), m.len) }
                })
            }
            Inner::Copied(c) => c.payload.as_deref_mut(),
        }
    }

    fn topic(&self) -> &str {
        match &self.0 {
            Inner::Fetched { message, .. } => {
                // SAFETY: the message holds a reference to its topic handle.
                let name =
                    unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(message.as_ref().rkt)) };
                // Kafka topic names are ASCII.
                name.to_str().unwrap_or_default()
            }
            Inner::Copied(c) => &c.topic,
        }
    }

    fn partition(&self) -> i32 {
        match &self.0 {
            // SAFETY: the message lives as long as `self`.
            Inner::Fetched { message, .. } => unsafe { message.as_ref().partition },
            Inner::Copied(c) => c.partition,
        }
    }

    fn offset(&self) -> i64 {
        match &self.0 {
            // SAFETY: the message lives as long as `self`.
            Inner::Fetched { message, .. } => unsafe { message.as_ref().offset },
            Inner::Copied(c) => c.offset,
        }
    }

    fn timestamp(&self) -> Timestamp {
        use rdsys::rd_kafka_timestamp_type_t as Kind;
        match &self.0 {
            Inner::Fetched { message, .. } => {
                let mut kind = Kind::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
                // SAFETY: the message lives as long as `self`.
                let ms = unsafe { rdsys::rd_kafka_message_timestamp(message.as_ptr(), &mut kind) };
                match kind {
                    _ if ms == -1 => Timestamp::NotAvailable,
                    Kind::RD_KAFKA_TIMESTAMP_CREATE_TIME => Timestamp::CreateTime(ms),
                    Kind::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => Timestamp::LogAppendTime(ms),
                    Kind::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => Timestamp::NotAvailable,
                }
            }
            Inner::Copied(c) => c.timestamp,
        }
    }

    fn headers(&self) -> Option<&RecordHeaders> {
        // SAFETY: `RecordHeaders` is a transparent view of librdkafka's headers, which live as
        // long as `self`.
        self.native_headers()
            .map(|h| unsafe { &*(h.as_ptr() as *const RecordHeaders) })
    }
}

/// A record's headers, read in place.
#[repr(transparent)]
pub struct RecordHeaders(rdsys::rd_kafka_headers_t);

impl RecordHeaders {
    fn native(&self) -> *const rdsys::rd_kafka_headers_t {
        &self.0
    }
}

impl Headers for RecordHeaders {
    fn count(&self) -> usize {
        // SAFETY: the headers are valid while `self` is borrowed.
        unsafe { rdsys::rd_kafka_header_cnt(self.native()) }
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let mut name = ptr::null();
        let mut value = ptr::null();
        let mut size = 0;
        // SAFETY: the headers are valid while `self` is borrowed; the name and value they return
        // live as long as they do.
        let err = unsafe {
            rdsys::rd_kafka_header_get_all(self.native(), idx, &mut name, &mut value, &mut size)
        };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka's header names are NUL-terminated.
        let key = unsafe { CStr::from_ptr(name) }
            .to_str()
            .unwrap_or("\u{fffd}");
        // SAFETY: the value is null or `size` bytes that live as long as the headers.
        let value = unsafe { bytes(value, size) };
        Some(Header { key, value })
    }
}

/// Where every assigned partition's fetched records go, read in batches.
pub struct RecordQueue {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// The consumer's own queue, looked at for waiting events.
    events: NonNull<rdsys::rd_kafka_queue_t>,
    client: NonNull<rdsys::rd_kafka_t>,
}

// SAFETY: librdkafka's queues are thread-safe.
unsafe impl Send for RecordQueue {}
// SAFETY: as for `Send`: every method calls librdkafka's thread-safe queue functions.
unsafe impl Sync for RecordQueue {}

/// A fetch error that librdkafka reported in place of a record.
#[derive(Debug)]
pub struct FetchError {
    pub topic: String,
    pub partition: i32,
    pub message: String,
}

impl RecordQueue {
    /// A new queue of `client`'s, a consumer in a group.
    ///
    /// # Safety
    /// The queue keeps `client`'s native handle: it must be dropped before the client is
    /// destroyed.
    pub unsafe fn new<C: ClientContext>(client: &rdkafka::client::Client<C>) -> Self {
        let client = NonNull::new(client.native_ptr()).expect("a client handle");
        // SAFETY: the client is valid; both handles are ours until dropped.
        let (queue, events) = unsafe {
            (
                rdsys::rd_kafka_queue_new(client.as_ptr()),
                rdsys::rd_kafka_queue_get_consumer(client.as_ptr()),
            )
        };
        Self {
            queue: NonNull::new(queue).expect("librdkafka creates queues"),
            events: NonNull::new(events).expect("a consumer in a group has a consumer queue"),
            client,
        }
    }

    /// Events (or early records) waiting on the consumer's own queue.
    pub fn events_waiting(&self) -> usize {
        // SAFETY: the handle is valid.
        unsafe { rdsys::rd_kafka_queue_length(self.events.as_ptr()) }
    }

    /// Sends the fetched records of `topic`'s `partition` here from now on (librdkafka keeps
    /// this across reassignments of the partition). Records fetched before stay on the
    /// consumer's queue.
    pub fn forward(&self, topic: &str, partition: i32) {
        let Ok(topic) = CString::new(topic) else {
            return;
        };
        // SAFETY: the client is valid; the partition's queue handle is released at once, the
        // forwarding stays.
        unsafe {
            let source = rdsys::rd_kafka_queue_get_partition(
                self.client.as_ptr(),
                topic.as_ptr(),
                partition,
            );
            if !source.is_null() {
                rdsys::rd_kafka_queue_forward(source, self.queue.as_ptr());
                rdsys::rd_kafka_queue_destroy(source);
            }
        }
    }

    /// Waits up to `timeout` for the first record, then takes what is already there, up to
    /// `max` records in all, appending them to `out`. Fetch errors are returned, not appended.
    pub fn consume(&self, timeout: Duration, max: usize, out: &mut Vec<Record>) -> Vec<FetchError> {
        let mut messages: Vec<*mut rdsys::rd_kafka_message_t> = Vec::with_capacity(max);
        let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `messages` has room for `max` pointers; librdkafka writes the count it returns.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                messages.as_mut_ptr(),
                max,
            )
        };
        let mut errors = Vec::new();
        let Ok(n) = usize::try_from(n) else {
            return errors;
        };
        // SAFETY: librdkafka wrote `n` message pointers.
        unsafe { messages.set_len(n) };
        out.reserve(n);
        for message in messages {
            let Some(message) = NonNull::new(message) else {
                continue;
            };
            // SAFETY: each message returned is ours to destroy.
            let record = unsafe { Record::from_fetched(message) };
            let err = record.fetched().map(|m| m.err);
            match err {
                Some(err) if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {
                    // SAFETY: librdkafka's error strings are static and NUL-terminated.
                    let text = unsafe { CStr::from_ptr(rdsys::rd_kafka_err2str(err)) };
                    let detail = record
                        .payload()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    errors.push(FetchError {
                        topic: record.topic().to_owned(),
                        partition: record.partition(),
                        message: format!("{}: {detail}", text.to_string_lossy()),
                    });
                }
                _ => out.push(record),
            }
        }
        errors
    }
}

impl Drop for RecordQueue {
    fn drop(&mut self) {
        // SAFETY: the handles are ours; records still queued are destroyed with the queue.
        unsafe {
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
            rdsys::rd_kafka_queue_destroy(self.events.as_ptr());
        }
    }
}
