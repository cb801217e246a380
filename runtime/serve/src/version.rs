//! A version of a kernel made ready to serve ([`PreparedVersion`]): its manifest as committed
//! in the CK loop, its permissions compiled against the other kernels the host knows, its
//! component compiled — everything that can fail before a version is swapped in fails here.

use std::path::Path;

use anyhow::{Context, bail};
use ck_acl::{Policy, compile};
use ck_host::{ArtifactCache, HostEngine, KernelComponent, VersionLabel};
use ck_loops::serving::ServingRecord;
use ck_loops::state::{self, VersionSnapshot};
use ck_manifest::{Diagnostic, Kernel, KernelSet};
use ck_subject::Permissions;

/// One version of a kernel, loaded and checked, not yet bound to a connection.
pub struct PreparedVersion {
    /// Which version (`stable`, `canary`, `develop`, and its CK and TOOL commits).
    pub label: VersionLabel,
    /// Its manifest, as committed.
    pub kernel: Kernel,
    /// Its component, compiled.
    pub component: KernelComponent,
    /// Its compiled permissions.
    pub permissions: Permissions,
    /// Its manifest warnings.
    pub warnings: Vec<Diagnostic>,
}

/// Loads versions: the engine, the compiled-component cache, and the other kernels whose
/// grants and edges count when compiling permissions.
#[derive(Clone)]
pub struct Loader {
    /// The engine.
    pub engine: HostEngine,
    /// The compiled-component cache.
    pub cache: Option<ArtifactCache>,
    /// Every other kernel known to the host.
    pub others: Vec<Kernel>,
}

impl Loader {
    /// Parses `version`'s manifest (as if it stood in `kernel_dir`), compiles its permissions
    /// and loads its component, labelled `name`.
    pub fn load(
        &self,
        kernel_dir: &Path,
        version: &VersionSnapshot,
        name: &str,
    ) -> anyhow::Result<PreparedVersion> {
        let short = version.pin.short();
        let path = kernel_dir.join(ck_manifest::MANIFEST_FILE);
        let opts = ck_manifest::ParseOptions {
            now: chrono::Utc::now(),
            ck_guid: version
                .ck_guid
                .clone()
                .map(|g| (g, kernel_dir.join(ck_manifest::GUID_FILE))),
        };
        let loaded = ck_manifest::parse_str(&version.manifest, &path, &opts);
        let Some(kernel) = loaded.kernel else {
            let problems: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
            bail!(
                "{short}: the manifest of this version is invalid:\n{}",
                problems.join("\n")
            );
        };
        let label = VersionLabel {
            name: name.to_owned(),
            ck: version.pin.ck.clone(),
            tool: version.pin.tool.clone(),
        };
        let component =
            KernelComponent::load(&self.engine, &version.component, self.cache.as_ref())
                .with_context(|| format!("{short}: loading the component"))?;
        self.prepare(kernel, component, label, loaded.diagnostics)
            .with_context(|| short.to_string())
    }

    /// Prepares a kernel whose component is already loaded: compiles its permissions against
    /// the other kernels the host knows.
    pub fn prepare(
        &self,
        kernel: Kernel,
        component: KernelComponent,
        label: VersionLabel,
        warnings: Vec<Diagnostic>,
    ) -> anyhow::Result<PreparedVersion> {
        let mut all = self.others.clone();
        all.push(kernel.clone());
        let (set, conflicts) = KernelSet::new(all);
        if let Some(c) = conflicts.first() {
            bail!("{c}");
        }
        let acl = compile(&kernel, &set, chrono::Utc::now(), &Policy::default())
            .with_context(|| format!("compiling permissions for {}", kernel.name))?;
        Ok(PreparedVersion {
            label,
            kernel,
            component,
            permissions: acl.permissions,
            warnings,
        })
    }

    /// Loads the stable version (and the canary, if any) of `record`, as the loops in
    /// `kernel_dir` hold them.
    pub fn load_record(
        &self,
        kernel_dir: &Path,
        record: &ServingRecord,
    ) -> anyhow::Result<(PreparedVersion, Option<(PreparedVersion, u8)>)> {
        let stable = state::materialize(kernel_dir, &record.stable)?;
        let canary = match &record.canary {
            Some(c) => Some((state::materialize(kernel_dir, &c.pin)?, c.weight)),
            None => None,
        };
        self.load_versions(kernel_dir, &stable, canary.as_ref().map(|(v, w)| (v, *w)))
    }

    /// Loads a stable version (and a canary with its weight) read back already, from the
    /// loops or from the cluster.
    pub fn load_versions(
        &self,
        kernel_dir: &Path,
        stable: &VersionSnapshot,
        canary: Option<(&VersionSnapshot, u8)>,
    ) -> anyhow::Result<(PreparedVersion, Option<(PreparedVersion, u8)>)> {
        let stable = self.load(kernel_dir, stable, state::STABLE)?;
        let canary = match canary {
            Some((version, weight)) => {
                Some((self.load(kernel_dir, version, state::CANARY)?, weight))
            }
            None => None,
        };
        Ok((stable, canary))
    }
}

/// How `version`'s topics differ from those `served` is subscribed and answering on, if they do
/// (a running subscription cannot follow them).
pub fn topics_moved(served: &Kernel, version: &Kernel) -> Option<String> {
    let (a, b) = (&served.topics, &version.topics);
    [
        ("input", &a.input, &b.input),
        ("result", &a.result, &b.result),
        ("event", &a.event, &b.event),
    ]
    .into_iter()
    .find(|(_, x, y)| x != y)
    .map(|(what, x, y)| format!("its {what} topic moves from {x} to {y}"))
}
