//! PubSubKafka's control plane: the custom resource types, one reconciler per kind, and the
//! Kafka admin adapter they share.
