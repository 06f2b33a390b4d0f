//! The `file://` sink: a directory tree laid out like the bucket would be. Write-once by
//! linking a fully written temporary file into place (`link` fails if the name exists), so a
//! reader never sees half an object and nothing is ever replaced.
//!
//! Retention and holds, as the file sink expresses them: an object written with retention is
//! read-only, and `.<name>.retain-until` beside it holds the end (RFC 3339); a file named
//! `.hold` in a directory holds every object in that directory. Files starting with `.` are
//! not objects.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{
    Deleted, Listing, ObjectMeta, Protection, Put, SinkError, StoredObject, check_key, path_in,
};

/// In a directory, holds every object there until someone removes it.
pub const HOLD_FILE: &str = ".hold";

/// A directory sink.
#[derive(Debug, Clone)]
pub struct FileSink {
    root: PathBuf,
}

impl FileSink {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The directory below which keys live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(super) async fn put_once(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        meta: &ObjectMeta,
    ) -> Result<Put, SinkError> {
        check_key(key)?;
        let path = path_in(&self.root, key);
        let retain_until = meta.retain_for.map(|d| SystemTime::now() + d);
        let key = key.to_string();
        blocking(move || put_once_blocking(&path, &key, &bytes, retain_until)).await
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SinkError> {
        check_key(key)?;
        let path = path_in(&self.root, key);
        let key = key.to_string();
        blocking(move || match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("read", &key, &e)),
        })
        .await
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<Listing, SinkError> {
        if !prefix.is_empty() {
            check_key(prefix)?;
        }
        let dir = path_in(&self.root, prefix);
        let prefix = prefix.to_string();
        blocking(move || {
            let mut listing = Listing::default();
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
                Err(e) => return Err(unavailable("list", &prefix, &e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| unavailable("list", &prefix, &e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // temporaries of writes in progress
                }
                let ty = entry
                    .file_type()
                    .map_err(|e| unavailable("list", &prefix, &e))?;
                if ty.is_dir() {
                    listing.prefixes.push(format!("{prefix}{name}/"));
                } else {
                    listing.objects.push(format!("{prefix}{name}"));
                }
            }
            listing.objects.sort();
            listing.prefixes.sort();
            Ok(listing)
        })
        .await
    }

    pub(super) async fn list_stored(&self, prefix: &str) -> Result<Vec<StoredObject>, SinkError> {
        if !prefix.is_empty() {
            check_key(prefix)?;
        }
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            // A missing prefix is an empty listing; a missing sink is a mistake (a volume not
            // mounted where the session says), which must not read as "nothing recorded".
            if !root.is_dir() {
                return Err(SinkError::Unavailable {
                    op: "list",
                    key: format!("file://{}", root.display()),
                    detail: "the sink's directory does not exist here (is it mounted?)".into(),
                });
            }
            let mut out = Vec::new();
            walk(&root, &prefix, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    pub(super) async fn delete(&self, object: &StoredObject) -> Result<Deleted, SinkError> {
        check_key(&object.key)?;
        let root = self.root.clone();
        let key = object.key.clone();
        blocking(move || {
            let path = path_in(&root, &key);
            // The file sink enforces its own holds and retention: look again, now.
            let stored = match stored_object(&path, &key) {
                Ok(Some(stored)) => stored,
                Ok(None) => return Ok(Deleted::AlreadyGone),
                Err(e) => return Err(unavailable("delete", &key, &e)),
            };
            if let Some(kept) = stored.kept_by(SystemTime::now()) {
                return Ok(Deleted::Kept(kept.to_string()));
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Deleted::AlreadyGone);
                }
                Err(e) => return Err(unavailable("delete", &key, &e)),
            }
            let _ = fs::remove_file(retain_until_path(&path));
            // Empty directories would still list as recordings: remove them up to the root.
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == root || !d.starts_with(&root) || fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(Deleted::Deleted)
        })
        .await
    }
}

/// Collects the objects below `root/prefix`, depth first.
fn walk(root: &Path, prefix: &str, out: &mut Vec<StoredObject>) -> Result<(), SinkError> {
    let dir = path_in(root, prefix);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unavailable("list", prefix, &e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| unavailable("list", prefix, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // temporaries, retention records, hold files
        }
        let ty = entry
            .file_type()
            .map_err(|e| unavailable("list", prefix, &e))?;
        let key = format!("{prefix}{name}");
        if ty.is_dir() {
            walk(root, &format!("{key}/"), out)?;
        } else if let Some(stored) =
            stored_object(&entry.path(), &key).map_err(|e| unavailable("list", &key, &e))?
        {
            out.push(stored);
        }
    }
    Ok(())
}

/// One file as a stored object; `None` when it is gone.
fn stored_object(path: &Path, key: &str) -> std::io::Result<Option<StoredObject>> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut protections = Vec::new();
    if path
        .parent()
        .is_some_and(|dir| dir.join(HOLD_FILE).exists())
    {
        protections.push(Protection::HoldFile);
    }
    match fs::read_to_string(retain_until_path(path)) {
        Ok(text) => match text.trim().parse::<jiff::Timestamp>() {
            Ok(until) => protections.push(Protection::RetainedUntil(until.into())),
            // An unreadable end keeps the file, as if none were recorded.
            Err(_) => protections.push(Protection::ReadOnly),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if meta.permissions().readonly() {
                protections.push(Protection::ReadOnly);
            }
        }
        Err(e) => return Err(e),
    }
    Ok(Some(StoredObject {
        key: key.to_string(),
        created: meta.modified()?,
        generation: None,
        protections,
        metadata: Default::default(),
    }))
}

