//! The kernel's identity: `apiVersion`, name (`kernel_class`), GUID, trust domain and URN, with their precedence.

use crate::diag::{Diagnostics, Loc};
use crate::yaml::Node;
use ck_subject::validate_token;

use super::ParseOptions;
use super::keys::*;
use super::reader::*;

pub(super) fn read_api_version(r: &mut Reader<'_>, root: Option<&Node>) -> Option<String> {
    let (v, loc, path) = r.first_string(&[(root, "", "apiVersion")])?;
    let Some(rest) = v.strip_prefix("conceptkernel/") else {
        r.d.error(
            Some(loc),
            &path,
            format!("unknown apiVersion '{v}'; expected `conceptkernel/v3`"),
        );
        return Some(v);
    };
    if rest == "v3" || rest.starts_with("v3.") {
    } else if rest == "v1" || rest == "v2" || rest.starts_with("v2.") {
        r.d.warn(
            Some(loc),
            &path,
            format!("'{v}' is deprecated; v3.7 expects `conceptkernel/v3`"),
        );
    } else {
        r.d.error(
            Some(loc),
            &path,
            format!("unknown apiVersion '{v}'; expected `conceptkernel/v3`"),
        );
    }
    Some(v)
}

pub(super) fn read_name(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    metadata: Option<&Node>,
    prefix: Option<&str>,
    doc_loc: Loc,
) -> Option<(String, String)> {
    let class = r.first_string(&[(root, "", "kernel_class")]);
    let meta_name = r.first_string(&[(metadata, "metadata", "name")]);
    if let (Some((n, _, _)), Some((c, loc, path))) = (&meta_name, &class)
        && n != c
        && !n.ends_with(&format!(".{c}"))
    {
        let msg = format!("differs from `metadata.name` ('{n}'), which names the kernel's topics");
        r.d.warn(Some(*loc), path, msg);
    }
    let (name, loc, path) = match (meta_name, &class) {
        (Some(found), _) => found,
        (None, Some((c, loc, path))) => {
            let full = match prefix {
                Some(p) if !c.starts_with(&format!("{p}.")) => format!("{p}.{c}"),
                _ => c.clone(),
            };
            (full, *loc, path.clone())
        }
        (None, None) => {
            r.d.error(
                Some(doc_loc),
                "metadata.name",
                "missing kernel name: set `metadata.name` (or `kernel_class` in the flat v3.7 form)",
            );
            return None;
        }
    };
    if name.is_empty() {
        r.d.error(Some(loc), &path, "kernel name is empty");
        return None;
    }
    if !check_dotted_name(r, &name, loc, &path, "kernel name") {
        return None;
    }
    if name.starts_with("CK.") {
        r.d.warn(
            Some(loc),
            &path,
            "the `CK.` prefix is reserved for platform kernels",
        );
    }
    let class = class.map(|(c, ..)| c).unwrap_or_else(|| name.clone());
    Some((name, class))
}

pub(super) fn check_guid(r: &mut Reader<'_>, guid: &str, loc: Option<Loc>, path: &str) -> bool {
    if guid.is_empty() {
        r.d.error(loc, path, "kernel guid is empty");
        return false;
    }
    if guid.len() > MAX_NAME_LEN
        || validate_token(guid).is_err()
        || !guid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        r.d.error(
            loc,
            path,
            format!(
                "invalid kernel guid '{guid}': it becomes one NATS token and one SPIFFE path segment, \
                 so only letters and digits and '-' are allowed (a UUID is expected; '_' is refused because \
                 bucket and stream names write '-' as '_', so two GUIDs would share them)"
            ),
        );
        return false;
    }
    if uuid::Uuid::try_parse(guid).is_err() {
        r.d.warn(
            loc,
            path,
            format!("guid '{guid}' is not a UUID; v3.7 requires `kernel_id` to be one"),
        );
    }
    true
}

