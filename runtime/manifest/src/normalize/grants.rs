//! `grants`: identities, actions, expiry and audit, checked against the loop-separation rule.

use crate::model::{ACCESS_VERBS, Action, Expiry, Grant, GrantIdentity};
use crate::yaml::Node;
use chrono::{DateTime, NaiveDate, Utc};

use super::keys::*;
use super::reader::*;

pub(super) fn parse_expiry(text: &str) -> Result<Expiry, String> {
    if text == "never" {
        return Ok(Expiry::Never);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Expiry::At(t.with_timezone(&Utc)));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date.and_hms_opt(0, 0, 0).ok_or("invalid date")?;
        return Ok(Expiry::At(midnight.and_utc()));
    }
    Err(format!(
        "'{text}' is neither `never` nor an ISO 8601 timestamp with a timezone (e.g. 2027-01-01T00:00:00Z)"
    ))
}

/// Grants are matched by exact string, so only the canonical form (lowercase trust domain) is
/// accepted; anything the SPIFFE crate would normalise is reported instead.
pub(super) fn check_spiffe_id(id: &str) -> Result<(), String> {
    let parsed = spiffe::SpiffeId::new(id).map_err(|e| e.to_string())?;
    let canonical = parsed.to_string();
    if canonical != id {
        return Err(format!("not in canonical form; write it as '{canonical}'"));
    }
    Ok(())
}

pub(super) fn read_grant(
    r: &mut Reader<'_>,
    item: &Node,
    path: &str,
    actions: &[Action],
    own_spiffe: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Grant> {
    let item = r.map(item, path)?;
    r.check_keys(item, path, GRANT_KEYS);
    let mut ok = true;

    let identity = match r.child(Some(item), path, "identity") {
        None => {
            r.d.error(Some(item.loc), &join(path, "identity"), "grant has no `identity` (a SPIFFE ID, `anon`, `auth` or `owner`)");
            None
        }
        Some((n, p)) => r.string(n, &p).and_then(|id| match id.as_str() {
            "anon" => Some(GrantIdentity::Anon),
            "auth" => Some(GrantIdentity::Auth),
            "owner" => Some(GrantIdentity::Owner),
            "*" => {
                r.d.error(Some(n.loc), &p, "wildcard identity '*' is not allowed; use `anon` (anyone) or `auth` (any authenticated identity)");
                None
            }
            s if s.starts_with("spiffe://") => match check_spiffe_id(s) {
                Ok(()) => Some(GrantIdentity::Spiffe(s.to_owned())),
                Err(e) => {
                    r.d.error(Some(n.loc), &p, format!("invalid SPIFFE ID '{s}': {e}"));
                    None
                }
            },
            s => {
                r.d.error(Some(n.loc), &p, format!("identity '{s}' is not a SPIFFE ID (spiffe://…), `anon`, `auth` or `owner`"));
                None
            }
        }),
    };
    ok &= identity.is_some();
    let is_self = matches!((&identity, own_spiffe), (Some(GrantIdentity::Spiffe(id)), Some(own)) if id == own);

    let mut granted = Vec::new();
    match r.child(Some(item), path, "actions") {
        None => {
            r.d.error(
                Some(item.loc),
                &join(path, "actions"),
                "grant has no `actions`",
            );
            ok = false;
        }
        Some((n, p)) => {
            if let Some(list) = r.seq(n, &p) {
                if list.is_empty() {
                    r.d.warn(Some(n.loc), &p, "empty action list grants nothing");
                }
                for (i, a) in list.iter().enumerate() {
                    let ap = index(&p, i);
                    let Some(action) = r.string(a, &ap) else {
                        ok = false;
                        continue;
                    };
                    if action == "*" || action.contains('*') {
                        r.d.error(
                            Some(a.loc),
                            &ap,
                            "wildcard actions are not grantable; list each verb or action",
                        );
                        ok = false;
                    } else if action.starts_with("write-") || action == "write" {
                        if !is_self {
                            r.d.error(
                                Some(a.loc),
                                &ap,
                                format!("`{action}` MUST NOT be granted to another identity (CKP loop-separation rule)"),
                            );
                            ok = false;
                        }
                    } else if !ACCESS_VERBS.iter().any(|(v, _)| *v == action)
                        && !actions.iter().any(|x| x.name == action)
                        && !matches!(action.as_str(), "status" | "check.identity")
                        && action != crate::READ_RESULTS
                        && action != crate::MANAGE_TASKS
                    {
                        r.d.warn(
                            Some(a.loc),
                            &ap,
                            format!("'{action}' is neither an access verb nor a declared action; it opens nothing"),
                        );
                    }
                    granted.push(action);
                }
            } else {
                ok = false;
            }
        }
    }

    let expires = match r.child(Some(item), path, "expires") {
        None => {
            r.d.error(Some(item.loc), &join(path, "expires"), "grant has no `expires` (required: an ISO 8601 timestamp or `never`)");
            None
        }
        Some((n, p)) => r.string(n, &p).and_then(|s| match parse_expiry(&s) {
            Ok(e) => {
                if e.is_expired(now) {
                    r.d.error(Some(n.loc), &p, format!("grant expired at {s}; remove it or extend it (expired grants are never applied)"));
                }
                Some(e)
            }
            Err(msg) => {
                r.d.error(Some(n.loc), &p, msg);
                None
            }
        }),
    };
    ok &= expires.is_some();
    let audit = match r.child(Some(item), path, "audit") {
        None => false,
        Some((n, p)) => r.boolean(n, &p).unwrap_or_else(|| {
            ok = false;
            false
        }),
    };
    if !ok {
        return None;
    }
    Some(Grant {
        identity: identity?,
        actions: granted,
        expires: expires?,
        audit,
        line: item.loc.line,
    })
}

pub(super) fn read_grants(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    spec: Option<&Node>,
    actions: &[Action],
    own_spiffe: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<Grant> {
    let mut grants = Vec::new();
    let Some((node, path)) = r.first_node(&[(root, "", "grants"), (spec, "spec", "grants")]) else {
        return grants;
    };
    let Some(items) = r.seq(node, &path) else {
        return grants;
    };
    for (i, item) in items.iter().enumerate() {
        if let Some(g) = read_grant(r, item, &index(&path, i), actions, own_spiffe, now) {
            grants.push(g);
        }
    }
    grants
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn grants_carry_identity_actions_and_expiry() {
        let k = kernel(
            "spec:\n  actions:\n    unique:\n      - {name: a, access: auth}\ngrants:\n  - {identity: spiffe://example.org/ck/Demo.X/9a1bc2d3-e4f5-4a6b-8c7d-8e9f0a1b2c3d, actions: [a], expires: 2030-01-01T00:00:00Z, audit: true}\n",
        );
        assert_eq!(k.grants.len(), 1);
        assert_eq!(k.grants[0].actions, ["a"]);
        assert!(k.grants[0].audit);
        assert!(!k.grants[0].expires.is_expired(chrono::Utc::now()));
    }

    #[test]
    fn write_storage_cannot_be_granted() {
        let e = errors("grants:\n  - {identity: anon, actions: [write-storage], expires: never}\n");
        assert!(e.iter().any(|m| m.contains("write-storage")), "{e:?}");
    }

    #[test]
    fn expiry_is_a_date_a_time_or_never() {
        assert!(super::parse_expiry("never").is_ok());
        assert!(super::parse_expiry("2030-01-01").is_ok());
        assert!(super::parse_expiry("2030-01-01T00:00:00Z").is_ok());
        assert!(super::parse_expiry("tomorrow").is_err());
    }
}
