//! Brokered credentials (`spec.credentials`): the table the injector hands the sidecar
//! (`CASSETTE_CREDENTIALS`), and each entry's real value, read from the Secret file the kubelet
//! mounts into the sidecar alone and rewrites when the Secret rotates. Which request gets the
//! value is decided in the exchange's credentials stage; this module only holds the entries.

use anyhow::{Context, Result, bail};
use cassette_api::BrokeredCredential;
use cassette_rules::credential::{Carrier, CredentialHost};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// How long a value read from its file is used before the file is looked at again: a rotated
/// Secret is in use within this much of the kubelet writing it.
pub const RECHECK: Duration = Duration::from_secs(2);

/// One entry: where its placeholder may be swapped, how, and for what.
pub struct Entry {
    /// The entry's name in `spec.credentials`.
    pub name: String,
    hosts: Vec<CredentialHost>,
    /// The presentation the placeholder is swapped in.
    pub carrier: Carrier,
    /// The placeholder the agent holds.
    pub placeholder: String,
    file: SecretFile,
}

impl Entry {
    /// Whether `host` is one of the entry's hosts.
    pub fn is_for(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(host))
    }

    /// The real value as the Secret holds it now.
    pub fn value(&self) -> Result<Arc<str>> {
        self.file.read()
    }
}

/// Every brokered credential of the pod; empty when the session names none.
#[derive(Default)]
pub struct Brokered {
    entries: Vec<Entry>,
}

impl Brokered {
    /// The table the injector wrote (`None` or empty: no credentials), its files looked at
    /// again after `recheck`.
    pub fn parse(json: Option<&str>, recheck: Duration) -> Result<Self> {
        let Some(json) = json.filter(|j| !j.trim().is_empty()) else {
            return Ok(Self::default());
        };
        let table: Vec<BrokeredCredential> = serde_json::from_str(json)
            .context("CASSETTE_CREDENTIALS is not a table of brokered credentials")?;
        let entries = table
            .into_iter()
            .map(|c| Entry::new(c, recheck))
            .collect::<Result<_>>()?;
        Ok(Self { entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl Entry {
    fn new(c: BrokeredCredential, recheck: Duration) -> Result<Self> {
        let hosts = c
            .hosts
            .iter()
            .map(|h| CredentialHost::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("credential {:?} has a host that cannot be one", c.name))?;
        let carrier = Carrier::new(c.presentation, c.header.as_deref()).with_context(|| {
            format!(
                "credential {:?} is presented as a header but names none",
                c.name
            )
        })?;
        if c.placeholder.len() < 16 {
            bail!(
                "credential {:?} has a placeholder too short to be told from other text",
                c.name
            );
        }
        Ok(Self {
            name: c.name,
            hosts,
            carrier,
            placeholder: c.placeholder,
            file: SecretFile {
                path: PathBuf::from(c.file),
                recheck,
                cache: Mutex::new(None),
            },
        })
    }
}

/// A Secret key mounted as a file, read when needed and kept while the file stays the same.
struct SecretFile {
    path: PathBuf,
    recheck: Duration,
    cache: Mutex<Option<Cached>>,
}

struct Cached {
    checked: Instant,
    stamp: Stamp,
    value: Arc<str>,
}

/// What tells a rewritten file from the one read: the kubelet writes a rotated Secret as a
/// new file (a new inode) and swaps a symlink to it.
#[derive(PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl SecretFile {
    fn read(&self) -> Result<Arc<str>> {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.as_ref()
            && now.duration_since(c.checked) < self.recheck
        {
            return Ok(c.value.clone());
        }
        let path = self.path.display();
        let meta = std::fs::metadata(&self.path).with_context(|| format!("reading {path}"))?;
        let stamp = Stamp {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        };
        if let Some(c) = cache.as_mut()
            && c.stamp == stamp
        {
            c.checked = now;
            return Ok(c.value.clone());
        }
        let bytes = std::fs::read(&self.path).with_context(|| format!("reading {path}"))?;
        let text = String::from_utf8(bytes).with_context(|| format!("{path} is not UTF-8"))?;
        // `echo token > file` is how many Secrets are made: the newline is not the token's.
        let value = text.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            bail!("{path} is empty");
        }
        let value: Arc<str> = Arc::from(value);
        *cache = Some(Cached {
            checked: now,
            stamp,
            value: value.clone(),
        });
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(dir: &std::path::Path) -> String {
        json!([{
            "name": "github",
            "hosts": ["api.github.com"],
            "presentation": "Bearer",
            "file": dir.join("value").to_str().unwrap(),
            "placeholder": "cassette-placeholder-github-00112233445566778899aabbccddeeff",
        }])
        .to_string()
    }

    /// Write `value` the way the kubelet does: a new file, renamed over the old one.
    fn rotate(dir: &std::path::Path, value: &str) {
        let tmp = dir.join("..tmp");
        std::fs::write(&tmp, value).unwrap();
        std::fs::rename(&tmp, dir.join("value")).unwrap();
    }

    #[test]
    fn a_rotated_secret_is_read_again_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        rotate(dir.path(), "ghp_first\n");
        let brokered = Brokered::parse(Some(&table(dir.path())), Duration::ZERO).unwrap();
        let entry = &brokered.entries()[0];
        assert_eq!(&*entry.value().unwrap(), "ghp_first");
        rotate(dir.path(), "ghp_second");
        assert_eq!(&*entry.value().unwrap(), "ghp_second");
    }

    #[test]
    fn a_value_is_kept_for_the_recheck_interval() {
        let dir = tempfile::tempdir().unwrap();
        rotate(dir.path(), "ghp_first");
        let brokered =
            Brokered::parse(Some(&table(dir.path())), Duration::from_secs(3600)).unwrap();
        let entry = &brokered.entries()[0];
        assert_eq!(&*entry.value().unwrap(), "ghp_first");
        rotate(dir.path(), "ghp_second");
        assert_eq!(&*entry.value().unwrap(), "ghp_first");
    }

    #[test]
    fn a_missing_or_empty_secret_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let brokered = Brokered::parse(Some(&table(dir.path())), Duration::ZERO).unwrap();
        let entry = &brokered.entries()[0];
        let e = format!("{:#}", entry.value().unwrap_err());
        assert!(e.contains("value"), "{e}");
        rotate(dir.path(), "\n");
        let e = format!("{:#}", entry.value().unwrap_err());
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn the_table_is_checked_as_it_is_read() {
        assert!(Brokered::parse(None, RECHECK).unwrap().entries().is_empty());
        let bad = json!([{
            "name": "x", "hosts": ["*.*.example.com"], "presentation": "Bearer",
            "file": "/f", "placeholder": "cassette-placeholder-x-00112233445566778899aabbccddeeff",
        }]);
        assert!(Brokered::parse(Some(&bad.to_string()), RECHECK).is_err());
        let no_header = json!([{
            "name": "x", "hosts": ["a.example.com"], "presentation": "Header",
            "file": "/f", "placeholder": "cassette-placeholder-x-00112233445566778899aabbccddeeff",
        }]);
        assert!(Brokered::parse(Some(&no_header.to_string()), RECHECK).is_err());
    }
}
