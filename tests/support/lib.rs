//! Test harness: a real nats-server on a free loopback port (`ck-natsd`), and a minimal NATS
//! protocol client that reports permission violations synchronously.
//!
//! nats-server answers a denied PUB or SUB with `-ERR 'Permissions Violation …'` and keeps the
//! connection open; because it processes one connection's commands in order, sending `PING`
//! after the operation and reading up to the `PONG` tells exactly whether that operation was
//! refused. That is why the differential tests speak the wire protocol here instead of going
//! through an async client whose errors arrive on a side channel.

pub mod fuzz;
mod process;
mod witness;

pub use process::{
    Proc, ck_build, ck_run, copy_kernel, eventually, reference_kernels, seconds_from_env,
    write_echo_version,
};
pub use witness::{Verdicts, Witness};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub use ck_natsd::NatsServer;

/// A nats-server with durable JetStream under `store` (file storage, fsync on every write), or
/// fails the test with its log.
pub fn nats_jetstream(store: &std::path::Path) -> NatsServer {
    nats(&format!(
        "jetstream {{ store_dir: \"{}\", sync_interval: always }}",
        store.display()
    ))
}

/// Starts a nats-server with `body` as configuration, or fails the test with its log.
pub fn nats(body: &str) -> NatsServer {
    NatsServer::start(body).unwrap_or_else(|e| panic!("{e}"))
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
            // A server that refuses says why (-ERR) and then closes: keep the why.
            let line = self.line().map_err(|closed| {
                errors.push(closed);
                errors.join("; ")
            })?;
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
