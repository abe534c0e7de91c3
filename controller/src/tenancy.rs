//! Who may use what in Kafka, as pure functions: the rules that KafkaAccessPolicies (or the
//! operator's default) set for one namespace, and the checks both reconcilers run before they
//! touch Kafka: topic names, the principals a KafkaTopic grants to, and consumer group ids.
//!
//! Ownership between resources (which KafkaTopic or OrderConsumer owns a topic or a group) is
//! in [`crate::ownership`]; this module only says what a namespace may ask for at all.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::crd::KafkaAccessPolicy;

/// What a namespace that no KafkaAccessPolicy selects may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultAccessPolicy {
    /// Any topic name, group id and principal, except what another resource owns, Kafka's
    /// internal topics, other namespaces' operator principals and the wildcard principal.
    Open,
    /// Topic names and group ids start with "<namespace>."; grants only to the namespace's own
    /// OrderConsumer principals.
    Namespaced,
}

impl DefaultAccessPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Namespaced => "namespaced",
        }
    }
}

/// The SCRAM user prefix of every principal the operator creates:
/// `pubsubkafka.<namespace>.<name>`.
pub const MANAGED_USER_PREFIX: &str = "pubsubkafka.";

/// Kafka's internal and reserved topics (`__consumer_offsets`, `__transaction_state`,
/// `__share_group_state`, `__cluster_metadata` ...): never created, adopted or changed.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__")
}

/// The namespace of an operator-managed principal (`User:pubsubkafka.<namespace>.<name>`).
pub fn managed_principal_namespace(principal: &str) -> Option<&str> {
    let rest = principal
        .strip_prefix("User:")?
        .strip_prefix(MANAGED_USER_PREFIX)?;
    // Namespace names are DNS labels: no dots, so the first dot ends it.
    let (namespace, name) = rest.split_once('.')?;
    (!namespace.is_empty() && !name.is_empty()).then_some(namespace)
}

/// True when `selector` selects an object with `labels` (matchLabels and matchExpressions with
/// In, NotIn, Exists and DoesNotExist; an unknown operator selects nothing).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// Where a namespace's rules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The KafkaAccessPolicies that select the namespace, by name.
    Policies(Vec<String>),
    /// No policy selects it: the operator's default.
    Default(DefaultAccessPolicy),
}

/// What one namespace may use. `None` means anything (the `open` default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub namespace: String,
    pub source: Source,
    topic_prefixes: Option<Vec<String>>,
    principals: Option<Vec<String>>,
    group_id_prefixes: Option<Vec<String>>,
}

/// A refusal: the rule broken and a message naming it and the policy that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule, as the policy's field names it: topicPrefixes, principals or groupIdPrefixes.
    pub rule: &'static str,
    pub message: String,
}

/// The rules for `namespace` (with `labels`): the union of every policy that selects it, or
/// the default when none does.
pub fn rules<'a>(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    policies: impl IntoIterator<Item = &'a KafkaAccessPolicy>,
    default: DefaultAccessPolicy,
) -> Rules {
    let mut selected: Vec<&KafkaAccessPolicy> = policies
        .into_iter()
        .filter(|p| selects(&p.spec.namespace_selector, labels))
        .collect();
    if selected.is_empty() {
        let own = format!("{namespace}.");
        let (topics, principals, groups) = match default {
            DefaultAccessPolicy::Open => (None, None, None),
            DefaultAccessPolicy::Namespaced => {
                (Some(vec![own.clone()]), Some(Vec::new()), Some(vec![own]))
            }
        };
        return Rules {
            namespace: namespace.to_owned(),
            source: Source::Default(default),
            topic_prefixes: topics,
            principals,
            group_id_prefixes: groups,
        };
    }
    selected.sort_by_key(|p| p.name_any());
    let union = |field: fn(&KafkaAccessPolicy) -> &Vec<String>| {
        let mut all: Vec<String> = selected.iter().flat_map(|p| field(p)).cloned().collect();
        all.sort();
        all.dedup();
        Some(all)
    };
    Rules {
        namespace: namespace.to_owned(),
        topic_prefixes: union(|p| &p.spec.topic_prefixes),
        principals: union(|p| &p.spec.principals),
        group_id_prefixes: union(|p| &p.spec.group_id_prefixes),
        source: Source::Policies(selected.iter().map(|p| p.name_any()).collect()),
    }
}

