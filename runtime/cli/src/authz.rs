//! `ck authz`: the NATS auth callout service and its setup.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use ck_authz::setup::{
    CALLOUT_USER, CalloutSecrets, HubSetup, SiteCredential, SiteSetup, StaticUser, Topology,
};
use ck_authz::{Authorizer, AuthorizerConfig, Registry};
use ck_identity::{TrustBundles, TrustDomain};
use tokio_util::sync::CancellationToken;

/// Arguments of `ck authz`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create the callout's secrets (issuer account nkey, callout password) and a nats-server
    /// configuration that sends every connection to the callout.
    Init(InitArgs),
    /// Answer the server's authorization requests: verify each kernel's JWT-SVID and grant it
    /// the permissions compiled from the registered manifests. Run several for availability.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct InitArgs {
    /// Directory for the secrets and nats-server.conf (created 0600).
    dir: PathBuf,
    /// Address nats-server listens on.
    #[arg(long, default_value = "127.0.0.1:4222")]
    listen: String,
    /// A user that bypasses the callout, NAME:PASSWORD (operator tools; repeatable). It may
    /// do anything but write the cluster's control plane.
    #[arg(long = "static-user", value_name = "NAME:PASSWORD")]
    static_users: Vec<String>,
    /// An operator, NAME:PASSWORD: the `operator` role of policies/control-plane.yaml (`ck
    /// publish`, `ck promote --nats`; repeatable).
    #[arg(long = "operator", value_name = "NAME:PASSWORD")]
    operators: Vec<String>,
    /// A serving host's control-plane user, NAME:PASSWORD: the `host` role (`ck run
    /// --control`; repeatable).
    #[arg(long = "control-host", value_name = "NAME:PASSWORD")]
    control_hosts: Vec<String>,
    /// The server's TLS certificate (PEM): clients must then speak TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Make this server a fleet hub: its leaf-node listener (HOST:PORT, port -1 for a free
    /// one). Sites link to it with the credentials `--site` writes.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "silo")]
    leaf_listen: Option<String>,
    /// The hub's JetStream domain (sites reach its streams through it): at a hub its own, at
    /// a site the hub's.
    #[arg(long, value_name = "NAME", default_value = "hub")]
    jetstream_domain: String,
    /// A site that may link to this hub (repeatable): its link user's password goes to
    /// DIR/sites/SILO.password, its permissions carry only that site's subjects.
    #[arg(long = "site", value_name = "SILO", requires = "leaf_listen")]
    sites: Vec<String>,
    /// Who may install what where (the hub's link permissions follow it); the built-in
    /// policies/install.yaml by default.
    #[arg(long, value_name = "FILE", requires = "leaf_listen")]
    install_policy: Option<PathBuf>,
    /// Make this server the site SILO: its own JetStream domain, a leaf link to `--hub-leaf`.
    #[arg(long, value_name = "SILO", requires_all = ["hub_leaf", "hub_password_file"])]
    silo: Option<String>,
    /// The hub's leaf-node URL (nats-leaf://HOST:PORT).
    #[arg(long, value_name = "URL", requires = "silo")]
    hub_leaf: Option<String>,
    /// The site's link password, as the hub's init wrote it (DIR/sites/SILO.password).
    #[arg(long, value_name = "FILE", requires = "silo")]
    hub_password_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory written by `ck authz init`.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222", env = "CK_NATS_URL")]
    nats: String,
    /// Where kernel manifests are registered (repeatable): directories searched for
    /// conceptkernel.yaml, rescanned when one changes.
    #[arg(
        long = "registry",
        required_unless_present = "control",
        value_name = "DIR"
    )]
    registry: Vec<PathBuf>,
    /// Decide from the cluster's control plane instead: the stable manifests its serving
    /// records name (`ck publish`, `ck promote --nats`), followed through a watch. Read as the
    /// callout's APP-side user (the `callout` role of policies/control-plane.yaml).
    #[arg(long, conflicts_with = "registry")]
    control: bool,
    /// Trust domain whose SVIDs are accepted (repeatable).
    #[arg(long = "trust-domain", required = true, value_name = "DOMAIN", value_parser = crate::identity::parse_trust_domain)]
    trust_domains: Vec<TrustDomain>,
    /// Workload API socket the trust bundles come from.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_name = "PATH")]
    spiffe_socket: String,
    /// Account kernels are placed in.
    #[arg(long, default_value = "APP")]
    account: String,
    /// Let kernels named LOCAL.* connect without SPIFFE.
    #[arg(long)]
    allow_local: bool,
    /// The CA file that signs the NATS server's certificate: the callout's connections require
    /// TLS and verify the server against it.
    #[arg(long, value_name = "FILE", env = "CK_NATS_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    match &args.command {
        Command::Init(a) => init(a),
        Command::Serve(a) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(a))
        }
    }
}

