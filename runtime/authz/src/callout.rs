//! Deciding one auth-callout request: who is connecting, is the proof good, what may it do.

use std::time::UNIX_EPOCH;

use ck_acl::{Policy, compile};
use ck_audit::{AuditRecord, Verdict};
use ck_identity::{TrustBundles, TrustDomain, verify_svid};
use ck_manifest::{Kernel, KernelSet};
use ck_subject::{PermissionList, Permissions};
use nkeys::KeyPair;
use serde_json::{Map, Value, json};

use crate::AuthzError;
use crate::natsjwt::{decode_verified, encode, unix_now};
use crate::registry::Registry;

/// The subject nats-server sends authorization requests on.
pub const CALLOUT_SUBJECT: &str = "$SYS.REQ.USER.AUTH";

/// What the recorder of audit lines calls itself.
const RECORDED_BY: &str = "ck authz";

/// The parts of an authorization request the decision needs.
#[derive(Debug, Clone)]
pub struct CalloutRequest {
    /// The requesting server's public key (the response's audience).
    pub server_id: String,
    /// The per-connection user nkey (the subject of the user JWT and the response).
    pub user_nkey: String,
    /// The claimed user (a SPIFFE ID, or a `LOCAL.*` kernel name).
    pub user: String,
    /// The password (the JWT-SVID).
    pub password: String,
    /// Where the client connects from.
    pub client_host: String,
}

impl CalloutRequest {
    /// Decodes a request JWT and checks it was signed by the server it names.
    pub fn parse(payload: &[u8]) -> Result<Self, AuthzError> {
        let token = std::str::from_utf8(payload)
            .map_err(|_| AuthzError::Request("request is not UTF-8".into()))?;
        let claims = decode_verified(token)?;
        let nats = claims
            .get("nats")
            .and_then(Value::as_object)
            .ok_or_else(|| AuthzError::Request("no `nats` claims".into()))?;
        if nats.get("type").and_then(Value::as_str) != Some("authorization_request") {
            return Err(AuthzError::Request("not an authorization request".into()));
        }
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let server_id = text(nats.get("server_id").and_then(|s| s.get("id")));
        if server_id.is_empty() || claims.get("iss").and_then(Value::as_str) != Some(&server_id) {
            return Err(AuthzError::Request(
                "request is not signed by the server it names".into(),
            ));
        }
        let opts = nats.get("connect_opts");
        Ok(Self {
            server_id,
            user_nkey: text(nats.get("user_nkey")),
            user: text(opts.and_then(|o| o.get("user"))),
            password: text(opts.and_then(|o| o.get("pass"))),
            client_host: text(nats.get("client_info").and_then(|c| c.get("host"))),
        })
    }
}

/// The outcome of one request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Connect as `kernel` with these permissions until `expires_at` (unix seconds).
    Allow {
        /// Kernel name.
        kernel: String,
        /// Kernel GUID.
        guid: String,
        /// The kernel declares task lifecycle actions: its bucket and stream are provisioned
        /// before the answer.
        declares_tasks: bool,
        /// The identity proven.
        identity: String,
        /// User-JWT expiry.
        expires_at: u64,
        /// The permissions placed in the user JWT.
        permissions: Permissions,
    },
    /// Refuse, for `reason`.
    Deny {
        /// Why (logged, audited, sent to the server).
        reason: String,
    },
}

/// How the callout is configured.
pub struct AuthorizerConfig {
    /// Signs user JWTs and responses; its public key is the server's `auth_callout.issuer`.
    pub issuer: KeyPair,
    /// The account kernels are placed in (the user JWT audience).
    pub account: String,
    /// Trust domains whose SVIDs are accepted.
    pub trust_domains: Vec<TrustDomain>,
    /// Whether `LOCAL.*` kernels may connect without SPIFFE.
    pub allow_local: bool,
    /// Reply permissions and other policy.
    pub policy: Policy,
    /// The callout's curve key: requests sealed to it (header `Nats-Server-Xkey`) are opened
    /// with it, and their answers sealed back to the server.
    pub xkey: Option<nkeys::XKey>,
}

/// The header naming the server's curve key on a sealed callout request.
pub const SERVER_XKEY_HEADER: &str = "Nats-Server-Xkey";

/// Decides callout requests.
pub struct Authorizer {
    config: AuthorizerConfig,
    registry: Registry,
    bundles: TrustBundles,
}

fn list_json(list: &PermissionList) -> Value {
    // An empty `allow` list is "allow nothing" to nats-server for publish but "allow all" for
    // subscribe; never send one. Deny-by-default is checked before we get here.
    let mut out = Map::new();
    if !list.allow.is_empty() {
        out.insert("allow".into(), json!(list.allow));
    }
    if !list.deny.is_empty() {
        out.insert("deny".into(), json!(list.deny));
    }
    Value::Object(out)
}

