//! Kafka principals the operator makes for its workloads (OrderConsumer, OrderGateway): a
//! SCRAM credential, the Secret the pods read it from, and exactly the ACLs the workload needs.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::info;

use crate::context::Context;
use crate::crd::{OrderConsumer, OrderGateway};
use crate::error::Error;
use crate::kafka::{Acl, AclFilter, AdminError, KafkaAdmin};
use crate::rotation::{self, Credentialed};

/// One workload's principal: `User:<user>`, its credentials in Secret `secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// SCRAM user name.
    pub user: String,
    /// `User:<user>`.
    pub principal: String,
    /// The credentials Secret, in the workload's namespace.
    pub secret: String,
}

impl Principal {
    /// The principal workload `owner`'s pods use: the username its status.credentials names
    /// when that is one of its two ([`crate::rotation`]), else [`Principal::base`].
    pub fn of<K: Credentialed>(owner: &K) -> Self {
        let base = Self::base(owner);
        match owner.credentials_status() {
            Some(c) if rotation::is_own(&base.user, &c.active_user) => {
                base.with_user(&c.active_user)
            }
            _ => base,
        }
    }

    /// The same principal under another username (the Secret stays).
    pub fn with_user(self, user: &str) -> Self {
        Self {
            user: user.to_owned(),
            principal: format!("User:{user}"),
            secret: self.secret,
        }
    }

    /// The first principal of workload `owner`: user `pubsubkafka.<namespace>.<name>`, its
    /// credentials in Secret `<name>-kafka-credentials`. An OrderConsumer and an OrderGateway
    /// of one name would share it, which [`crate::ownership::consumer_keeps_principal`] settles.
    pub fn base<K: Resource>(owner: &K) -> Self {
        let name = owner.name_any();
        let user = format!(
            "pubsubkafka.{}.{}",
            owner.namespace().unwrap_or_default(),
            name
        );
        Self {
            principal: format!("User:{user}"),
            user,
            secret: format!("{name}-kafka-credentials"),
        }
    }
}

/// The refusal of a workload whose principal `holder` (the workload of the other kind with
/// the same name that claimed it first, "OrderGateway shop/orders") holds; `this` names the
/// refused kind ("consumer", "gateway").
pub fn held_by(principal: &Principal, holder: &str, this: &str) -> Error {
    Error::Conflict {
        message: format!(
            "Kafka principal {} belongs to {holder}, which claimed it first; rename this {this}",
            principal.principal
        ),
    }
}

/// Whether `consumer` rather than the OrderGateway `gateway` of the same name holds the
/// principal both would use ([`crate::ownership::consumer_keeps_principal`]): the workload
/// controlling their shared credentials Secret, else the older. Reads only the Secret's
/// metadata, never its keys.
pub async fn consumer_holds(
    ctx: &Context,
    consumer: &OrderConsumer,
    gateway: &OrderGateway,
) -> Result<bool, Error> {
    let secrets: Api<Secret> = Api::namespaced(
        ctx.client.clone(),
        &consumer.namespace().unwrap_or_default(),
    );
    let controller = secrets
        .get_metadata_opt(&Principal::base(consumer).secret)
        .await?
        .and_then(|s| s.metadata.owner_references)
        .and_then(|owners| owners.into_iter().find(|o| o.controller == Some(true)))
        .map(|o| o.uid);
    Ok(crate::ownership::consumer_keeps_principal(
        consumer,
        gateway,
        controller.as_deref(),
    ))
}

/// The SASL JAAS line a Java client needs for this principal.
pub fn jaas_config(user: &str, password: &str) -> String {
    format!(
        "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" \
         password=\"{password}\";"
    )
}

