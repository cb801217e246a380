//! A `ck` child process for end-to-end tests: stderr (its JSON log) in a file, waited on by
//! what it logs, killed on drop.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `done` every 20 ms until it holds; fails with `why()` after `within`.
pub fn eventually(within: Duration, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `ck` (or any) process.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `binary args…` with `CK_LOG=info`, stderr into `log`.
    pub fn spawn<S: AsRef<OsStr>>(binary: &str, args: &[S], log: &Path) -> Proc {
        Proc::spawn_in_env(binary, args, log, &[], &[])
    }

    /// [`Proc::spawn`] with the variables `unset` removed from its environment and `set` set.
    pub fn spawn_in_env<S: AsRef<OsStr>>(
        binary: &str,
        args: &[S],
        log: &Path,
        unset: &[&str],
        set: &[(&str, &OsStr)],
    ) -> Proc {
        let mut command = Command::new(binary);
        for name in unset {
            command.env_remove(name);
        }
        command.envs(set.iter().copied());
        let child = command
            .args(args)
            .env("CK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e}"));
        Proc {
            child,
            log: log.to_owned(),
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (30 s at most) until `needle` appears `count` times in the log.
    pub fn wait_for_n(&self, needle: &str, count: usize) {
        eventually(
            Duration::from_secs(30),
            || self.log().matches(needle).count() >= count,
            || format!("timed out waiting for {count} × {needle}:\n{}", self.log()),
        );
    }

    /// Waits (30 s at most) until `needle` appears in the log.
    pub fn wait_for(&self, needle: &str) {
        self.wait_for_n(needle, 1);
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (what an orchestrator sends first); the process is not waited for.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {}: {status}", self.child.id());
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child, for signals and exit codes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The repository's reference kernels (`kernels/`).
pub fn reference_kernels() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kernels")
        .canonicalize()
        .unwrap()
}

/// Copies reference kernel `name`'s manifest and C sources into `to` (so its DATA loop is
/// written there, not in the repository).
pub fn copy_kernel(name: &str, to: &Path) {
    let from = reference_kernels().join(name);
    std::fs::create_dir_all(to.join("tool")).unwrap();
    std::fs::copy(
        from.join("conceptkernel.yaml"),
        to.join("conceptkernel.yaml"),
    )
    .unwrap();
    for entry in std::fs::read_dir(from.join("tool")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "c") {
            std::fs::copy(&path, to.join("tool").join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Runs `ck build` (the binary `ck`) on `kernels` and insists on success.
pub fn ck_build<P: AsRef<OsStr>>(ck: &str, kernels: &[P]) {
    let out = Command::new(ck)
        .arg("build")
        .args(kernels)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ck build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Seconds from the environment variable `name` (tests shorten long runs locally), else
/// `default`.
pub fn seconds_from_env(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// `ck run` (the binary `ck`) of `kernel` over `nats_url` without identity, with its compiled
/// component cache and its log (`{name}.log`) under `logs` and `extra` arguments; returns once
/// it is subscribed.
pub fn ck_run(
    ck: &str,
    nats_url: &str,
    kernel: &Path,
    logs: &Path,
    name: &str,
    extra: &[&str],
) -> Proc {
    let cache = logs.join("cache");
    let mut args: Vec<&OsStr> = vec![
        "run".as_ref(),
        kernel.as_os_str(),
        "--nats".as_ref(),
        nats_url.as_ref(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
        "--insecure-no-identity".as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let proc = Proc::spawn(ck, &args, &logs.join(format!("{name}.log")));
    proc.wait_for("\"nats.subscribed\"");
    proc
}

/// Writes `tool/echo.c` of a copy of `kernels/echo` so that `echo` answers `{"v": version}`
/// whatever it is sent (tests that tell versions apart by their answers).
pub fn write_echo_version(kernel: &Path, version: u32) {
    let source = format!(
        "#include \"kernel.h\"\n#include \"ck.h\"\n\
         bool exports_conceptkernel_kernel_handler_handle(ck_str *action, ck_str *data, ck_context *ctx, ck_str *ret, ck_error *err) {{\n\
           (void)err;\n\
           ck_buf b = {{0}};\n\
           ck_buf_puts(&b, \"{{\\\"v\\\":{version}}}\");\n\
           bool ok = ck_ok_buf(ret, &b);\n\
           kernel_string_free(data);\n\
           kernel_string_free(action);\n\
           exports_conceptkernel_kernel_handler_context_free(ctx);\n\
           return ok;\n\
         }}\n"
    );
    std::fs::write(kernel.join("tool/echo.c"), source).unwrap();
}