impl Rules {
    /// May the namespace create or adopt topic `topic`? (Internal topics are refused before
    /// this, by [`is_internal_topic`], whatever the policy.)
    pub fn check_topic(&self, topic: &str) -> Result<(), Violation> {
        match &self.topic_prefixes {
            None => Ok(()),
            Some(prefixes) if prefixes.iter().any(|p| topic.starts_with(p.as_str())) => Ok(()),
            Some(prefixes) => {
                Err(self.violation("topicPrefixes", format!("topic name {topic:?}"), prefixes))
            }
        }
    }

    /// May the namespace's consumers use group id `group`?
    pub fn check_group(&self, group: &str) -> Result<(), Violation> {
        match &self.group_id_prefixes {
            None => Ok(()),
            Some(prefixes) if prefixes.iter().any(|p| group.starts_with(p.as_str())) => Ok(()),
            Some(prefixes) => {
                Err(self.violation("groupIdPrefixes", format!("group id {group:?}"), prefixes))
            }
        }
    }

    /// May the namespace's KafkaTopic `access` grant to `principal`? Its own operator
    /// principals always; another namespace's only when a policy names that namespace's
    /// principals explicitly; the wildcard `User:*` only when a policy lists `User:*`.
    pub fn check_principal(&self, principal: &str) -> Result<(), Violation> {
        let patterns = self.principals.as_deref();
        let what = format!("principal {principal:?}");
        if let Some(owner) = managed_principal_namespace(principal) {
            if owner == self.namespace {
                return Ok(());
            }
            let names_it = |p: &String| {
                p.trim_end_matches('*')
                    .starts_with(&format!("User:{MANAGED_USER_PREFIX}{owner}."))
                    && matches(p, principal)
            };
            return match patterns {
                Some(patterns) if patterns.iter().any(names_it) => Ok(()),
                _ => Err(Violation {
                    rule: "principals",
                    message: format!(
                        "{what} belongs to namespace {owner} (an operator-managed principal); {}",
                        self.refused_by("principals", &[])
                    ),
                }),
            };
        }
        if principal == "User:*" {
            return match patterns {
                Some(patterns) if patterns.iter().any(|p| p == "User:*") => Ok(()),
                _ => Err(Violation {
                    rule: "principals",
                    message: format!(
                        "{what} is every user; {}",
                        self.refused_by("principals", patterns.unwrap_or_default())
                    ),
                }),
            };
        }
        match patterns {
            None => Ok(()),
            Some(patterns) if patterns.iter().any(|p| matches(p, principal)) => Ok(()),
            Some(patterns) => Err(self.violation("principals", what, patterns)),
        }
    }

    fn violation(&self, rule: &'static str, what: String, allowed: &[String]) -> Violation {
        Violation {
            rule,
            message: format!(
                "{what} is not allowed in namespace {}: {}",
                self.namespace,
                self.refused_by(rule, allowed)
            ),
        }
    }

