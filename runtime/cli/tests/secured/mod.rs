//! The secured stack the callout tests share: a real nats-server 2.15 with auth callout, the
//! real `ck identity serve` (SPIFFE provider) and `ck authz` processes, and a registry
//! directory of kernel manifests. Included by `authz.rs` and `security.rs` (`mod secured;`).
#![allow(dead_code, unused_imports)] // each including test file uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ck_natsd::NatsServer;
pub use ck_tests::{Proc, RawClient, Verdict, ck_build, copy_kernel, eventually};

pub const CK: &str = env!("CARGO_BIN_EXE_ck");
pub const DOMAIN: &str = "example.org";
pub const A_GUID: &str = "aaaaaaaa-1111-4aaa-8aaa-aaaaaaaaaaaa";
pub const B_GUID: &str = "bbbbbbbb-2222-4bbb-8bbb-bbbbbbbbbbbb";
pub const OBSERVER: (&str, &str) = ("observer", "observer-secret");
/// The control plane's operator (`operator` role of policies/control-plane.yaml).
pub const OPERATOR: (&str, &str) = ("operator", "operator-secret");
/// A serving host's control-plane user (`host` role).
pub const CONTROL_HOST: (&str, &str) = ("host", "host-secret");

pub fn spiffe(class: &str, guid: &str) -> String {
    format!("spiffe://{DOMAIN}/ck/{class}/{guid}")
}

/// `ck args…` with its stderr in `log`, killed on drop.
pub fn ck_proc(args: &[&str], log: PathBuf) -> Proc {
    Proc::spawn(CK, args, &log)
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub server: NatsServer,
    pub _identity: Proc,
    pub authz: Vec<Proc>,
    pub authz_flags: Vec<String>,
}

impl Stack {
    pub fn start(authz_count: usize, ttl_s: u64) -> Stack {
        Stack::start_with(authz_count, ttl_s, &[])
    }

    pub fn start_with(authz_count: usize, ttl_s: u64, authz_flags: &[&str]) -> Stack {
        Stack::start_full(authz_count, ttl_s, authz_flags, false)
    }

    /// A stack whose nats-server requires TLS, with a CA made here (`tls/ca.pem`, made with
    /// the `openssl` tool) that `ck authz` is told of; `ck run` and clients need `--tls-ca`.
    pub fn start_tls() -> Stack {
        Stack::start_full(1, 300, &[], true)
    }

    /// The CA of a [`Stack::start_tls`] stack.
    pub fn tls_ca(&self) -> PathBuf {
        self.root().join("tls/ca.pem")
    }

    fn start_full(authz_count: usize, ttl_s: u64, authz_flags: &[&str], tls: bool) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut authz_flags: Vec<String> = authz_flags.iter().map(|f| f.to_string()).collect();
        let mut init_tls = Vec::new();
        if tls {
            let t = root.join("tls");
            make_test_ca(&t);
            init_tls = vec![
                "--tls-cert".to_owned(),
                t.join("server.pem").display().to_string(),
                "--tls-key".to_owned(),
                t.join("server.key").display().to_string(),
            ];
            authz_flags.extend([
                "--tls-ca".to_owned(),
                t.join("ca.pem").display().to_string(),
            ]);
        }
        std::fs::create_dir_all(root.join("registry")).unwrap();
        let socket = root.join("spiffe.sock");
        let identity = ck_proc(
            &[
                "identity",
                "serve",
                "--socket",
                socket.to_str().unwrap(),
                "--dir",
                root.join("keys").to_str().unwrap(),
                "--trust-domain",
                DOMAIN,
                "--trust-domain",
                "other.org",
                "--ttl",
                &ttl_s.to_string(),
            ],
            root.join("identity.log"),
        );
        let init = Command::new(CK)
            .args(["authz", "init"])
            .arg(root.join("authz"))
            .args(["--static-user", &format!("{}:{}", OBSERVER.0, OBSERVER.1)])
            .args(["--operator", &format!("{}:{}", OPERATOR.0, OPERATOR.1)])
            .args([
                "--control-host",
                &format!("{}:{}", CONTROL_HOST.0, CONTROL_HOST.1),
            ])
            .args(&init_tls)
            .output()
            .unwrap();
        assert!(init.status.success(), "{init:?}");
        // The rendered configuration, minus its listen line (the harness picks the port).
        let config = std::fs::read_to_string(root.join("authz/nats-server.conf")).unwrap();
        let body: String = config
            .lines()
            .filter(|l| !l.starts_with("listen:"))
            .collect::<Vec<_>>()
            .join("\n");
        let server = ck_tests::nats(&body);
        identity.wait_for("identity.serving");
        let mut stack = Stack {
            dir,
            server,
            _identity: identity,
            authz: Vec::new(),
            authz_flags,
        };
        for _ in 0..authz_count {
            stack.add_authz();
        }
        stack
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> String {
        self.root().join("spiffe.sock").display().to_string()
    }

