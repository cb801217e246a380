//! The local production-like stack `ck dev` starts when no server is given: the dev identity
//! provider, a nats-server configured for the auth callout (rendered from the same template
//! as `ck authz init`, on a free port), and the callout deciding from the kernel's directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use ck_manifest::Kernel;
use tokio_util::sync::CancellationToken;

/// A running stack; stopping it (dropping it) stops its nats-server.
pub struct Stack {
    /// The nats-server.
    pub server: ck_natsd::NatsServer,
    /// The dev identity provider's Workload API socket.
    pub socket: PathBuf,
    /// A static user (name, password) a person can call the kernel as.
    pub user: (String, String),
    _dir: tempfile::TempDir,
}

/// Starts the stack for `kernel`; its services stop with `shutdown`.
pub async fn start(kernel: &Kernel, shutdown: &CancellationToken) -> Result<Stack> {
    let dir = tempfile::Builder::new().prefix("ck-dev-").tempdir()?;
    let domain = kernel.domain.clone().unwrap_or_else(|| "dev.local".into());
    let trust_domain = ck_identity::TrustDomain::new(&domain)
        .map_err(|e| anyhow!("{}: domain '{domain}': {e}", kernel.manifest_path.display()))?;
    let provider = Arc::new(ck_identity::DevProvider::open(
        ck_identity::ProviderConfig {
            key_dir: dir.path().join("identity"),
            trust_domains: vec![trust_domain.clone()],
            ttl: Duration::from_secs(300),
        },
    )?);
    let socket = dir.path().join("spiffe.sock");
    {
        let (socket, token) = (socket.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = provider.serve(&socket, token).await {
                tracing::error!(error = %e, "identity.failed");
            }
        });
    }
    let password = uuid::Uuid::new_v4().simple().to_string();
    let user = ("dev".to_owned(), password);
    let authz_dir = dir.path().join("authz");
    let config = ck_authz::setup::init(
        &authz_dir,
        "127.0.0.1:4222",
        &[ck_authz::setup::StaticUser {
            name: user.0.clone(),
            password: user.1.clone(),
            role: None,
        }],
        None,
        &ck_authz::setup::Topology::Single,
    )?;
    // The rendered configuration without its listen line: the server picks a free port.
    let body: String = std::fs::read_to_string(&config)?
        .lines()
        .filter(|l| !l.starts_with("listen:"))
        .collect::<Vec<_>>()
        .join("\n");
    let server = ck_natsd::NatsServer::start(&body)?;
    let secrets = ck_authz::setup::CalloutSecrets::load(&authz_dir)?;
    let mut bundles = None;
    for _ in 0..100 {
        match ck_identity::bundle_source(&socket.display().to_string()).await {
            Ok(b) => {
                bundles = Some(b);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let bundles = bundles.ok_or_else(|| anyhow!("the dev identity provider did not start"))?;
    let registry = ck_authz::Registry::open(vec![kernel.dir().to_path_buf()]);
    let authorizer = Arc::new(ck_authz::Authorizer::new(
        ck_authz::AuthorizerConfig {
            issuer: secrets.issuer()?,
            account: "APP".into(),
            trust_domains: vec![trust_domain],
            allow_local: kernel.is_local(),
            policy: ck_acl::Policy::default(),
            xkey: secrets.xkey()?,
        },
        registry,
        ck_identity::TrustBundles::Live(bundles),
    ));
    let callout = async_nats::ConnectOptions::with_user_and_password(
        ck_authz::setup::CALLOUT_USER.to_owned(),
        secrets.password.clone(),
    )
    .name("ck-dev-authz")
    .connect(server.url())
    .await?;
    let provisioner = ck_authz::Provisioner::for_secrets(&server.url(), &secrets, None).await?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = ck_authz::serve(callout, authorizer, provisioner, token).await {
            tracing::error!(error = %e, "authz.failed");
        }
    });
    Ok(Stack {
        server,
        socket,
        user,
        _dir: dir,
    })
}
