//! The SDK compiles for the host target and a kernel written with it runs natively.

use ck_guest::{Context, Kernel, KernelError, parse_data};

struct Echo;

impl Kernel for Echo {
    fn handle(action: String, data: String, ctx: Context) -> Result<String, KernelError> {
        match action.as_str() {
            "echo" => Ok(data),
            "whoami" => Ok(
                serde_json::json!({"caller": ctx.caller, "kernel": ctx.kernel_name}).to_string(),
            ),
            other => Err(KernelError {
                code: 404,
                message: format!("no action `{other}`"),
            }),
        }
    }
}

fn ctx() -> Context {
    Context {
        trace_id: "tx-1".into(),
        caller: "alice".into(),
        task_id: Some("t-1".into()),
        kernel_name: "Demo.Echo".into(),
        kernel_guid: "g".into(),
    }
}

#[test]
fn a_kernel_is_plain_rust() {
    assert_eq!(
        Echo::handle("echo".into(), "{\"a\":1}".into(), ctx()).unwrap(),
        "{\"a\":1}"
    );
    let who: serde_json::Value =
        serde_json::from_str(&Echo::handle("whoami".into(), "{}".into(), ctx()).unwrap()).unwrap();
    assert_eq!(who["caller"], "alice");
    assert_eq!(
        Echo::handle("x".into(), "{}".into(), ctx())
            .unwrap_err()
            .code,
        404
    );
    assert_eq!(parse_data("nope").unwrap_err().code, 400);
}
