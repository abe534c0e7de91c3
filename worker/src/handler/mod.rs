//! What the worker does with a valid order: persist it (event store), POST it (HTTP), or
//! nothing (benchmarks). One enum rather than a trait object: the set is closed and the hot path
//! stays free of boxing.

pub mod event_store;
pub mod http;

use crate::config::{ErrorClass, HandlerConfig};
use crate::order::OrderEvent;
use event_store::Stored;

/// A decoded record, with what the handlers need of its Kafka coordinates.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    /// The decoded order (the HTTP handler also forwards records of other domains).
    pub event: Option<&'a OrderEvent>,
    /// The raw record value (what the HTTP handler forwards).
    pub value: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub content_type: &'a str,
    pub correlation_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
}

/// A handler failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The sink cannot be reached: wait and try again without spending the retry budget.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The record failed; the class decides between retry and dead letter.
    #[error("{message}")]
    Failed { class: ErrorClass, message: String },
    /// The event store holds a different event under the record's order_id (class
    /// `Conflict`); the dead letter carries both content hashes.
    #[error("{message}")]
    Conflict {
        message: String,
        stored_sha256: String,
        incoming_sha256: String,
    },
}

/// Why the configured handler could not be built at start-up (the worker exits and says why).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading the database URL file {}: {source}", path.display())]
    DatabaseUrlFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Database(#[from] crate::pg::PoolSetupError),
    #[error("the handler URL {url:?} is invalid: {source}")]
    InvalidUrl {
        url: String,
        source: ::http::uri::InvalidUri,
    },
    #[error("the handler URL {0:?} must be http:// or https://")]
    UrlScheme(String),
    #[error("loading the system's CA certificates: {0}")]
    NativeRoots(#[source] std::io::Error),
}

/// What a successful handler call did besides handling its records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Handled {
    /// Redelivered records the sink already held with the same content: no-ops.
    pub duplicates: u64,
    /// Records of a batch the call left undecided (a conflict, a concurrent writer), by index
    /// in the batch: handled one at a time afterwards, which reports each.
    pub left: Vec<usize>,
}

/// `error` and every error under it, `: `-separated (`error connecting to server: Connection
/// refused (os error 111)`): the top-level message of a pool or an HTTP client often hides the
/// cause an operator needs (no such host, refused, bad password).
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors already print their source; do not say it twice.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The configured handler.
pub enum Handler {
    EventStore(event_store::EventStore),
    Http(Box<http::HttpHandler>),
    Noop,
}

impl Handler {
    /// Builds the handler of `config`; the event store connects and migrates its schema.
    pub async fn connect(config: &HandlerConfig) -> Result<Self, ConnectError> {
        match config {
            HandlerConfig::EventStore { database_url_file } => {
                let url = std::fs::read_to_string(database_url_file).map_err(|source| {
                    ConnectError::DatabaseUrlFile {
                        path: database_url_file.clone(),
                        source,
                    }
                })?;
                Ok(Self::EventStore(event_store::EventStore::new(url.trim())?))
            }
            HandlerConfig::Http { url, timeout_ms } => Ok(Self::Http(Box::new(
                http::HttpHandler::new(url, std::time::Duration::from_millis(*timeout_ms))?,
            ))),
            HandlerConfig::Noop => Ok(Self::Noop),
        }
    }

    /// Makes the sink ready to take records (schema migrations); `Unavailable` while it is
    /// unreachable.
    pub async fn prepare(&self) -> Result<(), HandlerError> {
        match self {
            Self::EventStore(store) => store.migrate().await,
            _ => Ok(()),
        }
    }

    /// Handles one record.
    pub async fn handle(&self, delivery: &Delivery<'_>) -> Result<Handled, HandlerError> {
        match self {
            Self::EventStore(store) => {
                let stored = store.store(std::slice::from_ref(delivery)).await?;
                match stored.into_iter().next() {
                    Some(Stored::New) | None => Ok(Handled::default()),
                    Some(Stored::Duplicate) => Ok(Handled {
                        duplicates: 1,
                        ..Handled::default()
                    }),
                    Some(Stored::Conflict {
                        stored_sha256,
                        incoming_sha256,
                    }) => Err(HandlerError::Conflict {
                        message: format!(
                            "order_id {} is already stored with different content (stored \
                             sha256 {stored_sha256}, incoming sha256 {incoming_sha256}): not a \
                             redelivery",
                            delivery.event.map_or("", |e| e.order_id.as_str())
                        ),
                        stored_sha256,
                        incoming_sha256,
                    }),
                    Some(Stored::Raced) => Err(HandlerError::Failed {
                        class: ErrorClass::Transient,
                        message: "another writer stored this order_id at the same moment".into(),
                    }),
                }
            }
            Self::Http(http) => http.post(delivery).await.map(|()| Handled::default()),
            Self::Noop => Ok(Handled::default()),
        }
    }

    /// Handles several records of one partition at once when the sink gains from it.
    pub async fn handle_batch(&self, deliveries: &[Delivery<'_>]) -> Result<Handled, HandlerError> {
        match self {
            Self::EventStore(store) => {
                let mut handled = Handled::default();
                for (i, stored) in store.store(deliveries).await?.into_iter().enumerate() {
                    match stored {
                        Stored::New => {}
                        Stored::Duplicate => handled.duplicates += 1,
                        Stored::Conflict { .. } | Stored::Raced => handled.left.push(i),
                    }
                }
                Ok(handled)
            }
            Self::Noop => Ok(Handled::default()),
            Self::Http(_) => {
                for delivery in deliveries {
                    self.handle(delivery).await?;
                }
                Ok(Handled::default())
            }
        }
    }

    /// Whether records must be order events (the event store), or are forwarded as they are
    /// once their encoding checks out (HTTP).
    pub fn needs_orders(&self) -> bool {
        !matches!(self, Self::Http(_))
    }

    /// Whether `handle_batch` does better than one call per record.
    pub fn batches(&self) -> bool {
        matches!(self, Self::EventStore(_) | Self::Noop)
    }
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("error connecting to server")]
    struct Connect(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("pool: {0}")]
    struct Pool(#[source] Connect);

    #[test]
    fn the_cause_under_a_vague_error_is_printed_once() {
        let refused =
            || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        assert_eq!(
            with_causes(&Connect(refused())),
            "error connecting to server: Connection refused"
        );
        // A message that already ends with its source's text does not repeat it.
        assert_eq!(
            with_causes(&Pool(Connect(refused()))),
            "pool: error connecting to server: Connection refused"
        );
    }
}