/// The SCRAM credential and the credentials Secret (`meta` names it and makes the workload its
/// owner). The password is generated when the Secret holds none for `principal.user` (a new
/// workload, or a rotation's new username) and kept after; a new one reaches Kafka before the
/// Secret, so no pod starts with a credential Kafka does not know. Returns the Secret's
/// resourceVersion, which goes into the pod template's hash.
pub async fn ensure<K>(
    owner: &K,
    ctx: &Context,
    principal: &Principal,
    meta: ObjectMeta,
) -> Result<Option<String>, Error>
where
    K: Resource<DynamicType = ()>,
{
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &owner.namespace().unwrap_or_default());
    let existing = secrets.get_opt(&principal.secret).await?;
    let field = |key: &str| {
        existing
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let kept = field("password")
        .filter(|p| !p.is_empty())
        .filter(|_| field("username").as_deref() == Some(principal.user.as_str()));
    let fresh = kept.is_none();
    let password = kept.unwrap_or_else(generate_password);
    if fresh || !ctx.admin.scram_user_exists(&principal.user).await? {
        ctx.admin
            .upsert_scram_user(&principal.user, &password)
            .await?;
        info!(principal = %principal.principal, "created the SCRAM credential");
        ctx.event(
            owner,
            EventType::Normal,
            "PrincipalCreated",
            format!(
                "created Kafka principal {} (credentials in Secret {})",
                principal.principal, principal.secret
            ),
        )
        .await;
    }
    let settings = &ctx.settings;
    let mut data = BTreeMap::from([
        ("username".to_owned(), principal.user.clone()),
        ("password".to_owned(), password.clone()),
        (
            "sasl.jaas.config".to_owned(),
            jaas_config(&principal.user, &password),
        ),
        ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned()),
        (
            "security.protocol".to_owned(),
            settings.worker_security_protocol.as_kafka().to_owned(),
        ),
        (
            "bootstrap.servers".to_owned(),
            settings.worker_bootstrap_servers.clone(),
        ),
    ]);
    if let Some(ca) = &settings.kafka_ca_pem {
        data.insert("ca.crt".to_owned(), ca.clone());
    }
    let secret = Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    let current = existing
        .as_ref()
        .and_then(|s| s.metadata.resource_version.clone());
    let version = match ctx
        .apply_if_changed(&secrets, &principal.secret, current.clone(), &secret)
        .await?
    {
        Some(applied) => applied.metadata.resource_version,
        None => current,
    };
    Ok(version)
}

/// The ACLs Kafka holds for `principal`.
pub async fn acls(admin: &KafkaAdmin, principal: &str) -> Result<BTreeSet<Acl>, AdminError> {
    Ok(admin
        .describe_acls(&AclFilter {
            principal: Some(principal.to_owned()),
            ..AclFilter::default()
        })
        .await?
        .into_iter()
        .collect())
}

/// What makes a principal's ACLs exactly the desired ones: the ACLs to write and those to
/// remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclDiff {
    pub principal: String,
    /// Every ACL the principal is to have.
    pub desired: BTreeSet<Acl>,
    pub missing: Vec<Acl>,
    pub extra: Vec<Acl>,
}

