//! A target served by a process of its own (`ck bench-serve`, [`crate::instructions::serve`]):
//! started, waited for until it prints `ready {subject}`, and stopped by closing its standard
//! input. Used by the instruction counts (under callgrind) and the cluster benchmark (one
//! process per host or plain responder).

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::AsyncBufReadExt;

/// A running `ck bench-serve`.
pub(crate) struct Served {
    child: tokio::process::Child,
    /// Its process id (for its CPU time or callgrind_control).
    pub pid: u32,
    /// The subject it answers on.
    pub subject: String,
}

/// The arguments of `ck bench-serve` serving `target` of the echo kernel `echo` on `url`, with
/// an instance pool of `pool` slots.
pub(crate) fn args(
    url: &str,
    target: &str,
    echo: &Path,
    events: bool,
    tool_events: bool,
    pool: u32,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["bench-serve", "--nats", url, "--target", target]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.extend([
        "--echo".into(),
        echo.as_os_str().to_owned(),
        "--max-instances".into(),
        pool.to_string().into(),
    ]);
    if !events {
        args.push("--no-events".into());
    }
    if !tool_events {
        args.push("--no-tool-events".into());
    }
    args
}

impl Served {
    /// Starts `command` (which runs `ck bench-serve`) and waits up to `ready_within` for it
    /// to say it serves.
    pub async fn start(
        mut command: tokio::process::Command,
        label: &str,
        ready_within: Duration,
    ) -> Result<Served> {
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("{label}: starting {:?}", command.as_std().get_program()))?;
        let pid = child.id().context("the served process's id")?;
        let stdout = child.stdout.take().context("its stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let subject = match tokio::time::timeout(ready_within, lines.next_line()).await {
            Ok(Ok(Some(line))) => match line.strip_prefix("ready ") {
                Some(s) => s.to_owned(),
                None => bail!("{label}: unexpected output {line:?}"),
            },
            other => bail!("{label}: did not get ready within {ready_within:?}: {other:?}"),
        };
        Ok(Served {
            child,
            pid,
            subject,
        })
    }

    /// Closes its standard input and waits (up to `within`) for it to end.
    pub async fn stop(mut self, within: Duration) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(within, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
