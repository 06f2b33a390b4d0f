//! The `file://` sink: a directory tree laid out like the bucket would be. Write-once by
//! linking a fully written temporary file into place (`link` fails if the name exists), so a
//! reader never sees half an object and nothing is ever replaced.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Listing, ObjectMeta, Put, SinkError, check_key, path_in};

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
        let read_only = meta.retain_for.is_some();
        let key = key.to_string();
        blocking(move || put_once_blocking(&path, &key, &bytes, read_only)).await
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
}

fn put_once_blocking(
    path: &Path,
    key: &str,
    bytes: &[u8],
    read_only: bool,
) -> Result<Put, SinkError> {
    let dir = path.parent().expect("an object key has a parent directory");
    fs::create_dir_all(dir).map_err(|e| unavailable("write", key, &e))?;
    let file_name = path
        .file_name()
        .expect("an object key has a name")
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if read_only {
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
}
