//! `ck` — the ConceptKernel runtime's command line. It composes the library crates and owns
//! nothing but argument parsing, output formatting and exit codes.

mod acl;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ConceptKernel runtime and SPIFFE-secured NATS topic router.
#[derive(Parser)]
#[command(name = "ck", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check conceptkernel.yaml manifests and report every problem with file, line and field.
    ///
    /// Each PATH is a manifest file, a kernel directory, or a directory searched for
    /// `conceptkernel.yaml` files. Manifests checked together are also checked against each
    /// other (shared GUIDs, colliding topics). Exits 1 when any error is found; warnings alone
    /// do not fail.
    Validate(validate::Args),
    /// Print the NATS permissions compiled for a kernel, as JSON and/or a nats-server block.
    ///
    /// Permissions are deny-by-default allow lists built from the kernel's own topics and the
    /// grants and edges of every kernel given with --with.
    Acl(acl::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Acl(args) => acl::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ck: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
