//! `ck authz init`: the callout's secrets and the nats-server configuration that trusts it,
//! rendered from `policies/nats/auth-callout.conf`.

use std::path::{Path, PathBuf};

use nkeys::KeyPair;

/// The server configuration template (policies/nats/auth-callout.conf).
pub const SERVER_TEMPLATE: &str = include_str!("../../../policies/nats/auth-callout.conf");
/// Who may read and change the cluster's control plane (policies/control-plane.yaml).
pub const CONTROL_POLICY: &str = include_str!("../../../policies/control-plane.yaml");
/// The control-plane role of a serving host (`ck run --control`).
pub const HOST_ROLE: &str = "host";
/// The control-plane role of an operator (`ck publish`, `ck promote --nats`, `ck fleet
/// link-site`).
pub const OPERATOR_ROLE: &str = "operator";
/// Who may install what where (policies/install.yaml), the hub's default.
pub const INSTALL_POLICY: &str = ck_acl::install::SHIPPED_INSTALL_POLICY;
/// The control-plane role of the callout's APP-side user (`ck-provision`): it reads the
/// published manifests the callout decides from.
pub const CALLOUT_ROLE: &str = "callout";

/// File names inside a callout directory.
pub const ISSUER_FILE: &str = "issuer.nk";
/// The callout user's password.
pub const PASSWORD_FILE: &str = "callout.password";
/// The callout's curve key seed (`xkey`): requests are sealed to it.
pub const XKEY_FILE: &str = "callout.xk";
/// The provisioning user's password (`ck-provision`, see [`crate::Provisioner`]).
pub const PROVISION_PASSWORD_FILE: &str = "provision.password";
/// The rendered server configuration.
pub const SERVER_CONFIG_FILE: &str = "nats-server.conf";
/// The NATS user the callout connects as.
pub const CALLOUT_USER: &str = "ck-authz";
/// Where `init` points the server's JetStream store (under its directory).
pub const STORE_DIR: &str = "jetstream";

/// The secrets of one callout deployment.
#[derive(Debug, Clone)]
pub struct CalloutSecrets {
    /// The account seed user JWTs are signed with.
    pub issuer_seed: String,
    /// The callout user's password.
    pub password: String,
    /// The provisioning user's password; `None` for a directory made before it existed (then
    /// nothing is provisioned, and task kernels need their buckets made by an operator).
    pub provision_password: Option<String>,
    /// The callout's curve key seed; `None` for a directory made before it existed (then
    /// requests travel unsealed).
    pub xkey_seed: Option<String>,
}

impl CalloutSecrets {
    /// Fresh secrets.
    pub fn generate() -> Self {
        let issuer = KeyPair::new_account();
        let secret = fresh_secret;
        Self {
            issuer_seed: issuer.seed().unwrap_or_default(),
            password: secret(),
            provision_password: Some(secret()),
            xkey_seed: nkeys::XKey::new().seed().ok(),
        }
    }

    /// Reads the secrets from `dir`.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let read = |name: &str| -> std::io::Result<String> {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        Ok(Self {
            issuer_seed: read(ISSUER_FILE)?,
            password: read(PASSWORD_FILE)?,
            provision_password: read(PROVISION_PASSWORD_FILE).ok(),
            xkey_seed: read(XKEY_FILE).ok(),
        })
    }

    /// The callout's curve key, if its directory has one.
    pub fn xkey(&self) -> Result<Option<nkeys::XKey>, SetupError> {
        self.xkey_seed
            .as_deref()
            .map(|seed| {
                nkeys::XKey::from_seed(seed)
                    .map_err(|e| SetupError::Issuer(format!("{XKEY_FILE}: {e}")))
            })
            .transpose()
    }

    /// The issuing key pair.
    pub fn issuer(&self) -> Result<KeyPair, SetupError> {
        KeyPair::from_seed(&self.issuer_seed).map_err(|e| SetupError::Issuer(e.to_string()))
    }
}

/// Why the callout's secrets or server configuration cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file or directory cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The secrets exist already (overwriting them would lock out every running server).
    #[error("{} already exists; remove it to start over", .0.display())]
    Exists(PathBuf),
    /// The issuer seed is not an account nkey seed.
    #[error("{ISSUER_FILE}: {0}")]
    Issuer(String),
    /// A fleet topology that cannot be rendered (names, URLs).
    #[error("fleet topology: {0}")]
    Topology(String),
    /// The control-plane policy is unusable or lacks a role asked for.
    #[error(transparent)]
    Policy(#[from] ck_acl::control::ControlPolicyError),
}