/// Where the end of a file's retention is written: `.<name>.retain-until` beside it.
fn retain_until_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.retain-until"))
}

fn put_once_blocking(
    path: &Path,
    key: &str,
    bytes: &[u8],
    retain_until: Option<SystemTime>,
) -> Result<Put, SinkError> {
    let dir = path.parent().expect("an object key has a parent directory");
    fs::create_dir_all(dir).map_err(|e| unavailable("write", key, &e))?;
    let file_name = path
        .file_name()
        .expect("an object key has a name")
        .to_string_lossy();
    if let Some(until) = retain_until {
        // Before the object appears, so it is never seen without its end of retention. A
        // record already there (an earlier attempt) stays as it is.
        let until = jiff::Timestamp::try_from(until)
            .map(|t| t.to_string())
            .map_err(|e| SinkError::Refused {
                op: "write",
                key: key.to_string(),
                detail: format!("retention beyond representable time: {e}"),
            })?;
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(retain_until_path(path))
        {
            Ok(mut f) => f
                .write_all(until.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| unavailable("write", key, &e))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable("write", key, &e)),
        }
    }
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if retain_until.is_some() {
            let mut perm = f.metadata()?.permissions();
            perm.set_readonly(true);
            fs::set_permissions(&tmp, perm)?;
        }
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| unavailable("write", key, &e))?;
            Ok(Put::Created)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let existing = fs::read(path).map_err(|e| unavailable("read", key, &e))?;
            if existing == bytes {
                Ok(Put::AlreadyThere)
            } else {
                Err(SinkError::Conflict {
                    key: key.to_string(),
                })
            }
        }
        Err(e) => Err(unavailable("write", key, &e)),
    }
}

