//! `ck call`: send one request to a kernel and print its answer.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use ck_bus::envelope::{KERNEL_ID, TRACE_ID, USER_ID, new_trace_id};

use crate::validate::load_one;

/// Arguments of `ck call`.
#[derive(clap::Args)]
pub struct Args {
    /// A kernel directory or manifest (its input topic is used), or a subject.
    #[arg(value_name = "KERNEL_OR_SUBJECT")]
    target: String,
    /// The action.
    action: String,
    /// The action's data, a JSON object.
    #[arg(default_value = "{}")]
    data: String,
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222", env = "CK_NATS_URL")]
    nats: String,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// X-User-ID to send.
    #[arg(long, default_value = "anonymous")]
    user: String,
    /// NATS user to connect as (a static user of the server; kernels use SPIFFE instead).
    #[arg(long, env = "CK_NATS_USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// Its password.
    #[arg(long, env = "CK_NATS_PASSWORD", requires = "nats_user")]
    nats_password: Option<String>,
    /// The CA file that signs the NATS server's certificate (TLS required).
    #[arg(long, value_name = "FILE", env = "CK_NATS_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let data: serde_json::Value = serde_json::from_str(&args.data)
        .with_context(|| format!("data '{}' is not JSON", args.data))?;
    let subject = if Path::new(&args.target).exists() {
        load_one(Path::new(&args.target))?.topics.input
    } else {
        args.target.clone()
    };
    let body = serde_json::to_vec(&serde_json::json!({ "action": args.action, "data": data }))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = operator_options(
            args.nats_user.as_deref(),
            args.nats_password.as_deref(),
            args.tls_ca.as_deref(),
        )
        .connect(ck_bus::servers(&args.nats).as_slice())
        .await
        .with_context(|| format!("connecting to {}", args.nats))?;
        let mut headers = async_nats::HeaderMap::new();
        let trace = new_trace_id();
        headers.insert(TRACE_ID, trace.as_str());
        headers.insert(KERNEL_ID, "ck-call");
        headers.insert(USER_ID, args.user.as_str());
        let request = async_nats::Request::new()
            .payload(Bytes::from(body))
            .headers(headers)
            .timeout(Some(Duration::from_millis(args.timeout_ms)));
        let reply = client
            .send_request(subject.clone(), request)
            .await
            .with_context(|| format!("request on {subject}"))?;
        let answer: serde_json::Value =
            serde_json::from_slice(&reply.payload).context("the answer is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&answer)?);
        Ok(if answer["status"] == "ok" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// How an operator's command connects (`ck call`, `ck verify --nats`): as a static user when
/// one is given (a missing password is empty), else anonymously; TLS against `tls_ca` when
/// given.
pub(crate) fn operator_options(
    user: Option<&str>,
    password: Option<&str>,
    tls_ca: Option<&Path>,
) -> async_nats::ConnectOptions {
    let options = match user {
        Some(user) => async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            password.unwrap_or_default().to_owned(),
        ),
        None => async_nats::ConnectOptions::new(),
    };
    ck_bus::with_tls(options, tls_ca)
}
