//! `ck validate` and `ck acl` as a user runs them: the real binary on real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn ck(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ck"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

/// Runs `ck` and insists on success, showing its stderr otherwise.
fn ck_ok(args: &[&str]) -> Output {
    let out = ck(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "ck {args:?}: {stderr}");
    out
}

fn strings(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn expectation(path: &Path) -> (String, String) {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let field = lines
        .next()
        .and_then(|l| l.strip_prefix("# expect-field:"))
        .expect("expect-field header");
    let message = lines
        .next()
        .and_then(|l| l.strip_prefix("# expect-message:"))
        .expect("expect-message header");
    (field.trim().to_owned(), message.trim().to_owned())
}

#[test]
fn every_malformed_fixture_fails_naming_its_field() {
    let dir = repo().join("tests/fixtures/invalid");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 25, "only {} fixtures", fixtures.len());
    for path in fixtures {
        let (field, message) = expectation(&path);
        let out = ck(&["validate", "--format", "json", path.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let report = json(&out);
        let diags = report["diagnostics"].as_array().unwrap();
        let hit = diags.iter().find(|d| {
            d["severity"] == "error"
                && d["field"] == field.as_str()
                && d["message"].as_str().unwrap().contains(&message)
        });
        let Some(hit) = hit else {
            panic!(
                "{}: no error on field '{field}' containing '{message}' in {diags:#?}",
                path.display()
            );
        };
        assert_eq!(hit["file"].as_str().unwrap(), path.to_str().unwrap());
        let structural = [
            "missing kernel name",
            "missing kernel guid",
            "the manifest is empty",
            "are both",
        ];
        if !structural.iter().any(|s| message.contains(s)) {
            let line = hit["loc"]["line"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: no line in {hit}", path.display()));
            assert!(
                line >= 3,
                "{}: line {line} points into the header comment",
                path.display()
            );
        }
    }
}

#[test]
fn text_output_names_file_line_and_field() {
    let out = ck(&[
        "validate",
        "tests/fixtures/invalid/write-storage-granted.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().next().unwrap();
    assert!(
        line.starts_with("tests/fixtures/invalid/write-storage-granted.yaml:14:")
            && line.contains(": error: grants[0].actions[1]: "),
        "{line}"
    );
    assert!(
        text.contains("FAILED: 1 manifest(s) checked, 1 error(s)"),
        "{text}"
    );
}

#[test]
fn a_ten_megabyte_manifest_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conceptkernel.yaml");
    let mut big = String::from("kernel_class: Finance.Employee\ndescription: \"");
    big.push_str(&"x".repeat(10 * 1024 * 1024));
    big.push_str("\"\n");
    std::fs::write(&path, big).unwrap();
    let out = ck(&["validate", "--format", "json", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    let msg = report["diagnostics"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("manifests are limited to 1048576 bytes"),
        "{msg}"
    );
}

#[test]
fn the_example_and_every_shape_validate() {
    // Two registries: the shapes restate reference kernels' classes with other grants, which
    // the registry rule refuses in one set (checked below).
    for registry in [
        &["conceptkernel.yaml.example", "kernels"][..],
        &["tests/fixtures/valid"],
    ] {
        let out = ck(&[&["validate"][..], registry].concat());
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}");
    }
    let together = ck(&["validate", "tests/fixtures/valid", "kernels"]);
    let text = String::from_utf8_lossy(&together.stdout);
    assert_eq!(together.status.code(), Some(1), "{text}");
    assert!(
        text.contains("kernel 'CS.Voting' is also declared by"),
        "{text}"
    );
    let example = ck(&["validate", "--format", "json", "conceptkernel.yaml.example"]);
    let report = json(&example);
    assert_eq!(report["errors"], 0);
    assert_eq!(
        report["warnings"], 0,
        "the example should be warning-free: {report:#}"
    );
}

#[test]
fn warnings_do_not_fail_and_typos_get_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conceptkernel.yaml");
    std::fs::write(
        &path,
        "kernel_class: Finance.Employee\nkernel_id: 7f3ea1b2-c3d4-4e5f-8a6b-1c2d3e4f5a6b\ndomain: example.org\ngrant: []\n",
    )
    .unwrap();
    let out = ck(&["validate", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(":4:1: warning: grant: unknown key, ignored; did you mean `grants`?"),
        "{text}"
    );
}

#[test]
fn shapes_normalise_to_the_same_model() {
    let out = ck_ok(&["acl", "--format", "json", "tests/fixtures/valid/cklib"]);
    let acl = json(&out);
    assert_eq!(acl["kernel"], "CS.Voting");
    assert_eq!(acl["guid"], "5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f");
    assert_eq!(
        acl["spiffe_id"],
        "spiffe://example.org/ck/CS.Voting/5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f"
    );

    // The .ck-guid file wins for the LinkML shape.
    let out = ck(&["acl", "--format", "json", "tests/fixtures/valid/linkml"]);
    let acl = json(&out);
    assert_eq!(acl["guid"], "3b1f6c2e-8d4a-4f6b-9c1e-2a3b4c5d6e7f");
    assert_eq!(
        acl["permissions"]["subscribe"]["allow"][0],
        "input.TG.Cymatics"
    );

    // GUID format: every own topic sits under ck.{guid}.>.
    let out = ck(&[
        "acl",
        "--format",
        "json",
        "tests/fixtures/valid/guid-topics",
    ]);
    let acl = json(&out);
    assert_eq!(
        acl["permissions"]["publish"]["allow"],
        serde_json::json!(["ck.0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a.>"])
    );
}

#[test]
fn acl_considers_the_grants_of_known_kernels() {
    let voting = "5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f";
    let out = ck_ok(&[
        "acl",
        "--format",
        "json",
        "tests/fixtures/valid/linkml",
        "--with",
        "tests/fixtures/valid",
    ]);
    let acl = json(&out);
    let subs = strings(&acl["permissions"]["subscribe"]["allow"]);
    let pubs = strings(&acl["permissions"]["publish"]["allow"]);
    assert!(
        subs.contains(&format!("ck.{voting}.data.>").as_str()),
        "{subs:?}"
    );
    assert!(pubs.contains(&"input.CS.Voting"), "{pubs:?}");
    assert!(subs.contains(&"result.CS.Voting"), "{subs:?}");
    assert!(
        !subs.iter().any(|s| *s == "_INBOX.>" || *s == ">"),
        "{subs:?}"
    );
    assert_eq!(acl["expires_at"], "2099-01-01T00:00:00Z");

    // Looked up by name among --with, and rendered as a nats-server block.
    let out = ck_ok(&[
        "acl",
        "TG.Cymatics",
        "--with",
        "tests/fixtures/valid",
        "--format",
        "nats",
    ]);
    let block = String::from_utf8(out.stdout).unwrap();
    assert!(
        block.starts_with("permissions {\n  publish {\n    allow: ["),
        "{block}"
    );
    assert!(
        block.contains(&format!("\"ck.{voting}.data.>\"")),
        "{block}"
    );
    assert!(
        block.contains("allow_responses { max: 1, expires: \"120000ms\" }"),
        "{block}"
    );
}

#[test]
fn acl_refuses_invalid_manifests_and_unknown_kernels() {
    let out = ck(&["acl", "tests/fixtures/invalid/write-storage-granted.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to compile"));
    let out = ck(&["acl", "No.Such", "--with", "tests/fixtures/valid"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a path nor the name"));
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["acl", "--help"],
        vec!["help", "acl"],
    ] {
        let out = ck(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

/// A NATS password in the environment (as `ck call` reads it) does not turn `ck verify` into a
/// command that demands `--nats` and `--user` (found by the demo, which exports one).
#[test]
fn ck_verify_ignores_a_nats_password_in_the_environment() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ck"))
        .args(["verify"])
        .arg(empty.path())
        .env("CK_NATS_PASSWORD", "secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("nothing to verify"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A manifest whose one edge names `nats_subject`, in a fresh directory.
fn kernel_with_edge_subject(dir: &Path, nats_subject: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/valid/linkml/conceptkernel.yaml"))
            .unwrap()
            .replace(
                "nats_subject: event.TG.Cymatics",
                &format!("nats_subject: {nats_subject}"),
            );
    let kernel = dir.join("cymatics");
    std::fs::create_dir_all(&kernel).unwrap();
    std::fs::write(kernel.join("conceptkernel.yaml"), text).unwrap();
    std::fs::copy(
        repo().join("tests/fixtures/valid/linkml/.ck-guid"),
        kernel.join(".ck-guid"),
    )
    .unwrap();
    kernel.join("conceptkernel.yaml")
}

#[test]
fn validate_names_the_closest_subject_family_of_a_subject_outside_all() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = kernel_with_edge_subject(tmp.path(), "fleet.instal.ct-fac.request");
    let out = ck(&["validate", "--format", "json", manifest.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = json(&out);
    let hit = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["field"] == "edges.outbound[0].nats_subject")
        .unwrap_or_else(|| panic!("no finding on the edge subject: {report:#}"));
    assert_eq!(hit["severity"], "error");
    let message = hit["message"].as_str().unwrap();
    assert!(
        message.contains("outside every declared subject family")
            && message.contains("closest: `fleet.install`"),
        "{message}"
    );

    // Inside a family: no finding. A families file of the operator's own declares `orders.>`.
    let inside = kernel_with_edge_subject(tmp.path(), "fleet.install.ct-fac.request");
    ck_ok(&["validate", inside.to_str().unwrap()]);
    let orders = kernel_with_edge_subject(tmp.path(), "orders.created");
    assert_eq!(
        ck(&["validate", orders.to_str().unwrap()]).status.code(),
        Some(1)
    );
    let families = tmp.path().join("families.yaml");
    let builtin = std::fs::read_to_string(repo().join("policies/subject-families.yaml")).unwrap();
    std::fs::write(
        &families,
        format!("{builtin}  - name: orders\n    subject: \"orders.>\"\n"),
    )
    .unwrap();
    ck_ok(&[
        "validate",
        "--subject-families",
        families.to_str().unwrap(),
        orders.to_str().unwrap(),
    ]);

    // Families that share a subject are refused, naming both and the subject.
    std::fs::write(
        &families,
        format!("{builtin}  - name: scans\n    subject: \"fleet.*.scan.request\"\n"),
    )
    .unwrap();
    let out = ck(&[
        "validate",
        "--subject-families",
        families.to_str().unwrap(),
        orders.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`scans`")
            && err.contains("`fleet.events`")
            && err.contains("fleet.events.scan.request"),
        "{err}"
    );
}