fn unavailable(op: &'static str, key: &str, e: &std::io::Error) -> SinkError {
    SinkError::Unavailable {
        op,
        key: key.to_string(),
        detail: e.to_string(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(SinkError::Unavailable {
            op: "run",
            key: String::new(),
            detail: e.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_once_and_refuses_different_content() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path().to_path_buf());
        let meta = ObjectMeta::default();
        let put = sink.put_once("a/b/obj", "one".into(), &meta).await.unwrap();
        assert_eq!(put, Put::Created);
        let again = sink.put_once("a/b/obj", "one".into(), &meta).await.unwrap();
        assert_eq!(again, Put::AlreadyThere);
        let err = sink
            .put_once("a/b/obj", "two".into(), &meta)
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert_eq!(sink.get("a/b/obj").await.unwrap().unwrap(), b"one");
        assert_eq!(sink.get("a/b/none").await.unwrap(), None);
        let listing = sink.list("a/").await.unwrap();
        assert_eq!(listing.prefixes, vec!["a/b/".to_string()]);
        let listing = sink.list("a/b/").await.unwrap();
        assert_eq!(listing.objects, vec!["a/b/obj".to_string()]);
    }

    #[tokio::test]
    async fn lists_with_times_and_protections_and_deletes_what_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path().to_path_buf());
        let plain = ObjectMeta::default();
        let retained = ObjectMeta {
            retain_for: Some(std::time::Duration::from_secs(3600)),
            ..ObjectMeta::default()
        };
        sink.put_once("ns/s/p-1/seg-000001.jsonl.zst", "a".into(), &plain)
            .await
            .unwrap();
        sink.put_once("ns/s/p-1/manifest.json", "m".into(), &plain)
            .await
            .unwrap();
        sink.put_once("ns/s/p-2/seg-000001.jsonl.zst", "b".into(), &retained)
            .await
            .unwrap();
        sink.put_once("ns/s/p-3/seg-000001.jsonl.zst", "c".into(), &plain)
            .await
            .unwrap();
        fs::write(dir.path().join("ns/s/p-3").join(HOLD_FILE), "").unwrap();

        let before = SystemTime::now() - std::time::Duration::from_secs(60);
        let stored = sink.list_stored("ns/s/").await.unwrap();
        let keys: Vec<&str> = stored.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "ns/s/p-1/manifest.json",
                "ns/s/p-1/seg-000001.jsonl.zst",
                "ns/s/p-2/seg-000001.jsonl.zst",
                "ns/s/p-3/seg-000001.jsonl.zst",
            ],
            "retention records and hold files are not objects"
        );
        assert!(stored.iter().all(|o| o.created > before));
        let now = SystemTime::now();
        assert_eq!(stored[0].kept_by(now), None);
        assert!(matches!(
            stored[2].kept_by(now),
            Some(Protection::RetainedUntil(_))
        ));
        assert!(
            stored[2]
                .kept_by(now + std::time::Duration::from_secs(7200))
                .is_none(),
            "retention ends"
        );
        assert_eq!(stored[3].kept_by(now), Some(&Protection::HoldFile));

        // The sink enforces its protections itself.
        let kept = sink.delete(&stored[2]).await.unwrap();
        assert!(
            matches!(&kept, Deleted::Kept(why) if why.contains("object retention until")),
            "{kept:?}"
        );
        assert!(matches!(
            sink.delete(&stored[3]).await.unwrap(),
            Deleted::Kept(_)
        ));
        assert_eq!(sink.delete(&stored[1]).await.unwrap(), Deleted::Deleted);
        assert_eq!(sink.delete(&stored[0]).await.unwrap(), Deleted::Deleted);
        assert_eq!(sink.delete(&stored[0]).await.unwrap(), Deleted::AlreadyGone);
        // The emptied recording no longer lists as one; the others do.
        let listing = sink.list("ns/s/").await.unwrap();
        assert_eq!(listing.prefixes, ["ns/s/p-2/", "ns/s/p-3/"]);
    }

    #[tokio::test]
    async fn a_read_only_file_without_a_recorded_end_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path().to_path_buf());
        sink.put_once(
            "ns/s/p/seg-000001.jsonl.zst",
            "a".into(),
            &ObjectMeta::default(),
        )
        .await
        .unwrap();
        let path = dir.path().join("ns/s/p/seg-000001.jsonl.zst");
        let mut perm = fs::metadata(&path).unwrap().permissions();
        perm.set_readonly(true);
        fs::set_permissions(&path, perm).unwrap();
        let stored = sink.list_stored("ns/").await.unwrap();
        assert_eq!(stored[0].protections, [Protection::ReadOnly]);
        assert!(matches!(
            sink.delete(&stored[0]).await.unwrap(),
            Deleted::Kept(why) if why.contains("read-only")
        ));
        assert!(path.exists());
    }
}