/// A user that bypasses the callout with a password (operator tools, load generators).
#[derive(Debug, Clone)]
pub struct StaticUser {
    /// Name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Its control-plane role (`policies/control-plane.yaml`): exactly that role's
    /// permissions. None: anything but the control plane's writes.
    pub role: Option<String>,
}

/// The server's TLS certificate and key (PEM files): with them the server requires TLS of
/// every client.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The certificate (chain), PEM.
    pub cert_file: PathBuf,
    /// Its private key, PEM.
    pub key_file: PathBuf,
}

/// Where a server stands in a fleet (issue 16): alone, the hub sites link to, or a site.
#[derive(Debug, Clone, Default)]
pub enum Topology {
    /// One server (or one cluster) without leaf nodes.
    #[default]
    Single,
    /// The hub: JetStream in its own domain and a leaf-node listener for the sites.
    Hub(HubSetup),
    /// A site: its own JetStream domain (named after the silo) and a leaf link to the hub.
    Site(SiteSetup),
}

/// A hub's leaf-node side.
#[derive(Debug, Clone)]
pub struct HubSetup {
    /// The hub's JetStream domain (sites reach its streams as `$JS.{domain}.API`).
    pub domain: String,
    /// Where the leaf-node listener listens (`host:port`; port -1 picks a free one).
    pub leaf_listen: String,
    /// The sites that may link, each with its link user's password.
    pub sites: Vec<SiteCredential>,
    /// Who may install what where: a site's link only receives requests for the kernels some
    /// rule lets be installed there.
    pub install_policy: ck_acl::install::InstallPolicy,
}

/// One site's link credential, known to the hub and to the site.
#[derive(Debug, Clone)]
pub struct SiteCredential {
    /// The site.
    pub silo: String,
    /// Its link user's password.
    pub password: String,
}

impl SiteCredential {
    /// A fresh credential for `silo`.
    pub fn generate(silo: &str) -> Self {
        Self {
            silo: silo.to_owned(),
            password: fresh_secret(),
        }
    }
}

/// A site's server.
#[derive(Debug, Clone)]
pub struct SiteSetup {
    /// The site (also its JetStream domain and server name `ck-{silo}`).
    pub silo: String,
    /// The hub's leaf-node URL without credentials (`nats-leaf://host:port`).
    pub hub_leaf_url: String,
    /// The hub's JetStream domain.
    pub hub_domain: String,
    /// The link user's password (the hub's `sites/{silo}.password`).
    pub password: String,
}

/// The hub user a site's leaf link logs in as.
pub fn leaf_user(silo: &str) -> String {
    format!("leaf-{silo}")
}

/// Where a hub's `init` writes each site's link password (give it to the site's `init`).
pub fn site_password_file(dir: &Path, silo: &str) -> PathBuf {
    dir.join(SITES_DIR).join(format!("{silo}.password"))
}

/// The directory of site link passwords in a hub's callout directory.
pub const SITES_DIR: &str = "sites";

fn fresh_secret() -> String {
    blake3::hash(KeyPair::new_user().seed().unwrap_or_default().as_bytes()).to_hex()[..40]
        .to_owned()
}

impl Topology {
    /// Checks names and URLs before anything is rendered.
    fn check(&self) -> Result<(), SetupError> {
        let bad = |why: String| Err(SetupError::Topology(why));
        match self {
            Topology::Single => Ok(()),
            Topology::Hub(hub) => {
                if !ck_manifest::topics::is_fleet_name(&hub.domain) {
                    return bad(format!(
                        "hub JetStream domain `{}` must be 1–64 of A-Z a-z 0-9 - _",
                        hub.domain
                    ));
                }
                let mut seen = std::collections::BTreeSet::new();
                for site in &hub.sites {
                    if let Some(problem) = ck_manifest::topics::silo_name_problem(&site.silo) {
                        return bad(problem);
                    }
                    if site.silo == hub.domain {
                        return bad(format!(
                            "site `{}` has the hub's JetStream domain name; each domain must be its own",
                            site.silo
                        ));
                    }
                    if !seen.insert(&site.silo) {
                        return bad(format!("site `{}` is listed twice", site.silo));
                    }
                }
                Ok(())
            }
            Topology::Site(site) => {
                if let Some(problem) = ck_manifest::topics::silo_name_problem(&site.silo) {
                    return bad(problem);
                }
                match site.hub_leaf_url.split_once("://") {
                    Some((scheme, rest))
                        if matches!(scheme, "nats-leaf" | "nats" | "tls")
                            && !rest.is_empty()
                            && !rest.contains(['@', '/', ' ']) =>
                    {
                        Ok(())
                    }
                    _ => bad(format!(
                        "hub leaf URL `{}` must be nats-leaf://HOST:PORT (no user, no path: the link's credentials are added from the password file)",
                        site.hub_leaf_url
                    )),
                }
            }
        }
    }
}

