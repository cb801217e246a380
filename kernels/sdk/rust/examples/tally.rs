//! A Rust version of CS.Voting's `tally`, as a kernel: `cargo build --example tally --target
//! wasm32-wasip2` makes the component; natively, `cargo run --example tally` runs it on sample
//! data without a host.

use std::collections::BTreeMap;

use ck_guest::{Context, Kernel, KernelError, bad_request, export_kernel, parse_data};

struct Voting;

impl Kernel for Voting {
    fn handle(action: String, data: String, _ctx: Context) -> Result<String, KernelError> {
        if action != "tally" {
            return Err(KernelError {
                code: 404,
                message: "CS.Voting knows `tally`".into(),
            });
        }
        let data = parse_data(&data)?;
        let ballots = data["ballots"]
            .as_array()
            .ok_or_else(|| bad_request("`ballots` must be a list"))?;
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for ballot in ballots {
            let name = ballot
                .as_str()
                .ok_or_else(|| bad_request("`ballots` must hold strings"))?;
            *counts.entry(name).or_default() += 1;
        }
        let top = counts.values().copied().max().unwrap_or(0);
        let leaders: Vec<&str> = counts
            .iter()
            .filter(|(_, v)| **v == top)
            .map(|(k, _)| *k)
            .collect();
        let winner = (leaders.len() == 1).then(|| leaders[0]);
        Ok(serde_json::json!({"total": ballots.len(), "counts": counts, "winner": winner, "tie": leaders.len() > 1})
            .to_string())
    }
}

export_kernel!(Voting);

fn main() {
    let ctx = Context {
        trace_id: "tx-example".into(),
        caller: "anonymous".into(),
        task_id: None,
        kernel_name: "CS.Voting".into(),
        kernel_guid: "example".into(),
    };
    let out = Voting::handle("tally".into(), r#"{"ballots":["a","b","a"]}"#.into(), ctx);
    println!("{out:?}");
}
