//! The name of a served version of a kernel: which version (`stable`, `canary`, `develop`,
//! `working`) and its CK and TOOL commits. `status` reports it and the TOOL events carry it.

/// Which version of its kernel a service is (reported by `status` and in TOOL events).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionLabel {
    /// `stable`, `canary`, `develop`.
    pub name: String,
    /// CK commit.
    pub ck: String,
    /// TOOL commit.
    pub tool: String,
}