/// Renders the server configuration for `secrets`, listening on `listen` (`host:port`), with
/// JetStream stored under `store_dir`, TLS required when `tls` is given, and its place in a
/// fleet.
pub fn render_server_config(
    secrets: &CalloutSecrets,
    listen: &str,
    static_users: &[StaticUser],
    store_dir: &Path,
    tls: Option<&ServerTls>,
    topology: &Topology,
) -> Result<String, SetupError> {
    topology.check()?;
    let issuer = secrets.issuer()?.public_key();
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let policy = ck_acl::control::ControlPolicy::parse(CONTROL_POLICY)?;
    let mut users: Vec<String> = Vec::new();
    let mut names = String::new();
    if let Some(password) = &secrets.provision_password {
        // Stream info and creation only, replies on its own prefix: it makes kernels'
        // buckets and streams (with `ck_task::provision`'s configuration); and it reads the
        // control plane's published manifests (the `callout` role). Nothing else.
        let mut permissions = policy.permissions(CALLOUT_ROLE)?;
        permissions
            .publish
            .allow
            .extend(["$JS.API.STREAM.INFO.*", "$JS.API.STREAM.CREATE.*"].map(str::to_owned));
        permissions.publish.deny = ck_acl::control::write_denials();
        permissions.subscribe =
            ck_subject::PermissionList::allow_only([format!("{}.>", crate::PROVISION_INBOX)]);
        users.push(format!(
            "{{ user: {}, password: {}, {} }}",
            quote(crate::PROVISION_USER),
            quote(password),
            permissions.to_nats_config(),
        ));
        names.push_str(&format!(", {}", quote(crate::PROVISION_USER)));
    }
    for u in static_users {
        let permissions = match &u.role {
            Some(role) => {
                let mut permissions = policy.permissions(role)?;
                let extra = match (topology, role.as_str()) {
                    (Topology::Site(site), role) => {
                        let link = ck_acl::site::SiteLink {
                            silo: &site.silo,
                            hub_domain: &site.hub_domain,
                            kernels: None,
                        };
                        match role {
                            // A site's host reads the hub's control plane, copies what it
                            // installs into the site's own and takes the site's requests.
                            HOST_ROLE => Some(link.site_host_access()),
                            // Its operator links it (`ck fleet link-site`).
                            OPERATOR_ROLE => Some(link.site_operator_access()),
                            _ => None,
                        }
                    }
                    // The hub's operator links and drives its sites.
                    (Topology::Hub(hub), OPERATOR_ROLE) => {
                        let silos: Vec<&str> = hub.sites.iter().map(|s| s.silo.as_str()).collect();
                        Some(ck_acl::site::hub_operator_access(&silos))
                    }
                    _ => None,
                };
                if let Some(extra) = extra {
                    permissions.publish.allow.extend(extra.publish.allow);
                    permissions.subscribe.allow.extend(extra.subscribe.allow);
                    permissions.allow_responses =
                        permissions.allow_responses.or(extra.allow_responses);
                }
                permissions
            }
            None => ck_subject::Permissions {
                publish: ck_subject::PermissionList {
                    allow: Vec::new(),
                    deny: ck_acl::control::write_denials(),
                },
                ..Default::default()
            },
        };
        users.push(format!(
            "{{ user: {}, password: {}, {} }}",
            quote(&u.name),
            quote(&u.password),
            permissions.to_nats_config(),
        ));
        names.push_str(&format!(", {}", quote(&u.name)));
    }
    let (server_name, domain, leafnodes) = match topology {
        Topology::Single => ("ck".to_owned(), String::new(), String::new()),
        Topology::Hub(hub) => {
            for site in &hub.sites {
                let kernels = hub.install_policy.kernels_at(&site.silo);
                let link = ck_acl::site::SiteLink {
                    silo: &site.silo,
                    hub_domain: &hub.domain,
                    kernels: kernels.as_deref(),
                };
                let user = leaf_user(&site.silo);
                users.push(format!(
                    "{{ user: {}, password: {}, {}, allowed_connection_types: [\"LEAFNODE\"] }}",
                    quote(&user),
                    quote(&site.password),
                    link.permissions().to_nats_config(),
                ));
                names.push_str(&format!(", {}", quote(&user)));
            }
            (
                "ck-hub".to_owned(),
                format!("domain: {}", quote(&hub.domain)),
                format!("leafnodes {{\n  listen: {}\n}}", quote(&hub.leaf_listen)),
            )
        }
        Topology::Site(site) => {
            let (scheme, address) = site
                .hub_leaf_url
                .split_once("://")
                .unwrap_or(("nats-leaf", &site.hub_leaf_url));
            let url = format!(
                "{scheme}://{}:{}@{address}",
                leaf_user(&site.silo),
                site.password
            );
            (
                format!("ck-{}", site.silo),
                format!("domain: {}", quote(&site.silo)),
                format!(
                    "leafnodes {{\n  remotes: [ {{ url: {}, account: APP }} ]\n}}",
                    quote(&url)
                ),
            )
        }
    };
    let tls = tls.map_or_else(String::new, |t| {
        format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 2\n}}",
            quote(&t.cert_file.display().to_string()),
            quote(&t.key_file.display().to_string())
        )
    });
    Ok(SERVER_TEMPLATE
        .replace("{{LISTEN}}", listen)
        .replace("{{TLS}}", &tls)
        .replace("{{ISSUER}}", &issuer)
        .replace(
            "{{XKEY}}",
            &secrets
                .xkey()?
                .map_or_else(String::new, |x| format!("xkey: {}", x.public_key())),
        )
        .replace("{{CALLOUT_PASSWORD}}", &secrets.password)
        .replace("{{STATIC_USERS}}", &users.join(", "))
        .replace("{{STATIC_USER_NAMES}}", &names)
        .replace("{{STORE_DIR}}", &store_dir.display().to_string())
        .replace("{{SERVER_NAME}}", &server_name)
        .replace("{{JETSTREAM_DOMAIN}}", &domain)
        .replace("{{LEAFNODES}}", &leafnodes))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    ck_fs::write_atomic_private(path, text.as_bytes())
}