    pub fn add_authz(&mut self) {
        let (dir, url, registry, socket) = (
            self.root().join("authz").display().to_string(),
            self.server.url(),
            self.root().join("registry").display().to_string(),
            self.socket(),
        );
        let n = self.authz.len();
        let mut args = vec![
            "authz",
            "serve",
            "--dir",
            &dir,
            "--nats",
            &url,
            "--trust-domain",
            DOMAIN,
            "--spiffe-socket",
            &socket,
        ];
        // With --control the callout decides from the cluster, not from a directory.
        if !self.authz_flags.iter().any(|f| f == "--control") {
            args.extend(["--registry", registry.as_str()]);
        }
        args.extend(self.authz_flags.iter().map(String::as_str));
        let proc = ck_proc(&args, self.root().join(format!("authz-{n}.log")));
        proc.wait_for("authz.serving");
        self.authz.push(proc);
    }

    pub fn authz_logs(&self) -> String {
        self.authz.iter().map(Proc::log).collect()
    }

    /// Registers (or replaces) a kernel manifest; `grants` is YAML list items.
    pub fn register(&self, class: &str, guid: &str, grants: &str) {
        self.register_at(class, class, guid, "", grants);
    }

    /// Writes a manifest at `registry/{dir}` (`dir` empty: the registry root itself) for
    /// `class`/`guid`, with `spec_more` added under `spec:` and `grants` (YAML list items).
    pub fn register_at(&self, dir: &str, class: &str, guid: &str, spec_more: &str, grants: &str) {
        let dir = self.root().join("registry").join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = format!(
            "apiVersion: conceptkernel/v3\nkernel_class: {class}\nkernel_id: {guid}\ndomain: {DOMAIN}\n\
             spec:\n  actions:\n    common:\n      - {{name: status, access: anon}}\n{spec_more}\
             grants:\n  - identity: anon\n    actions: [status]\n    expires: never\n{grants}"
        );
        std::fs::write(dir.join("conceptkernel.yaml"), manifest).unwrap();
    }

    /// Serves the echo kernel from the registry with `ck run` as its SPIFFE ID (a copy: its
    /// DATA loop is written beside it).
    pub fn serve_echo(&self) -> Proc {
        self.serve("echo", "Demo.Echo")
    }

    /// Serves the reference kernel `kernels/{name}` (class `class`) from the registry with
    /// `ck run` as its SPIFFE ID.
    pub fn serve(&self, name: &str, class: &str) -> Proc {
        self.serve_edited(name, class, |m| m)
    }

    /// [`Stack::serve`] with the kernel's manifest passed through `edit` first.
    pub fn serve_edited(&self, name: &str, class: &str, edit: impl Fn(String) -> String) -> Proc {
        let dir = self.kernel_dir(class);
        copy_kernel(name, &dir);
        let manifest = dir.join("conceptkernel.yaml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, edit(text)).unwrap();
        ck_build(CK, &[&dir]);
        let ca = self.tls_ca().display().to_string();
        let (url, socket) = (self.server.url(), self.socket());
        let cache = self.root().join("cache").display().to_string();
        let mut args = vec![
            "run",
            dir.to_str().unwrap(),
            "--nats",
            &url,
            "--spiffe-socket",
            &socket,
            "--cache-dir",
            &cache,
        ];
        if self.tls_ca().exists() {
            args.extend(["--tls-ca", ca.as_str()]);
        }
        let host = ck_proc(&args, self.root().join(format!("host-{name}.log")));
        host.wait_for("\"ready\"");
        host
    }

    /// The observer over TLS (a [`Stack::start_tls`] stack).
    pub async fn observer_tls(&self) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(OBSERVER.0.into(), OBSERVER.1.into())
            .add_root_certificates(self.tls_ca())
            .require_tls(true)
            .connect(self.server.url())
            .await
            .unwrap()
    }

    /// A client connected as the static observer user (no callout), for sending requests.
    pub async fn observer(&self) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(OBSERVER.0.into(), OBSERVER.1.into())
            .connect(self.server.url())
            .await
            .unwrap()
    }

    pub fn kernel_dir(&self, class: &str) -> PathBuf {
        self.root().join("registry").join(class)
    }

    /// A JWT-SVID from the provider (`ck identity fetch`).
    pub fn svid(&self, spiffe_id: &str, audience: Option<&str>) -> String {
        let mut cmd = Command::new(CK);
        cmd.args(["identity", "fetch", spiffe_id, "--socket", &self.socket()]);
        if let Some(a) = audience {
            cmd.args(["--audience", a]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn connect(&self, user: &str, token: &str) -> Result<RawClient, String> {
        RawClient::connect(self.server.port(), user, token)
    }

    pub fn connect_as(&self, class: &str, guid: &str) -> RawClient {
        let id = spiffe(class, guid);
        let token = self.svid(&id, None);
        self.connect(&id, &token)
            .unwrap_or_else(|e| panic!("{id} refused: {e}\n{}", self.authz_logs()))
    }

    /// The connect is refused by the server, and `ck authz` logged `reason`.
    pub fn assert_refused(&self, user: &str, token: &str, reason: &str) {
        match self.connect(user, token) {
            Ok(_) => panic!("{user} was admitted; expected refusal for '{reason}'"),
            Err(e) => assert!(e.contains("Authorization Violation"), "{e}"),
        }
        eventually(
            Duration::from_secs(5),
            || self.authz_logs().contains(reason),
            || format!("ck authz did not log '{reason}':\n{}", self.authz_logs()),
        );
    }
}

/// A CA and a server certificate for 127.0.0.1 / localhost signed by it, in `dir` (`ca.pem`,
/// `server.pem`, `server.key`), made with the `openssl` command-line tool.
pub fn make_test_ca(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl tool (Debian: openssl) makes the test CA");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ck test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}
