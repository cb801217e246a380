//! `ck new <Namespace.Name>`: a kernel directory `ck dev` serves at once — a manifest with a
//! fresh GUID and a `hello` action, C sources built by `ck build` (clang with wasi-libc), an
//! ontology and a README saying what to do next.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Arguments of `ck new`.
#[derive(clap::Args)]
pub struct Args {
    /// The kernel's name, `Namespace.Name` (letters, digits, `_` and `-` in each part).
    #[arg(value_name = "Namespace.Name")]
    pub name: String,
    /// Where to create it (default: a directory named after the kernel).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// SPIFFE trust domain of the kernel's identity.
    #[arg(long, default_value = "example.org")]
    pub domain: String,
}

fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

const SOURCE: &str = r#"/* {NAME}: `hello` greets the `name` it is given. Edit and save: `ck dev` rebuilds and swaps the
 * new version in while it keeps serving.
 *
 * The contract (kernels/wit/kernel.wit): the host passes the action, its data (JSON text) and
 * the call context; the kernel returns JSON text or an error with an HTTP-like code. It has no
 * files, clock, environment or sockets: what it may reach is what its grants allow. */
#include "kernel.h"
#include "ck.h"

bool exports_conceptkernel_kernel_handler_handle(ck_str *action, ck_str *data, ck_context *ctx, ck_str *ret,
                                                 ck_error *err) {
  bool ok;
  if (ck_eq(action, "hello")) {
    ck_buf b = {0};
    ck_buf_puts(&b, "{\"greeting\":\"hello\",\"data\":");
    ck_buf_put(&b, data->ptr, data->len);
    ck_buf_puts(&b, ",\"kernel\":");
    ck_buf_json_str(&b, &ctx->kernel_name);
    ck_buf_puts(&b, "}");
    ok = ck_ok_buf(ret, &b);
  } else {
    ok = ck_fail(err, 404, "{NAME} knows `hello`");
  }
  kernel_string_free(data);
  kernel_string_free(action);
  exports_conceptkernel_kernel_handler_context_free(ctx);
  return ok;
}
"#;

pub fn run(args: &Args) -> Result<std::process::ExitCode> {
    if !valid_name(&args.name) {
        bail!(
            "'{}' is not a kernel name: use Namespace.Name (e.g. Demo.Hello), each part starting with a letter",
            args.name
        );
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} already exists and is not empty", dir.display());
    }
    let guid = uuid::Uuid::new_v4();
    let file = args.name.to_lowercase().replace(['.', '-'], "_");
    let manifest = format!(
        r#"# {name} — scaffolded by `ck new`. Serve it with hot reload: `ck dev {dir}`.
apiVersion: conceptkernel/v3
kernel_class: {name}
kernel_id: {guid}
domain: {domain}
metadata:
  version: "0.1"
spec:
  actions:
    common:
      - {{name: status, description: Health and versions, access: anon}}
      - {{name: check.identity, description: Manifest checks, access: anon}}
    unique:
      - {{name: hello, description: Greet the caller, access: anon}}
  tool:
    # Built by `ck build` from the C sources in tool/ (clang with wasi-libc); to use another
    # language, set `build:` to a command that writes the component here.
    component: tool/{file}.wasm
    language: c
  limits:
    timeout_ms: 1000
    memory_mb: 16
grants:
  - identity: anon
    actions: [status, check.identity, hello]
    expires: never
"#,
        name = args.name,
        dir = dir.display(),
        domain = args.domain,
    );
    let ontology = "# The kernel's schema (CK loop). `instance_mutability` says whether sealed instances\n\
                    # may be amended: sealed | amendments_allowed | full_versioning.\n\
                    instance_mutability: sealed\n";
    let readme = format!(
        "# {name}\n\n\
         Scaffolded by `ck new`.\n\n\
         - `ck dev {dir}` builds it, serves it on a local nats-server with the auth callout and\n  \
           SPIFFE identity (as in production), and rebuilds and swaps it in on every save.\n\
         - `ck call {dir} hello '{{\"name\": \"ada\"}}'` sends it a message (ck dev prints the\n  \
           URL and credentials).\n\
         - `tool/{file}.c` is the code (TOOL loop); `conceptkernel.yaml` and `ontology.yaml` are\n  \
           its identity (CK loop). Each change is a commit in `.ck/`.\n",
        name = args.name,
        dir = dir.display(),
    );
    std::fs::create_dir_all(dir.join("tool"))?;
    let files = [
        (dir.join("conceptkernel.yaml"), manifest),
        (dir.join("ontology.yaml"), ontology.to_owned()),
        (dir.join("README.md"), readme),
        (
            dir.join("tool").join(format!("{file}.c")),
            SOURCE.replace("{NAME}", &args.name),
        ),
        (
            dir.join(".gitignore"),
            "# build outputs and runtime state\n*.wasm\n.ck/\ndata/\n".to_owned(),
        ),
    ];
    for (path, text) in files {
        std::fs::write(&path, text)?;
    }
    println!("created {} ({} {guid})", dir.display(), args.name);
    println!("next: ck dev {}", dir.display());
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::valid_name("Demo.Hello"));
        assert!(super::valid_name("ACME.Finance.Employee_2"));
        assert!(!super::valid_name("Hello"));
        assert!(!super::valid_name("Demo..Hello"));
        assert!(!super::valid_name("Demo.1x"));
        assert!(!super::valid_name("../etc.passwd"));
    }
}
