//! Who may install what where (`policies/install.yaml`): the install policy a site checks every
//! install request against, after the requester's JWT-SVID is verified, and the kernels each
//! site's hub link may receive requests for (`crate::site`).
//!
//! It reads no files and verifies no token: the caller hands over the policy's text and an
//! already verified SPIFFE ID.

use serde::Deserialize;

/// The shipped policy (`policies/install.yaml`): operators install anything anywhere.
pub const SHIPPED_INSTALL_POLICY: &str = include_str!("../../../policies/install.yaml");

/// The policy format's version this reader understands.
/// Version 2 binds each proof to its request: the audience holds `{request}`.
pub const INSTALL_POLICY_VERSION: u32 = 2;

/// `policies/install.yaml`, parsed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallPolicy {
    /// Format version (2).
    pub version: u32,
    /// The audience a request's JWT-SVID must be addressed to; `{silo}` is replaced by the
    /// site's name, so a token minted for one site is refused by every other, and `{request}`
    /// by what the request asks (its id and digest, or its id and `scrub`), so a token seen on
    /// the bus cannot be reused for another request.
    pub audience: String,
    /// The rules; a request is allowed when one of them matches it. None: nothing is allowed.
    #[serde(default)]
    pub rules: Vec<InstallRule>,
}

/// One rule: these requesters may install these kernels at these silos.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRule {
    /// SPIFFE IDs; one ending in `/*` matches every ID below that path.
    pub requesters: Vec<String>,
    /// Silo names, or `*` for every silo.
    pub silos: Vec<String>,
    /// Kernel class names, or `*` for every kernel.
    pub kernels: Vec<String>,
}

/// An install policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InstallPolicyError {
    /// Not YAML of this format.
    #[error("install policy: {0}")]
    Syntax(String),
    /// A version this reader does not understand.
    #[error(
        "install policy: version {0} is not supported (this ck reads version {INSTALL_POLICY_VERSION})"
    )]
    Version(u32),
    /// A requester pattern that is not a SPIFFE ID (or a `/*` path prefix of one).
    #[error("install policy: rule {rule}: requester `{requester}` is not a spiffe:// ID")]
    Requester {
        /// The rule's position (from 1).
        rule: usize,
        /// The pattern.
        requester: String,
    },
    /// An audience without `{silo}` would let one site's token install at all; one without
    /// `{request}` would let a token seen on the bus be reused for another request.
    #[error(
        "install policy: audience `{0}` must contain {{silo}} (the site) and {{request}} (what the request asks)"
    )]
    Audience(String),
}

/// Why an install request is refused by the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no rule of the install policy lets {requester} install {kernel} at {silo}")]
pub struct NotAllowed {
    /// The verified requester.
    pub requester: String,
    /// The kernel asked for.
    pub kernel: String,
    /// The site.
    pub silo: String,
}

impl InstallPolicy {
    /// Parses and checks the policy's text.
    pub fn parse(text: &str) -> Result<InstallPolicy, InstallPolicyError> {
        let policy: InstallPolicy =
            serde_norway::from_str(text).map_err(|e| InstallPolicyError::Syntax(e.to_string()))?;
        if policy.version != INSTALL_POLICY_VERSION {
            return Err(InstallPolicyError::Version(policy.version));
        }
        if !policy.audience.contains("{silo}") || !policy.audience.contains("{request}") {
            return Err(InstallPolicyError::Audience(policy.audience));
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            if let Some(bad) = rule
                .requesters
                .iter()
                .find(|r| !r.starts_with("spiffe://") || r.len() <= "spiffe://".len())
            {
                return Err(InstallPolicyError::Requester {
                    rule: i + 1,
                    requester: bad.clone(),
                });
            }
        }
        Ok(policy)
    }

    /// The audience the proof of a request to `silo` must be addressed to; `request` is the
    /// request's binding (`ck_control::install::Request::proof_binding`).
    pub fn audience_for(&self, silo: &str, request: &str) -> String {
        audience_from(&self.audience, silo, request)
    }

    /// Whether `requester` (a verified SPIFFE ID) may install `kernel` at `silo`.
    pub fn allows(&self, requester: &str, silo: &str, kernel: &str) -> Result<(), NotAllowed> {
        let allowed = self.rules.iter().any(|r| {
            r.requesters.iter().any(|p| requester_matches(p, requester))
                && r.silos.iter().any(|s| s == "*" || s == silo)
                && r.kernels.iter().any(|k| k == "*" || k == kernel)
        });
        if allowed {
            Ok(())
        } else {
            Err(NotAllowed {
                requester: requester.to_owned(),
                kernel: kernel.to_owned(),
                silo: silo.to_owned(),
            })
        }
    }

