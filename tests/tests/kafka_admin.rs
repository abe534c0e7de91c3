//! The controller's Kafka admin adapter, every call against the real broker's SASL_SSL listener
//! with the StandardAuthorizer on.

use std::collections::BTreeMap;
use std::time::Duration;

use pubsubkafka_controller::kafka::{
    Acl, AclFilter, AclOperation, AdminError, KafkaAdmin, ResourceKind,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use testenv::KafkaInfo;

fn admin(kafka: &KafkaInfo) -> KafkaAdmin {
    let config = kafka
        .admin_connection()
        .client_config()
        .expect("admin config");
    KafkaAdmin::new(&config, Duration::from_secs(10)).expect("admin client")
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Concurrent calls share admin requests (the adapter batches them): each caller still gets
/// its own topic's answer, a refusal reaches only the caller it concerns, and a topic named
/// by two callers at once is created once.
#[tokio::test]
async fn concurrent_calls_each_get_their_own_answer() {
    let kafka = &testenv::shared().kafka;
    let admin = admin(kafka);
    let prefix = testenv::unique_name("admin-batch");
    let names: Vec<String> = (0..120).map(|i| format!("{prefix}-{i}")).collect();
    let partitions = |i: usize| 1 + (i % 3) as i32;

    let absent = futures::future::join_all(names.iter().map(|n| admin.describe_topic(n))).await;
    assert!(
        absent.iter().all(|d| matches!(d, Ok(None))),
        "none exists yet"
    );

    // Every topic once, the first ten a second time, one with a config Kafka refuses, and one
    // with more partitions than librdkafka builds a request for.
    let bad = format!("{prefix}-bad");
    let huge = format!("{prefix}-huge");
    let retention = strings(&[("retention.ms", "3600000")]);
    let refused = strings(&[("cleanup.policy", "no-such-policy")]);
    let creates = names
        .iter()
        .enumerate()
        .chain(names.iter().enumerate().take(10))
        .map(|(i, n)| (n.clone(), partitions(i), &retention))
        .chain([
            (bad.clone(), 1, &refused),
            (huge.clone(), 100_001, &retention),
        ]);
    let created = futures::future::join_all(creates.map(|(n, p, config)| {
        let admin = admin.clone();
        async move { (n.clone(), admin.create_topic(&n, p, 1, config).await) }
    }))
    .await;
    let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, result) in created {
        let outcome = match result {
            Ok(()) => "created".to_owned(),
            Err(e) => format!("{:?}", e.code()),
        };
        outcomes.entry(n).or_default().push(outcome);
    }
    for n in &names[..10] {
        let mut twice = outcomes[n].clone();
        twice.sort();
        assert_eq!(
            twice,
            ["Some(TopicAlreadyExists)", "created"],
            "{n}: created once, the second caller told it exists"
        );
    }
    for n in &names[10..] {
        assert_eq!(outcomes[n], ["created"], "{n}");
    }
    assert_eq!(
        outcomes[&bad],
        ["Some(InvalidConfig)"],
        "the refusal reaches its own caller only"
    );
    assert_eq!(
        outcomes[&huge],
        ["None"],
        "refused before the request, alone: the others went"
    );

    let described = testenv::eventually("every topic described", Duration::from_secs(20), || {
        let admin = admin.clone();
        let names = names.clone();
        async move {
            let all =
                futures::future::join_all(names.iter().map(|n| admin.describe_topic(n))).await;
            let mut out = Vec::new();
            for (n, d) in names.iter().zip(all) {
                match d.map_err(|e| e.to_string())? {
                    Some(d) => out.push(d),
                    None => return Err(format!("{n} not described yet")),
                }
            }
            Ok(out)
        }
    })
    .await;
    for (i, (n, d)) in names.iter().zip(&described).enumerate() {
        assert_eq!(&d.name, n, "each caller gets its own topic");
        assert_eq!(d.partition_count(), partitions(i), "{n}");
    }
    let configs =
        futures::future::join_all(names.iter().map(|n| admin.describe_topic_config(n))).await;
    for (n, config) in names.iter().zip(configs) {
        let config = config.expect("describe config");
        assert_eq!(
            config["retention.ms"].value.as_deref(),
            Some("3600000"),
            "{n}"
        );
    }

    for n in &names {
        admin.delete_topic(n).await.expect("delete");
    }
}

#[tokio::test]
async fn topics_are_created_described_grown_reconfigured_and_deleted() {
    let kafka = &testenv::shared().kafka;
    let admin = admin(kafka);
    let topic = testenv::unique_name("admin-topic");

    assert_eq!(admin.describe_topic(&topic).await.unwrap(), None);
    admin
        .create_topic(&topic, 3, 1, &strings(&[("retention.ms", "3600000")]))
        .await
        .expect("create");
    let described =
        testenv::eventually("the topic to be described", Duration::from_secs(10), || {
            let admin = admin.clone();
            let topic = topic.clone();
            async move {
                admin
                    .describe_topic(&topic)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("absent".to_owned())
            }
        })
        .await;
    assert_eq!(described.partition_count(), 3);
    assert_eq!(described.replication_factor(), 1);
    assert_eq!(
        described.id.len(),
        22,
        "a base64 topic id: {:?}",
        described.id
    );

    let config = admin
        .describe_topic_config(&topic)
        .await
        .expect("describe config");
    let retention = &config["retention.ms"];
    assert_eq!(retention.value.as_deref(), Some("3600000"));
    assert!(retention.dynamic, "set on the topic");
    assert!(
        !config["segment.bytes"].dynamic,
        "inherited from the broker"
    );

    admin
        .alter_topic_config(
            &topic,
            &strings(&[("cleanup.policy", "compact")]),
            &["retention.ms".to_owned()],
        )
        .await
        .expect("incremental alter");
    // A broker answers from its copy of the metadata, which can trail the change.
    testenv::eventually("the altered config", Duration::from_secs(10), || {
        let (admin, topic) = (admin.clone(), topic.clone());
        async move {
            let config = admin
                .describe_topic_config(&topic)
                .await
                .map_err(|e| e.to_string())?;
            (config["cleanup.policy"].value.as_deref() == Some("compact")
                && config["cleanup.policy"].dynamic
                && !config["retention.ms"].dynamic)
                .then_some(())
                .ok_or(format!(
                    "cleanup.policy {:?}, retention.ms {:?}",
                    config["cleanup.policy"], config["retention.ms"]
                ))
        }
    })
    .await;

    admin.create_partitions(&topic, 6).await.expect("grow");
    let grown = testenv::eventually("6 partitions", Duration::from_secs(10), || {
        let admin = admin.clone();
        let topic = topic.clone();
        async move {
            let d = admin
                .describe_topic(&topic)
                .await
                .map_err(|e| e.to_string())?;
            d.filter(|d| d.partition_count() == 6)
                .ok_or("not yet".to_owned())
        }
    })
    .await;
    assert_eq!(grown.id, described.id, "same topic");
    // Growing to what the topic has, or to fewer, is refused by Kafka; that is no error to
    // a caller whose metadata trailed its own earlier growth, and nothing changes.
    assert!(
        !admin
            .grow_partitions(&topic, 6)
            .await
            .expect("grow to 6 again"),
        "already 6"
    );
    assert!(
        !admin.grow_partitions(&topic, 4).await.expect("grow to 4"),
        "more than 4 already"
    );
    assert!(admin.grow_partitions(&topic, 7).await.expect("grow to 7"));
    let missing = testenv::unique_name("admin-missing");
    assert!(
        admin.grow_partitions(&missing, 2).await.is_err(),
        "a topic that does not exist is still an error"
    );

    admin.delete_topic(&topic).await.expect("delete");
    admin
        .delete_topic(&topic)
        .await
        .expect("deleting a deleted topic is fine");
    testenv::eventually("the topic to be gone", Duration::from_secs(10), || {
        let admin = admin.clone();
        let topic = topic.clone();
        async move {
            match admin.describe_topic(&topic).await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn refusals_carry_the_brokers_message() {
    let kafka = &testenv::shared().kafka;
    let admin = admin(kafka);
    let topic = testenv::unique_name("admin-invalid");

    let err = admin
        .create_topic(&topic, 1, 1, &strings(&[("retention.ms", "forever")]))
        .await
        .expect_err("a non-numeric retention is refused");
    match &err {
        AdminError::Rejected { code, message } => {
            assert_eq!(*code, RDKafkaErrorCode::InvalidConfig);
            assert!(message.contains("retention.ms"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    let err = admin
        .create_topic(&topic, 1, 3, &BTreeMap::new())
        .await
        .expect_err("RF 3 on one broker is refused");
    assert_eq!(
        err.code(),
        Some(RDKafkaErrorCode::InvalidReplicationFactor),
        "{err}"
    );

    admin
        .create_topic(&topic, 1, 1, &BTreeMap::new())
        .await
        .unwrap();
    let err = admin
        .alter_topic_config(&topic, &strings(&[("no.such.config", "1")]), &[])
        .await
        .expect_err("an unknown key is refused");
    assert!(matches!(err, AdminError::Rejected { .. }), "{err:?}");
    admin.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn scram_users_and_acls_grant_and_revoke_access() {
    let kafka = &testenv::shared().kafka;
    let admin = admin(kafka);
    let topic = testenv::unique_name("admin-acl");
    let user = testenv::unique_name("producer");
    let password = testenv::random_token(24);
    admin
        .create_topic(&topic, 1, 1, &BTreeMap::new())
        .await
        .unwrap();
    admin
        .upsert_scram_user(&user, &password)
        .await
        .expect("create SCRAM user");

    // Authenticated, but no ACL yet.
    let denied = kafka.produce_as(&user, &password, &topic).await;
    assert!(
        matches!(
            denied,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::TopicAuthorizationFailed
            ))
        ),
        "{denied:?}"
    );

    let principal = format!("User:{user}");
    let acls: Vec<Acl> = [AclOperation::Write, AclOperation::Describe]
        .into_iter()
        .map(|operation| Acl {
            resource: ResourceKind::Topic,
            name: topic.clone(),
            principal: principal.clone(),
            operation,
        })
        .collect();
    admin.create_acls(&acls).await.expect("create ACLs");
    // A broker answers DescribeAcls from its own copy of the metadata log,
    // which may not hold a binding the controller has just committed.
    let mut expected = acls.clone();
    expected.sort();
    testenv::eventually(
        "the new bindings to be described",
        Duration::from_secs(15),
        || async {
            let mut described = admin
                .describe_acls(&AclFilter {
                    resource: Some((ResourceKind::Topic, topic.clone())),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            described.sort();
            if described == expected {
                Ok(())
            } else {
                Err(format!("described {described:?}"))
            }
        },
    )
    .await;

    testenv::eventually(
        "the write to be allowed",
        Duration::from_secs(15),
        || async {
            kafka
                .produce_as(&user, &password, &topic)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;

    let deleted = admin
        .delete_acls(&[AclFilter {
            resource: Some((ResourceKind::Topic, topic.clone())),
            principal: Some(principal.clone()),
            operation: None,
        }])
        .await
        .expect("delete ACLs");
    assert_eq!(deleted, 2);
    testenv::eventually(
        "the write to be denied again",
        Duration::from_secs(15),
        || async {
            match kafka.produce_as(&user, &password, &topic).await {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)) => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // Without its credential the user cannot log in at all.
    admin
        .delete_scram_user(&user)
        .await
        .expect("delete SCRAM user");
    admin
        .delete_scram_user(&user)
        .await
        .expect("deleting twice is fine");
    testenv::eventually("the login to fail", Duration::from_secs(15), || async {
        let consumer: BaseConsumer = kafka
            .sasl_config(&user, &password)
            .create()
            .map_err(|e| e.to_string())?;
        match consumer.fetch_metadata(Some(&topic), Duration::from_secs(3)) {
            Err(_) => Ok(()),
            Ok(_) => Err("still logs in".to_owned()),
        }
    })
    .await;
    admin.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn group_offsets_and_end_offsets_measure_lag() {
    let kafka = &testenv::shared().kafka;
    let admin = admin(kafka);
    let topic = testenv::unique_name("admin-lag");
    let group = testenv::unique_name("admin-group");
    admin
        .create_topic(&topic, 3, 1, &BTreeMap::new())
        .await
        .unwrap();

    let producer: FutureProducer = kafka.admin_config().create().unwrap();
    for i in 0..30 {
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(i % 3)
                    .key("k")
                    .payload("v"),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
    }
    let ends = admin.end_offsets(&topic, 3).await.expect("end offsets");
    assert_eq!(ends, BTreeMap::from([(0, 10), (1, 10), (2, 10)]));

    let nothing = admin
        .group_offsets(&group, &topic, 3)
        .await
        .expect("group offsets");
    assert_eq!(nothing, BTreeMap::from([(0, None), (1, None), (2, None)]));

    let consumer: BaseConsumer = kafka
        .admin_config()
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut commits = TopicPartitionList::new();
    commits
        .add_partition_offset(&topic, 0, Offset::Offset(4))
        .unwrap();
    commits
        .add_partition_offset(&topic, 2, Offset::Offset(10))
        .unwrap();
    consumer.commit(&commits, CommitMode::Sync).expect("commit");

    let committed = admin
        .group_offsets(&group, &topic, 3)
        .await
        .expect("group offsets");
    assert_eq!(
        committed,
        BTreeMap::from([(0, Some(4)), (1, None), (2, Some(10))])
    );
    admin.delete_topic(&topic).await.unwrap();
}

/// A credential rotation asks which client ids a group's members connect with. A group of the
/// consumer protocol (KIP-848) is known only to ConsumerGroupDescribe: the classic
/// DescribeGroups answers it as Dead with no members, which would retire a credential still in
/// use. A classic group is still described, and a group that does not exist has no members.
#[tokio::test]
async fn group_client_ids_name_the_members_of_both_group_protocols() {
    let kafka = &testenv::shared().kafka;
    let admin = admin(kafka);
    let topic = testenv::unique_name("admin-members");
    admin
        .create_topic(&topic, 2, 1, &BTreeMap::new())
        .await
        .unwrap();

    // (group, client id, group.protocol)
    let groups = [
        (
            testenv::unique_name("admin-group-consumer"),
            testenv::unique_name("member-consumer"),
            "consumer",
        ),
        (
            testenv::unique_name("admin-group-classic"),
            testenv::unique_name("member-classic"),
            "classic",
        ),
    ];
    let consumers: Vec<BaseConsumer> = groups
        .iter()
        .map(|(group, client_id, protocol)| {
            let consumer: BaseConsumer = kafka
                .admin_config()
                .set("group.id", group)
                .set("client.id", client_id)
                .set("group.protocol", *protocol)
                .create()
                .expect("consumer");
            consumer.subscribe(&[&topic]).expect("subscribe");
            consumer
        })
        .collect();
    for ((group, _, protocol), consumer) in groups.iter().zip(&consumers) {
        testenv::eventually(
            &format!("a {protocol} member of {group} to be assigned partitions"),
            Duration::from_secs(60),
            || async {
                // Serves the group protocol's callbacks; no record is produced.
                if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
                    return Err(e.to_string());
                }
                let assigned = consumer.assignment().map_err(|e| e.to_string())?;
                if assigned.count() > 0 {
                    Ok(())
                } else {
                    Err("no assignment yet".to_owned())
                }
            },
        )
        .await;
    }

    for (group, client_id, protocol) in &groups {
        let members = admin
            .group_client_ids(group)
            .await
            .unwrap_or_else(|e| panic!("describing the {protocol} group {group}: {e}"));
        assert_eq!(
            members,
            std::slice::from_ref(client_id),
            "the {protocol} group's one member"
        );
    }
    let absent = admin
        .group_client_ids(&testenv::unique_name("admin-group-absent"))
        .await
        .expect("describing a group that does not exist");
    assert_eq!(absent, Vec::<String>::new());

    drop(consumers);
    admin.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_cluster_is_reported_as_unavailable() {
    let port = testenv::free_port().unwrap();
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", format!("127.0.0.1:{port}"));
    let admin = KafkaAdmin::new(&config, Duration::from_secs(2)).unwrap();
    let started = std::time::Instant::now();
    let err = admin
        .describe_topic("orders")
        .await
        .expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "gave up in time"
    );
}