fn init(args: &InitArgs) -> Result<std::process::ExitCode> {
    let parse = |flag: &str, u: &String, role: Option<&str>| match u.split_once(':') {
        Some((name, password)) if !name.is_empty() && !password.is_empty() => Ok(StaticUser {
            name: name.to_owned(),
            password: password.to_owned(),
            role: role.map(str::to_owned),
        }),
        _ => bail!("--{flag} '{u}': expected NAME:PASSWORD"),
    };
    let users = args
        .static_users
        .iter()
        .map(|u| parse("static-user", u, None))
        .chain(
            args.operators
                .iter()
                .map(|u| parse("operator", u, Some(ck_authz::setup::OPERATOR_ROLE))),
        )
        .chain(
            args.control_hosts
                .iter()
                .map(|u| parse("control-host", u, Some(ck_authz::setup::HOST_ROLE))),
        )
        .collect::<Result<Vec<_>>>()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ck_authz::setup::ServerTls {
            cert_file: std::path::absolute(cert)?,
            key_file: std::path::absolute(key)?,
        }),
        _ => None,
    };
    let topology = topology(args)?;
    let config = ck_authz::setup::init(&args.dir, &args.listen, &users, tls.as_ref(), &topology)?;
    let secrets = CalloutSecrets::load(&args.dir)?;
    println!("wrote {}", config.display());
    println!("issuer {}", secrets.issuer()?.public_key());
    if let Some(leaf) = &args.leaf_listen {
        println!(
            "hub: JetStream domain {}, leaf nodes on {leaf}",
            args.jetstream_domain
        );
        for silo in &args.sites {
            println!(
                "site {silo}: ck authz init <dir> --silo {silo} --hub-leaf nats-leaf://<this host>:<leaf port> --hub-password-file {}",
                ck_authz::setup::site_password_file(&args.dir, silo).display()
            );
        }
    }
    if let Some(silo) = &args.silo {
        println!(
            "site {silo}: JetStream domain {silo}, linked to {}",
            args.hub_leaf.as_deref().unwrap_or_default()
        );
    }
    println!("start the server:  nats-server -c {}", config.display());
    println!(
        "start the callout: ck authz serve --dir {} --registry <kernels> --trust-domain <domain> --spiffe-socket <socket>",
        args.dir.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// The fleet place `--leaf-listen`/`--site` or `--silo`/`--hub-leaf` ask for.
fn topology(args: &InitArgs) -> Result<Topology> {
    if let Some(leaf_listen) = &args.leaf_listen {
        let policy_text = match &args.install_policy {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            None => ck_authz::setup::INSTALL_POLICY.to_owned(),
        };
        let install_policy = ck_acl::install::InstallPolicy::parse(&policy_text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}",
                args.install_policy
                    .as_deref()
                    .map_or("policies/install.yaml (built in)".into(), |p| p
                        .display()
                        .to_string())
            )
        })?;
        return Ok(Topology::Hub(HubSetup {
            domain: args.jetstream_domain.clone(),
            leaf_listen: leaf_listen.clone(),
            sites: args
                .sites
                .iter()
                .map(|s| SiteCredential::generate(s))
                .collect(),
            install_policy,
        }));
    }
    if let (Some(silo), Some(url), Some(file)) =
        (&args.silo, &args.hub_leaf, &args.hub_password_file)
    {
        let password = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("--hub-password-file {}: {e}", file.display()))?
            .trim()
            .to_owned();
        if password.is_empty() {
            bail!("--hub-password-file {}: empty", file.display());
        }
        return Ok(Topology::Site(SiteSetup {
            silo: silo.clone(),
            hub_leaf_url: url.clone(),
            hub_domain: args.jetstream_domain.clone(),
            password,
        }));
    }
    Ok(Topology::Single)
}

async fn serve(args: &ServeArgs) -> Result<std::process::ExitCode> {
    let secrets = CalloutSecrets::load(&args.dir)?;
    let issuer = secrets.issuer()?;
    let bundles = ck_identity::bundle_source(&args.spiffe_socket).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        ck_serve::signal::terminated().await;
        trigger.cancel();
    });
    let provisioner =
        ck_authz::Provisioner::for_secrets(&args.nats, &secrets, args.tls_ca.as_deref()).await?;
    let registry = if args.control {
        let Some(provisioner) = &provisioner else {
            bail!(
                "--control reads the cluster as the callout's APP-side user, whose password ({}) is missing from {}",
                ck_authz::setup::PROVISION_PASSWORD_FILE,
                args.dir.display()
            );
        };
        let plane = loop {
            match ck_control::ControlPlane::open(provisioner.jetstream().clone()).await {
                Ok(plane) => break plane,
                Err(e) => {
                    tracing::warn!(target: "ck::authz", error = %e, "registry.waiting-for-control-plane");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(std::process::ExitCode::SUCCESS),
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        Registry::follow_cluster(plane, shutdown.clone()).await?
    } else {
        Registry::open(args.registry.clone())
    };
    let authorizer = Arc::new(Authorizer::new(
        AuthorizerConfig {
            issuer,
            account: args.account.clone(),
            trust_domains: args.trust_domains.clone(),
            allow_local: args.allow_local,
            policy: ck_acl::Policy::default(),
            xkey: secrets.xkey()?,
        },
        registry,
        TrustBundles::Live(bundles),
    ));
    let servers = ck_bus::servers(&args.nats);
    let client = ck_serve::retry_connect(&shutdown, &args.nats, || {
        ck_bus::with_tls(
            async_nats::ConnectOptions::with_user_and_password(
                CALLOUT_USER.to_owned(),
                secrets.password.clone(),
            ),
            args.tls_ca.as_deref(),
        )
        .name("ck-authz")
        .connect(servers.as_slice())
    })
    .await?;
    ck_authz::serve(client, authorizer, provisioner, shutdown).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