    /// The kernels some rule lets anyone install at `silo`: `None` when any kernel may be
    /// (a rule with `*`), else their class names, sorted.
    pub fn kernels_at(&self, silo: &str) -> Option<Vec<String>> {
        let mut kernels = Vec::new();
        for rule in self
            .rules
            .iter()
            .filter(|r| r.silos.iter().any(|s| s == "*" || s == silo))
        {
            for k in &rule.kernels {
                if k == "*" {
                    return None;
                }
                kernels.push(k.clone());
            }
        }
        kernels.sort();
        kernels.dedup();
        Some(kernels)
    }
}

/// `template` (an install policy's `audience`, or one given by hand) filled in for `silo` and
/// `request`.
pub fn audience_from(template: &str, silo: &str, request: &str) -> String {
    template
        .replace("{silo}", silo)
        .replace("{request}", request)
}

/// `pattern` is an exact SPIFFE ID, or `spiffe://td/path/*`: every ID strictly below the path.
fn requester_matches(pattern: &str, requester: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(prefix) => requester
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
        None => pattern == requester,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
version: 2
audience: "ck-install:{silo}:{request}"
rules:
  - requesters: ["spiffe://ck.local/operator/*"]
    silos: ["*"]
    kernels: ["*"]
  - requesters: ["spiffe://ck.local/ci/builder"]
    silos: [ct-lab]
    kernels: [Demo.Echo]
"#;

    #[test]
    fn a_rule_must_match_requester_silo_and_kernel() {
        let p = InstallPolicy::parse(POLICY).unwrap();
        assert!(
            p.allows("spiffe://ck.local/operator/alice", "ct-fac", "Any.Kernel")
                .is_ok()
        );
        assert!(
            p.allows("spiffe://ck.local/ci/builder", "ct-lab", "Demo.Echo")
                .is_ok()
        );
        let refused = p
            .allows("spiffe://ck.local/ci/builder", "ct-fac", "Demo.Echo")
            .unwrap_err();
        assert_eq!(refused.silo, "ct-fac");
        assert!(
            p.allows("spiffe://ck.local/ci/builder", "ct-lab", "Demo.Tasks")
                .is_err()
        );
        // A path prefix matches below it, never the prefix itself or a sibling sharing its stem.
        assert!(
            p.allows("spiffe://ck.local/operator", "ct-fac", "X")
                .is_err()
        );
        assert!(
            p.allows("spiffe://ck.local/operators/eve", "ct-fac", "X")
                .is_err()
        );
        assert!(
            p.allows("spiffe://other.org/operator/alice", "ct-fac", "X")
                .is_err()
        );
    }

    #[test]
    fn the_audience_names_the_site() {
        let p = InstallPolicy::parse(POLICY).unwrap();
        assert_eq!(
            p.audience_for("ct-fac", "r-1:blake3:ab"),
            "ck-install:ct-fac:r-1:blake3:ab"
        );
        for unbound in ["ck-install", "ck-install:{silo}", "ck-install:{request}"] {
            let text = format!("version: 2\naudience: '{unbound}'\n");
            let err = InstallPolicy::parse(&text).unwrap_err();
            assert!(err.to_string().contains("{request}"), "{err}");
        }
        // Version 1 (audience per site only) is refused, not read as version 2.
        let old = InstallPolicy::parse("version: 1\naudience: 'a:{silo}:{request}'\n");
        assert!(old.unwrap_err().to_string().contains("version 1"));
    }

    #[test]
    fn kernels_at_a_site_are_the_union_of_its_rules() {
        let narrow = InstallPolicy::parse(
            "version: 2\naudience: 'a:{silo}:{request}'\nrules:\n  - {requesters: ['spiffe://d/x'], silos: [s1], kernels: [B, A]}\n  - {requesters: ['spiffe://d/y'], silos: ['*'], kernels: [A, C]}\n",
        )
        .unwrap();
        assert_eq!(
            narrow.kernels_at("s1"),
            Some(vec!["A".into(), "B".into(), "C".into()])
        );
        assert_eq!(narrow.kernels_at("s2"), Some(vec!["A".into(), "C".into()]));
        assert_eq!(InstallPolicy::parse(POLICY).unwrap().kernels_at("s2"), None);
    }

    #[test]
    fn malformed_policies_are_refused_with_the_field_at_fault() {
        let e = InstallPolicy::parse(
            "version: 2\naudience: 'a:{silo}:{request}'\nrules:\n  - {requesters: [alice], silos: ['*'], kernels: ['*']}\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("rule 1") && e.to_string().contains("alice"),
            "{e}"
        );
        assert!(matches!(
            InstallPolicy::parse("version: 3\naudience: 'a:{silo}:{request}'\n"),
            Err(InstallPolicyError::Version(3))
        ));
        assert!(
            InstallPolicy::parse("version: 2\naudience: 'a:{silo}:{request}'\nextra: 1\n").is_err()
        );
    }
}