impl AclDiff {
    /// From what Kafka holds (`actual`) to `desired`.
    pub fn between(principal: &str, desired: &BTreeSet<Acl>, actual: &BTreeSet<Acl>) -> Self {
        Self {
            principal: principal.to_owned(),
            desired: desired.clone(),
            missing: desired.difference(actual).cloned().collect(),
            extra: actual.difference(desired).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

/// Writes the missing ACLs and removes the extra ones, with an event when anything changed.
pub async fn apply_acls<K>(owner: &K, ctx: &Context, diff: &AclDiff) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>,
{
    if diff.is_empty() {
        return Ok(());
    }
    let extra: Vec<AclFilter> = diff.extra.iter().map(AclFilter::from).collect();
    ctx.admin.create_acls(&diff.missing).await?;
    ctx.admin.delete_acls(&extra).await?;
    ctx.event(
        owner,
        EventType::Normal,
        "AclsUpdated",
        format!(
            "{} ACLs written, {} removed for {}",
            diff.missing.len(),
            extra.len(),
            diff.principal,
        ),
    )
    .await;
    Ok(())
}

/// Deletes the principal's ACLs and its SCRAM credential (both idempotent).
pub async fn remove(admin: &KafkaAdmin, user: &str, principal: &str) -> Result<(), AdminError> {
    admin
        .delete_acls(&[AclFilter {
            principal: Some(principal.to_owned()),
            ..AclFilter::default()
        }])
        .await?;
    admin.delete_scram_user(user).await?;
    info!(%principal, "removed the principal and its ACLs");
    Ok(())
}

/// Deletes both usernames of a workload whose first principal is `base` ([`crate::rotation`]),
/// with their ACLs.
pub async fn remove_both(admin: &KafkaAdmin, base: &Principal) -> Result<(), AdminError> {
    let second = rotation::other_user(&base.user, &base.user);
    remove(admin, &base.user, &base.principal).await?;
    remove(admin, &second, &format!("User:{second}")).await
}

/// 32 random alphanumeric characters from the kernel's random source.
pub fn generate_password() -> String {
    use std::io::Read;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    let mut file = std::fs::File::open("/dev/urandom").expect("the kernel's random source");
    while out.len() < 32 {
        let mut byte = [0u8; 1];
        file.read_exact(&mut byte).expect("reading /dev/urandom");
        // 62 * 4 = 248: reject the top of the range so every character is equally likely.
        if byte[0] < 248 {
            out.push(ALPHABET[(byte[0] % 62) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::{AclOperation, ResourceKind};

    #[test]
    fn a_workload_of_either_kind_gets_the_same_names() {
        let consumer: crate::crd::OrderConsumer = serde_yaml::from_str(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderConsumer\n\
             metadata: {name: orders, namespace: shop}\n\
             spec: {topicRef: {name: orders}, handler: {http: {url: 'http://x/'}}}",
        )
        .unwrap();
        let gateway: crate::crd::OrderGateway = serde_yaml::from_str(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: OrderGateway\n\
             metadata: {name: orders, namespace: shop}\nspec: {topicRef: {name: orders}}",
        )
        .unwrap();
        let expected = Principal {
            user: "pubsubkafka.shop.orders".into(),
            principal: "User:pubsubkafka.shop.orders".into(),
            secret: "orders-kafka-credentials".into(),
        };
        assert_eq!(Principal::of(&consumer), expected);
        assert_eq!(Principal::of(&gateway), expected);
    }

    #[test]
    fn the_acl_diff_writes_what_is_missing_and_removes_what_is_extra() {
        let acl = |topic: &str, operation| Acl {
            resource: ResourceKind::Topic,
            name: topic.into(),
            principal: "User:p".into(),
            operation,
        };
        let (read, write) = (
            acl("orders", AclOperation::Read),
            acl("orders", AclOperation::Write),
        );
        let other = acl("payments", AclOperation::Read);
        let set = |acls: &[&Acl]| acls.iter().map(|a| (*a).clone()).collect::<BTreeSet<_>>();
        for (desired, actual, missing, extra) in [
            (set(&[&read, &write]), set(&[]), vec![&read, &write], vec![]),
            (set(&[&read, &write]), set(&[&read, &write]), vec![], vec![]),
            (set(&[&read]), set(&[&read, &other]), vec![], vec![&other]),
            (set(&[]), set(&[&read, &other]), vec![], vec![&read, &other]),
            (set(&[&write]), set(&[&read]), vec![&write], vec![&read]),
        ] {
            let diff = AclDiff::between("User:p", &desired, &actual);
            let owned = |acls: Vec<&Acl>| acls.into_iter().cloned().collect::<Vec<_>>();
            assert_eq!(
                (diff.missing.clone(), diff.extra.clone()),
                (owned(missing), owned(extra)),
                "{desired:?} over {actual:?}"
            );
            assert_eq!(diff.is_empty(), desired == actual);
        }
    }
}
