//! `ck mcp`: what a deployment holds, for coding agents, over MCP (the official Rust SDK,
//! `rmcp`, on stdio). Every tool is read-only:
//!
//! | tool | answers from |
//! |---|---|
//! | `list_subject_families` | the families file, and each family stream's message counts (all, last hour) |
//! | `list_kernels` | the kernel directories given: topics, actions, grants summary, served versions |
//! | `list_subscriptions` | the subscription contracts (never a secret: only where it is read from is omitted too) |
//! | `recent_delivery_results` | the newest messages of the `platform.delivery` family's stream |
//! | `list_silos` | `FLEET_STATE`: each silo, its hosts, live or stale, and what they serve |
//!
//! It changes nothing a deployment keeps: no stream or bucket is created and no file is
//! written. Counting the last hour of a stream creates a short-lived consumer, deleted at
//! once (and by the server after 5 s idle if the delete is lost).

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use ck_acl::families::Families;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde_json::{Value, json};

/// What the server reads.
pub struct Sources {
    /// The subject families.
    pub families: Families,
    /// Kernel directories (or manifests).
    pub kernels: Vec<PathBuf>,
    /// A subscription contracts directory, if any.
    pub contracts: Option<PathBuf>,
    /// The deployment's JetStream, if connected.
    pub js: Option<jetstream::Context>,
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
#[error("MCP server: {0}")]
pub struct McpError(String);

/// The read-only MCP server.
#[derive(Clone)]
pub struct CkMcp {
    sources: std::sync::Arc<Sources>,
    #[allow(dead_code)] // read by the tool_handler macro
    tool_router: ToolRouter<Self>,
}

/// How many delivery results to return.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct RecentArgs {
    /// At most this many, newest first (default 20, at most 200).
    pub limit: Option<u32>,
}

fn answer(value: Value) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(
        serde_json::to_string_pretty(&value).unwrap_or_default(),
    )]))
}

fn failure(why: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(why.to_string(), None)
}

#[tool_router]
impl CkMcp {
    /// A server over `sources`.
    pub fn new(sources: Sources) -> Self {
        CkMcp {
            sources: std::sync::Arc::new(sources),
            tool_router: Self::tool_router(),
        }
    }