pub(super) fn read_guid(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    metadata: Option<&Node>,
    opts: &ParseOptions,
    doc_loc: Loc,
) -> Option<String> {
    let from_yaml = r.first_string(&[(root, "", "kernel_id"), (metadata, "metadata", "guid")]);
    if let Some((file_guid, file)) = &opts.ck_guid {
        let file_guid = file_guid.trim().to_owned();
        let mut file_diag = Diagnostics::new(file.clone());
        let ok = check_guid(
            &mut Reader { d: &mut file_diag },
            &file_guid,
            None,
            ".ck-guid",
        );
        for diag in file_diag.into_vec() {
            r.d.push(
                diag.severity,
                None,
                &format!("{} (.ck-guid)", file.display()),
                diag.message,
            );
        }
        if let Some((yaml_guid, loc, path)) = &from_yaml
            && *yaml_guid != file_guid
        {
            let msg =
                format!("differs from the `.ck-guid` file ('{file_guid}'), which is canonical");
            r.d.warn(Some(*loc), path, msg);
        }
        return ok.then_some(file_guid);
    }
    match from_yaml {
        Some((guid, loc, path)) => check_guid(r, &guid, Some(loc), &path).then_some(guid),
        None => {
            r.d.error(
                Some(doc_loc),
                "kernel_id",
                "missing kernel guid: set `kernel_id` (or `metadata.guid`, or put a `.ck-guid` file \
                 beside the manifest)",
            );
            None
        }
    }
}

pub(super) fn read_domain(
    r: &mut Reader<'_>,
    root: Option<&Node>,
    metadata: Option<&Node>,
) -> Option<String> {
    let Some((domain, loc, path)) =
        r.first_string(&[(root, "", "domain"), (metadata, "metadata", "domain")])
    else {
        r.d.warn(
            None,
            "domain",
            "no `domain`: the kernel has no SPIFFE identity, so no other kernel's grant can name it",
        );
        return None;
    };
    match spiffe::TrustDomain::new(&domain) {
        Ok(td) if td.to_string() != domain => {
            r.d.error(
                Some(loc),
                &path,
                format!("trust domain '{domain}' is not in canonical form; write '{td}'"),
            );
            None
        }
        Ok(_) => Some(domain),
        Err(e) => {
            r.d.error(
                Some(loc),
                &path,
                format!("'{domain}' is not a valid SPIFFE trust domain: {e}"),
            );
            None
        }
    }
}

pub(super) fn read_urn(
    r: &mut Reader<'_>,
    metadata: Option<&Node>,
    spec: Option<&Node>,
    name: &str,
) -> (String, Option<String>) {
    let version = r
        .first_string(&[(metadata, "metadata", "version")])
        .map(|(v, ..)| v);
    let urn = r.first_string(&[(metadata, "metadata", "urn"), (spec, "spec", "urn")]);
    match urn {
        Some((urn, loc, path)) => {
            if !urn.starts_with("ckp://") {
                r.d.error(
                    Some(loc),
                    &path,
                    format!("URN '{urn}' must start with `ckp://`"),
                );
            } else if !urn.starts_with("ckp://Kernel#") {
                r.d.warn(
                    Some(loc),
                    &path,
                    "legacy URN form; v3.7 uses `ckp://Kernel#{Name}:v{major}.{minor}`",
                );
            }
            let from_urn = urn.rsplit_once(":v").map(|(_, v)| v.to_owned());
            (urn, version.or(from_urn))
        }
        None => {
            let v = version.clone().unwrap_or_else(|| "1.0".into());
            let mut parts = v.trim_start_matches('v').split('.');
            let major = parts.next().filter(|s| !s.is_empty()).unwrap_or("1");
            let minor = parts.next().unwrap_or("0");
            (format!("ckp://Kernel#{name}:v{major}.{minor}"), version)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn the_identity_gives_the_spiffe_id_and_urn() {
        let k = kernel("");
        assert_eq!(k.name, "Demo.T");
        assert_eq!(k.guid, "0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d");
        assert_eq!(
            k.spiffe_id().as_deref(),
            Some("spiffe://example.org/ck/Demo.T/0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d")
        );
        assert!(k.urn.contains("Demo.T"), "{}", k.urn);
    }

    #[test]
    fn a_name_that_is_not_nats_safe_is_refused() {
        let loaded = crate::parse_str(
            "apiVersion: conceptkernel/v3\nkernel_class: Demo.*\nkernel_id: 0e1c4a5b-2d3f-4a6b-9c8d-7e6f5a4b3c2d\n",
            std::path::Path::new("k/conceptkernel.yaml"),
            &crate::ParseOptions::default(),
        );
        assert!(loaded.kernel.is_none(), "{:?}", loaded.diagnostics);
    }
}