/// The `nats` block of a user JWT for `permissions`.
pub fn permissions_json(permissions: &Permissions) -> Result<Value, AuthzError> {
    if permissions.publish.allow.is_empty() || permissions.subscribe.allow.is_empty() {
        return Err(AuthzError::Acl(
            "refusing permissions with an empty allow list (nats-server would read it as allow-all)"
                .into(),
        ));
    }
    let mut nats = Map::new();
    nats.insert("pub".into(), list_json(&permissions.publish));
    nats.insert("sub".into(), list_json(&permissions.subscribe));
    if let Some(r) = &permissions.allow_responses {
        // `ttl` is a Go time.Duration: nanoseconds.
        nats.insert(
            "resp".into(),
            json!({"max": r.max, "ttl": u128::from(r.expires_ms) * 1_000_000}),
        );
    }
    nats.insert("type".into(), json!("user"));
    nats.insert("version".into(), json!(2));
    Ok(Value::Object(nats))
}

impl Authorizer {
    /// An authorizer deciding from `registry`, verifying SVIDs against `bundles`.
    pub fn new(config: AuthorizerConfig, registry: Registry, bundles: TrustBundles) -> Self {
        Self {
            config,
            registry,
            bundles,
        }
    }

    /// The issuer's public key (for the server config).
    pub fn issuer_public_key(&self) -> String {
        self.config.issuer.public_key()
    }

    /// Decides `request` and records the outcome (log line; audit lines for denies and audited
    /// grants).
    pub fn decide(&self, request: &CalloutRequest) -> Decision {
        let mut set = self.registry.current();
        if claimed_kernel(&set, &request.user).is_none() {
            set = self.registry.rescan_for(&request.user, |s| {
                claimed_kernel(s, &request.user).is_some()
            });
        }
        let claimed = claimed_kernel(&set, &request.user);
        let decision = self.evaluate(request, &set, claimed);
        match &decision {
            Decision::Allow {
                kernel,
                expires_at,
                identity,
                ..
            } => {
                tracing::info!(target: "ck::authz", kernel = %kernel, identity = %identity, client = %request.client_host, expires_in_s = expires_at.saturating_sub(unix_now()), "authz.allow");
            }
            Decision::Deny { reason } => {
                tracing::warn!(target: "ck::authz", user = %request.user, client = %request.client_host, reason = %reason, "authz.deny");
                if let Some(kernel) = claimed {
                    let record = AuditRecord::now(
                        &request.user,
                        "connect",
                        Verdict::Deny,
                        reason.clone(),
                        RECORDED_BY,
                    );
                    // Anyone can send a CONNECT naming a registered kernel with a junk
                    // password, as often as they like: coalesced per claimed identity and
                    // reason, so a flood writes one line per interval, not one per attempt.
                    ck_audit::coalesce::append_refusal(
                        kernel.dir().to_path_buf(),
                        kernel.name.clone(),
                        &format!("connect:{}:{reason}", request.user),
                        record,
                    );
                }
            }
        }
        decision
    }

    fn evaluate(
        &self,
        request: &CalloutRequest,
        set: &KernelSet,
        claimed: Option<&Kernel>,
    ) -> Decision {
        let deny = |reason: String| Decision::Deny { reason };
        if request.user.is_empty() {
            return deny(
                "no user given: connect as your SPIFFE ID with the JWT-SVID as password".into(),
            );
        }
        let now = unix_now();
        // A LOCAL kernel is admitted on its name alone: it proved no identity, so it is
        // compiled as one without a trust domain (no SPIFFE ID): no `auth` action or grant of
        // its domain, and no grant to its SPIFFE ID, applies to it.
        let unproven: Kernel;
        let (kernel, identity, svid_expiry) = if request.user.starts_with("LOCAL.") {
            if !self.config.allow_local {
                return deny(format!(
                    "{} is a LOCAL kernel without SPIFFE, and this callout does not allow those (--allow-local)",
                    request.user
                ));
            }
            match claimed {
                Some(k) if k.name.starts_with("LOCAL.") => {
                    unproven = Kernel {
                        domain: None,
                        ..k.clone()
                    };
                    // A local session gets an hour; the host reconnects after it.
                    (&unproven, request.user.clone(), now + 3600)
                }
                _ => {
                    return deny(refused_by_rule(set, &request.user).unwrap_or_else(|| {
                        format!("no LOCAL kernel named {} is registered", request.user)
                    }));
                }
            }
        } else {
            let verified = match verify_svid(
                &request.password,
                &request.user,
                &self.config.trust_domains,
                &self.bundles,
            ) {
                Ok(v) => v,
                Err(rejection) => return deny(rejection.to_string()),
            };
            let Some(kernel) = claimed else {
                return deny(refused_by_rule(set, &request.user).unwrap_or_else(|| {
                    format!(
                        "no kernel registered with SPIFFE ID {} (registry: {})",
                        request.user,
                        self.registry.describe()
                    )
                }));
            };
            let expiry = verified
                .expires_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            (kernel, request.user.clone(), expiry)
        };
        let acl = match compile(kernel, set, chrono::Utc::now(), &self.config.policy) {
            Ok(acl) => acl,
            Err(e) => return deny(format!("{}: permissions refused: {e}", kernel.name)),
        };
        let expires_at = acl
            .expires_at
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .map_or(svid_expiry, |grant| grant.min(svid_expiry));
        if expires_at <= now {
            return deny(format!("{}: credentials already expired", kernel.name));
        }
        for grant in &acl.audited {
            if let Some(grantor) = set.iter().find(|k| k.guid == grant.grantor_guid) {
                let record = AuditRecord::now(
                    &identity,
                    grant.actions.join(","),
                    Verdict::Allow,
                    format!(
                        "connect: {} grants {} (line {}); subjects opened in the connection's permissions",
                        grant.grantor,
                        grant.actions.join(", "),
                        grant.line
                    ),
                    RECORDED_BY,
                )
                .subject(ck_manifest::topics::kernel_namespace(&grant.grantor_guid));
                let _ = ck_audit::append(grantor.dir(), &grantor.name, &record);
            }
        }
        Decision::Allow {
            kernel: kernel.name.clone(),
            guid: kernel.guid.clone(),
            declares_tasks: kernel.declares_task_lifecycle(),
            identity,
            expires_at,
            permissions: acl.permissions,
        }
    }

