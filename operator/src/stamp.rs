//! Who asked: `spec.requestedBy` stamped from the creating request's authenticated identity,
//! and `by`/`at` on approvals from the approver's. Values a user writes are overwritten, and
//! later updates cannot rewrite them. Pure, over the object's JSON so fields this version does
//! not know survive untouched.

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

/// Stamp `spec` (the incoming object's spec) given the stored spec on updates.
pub fn stamp(spec: &mut Value, old: Option<&Value>, user: &UserInfo, now: Timestamp) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let requested_by = match old.and_then(|o| o.get("requestedBy")) {
        Some(original) => original.clone(),
        None => requested_by(user),
    };
    spec.insert("requestedBy".into(), requested_by);

    let Some(approvals) = spec.get_mut("approvals").and_then(Value::as_array_mut) else {
        return;
    };
    let previous: Vec<&Map<String, Value>> = old
        .and_then(|o| o.get("approvals"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect();
    for approval in approvals.iter_mut().filter_map(Value::as_object_mut) {
        let earlier = previous.iter().find(|p| {
            p.get("id") == approval.get("id") && p.get("decision") == approval.get("decision")
        });
        for field in ["by", "at"] {
            approval.remove(field);
        }
        match earlier {
            Some(earlier) => {
                for field in ["by", "at"] {
                    if let Some(v) = earlier.get(field) {
                        approval.insert(field.into(), v.clone());
                    }
                }
            }
            None => {
                approval.insert(
                    "by".into(),
                    json!(user.username.clone().unwrap_or_default()),
                );
                approval.insert("at".into(), json!(now.to_string()));
            }
        }
    }
}

fn requested_by(user: &UserInfo) -> Value {
    let mut stamp = Map::new();
    stamp.insert(
        "username".into(),
        json!(user.username.clone().unwrap_or_default()),
    );
    if let Some(uid) = user.uid.as_ref().filter(|u| !u.is_empty()) {
        stamp.insert("uid".into(), json!(uid));
    }
    if let Some(groups) = user.groups.as_ref().filter(|g| !g.is_empty()) {
        stamp.insert("groups".into(), json!(groups));
    }
    Value::Object(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserInfo {
        UserInfo {
            username: Some("alice@example.com".into()),
            uid: Some("u-1".into()),
            groups: Some(vec!["platform".into(), "system:authenticated".into()]),
            ..Default::default()
        }
    }

    fn bob() -> UserInfo {
        UserInfo {
            username: Some("bob".into()),
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        "2026-11-25T09:00:00Z".parse().unwrap()
    }

    #[test]
    fn creation_stamps_the_creator_over_whatever_was_written() {
        let mut spec = json!({"requestedBy": {"username": "the-ceo"}, "maxDuration": "1h"});
        stamp(&mut spec, None, &alice(), now());
        assert_eq!(
            spec["requestedBy"],
            json!({"username": "alice@example.com", "uid": "u-1", "groups": ["platform", "system:authenticated"]})
        );
        assert_eq!(spec["maxDuration"], "1h");
    }

    #[test]
    fn updates_keep_the_original_requester() {
        let old = json!({"requestedBy": {"username": "alice@example.com"}});
        let mut spec = json!({"requestedBy": {"username": "bob"}});
        stamp(&mut spec, Some(&old), &bob(), now());
        assert_eq!(
            spec["requestedBy"],
            json!({"username": "alice@example.com"})
        );
    }

    #[test]
    fn new_approvals_are_stamped_and_old_ones_cannot_be_rewritten() {
        let old = json!({
            "requestedBy": {"username": "alice@example.com"},
            "approvals": [{"id": "r1", "decision": "approve", "by": "carol", "at": "2026-11-25T08:00:00Z"}]
        });
        let mut spec = json!({
            "approvals": [
                {"id": "r1", "decision": "approve", "by": "mallory"},
                {"id": "r2", "decision": "deny", "by": "mallory", "at": "2020-01-01T00:00:00Z"}
            ]
        });
        stamp(&mut spec, Some(&old), &bob(), now());
        assert_eq!(
            spec["approvals"],
            json!([
                {"id": "r1", "decision": "approve", "by": "carol", "at": "2026-11-25T08:00:00Z"},
                {"id": "r2", "decision": "deny", "by": "bob", "at": "2026-11-25T09:00:00Z"}
            ])
        );
    }
}
