//! The krew manifest (`plugins/cassette.yaml`) read the way krew reads it, and checked against
//! this crate: its version, the binaries it builds, and the fields krew requires. Test-only.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Plugin {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    version: String,
    homepage: String,
    short_description: String,
    description: String,
    #[serde(default)]
    caveats: Option<String>,
    platforms: Vec<Platform>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Platform {
    selector: Selector,
    uri: String,
    sha256: String,
    bin: String,
    #[serde(default)]
    files: Vec<FileOperation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOperation {
    from: String,
    to: String,
}

const MANIFEST: &str = include_str!("../../plugins/cassette.yaml");
const CARGO_TOML: &str = include_str!("../Cargo.toml");

/// The `[[bin]]` names of this crate.
fn bins() -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in CARGO_TOML.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(rest) = line.strip_prefix("name") {
            let value = rest.trim_start().trim_start_matches('=').trim();
            names.push(value.trim_matches('"').to_string());
        }
    }
    names
}

#[test]
fn the_krew_manifest_installs_this_crates_binaries_at_its_version() {
    let plugin: Plugin = serde_saphyr::from_str(MANIFEST).expect("plugins/cassette.yaml parses");
    assert_eq!(
        plugin.api_version,
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(plugin.kind, "Plugin");
    // kubectl finds `kubectl cassette` as the executable kubectl-cassette.
    assert_eq!(plugin.metadata.name, "cassette");
    assert_eq!(env!("CARGO_BIN_NAME"), "kubectl-cassette");
    let spec = &plugin.spec;
    assert_eq!(
        spec.version,
        format!("v{}", env!("CARGO_PKG_VERSION")),
        "the manifest's version is the crate's"
    );
    assert!(spec.homepage.starts_with("https://"), "{}", spec.homepage);
    assert!(
        !spec.short_description.trim().is_empty() && !spec.short_description.contains('\n'),
        "shortDescription is one line"
    );
    assert!(spec.description.trim().len() > spec.short_description.len());
    // The caveat says where krew put the completion helper, which is under the version.
    let helper = format!("/cassette/{}/kubectl_complete-cassette", spec.version);
    assert!(
        spec.caveats.as_deref().is_some_and(|c| c.contains(&helper)),
        "caveats do not name {helper}"
    );

    let bins = bins();
    assert!(bins.contains(&"kubectl-cassette".to_string()), "{bins:?}");
    assert!(
        bins.contains(&"kubectl_complete-cassette".to_string()),
        "{bins:?}"
    );
    assert!(!spec.platforms.is_empty());
    let mut seen = BTreeSet::new();
    for p in &spec.platforms {
        let os = p.selector.match_labels.get("os").expect("os label");
        let arch = p.selector.match_labels.get("arch").expect("arch label");
        assert!(
            ["linux", "darwin", "windows"].contains(&os.as_str()),
            "{os}"
        );
        assert!(["amd64", "arm64"].contains(&arch.as_str()), "{arch}");
        assert!(seen.insert((os, arch)), "{os}/{arch} listed twice");
        assert_eq!(p.bin, env!("CARGO_BIN_NAME"), "bin of {os}/{arch}");
        let archive = format!("kubectl-cassette-{}-{os}-{arch}.tar.gz", spec.version);
        assert!(
            p.uri.starts_with("https://")
                && p.uri.ends_with(&format!("/{}/{archive}", spec.version)),
            "{os}/{arch}: {}",
            p.uri
        );
        assert!(
            p.sha256.len() == 64
                && p.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{os}/{arch}: sha256 {:?} is not 64 lower-case hex digits",
            p.sha256
        );
        // Both binaries the crate builds are installed, and nothing it does not build.
        let from: BTreeSet<&str> = p.files.iter().map(|f| f.from.as_str()).collect();
        let built: BTreeSet<&str> = bins.iter().map(String::as_str).collect();
        assert_eq!(from, built, "{os}/{arch}: files");
        assert!(
            p.files.iter().all(|f| f.to == "."),
            "{os}/{arch}: files go to the root"
        );
    }
    assert!(seen.contains(&(&"linux".to_string(), &"amd64".to_string())));
}