    /// "refused by ..." naming the rule and the policy (or the default) it comes from.
    fn refused_by(&self, rule: &str, allowed: &[String]) -> String {
        let list = if allowed.is_empty() {
            "none".to_owned()
        } else {
            allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.source {
            Source::Policies(names) => format!(
                "refused by rule {rule} of KafkaAccessPolicy {} (allowed: {list})",
                names.join(", ")
            ),
            Source::Default(default) => format!(
                "refused by rule {rule} of the operator's default access policy {:?} (allowed: \
                 {list}, and the namespace's own principals User:{MANAGED_USER_PREFIX}{}.*); a \
                 cluster admin can allow more with a KafkaAccessPolicy",
                default.as_str(),
                self.namespace
            ),
        }
    }
}

/// `pattern` is a principal, or a prefix ending in `*`.
fn matches(pattern: &str, principal: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => principal.starts_with(prefix),
        None => pattern == principal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DefaultAccessPolicy::{Namespaced, Open};

    fn policy(yaml: &str) -> KafkaAccessPolicy {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const SHOP: &str = r#"
apiVersion: pubsubkafka.io/v1alpha1
kind: KafkaAccessPolicy
metadata: {name: shop}
spec:
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
  topicPrefixes: [orders, users]
  principals: [User:order-gateway, "User:analytics.*"]
  groupIdPrefixes: [shop.]
"#;

    const TEAMS: &str = r#"
apiVersion: pubsubkafka.io/v1alpha1
kind: KafkaAccessPolicy
metadata: {name: teams}
spec:
  namespaceSelector:
    matchExpressions:
    - {key: team, operator: In, values: [billing, shop]}
  topicPrefixes: [shared.]
  principals: ["User:pubsubkafka.billing.*"]
"#;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel = |yaml: &str| -> LabelSelector { serde_yaml::from_str(yaml).unwrap() };
        let shop = labels(&[("kubernetes.io/metadata.name", "shop"), ("team", "shop")]);
        for (selector, expected) in [
            ("{}", true),
            ("matchLabels: {team: shop}", true),
            ("matchLabels: {team: billing}", false),
            (
                "matchExpressions: [{key: team, operator: In, values: [a, shop]}]",
                true,
            ),
            (
                "matchExpressions: [{key: team, operator: NotIn, values: [shop]}]",
                false,
            ),
            (
                "matchExpressions: [{key: env, operator: NotIn, values: [prod]}]",
                true,
            ),
            ("matchExpressions: [{key: team, operator: Exists}]", true),
            (
                "matchExpressions: [{key: team, operator: DoesNotExist}]",
                false,
            ),
            ("matchExpressions: [{key: team, operator: Typo}]", false),
            (
                "{matchLabels: {team: shop}, matchExpressions: [{key: env, operator: Exists}]}",
                false,
            ),
        ] {
            assert_eq!(selects(&sel(selector), &shop), expected, "{selector}");
        }
    }

    #[test]
    fn managed_principals_name_their_namespace() {
        for (principal, expected) in [
            ("User:pubsubkafka.shop.order-store", Some("shop")),
            ("User:pubsubkafka.shop.a.b", Some("shop")),
            ("User:pubsubkafka.shop.", None),
            ("User:pubsubkafka.shop", None),
            ("User:order-gateway", None),
            ("Group:pubsubkafka.shop.x", None),
        ] {
            assert_eq!(
                managed_principal_namespace(principal),
                expected,
                "{principal}"
            );
        }
    }

    #[test]
    fn internal_topics_are_the_double_underscore_ones() {
        for (name, internal) in [
            ("__consumer_offsets", true),
            ("__transaction_state", true),
            ("__share_group_state", true),
            ("_private", false),
            ("orders", false),
        ] {
            assert_eq!(is_internal_topic(name), internal, "{name}");
        }
    }

    #[test]
    fn topic_names_follow_the_policy_or_the_default() {
        let shop = policy(SHOP);
        let teams = policy(TEAMS);
        let shop_labels = labels(&[("kubernetes.io/metadata.name", "shop"), ("team", "shop")]);
        let other = labels(&[("kubernetes.io/metadata.name", "other")]);
        let all = [shop.clone(), teams.clone()];
        for (ns, labels, policies, default, topic, allowed) in [
            ("shop", &shop_labels, &all[..], Namespaced, "orders", true),
            (
                "shop",
                &shop_labels,
                &all[..],
                Namespaced,
                "orders-dlq",
                true,
            ),
            ("shop", &shop_labels, &all[..], Namespaced, "shared.x", true),
            (
                "shop",
                &shop_labels,
                &all[..],
                Namespaced,
                "payments",
                false,
            ),
            // A policy replaces the default: "shop." is not among its prefixes.
            (
                "shop",
                &shop_labels,
                &all[..],
                Namespaced,
                "shop.orders",
                false,
            ),
            ("other", &other, &all[..], Namespaced, "other.orders", true),
            ("other", &other, &all[..], Namespaced, "orders", false),
            ("other", &other, &all[..], Open, "orders", true),
            ("other", &other, &[][..], Namespaced, "others.x", false),
        ] {
            let rules = rules(ns, labels, policies, default);
            assert_eq!(
                rules.check_topic(topic).is_ok(),
                allowed,
                "{topic} in {ns} ({default:?})"
            );
        }
    }

    #[test]
    fn violations_name_the_rule_and_the_policy() {
        let shop_labels = labels(&[("kubernetes.io/metadata.name", "shop")]);
        let refused = rules("shop", &shop_labels, [&policy(SHOP)], Namespaced)
            .check_topic("payments")
            .unwrap_err();
        assert_eq!(refused.rule, "topicPrefixes");
        assert!(
            refused.message.contains("KafkaAccessPolicy shop")
                && refused.message.contains("topicPrefixes")
                && refused.message.contains("\"orders\""),
            "{}",
            refused.message
        );
        let refused = rules("team-a", &BTreeMap::new(), [], Namespaced)
            .check_group("shop.order-store")
            .unwrap_err();
        assert_eq!(refused.rule, "groupIdPrefixes");
        assert!(
            refused
                .message
                .contains("default access policy \"namespaced\"")
                && refused.message.contains("\"team-a.\""),
            "{}",
            refused.message
        );
    }

    #[test]
    fn group_ids_follow_the_policy_or_the_default() {
        let shop_labels = labels(&[("kubernetes.io/metadata.name", "shop"), ("team", "shop")]);
        let all = [policy(SHOP), policy(TEAMS)];
        for (ns, labels, default, group, allowed) in [
            ("shop", &shop_labels, Namespaced, "shop.order-store", true),
            ("shop", &shop_labels, Namespaced, "billing.x", false),
            ("x", &BTreeMap::new(), Namespaced, "x.store", true),
            ("x", &BTreeMap::new(), Namespaced, "shop.order-store", false),
            ("x", &BTreeMap::new(), Open, "shop.order-store", true),
        ] {
            let rules = rules(ns, labels, &all, default);
            assert_eq!(rules.check_group(group).is_ok(), allowed, "{group} in {ns}");
        }
        // A policy that names no group id prefix allows no group id.
        let only_teams = rules("shop", &shop_labels, [&policy(TEAMS)], Open);
        assert!(only_teams.check_group("shop.order-store").is_err());
    }

    #[test]
    fn principals_are_owned_by_their_namespace() {
        let shop_labels = labels(&[("kubernetes.io/metadata.name", "shop"), ("team", "shop")]);
        let all = [policy(SHOP), policy(TEAMS)];
        for (ns, labels, policies, default, principal, allowed) in [
            // Its own consumers, always.
            (
                "x",
                &BTreeMap::new(),
                &[][..],
                Namespaced,
                "User:pubsubkafka.x.c",
                true,
            ),
            (
                "x",
                &BTreeMap::new(),
                &[][..],
                Open,
                "User:pubsubkafka.x.c",
                true,
            ),
            // Another namespace's consumers: never by default, open or not.
            (
                "x",
                &BTreeMap::new(),
                &[][..],
                Open,
                "User:pubsubkafka.shop.c",
                false,
            ),
            (
                "x",
                &BTreeMap::new(),
                &[][..],
                Namespaced,
                "User:pubsubkafka.shop.c",
                false,
            ),
            // Unless a policy names that namespace's principals.
            (
                "shop",
                &shop_labels,
                &all[..],
                Namespaced,
                "User:pubsubkafka.billing.c",
                true,
            ),
            (
                "shop",
                &shop_labels,
                &all[..],
                Namespaced,
                "User:pubsubkafka.other.c",
                false,
            ),
            // The wildcard principal only when a policy lists it.
            ("x", &BTreeMap::new(), &[][..], Open, "User:*", false),
            ("shop", &shop_labels, &all[..], Open, "User:*", false),
            // Other principals: anything when open, nothing by default when namespaced.
            (
                "x",
                &BTreeMap::new(),
                &[][..],
                Open,
                "User:order-gateway",
                true,
            ),
            (
                "x",
                &BTreeMap::new(),
                &[][..],
                Namespaced,
                "User:order-gateway",
                false,
            ),
            (
                "shop",
                &shop_labels,
                &all[..],
                Namespaced,
                "User:order-gateway",
                true,
            ),
            (
                "shop",
                &shop_labels,
                &all[..],
                Namespaced,
                "User:analytics.etl",
                true,
            ),
            (
                "shop",
                &shop_labels,
                &all[..],
                Namespaced,
                "User:analytics",
                false,
            ),
        ] {
            let rules = rules(ns, labels, policies, default);
            assert_eq!(
                rules.check_principal(principal).is_ok(),
                allowed,
                "{principal} in {ns} ({default:?})"
            );
        }
        let everyone = policy(
            "apiVersion: pubsubkafka.io/v1alpha1\nkind: KafkaAccessPolicy\nmetadata: {name: all}\n\
             spec: {namespaceSelector: {}, principals: ['User:*']}",
        );
        let rules = rules("x", &BTreeMap::new(), [&everyone], Namespaced);
        assert!(rules.check_principal("User:*").is_ok());
        assert!(rules.check_principal("User:anyone").is_ok());
        assert!(
            rules.check_principal("User:pubsubkafka.shop.c").is_err(),
            "User:* does not name another namespace's consumers"
        );
    }
}