/// Writes fresh secrets and the rendered server configuration into `dir`; refuses to overwrite
/// existing secrets (that would lock out every running server). A hub's site link passwords go
/// to [`site_password_file`].
pub fn init(
    dir: &Path,
    listen: &str,
    static_users: &[StaticUser],
    tls: Option<&ServerTls>,
    topology: &Topology,
) -> Result<PathBuf, SetupError> {
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| SetupError::Io { path, source }
    };
    // Nothing is written for a topology that cannot be rendered.
    topology.check()?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if dir.join(ISSUER_FILE).exists() {
        return Err(SetupError::Exists(dir.join(ISSUER_FILE)));
    }
    let secrets = CalloutSecrets::generate();
    let store = dir.canonicalize().map_err(io(dir))?.join(STORE_DIR);
    let config = render_server_config(&secrets, listen, static_users, &store, tls, topology)?;
    if let Topology::Hub(hub) = topology {
        let sites = dir.join(SITES_DIR);
        std::fs::create_dir_all(&sites).map_err(io(&sites))?;
        for site in &hub.sites {
            let path = site_password_file(dir, &site.silo);
            write_private(&path, &site.password).map_err(io(&path))?;
        }
    }
    for (name, text) in [
        (ISSUER_FILE, secrets.issuer_seed.as_str()),
        (PASSWORD_FILE, secrets.password.as_str()),
        (
            PROVISION_PASSWORD_FILE,
            secrets.provision_password.as_deref().unwrap_or_default(),
        ),
        (XKEY_FILE, secrets.xkey_seed.as_deref().unwrap_or_default()),
        (SERVER_CONFIG_FILE, config.as_str()),
    ] {
        let path = dir.join(name);
        write_private(&path, text).map_err(io(&path))?;
    }
    Ok(dir.join(SERVER_CONFIG_FILE))
}