    /// Decides one callout message: opens it when it was sealed (`server_xkey`, the server's
    /// curve key from [`SERVER_XKEY_HEADER`]), and seals the answer back to the server.
    pub fn respond_message(
        &self,
        server_xkey: Option<&str>,
        payload: &[u8],
    ) -> Result<(Vec<u8>, Decision), AuthzError> {
        match (server_xkey, &self.config.xkey) {
            (Some(theirs), Some(ours)) => {
                let server = nkeys::XKey::from_public_key(theirs)
                    .map_err(|e| AuthzError::Request(format!("{SERVER_XKEY_HEADER}: {e}")))?;
                let request = ours
                    .open(payload, &server)
                    .map_err(|e| AuthzError::Request(format!("cannot open the sealed request: {e}")))?;
                let (response, decision) = self.respond(&request)?;
                let sealed = ours
                    .seal(response.as_bytes(), &server)
                    .map_err(|e| AuthzError::Jwt(format!("cannot seal the answer: {e}")))?;
                Ok((sealed, decision))
            }
            (Some(_), None) => Err(AuthzError::Request(
                "the server seals callout requests (xkey) but this callout has no curve key (callout.xk)".into(),
            )),
            (None, _) => {
                let (response, decision) = self.respond(payload)?;
                Ok((response.into_bytes(), decision))
            }
        }
    }

    /// Decides `payload` (a request JWT) and returns the response JWT to publish on the reply
    /// subject, with the decision.
    pub fn respond(&self, payload: &[u8]) -> Result<(String, Decision), AuthzError> {
        let request = CalloutRequest::parse(payload)?;
        let decision = self.decide(&request);
        let mut nats = Map::new();
        match &decision {
            Decision::Allow {
                kernel,
                expires_at,
                permissions,
                ..
            } => match self.user_jwt(&request, kernel, *expires_at, permissions) {
                Ok(jwt) => {
                    nats.insert("jwt".into(), json!(jwt));
                }
                Err(e) => {
                    nats.insert("error".into(), json!(e.to_string()));
                }
            },
            Decision::Deny { reason } => {
                nats.insert("error".into(), json!(reason));
            }
        }
        nats.insert("type".into(), json!("authorization_response"));
        nats.insert("version".into(), json!(2));
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(request.user_nkey));
        claims.insert("aud".into(), json!(request.server_id));
        claims.insert("nats".into(), Value::Object(nats));
        Ok((encode(claims, &self.config.issuer)?, decision))
    }

    fn user_jwt(
        &self,
        request: &CalloutRequest,
        kernel: &str,
        expires_at: u64,
        permissions: &Permissions,
    ) -> Result<String, AuthzError> {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(request.user_nkey));
        claims.insert("name".into(), json!(kernel));
        claims.insert("aud".into(), json!(self.config.account));
        claims.insert("exp".into(), json!(expires_at));
        claims.insert("nats".into(), permissions_json(permissions)?);
        encode(claims, &self.config.issuer)
    }
}

/// Why the kernel `user` claims was left out of `set` by the registry rule, if it was.
fn refused_by_rule(set: &KernelSet, user: &str) -> Option<String> {
    set.refusal(user)
        .map(|why| format!("{user} is refused by the registry rule: {why}"))
}

fn claimed_kernel<'a>(set: &'a KernelSet, user: &str) -> Option<&'a Kernel> {
    if user.starts_with("LOCAL.") {
        set.iter().find(|k| k.name == user)
    } else {
        set.by_spiffe_id(user)
    }
}