    /// Serves MCP on stdin/stdout until the client closes it.
    pub async fn serve_stdio(self) -> Result<(), McpError> {
        let running = self
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| McpError(e.to_string()))?;
        running
            .waiting()
            .await
            .map_err(|e| McpError(e.to_string()))?;
        Ok(())
    }

    #[tool(
        description = "The declared subject families (MECE): name, subject pattern, description, and for a family with a JetStream stream its name, its message count and the messages of the last hour."
    )]
    async fn list_subject_families(&self) -> Result<CallToolResult, ErrorData> {
        let mut families = Vec::new();
        for family in self.sources.families.iter() {
            let mut entry = json!({
                "name": family.name,
                "subject": family.pattern.to_string(),
                "description": family.description,
            });
            if let Some(stream) = &family.stream {
                entry["stream"] = json!(stream.name);
                entry["stream_subjects"] = json!(stream.subjects);
                if let Some(js) = &self.sources.js {
                    entry["counts"] = stream_counts(js, &stream.name).await;
                }
            }
            families.push(entry);
        }
        answer(json!({ "families": families }))
    }

    #[tool(
        description = "The kernels of this deployment: name, GUID, URN, topics, actions (with access), a summary of their grants, and the versions they serve (stable, canary)."
    )]
    async fn list_kernels(&self) -> Result<CallToolResult, ErrorData> {
        let mut kernels = Vec::new();
        for path in &self.sources.kernels {
            let manifest = if path.is_dir() {
                path.join(ck_manifest::MANIFEST_FILE)
            } else {
                path.clone()
            };
            let loaded = ck_manifest::load_file(&manifest, chrono::Utc::now());
            let Some(kernel) = loaded.kernel else {
                kernels.push(json!({
                    "manifest": manifest.display().to_string(),
                    "error": loaded.first_error().to_string(),
                }));
                continue;
            };
            let serving = ck_loops::state::serving(kernel.dir()).ok().flatten();
            kernels.push(json!({
                "name": kernel.name,
                "guid": kernel.guid,
                "urn": kernel.urn,
                "version": kernel.version,
                "topics": {
                    "input": kernel.topics.input,
                    "result": kernel.topics.result,
                    "event": kernel.topics.event,
                    "stream": kernel.topics.stream,
                },
                "actions": kernel.actions.iter().map(|a| json!({"name": a.name, "access": a.access})).collect::<Vec<_>>(),
                "grants": kernel.grants.iter().map(|g| json!({
                    "identity": g.identity.to_string(),
                    "actions": g.actions,
                    "audit": g.audit,
                })).collect::<Vec<_>>(),
                "serving": serving.map(|s| json!({
                    "revision": s.revision,
                    "stable": s.stable,
                    "canary": s.canary,
                })),
            }));
        }
        answer(json!({ "kernels": kernels }))
    }

    #[tool(
        description = "The platform update subscriptions (contracts): id, owner, delivery mode, subject filters with their families, replay policy, sink URL and auth class. Secrets and where they are read from are never shown."
    )]
    async fn list_subscriptions(&self) -> Result<CallToolResult, ErrorData> {
        let Some(dir) = &self.sources.contracts else {
            return answer(json!({ "subscriptions": [] }));
        };
        let checker = ck_contracts::ContractChecker::new(&self.sources.families);
        let subscriptions = checker.check_dir(dir).map_err(failure)?;
        let listed: Vec<Value> = subscriptions
            .iter()
            .map(|s| {
                json!({
                    "subscriptionId": s.subscription_id,
                    "owner": s.owner,
                    "description": s.description,
                    "deliveryMode": s.delivery_mode,
                    "subjectFilters": s.subject_filters,
                    "families": s.families(&self.sources.families),
                    "replayPolicy": s.replay_policy,
                    "startSequence": s.start_sequence,
                    "sink": s.sink.as_ref().map(|k| without_credentials(&k.url)),
                    "auth": s.auth.as_ref().map(|a| a.class),
                })
            })
            .collect();
        answer(json!({ "subscriptions": listed }))
    }

    #[tool(
        description = "The newest delivery results (CloudEvents in the platform.delivery family's stream), newest first."
    )]
    async fn recent_delivery_results(
        &self,
        Parameters(args): Parameters<RecentArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let limit = args.limit.unwrap_or(20).clamp(1, 200) as u64;
        let Some(js) = &self.sources.js else {
            return answer(json!({ "results": [], "note": "not connected to NATS" }));
        };
        let Some(stream_name) = self
            .sources
            .families
            .iter()
            .find(|f| f.name == "platform.delivery")
            .and_then(|f| f.stream.as_ref())
            .map(|s| s.name.clone())
        else {
            return answer(
                json!({ "results": [], "note": "no platform.delivery stream is declared" }),
            );
        };
        let Ok(mut stream) = js.get_stream(&stream_name).await else {
            return answer(
                json!({ "results": [], "note": format!("the server has no stream {stream_name}") }),
            );
        };
        let info = stream.info().await.map_err(failure)?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        // Newest first; a bounded number of look-ups (deleted sequences cost one each) and
        // of bytes (anyone allowed to publish in the family wrote these).
        let mut results = Vec::new();
        let mut seq = last;
        let mut lookups = 0;
        while seq >= first.max(1) && (results.len() as u64) < limit && lookups < limit * 4 {
            lookups += 1;
            if let Ok(message) = stream.get_raw_message(seq).await {
                results.push(if message.payload.len() > MAX_RESULT_BYTES {
                    json!({"sequence": seq, "omitted": format!("{} bytes, over {MAX_RESULT_BYTES}", message.payload.len())})
                } else {
                    serde_json::from_slice::<Value>(&message.payload)
                        .unwrap_or_else(|_| json!({"sequence": seq, "unreadable": true}))
                });
            }
            seq -= 1;
        }
        answer(json!({ "stream": stream_name, "results": results }))
    }

    #[tool(
        description = "The fleet's silos from FLEET_STATE: each silo's hosts, whether each is live, and what it serves."
    )]
    async fn list_silos(&self) -> Result<CallToolResult, ErrorData> {
        let Some(js) = &self.sources.js else {
            return answer(json!({ "silos": [], "note": "not connected to NATS" }));
        };
        let kv = match ck_control::fleet::fleet_state(js).await {
            Ok(kv) => kv,
            Err(e) => return answer(json!({ "silos": [], "note": e.to_string() })),
        };
        let silos = ck_control::fleet::fleet_view(&kv).await.map_err(failure)?;
        let listed: Vec<Value> = silos
            .iter()
            .map(|silo| {
                json!({
                    "silo": silo.silo,
                    "hosts": silo.hosts.iter().map(|h| json!({
                        "host": h.host,
                        "live": h.live,
                        "state": h.state,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        answer(json!({ "silos": listed }))
    }
}

#[tool_handler]
impl ServerHandler for CkMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Read-only view of a ck deployment: subject families, kernels, subscriptions, delivery results, silos.",
        )
    }
}

/// The largest delivery result returned whole.
const MAX_RESULT_BYTES: usize = 16 * 1024;

/// `url` without user information or query (either may hold a credential): scheme, host,
/// port and path.
fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}/{path}")
}

/// A stream's message count and how many of them arrived in the last hour.
async fn stream_counts(js: &jetstream::Context, name: &str) -> Value {
    let Ok(mut stream) = js.get_stream(name).await else {
        return json!({"error": format!("the server has no stream {name}")});
    };
    let Ok(info) = stream.info().await else {
        return json!({"error": format!("stream {name}: no info")});
    };
    let messages = info.state.messages;
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let start_time = time::OffsetDateTime::from_unix_timestamp(since.timestamp()).ok();
    let recent = match start_time {
        Some(start_time) => last_hour(&stream, start_time).await,
        None => None,
    };
    json!({
        "messages": messages,
        "last_hour": recent,
    })
}

/// Messages stored since `start_time`: the pending count of an ephemeral consumer starting
/// there (removed by the server once idle).
async fn last_hour(
    stream: &jetstream::stream::Stream,
    start_time: time::OffsetDateTime,
) -> Option<u64> {
    let config = jetstream::consumer::pull::Config {
        deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime { start_time },
        inactive_threshold: Duration::from_secs(5),
        ..Default::default()
    };
    let mut consumer = stream.create_consumer(config).await.ok()?;
    let info = consumer.info().await.ok()?;
    let pending = info.num_pending;
    let name = info.name.clone();
    let _ = stream.delete_consumer(&name).await;
    Some(pending)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sink_url_is_shown_without_what_may_be_a_credential() {
        assert_eq!(
            super::without_credentials("https://u:tok@hooks.example/in?token=abc#x"),
            "https://hooks.example/in"
        );
        assert_eq!(
            super::without_credentials("https://hooks.example"),
            "https://hooks.example/"
        );
    }
}
