//! `ck authz init`: the callout's secrets and the nats-server configuration that trusts it,
//! rendered from `policies/nats/auth-callout.conf`.

use std::path::{Path, PathBuf};

use nkeys::KeyPair;

/// The server configuration template (policies/nats/auth-callout.conf).
pub const SERVER_TEMPLATE: &str = include_str!("../../../policies/nats/auth-callout.conf");
/// Who may read and change the cluster's control plane (policies/control-plane.yaml).
pub const CONTROL_POLICY: &str = include_str!("../../../policies/control-plane.yaml");
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
        let secret = || {
            blake3::hash(KeyPair::new_user().seed().unwrap_or_default().as_bytes()).to_hex()[..40]
                .to_owned()
        };
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

/// Renders the server configuration for `secrets`, listening on `listen` (`host:port`), with
/// JetStream stored under `store_dir`, and TLS required when `tls` is given.
pub fn render_server_config(
    secrets: &CalloutSecrets,
    listen: &str,
    static_users: &[StaticUser],
    store_dir: &Path,
    tls: Option<&ServerTls>,
) -> Result<String, SetupError> {
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
            Some(role) => policy.permissions(role)?,
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
        .replace("{{STORE_DIR}}", &store_dir.display().to_string()))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    ck_fs::write_atomic_private(path, text.as_bytes())
}

/// Writes fresh secrets and the rendered server configuration into `dir`; refuses to overwrite
/// existing secrets (that would lock out every running server).
pub fn init(
    dir: &Path,
    listen: &str,
    static_users: &[StaticUser],
    tls: Option<&ServerTls>,
) -> Result<PathBuf, SetupError> {
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| SetupError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if dir.join(ISSUER_FILE).exists() {
        return Err(SetupError::Exists(dir.join(ISSUER_FILE)));
    }
    let secrets = CalloutSecrets::generate();
    let store = dir.canonicalize().map_err(io(dir))?.join(STORE_DIR);
    let config = render_server_config(&secrets, listen, static_users, &store, tls)?;
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
