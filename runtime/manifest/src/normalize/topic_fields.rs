//! The kernel's topics: GUID or name form, explicit overrides, and their checks.

use crate::diag::Loc;
use crate::model::{Conversation, Topics};
use crate::topics::{self, TopicFormat, TopicKind};
use crate::yaml::Node;
use ck_subject::validate_literal;

use super::keys::*;
use super::reader::*;

/// Checks that an explicit topic stays inside the kernel's own subject space.
pub(super) fn check_topic(
    r: &mut Reader<'_>,
    topic: &str,
    loc: Loc,
    path: &str,
    name: &str,
    guid: Option<&str>,
) -> bool {
    if let Err(e) = validate_literal(topic) {
        r.d.error(Some(loc), path, format!("invalid topic '{topic}': {e}"));
        return false;
    }
    if topics::is_system_subject(topic) {
        r.d.error(
            Some(loc),
            path,
            format!("topic '{topic}' is a NATS system or inbox subject"),
        );
        return false;
    }
    let first = topic.split('.').next().unwrap_or_default();
    if !topics::RESERVED_FIRST_TOKENS.contains(&first) {
        r.d.error(
            Some(loc),
            path,
            format!(
                "topic '{topic}' is outside the kernel's own subject families: a kernel's topics \
                 must be `{{input,result,event,stream}}.{name}` or `ck.{}.…`",
                guid.unwrap_or("{guid}")
            ),
        );
        return false;
    }
    let rest = &topic[first.len() + 1..];
    let own = if first == topics::KERNEL_PREFIX {
        guid.is_some_and(|g| rest.split('.').next() == Some(g))
    } else {
        rest == name
    };
    if !own {
        r.d.error(
            Some(loc),
            path,
            format!(
                "topic '{topic}' lies in another kernel's subject space; a kernel's topics must be \
                 `{{input,result,event,stream}}.{name}` or `ck.{}.…`",
                guid.unwrap_or("{guid}")
            ),
        );
        return false;
    }
    true
}

pub(super) fn read_topics(
    r: &mut Reader<'_>,
    spec: Option<&Node>,
    qualities: Option<&Node>,
    name: &str,
    guid: Option<&str>,
) -> (Topics, Conversation) {
    let nats = r
        .child(spec, "spec", "nats")
        .and_then(|(n, p)| r.map(n, &p));
    if let Some(n) = nats {
        r.check_keys(n, "spec.nats", NATS_KEYS);
    }
    let format = match r.first_string(&[(nats, "spec.nats", "format")]) {
        None => TopicFormat::Name,
        Some((f, _, _)) if f == "name" => TopicFormat::Name,
        Some((f, _, _)) if f == "guid" => TopicFormat::Guid,
        Some((f, loc, path)) => {
            r.d.error(
                Some(loc),
                &path,
                format!("unknown topic format '{f}'; expected `name` or `guid`"),
            );
            TopicFormat::Name
        }
    };
    let mut resolved = Vec::with_capacity(4);
    for kind in TopicKind::ALL {
        let key = format!("{}_topic", kind.as_str());
        let legacy = format!("nats_subject_{}", kind.as_str());
        let explicit =
            r.first_string(&[(nats, "spec.nats", &key), (qualities, "qualities", &legacy)]);
        let topic = match explicit {
            Some((t, loc, path)) if check_topic(r, &t, loc, &path, name, guid) => t,
            _ => topics::default_topic(format, kind, name, guid.unwrap_or("{guid}")),
        };
        resolved.push(topic);
    }
    for i in 0..resolved.len() {
        for j in i + 1..resolved.len() {
            if resolved[i] == resolved[j] {
                let (a, b) = (TopicKind::ALL[i].as_str(), TopicKind::ALL[j].as_str());
                r.d.error(
                    None,
                    "spec.nats",
                    format!("{a} and {b} topics are both '{}'", resolved[i]),
                );
            }
        }
    }
    let mut it = resolved.into_iter();
    let mut next = || it.next().unwrap_or_default();
    let topics = Topics {
        format,
        input: next(),
        result: next(),
        event: next(),
        stream: next(),
    };

    let mut conversation = Conversation::default();
    if let Some((conv, cpath)) = r.child(nats, "spec.nats", "conversation")
        && let Some(conv) = r.map(conv, &cpath)
    {
        r.check_keys(conv, &cpath, &["enabled", "stream_responses"]);
        if let Some((n, p)) = r.child(Some(conv), &cpath, "enabled") {
            conversation.enabled = r.boolean(n, &p).unwrap_or(false);
        }
        if let Some((n, p)) = r.child(Some(conv), &cpath, "stream_responses") {
            conversation.stream_responses = r.boolean(n, &p).unwrap_or(false);
        }
    }
    (topics, conversation)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn topics_default_to_the_name_form() {
        let k = kernel("");
        assert_eq!(k.topics.input, "input.Demo.T");
        assert_eq!(k.topics.result, "result.Demo.T");
        assert_eq!(k.topics.event, "event.Demo.T");
    }

    #[test]
    fn an_explicit_topic_with_wildcards_is_an_error() {
        let e = errors("spec:\n  nats:\n    input_topic: input.>\n");
        assert!(e.iter().any(|m| m.contains("input_topic")), "{e:?}");
    }
}
