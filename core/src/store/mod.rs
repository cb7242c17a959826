//! The content-addressed store: blobs by digest, one verified write path, metadata in SQLite.
//!
//! Layout and invariants: `specs/store.md` (requirement IDs `STORE-n` below refer to it).
//!
//! Every method blocks on file-system I/O, SQLite, or flock(2); from async code call them
//! through `tokio::task::spawn_blocking`.

pub mod check;
mod db;
mod gc;
mod ingest;
mod lock;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

pub use gc::STALE_INGEST_AGE;
pub use ingest::Ingest;

use crate::{Algorithm, Digest, Error, Reference, Result};

/// Digest algorithms the store keeps blobs for, each in its own directory.
const ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

/// What the store records about a named image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageRecord {
    /// Full name without tag, e.g. `docker.io/library/busybox`.
    pub name: String,
    /// Tag, or `None` for an image named only by digest.
    pub tag: Option<String>,
    /// Digest of the top manifest (index or image manifest).
    pub digest: Digest,
    /// Media type of the top manifest.
    pub media_type: String,
    /// Total size of the manifest(s), config and layers in bytes.
    pub size: u64,
    /// Image creation time from its config (RFC 3339), if any.
    pub created: Option<String>,
    /// `os/arch[/variant]` of the image that was pulled.
    pub platform: Option<String>,
    /// Unix seconds when the name was last set.
    pub updated: i64,
}

/// What the store records about a blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobRecord {
    /// The blob's digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Media type as declared by the descriptor that brought it.
    pub media_type: String,
    /// The source that served it (a driver name), if known.
    pub source: Option<String>,
    /// Unix seconds of the first commit.
    pub created: i64,
    /// Unix seconds of the last commit or ingest that found it present.
    pub last_used: i64,
}

/// Blobs and ingests that a garbage collection removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Digests of removed blobs.
    pub removed_blobs: Vec<Digest>,
    /// Number of stale ingests removed.
    pub removed_ingests: usize,
    /// Bytes freed in total.
    pub freed_bytes: u64,
}

/// A content-addressed store of blobs with image names, rooted at one directory.
///
/// Cheap to clone (clones share one database connection); safe to share across threads and
/// with other processes on the same root (STORE-5, STORE-7).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    db_path: PathBuf,
    db: Mutex<Connection>,
    /// Leases this `Store` holds right now (see [`Store::gc`]).
    leases: AtomicUsize,
}

impl Store {
    /// Opens (creating if needed) a store at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        let mkdir = |path: PathBuf, mode| {
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&path)
                .map_err(|e| Error::io("create directory", path, e))
        };
        mkdir(root.clone(), 0o755)?;
        for alg in ALGORITHMS {
            mkdir(root.join("blobs").join(alg.as_str()), 0o755)?;
            mkdir(root.join("ingest").join(alg.as_str()), 0o700)?;
        }
        let db_path = root.join("metadata.db");
        // Switching a new database to WAL and migrating it can fail with "database is
        // locked" in a concurrent opener without waiting, so openers take turns (STORE-7).
        let open_lock_path = root.join("open.lock");
        let open_lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&open_lock_path)
            .map_err(|e| Error::io("open", &open_lock_path, e))?;
        lock::flock(
            &open_lock,
            lock::Mode::Exclusive,
            lock::Wait::Block,
            &open_lock_path,
        )?;
        let db = db::open(&db_path)?;
        drop(open_lock);
        Ok(Store {
            inner: Arc::new(Inner {
                root,
                db_path,
                db: Mutex::new(db),
                leases: AtomicUsize::new(0),
            }),
        })
    }

    /// /var/lib/ferry as root (euid 0), else $XDG_DATA_HOME/ferry (or ~/.local/share/ferry).
    pub fn default_root() -> PathBuf {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.dir)
            });
        default_root_for(
            nix::unistd::geteuid().is_root(),
            std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
            home,
        )
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where a committed blob lives: `ROOT/blobs/<alg>/<hex>` (STORE-1).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.blob_path(d)
    }

    /// The size of a blob, `Some` iff it is committed.
    pub fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        self.inner.blob_size(d)
    }

    /// Opens a committed blob for reading; [`Error::BlobNotFound`] if it is absent.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::BlobNotFound(d.clone()),
            _ => Error::io("open blob", path, e),
        })
    }

    /// Opens the partial file of a blob being ingested, read-only, to follow an ingest as it
    /// writes (a mirror sends bytes on as they arrive); `None` when there is none.
    ///
    /// The bytes are unverified until the ingest commits: a reader must not trust them
    /// before then. The open file stays readable after the commit renames it into place.
    pub fn open_partial(&self, d: &Digest) -> Result<Option<File>> {
        let path = self.inner.partial_path(d);
        match File::open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("open partial", path, e)),
        }
    }

    /// Reads a committed blob into memory; [`Error::TooLarge`] if it is bigger than `limit`.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>> {
        let file = self.open_blob(d)?;
        let path = self.blob_path(d);
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat blob", &path, e))?
            .len();
        if size > limit {
            return Err(Error::TooLarge {
                what: format!("blob {d}"),
                size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read blob", path, e))?;
        Ok(bytes)
    }

    /// Starts or resumes the ingest of `expected`; blocks while another process/thread ingests it.
    ///
    /// The returned [`Ingest`] holds the digest's ingest lock until it is committed or
    /// dropped; one thread must not hold two ingests of the same digest (it would wait for
    /// itself). It resumes at [`Ingest::offset`], the bytes a previous, interrupted ingest
    /// left (STORE-4).
    ///
    /// If the blob is already committed (also when another ingest committed it while this
    /// call waited), the ingest reports `offset()` equal to the blob's size, writes nothing,
    /// and its `commit` only records the blob; callers can check [`Store::blob_size`] before
    /// and after this call to skip the transfer (STORE-6). If `size` is given and differs
    /// from the committed blob's, this fails with [`Error::SizeMismatch`].
    pub fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Ingest> {
        Ingest::open(self.inner.clone(), expected, size)
    }

    /// Convenience: ingest + commit of bytes in memory.
    pub fn put_blob(
        &self,
        expected: &Digest,
        bytes: &[u8],
        media_type: &str,
        source: Option<&str>,
    ) -> Result<()> {
        let size = bytes.len() as u64;
        let mut ingest = self.ingest(expected, Some(size))?;
        if ingest.offset() != size {
            ingest.reset()?;
            ingest.write_all(bytes)?;
        }
        ingest.commit(media_type, source).map(drop)
    }

    /// What the store recorded about a blob, if anything.
    ///
    /// A committed blob may lack a record after a crash between its rename and the record
    /// (STORE-14); the next commit of the same digest adds it.
    pub fn blob_record(&self, d: &Digest) -> Result<Option<BlobRecord>> {
        self.inner.db(|c| {
            c.query_row(
                &format!("SELECT {} FROM blobs WHERE digest = ?1", db::BLOB_COLUMNS),
                [d],
                db::blob_row,
            )
            .optional()
        })
    }

    /// Names an image: upsert keyed by (name, tag), or (name, digest) when tag is None (STORE-8).
    ///
    /// `record.name` must be a normalized name as [`Reference::name`] returns it; the record
    /// is stored as given, `updated` included.
    pub fn set_image(&self, record: &ImageRecord) -> Result<()> {
        let normalized = Reference::with_name(&record.name, record.tag.as_deref(), None)?.name();
        if normalized != record.name {
            return Err(Error::InvalidReference {
                reference: record.name.chars().take(300).collect(),
                part: record.name.chars().take(140).collect(),
                reason: format!("not a normalized name (expected {normalized:?})"),
            });
        }
        self.inner.db(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM images WHERE name = ?1 AND tag IS ?2 AND (?2 IS NOT NULL OR digest = ?3)",
                params![record.name, record.tag, record.digest],
            )?;
            tx.execute(
                &format!(
                    "INSERT INTO images ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    db::IMAGE_COLUMNS
                ),
                params![
                    record.name,
                    record.tag,
                    record.digest,
                    record.media_type,
                    record.size,
                    record.created,
                    record.platform,
                    record.updated
                ],
            )?;
            tx.commit()
        })
    }

    /// The image a reference names: by tag, or by digest if the reference pins one (STORE-8).
    ///
    /// A pinned digest matches any record of that name and digest, preferring the
    /// reference's tag, then the digest-only record. Fails with [`Error::ImageNotFound`].
    pub fn find_image(&self, reference: &Reference) -> Result<ImageRecord> {
        self.inner
            .db(|c| find_image(c, reference))?
            .ok_or_else(|| Error::ImageNotFound(reference.to_string()))
    }

    /// Every named image, sorted by name, tag (digest-only records first), digest.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        self.inner.db(|c| {
            c.prepare(&format!(
                "SELECT {} FROM images ORDER BY name, tag, digest",
                db::IMAGE_COLUMNS
            ))?
            .query_map([], db::image_row)?
            .collect()
        })
    }

    /// Removes the record [`Store::find_image`] returns for `reference`, and returns it.
    ///
    /// Blobs stay until the next [`Store::gc`].
    pub fn remove_image(&self, reference: &Reference) -> Result<ImageRecord> {
        self.inner
            .db(|c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let found = find_image(&tx, reference)?;
                if let Some(r) = &found {
                    tx.execute(
                        "DELETE FROM images WHERE name = ?1 AND tag IS ?2 AND digest = ?3",
                        params![r.name, r.tag, r.digest],
                    )?;
                }
                tx.commit()?;
                Ok(found)
            })?
            .ok_or_else(|| Error::ImageNotFound(reference.to_string()))
    }

    /// Adds an extra GC root: `digest` is kept while `(kind, key)` names it (STORE-9).
    ///
    /// `kind` is the feature that owns the root (e.g. `signature`, `snapshot`), `key` its
    /// own name for it. A `(kind, key)` may hold several digests.
    pub fn add_root(&self, kind: &str, key: &str, digest: &Digest) -> Result<()> {
        self.inner.db(|c| {
            c.execute(
                "INSERT OR IGNORE INTO roots (kind, key, digest) VALUES (?1, ?2, ?3)",
                params![kind, key, digest],
            )
            .map(drop)
        })
    }

    /// Removes every root of `(kind, key)`.
    pub fn remove_roots(&self, kind: &str, key: &str) -> Result<()> {
        self.inner.db(|c| {
            c.execute(
                "DELETE FROM roots WHERE kind = ?1 AND key = ?2",
                params![kind, key],
            )
            .map(drop)
        })
    }

    /// Removes the one root `(kind, key, digest)`, if it is there.
    pub fn remove_root(&self, kind: &str, key: &str, digest: &Digest) -> Result<()> {
        self.inner.db(|c| {
            c.execute(
                "DELETE FROM roots WHERE kind = ?1 AND key = ?2 AND digest = ?3",
                params![kind, key, digest],
            )
            .map(drop)
        })
    }

    /// The `(key, digest)` roots of `kind`, sorted.
    pub fn roots(&self, kind: &str) -> Result<Vec<(String, Digest)>> {
        self.inner.db(|c| {
            c.prepare("SELECT key, digest FROM roots WHERE kind = ?1 ORDER BY key, digest")?
                .query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    /// Takes a shared lease that keeps [`Store::gc`] from running while the guard lives (STORE-10).
    ///
    /// Hold it for the whole of a pull: from the first ingest until the name is set.
    /// Blocks while a GC runs.
    pub fn lease(&self) -> Result<Lease> {
        let file = self
            .inner
            .gc_lock(lock::Mode::Shared, lock::Wait::Block)?
            .ok_or_else(|| self.inner.busy("a gc runs"))?;
        self.inner.leases.fetch_add(1, Ordering::SeqCst);
        Ok(Lease {
            _file: file,
            store: self.inner.clone(),
        })
    }

    /// Removes blobs, records and stale ingests no name or root reaches (STORE-11..13).
    ///
    /// Waits for every lease (of any process) to end, and holds the GC lock exclusively
    /// while it runs. Fails with [`Error::Busy`] instead of waiting if this `Store` (or a
    /// clone) holds a lease, since the caller could be waiting for itself.
    pub fn gc(&self) -> Result<GcReport> {
        self.collect(lock::Wait::Block)
    }

    /// Like [`Store::gc`], but fails with [`Error::Busy`] at once if a lease or another GC holds the lock.
    pub fn try_gc(&self) -> Result<GcReport> {
        self.collect(lock::Wait::Try)
    }

    /// Every committed blob, sorted.
    pub fn digests(&self) -> Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for alg in ALGORITHMS {
            let dir = self.root().join("blobs").join(alg.as_str());
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list blobs", dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list blobs", &dir, e))?;
                let name = entry.file_name();
                match Digest::parse(&format!("{}:{}", alg.as_str(), name.to_string_lossy())) {
                    Ok(d) => digests.push(d),
                    Err(_) => tracing::warn!("ignoring stray file {}", entry.path().display()),
                }
            }
        }
        digests.sort();
        Ok(digests)
    }

    fn collect(&self, wait: lock::Wait) -> Result<GcReport> {
        if self.inner.leases.load(Ordering::SeqCst) > 0 {
            return Err(self
                .inner
                .busy("this process holds a lease; drop it before collecting garbage"));
        }
        let Some(_lock) = self.inner.gc_lock(lock::Mode::Exclusive, wait)? else {
            return Err(self
                .inner
                .busy("a pull holds a lease (or another gc runs); try again when it finishes"));
        };
        gc::collect(self)
    }

    /// Digests that names and extra roots point at: where GC marking starts.
    fn root_digests(&self) -> Result<Vec<Digest>> {
        self.inner.db(|c| {
            c.prepare("SELECT digest FROM images UNION SELECT digest FROM roots")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
    }

    /// Deletes the records of blobs not in `live`.
    fn forget_blobs_except(&self, live: &HashSet<Digest>) -> Result<()> {
        self.inner.db(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let recorded: Vec<Digest> = tx
                .prepare("SELECT digest FROM blobs")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for d in recorded.iter().filter(|d| !live.contains(d)) {
                tx.execute("DELETE FROM blobs WHERE digest = ?1", [d])?;
            }
            tx.commit()
        })
    }
}

fn find_image(c: &Connection, reference: &Reference) -> rusqlite::Result<Option<ImageRecord>> {
    let name = reference.name();
    match reference.digest() {
        Some(digest) => c.query_row(
            &format!(
                "SELECT {} FROM images WHERE name = ?1 AND digest = ?2
                 ORDER BY tag IS ?3 DESC, tag IS NULL DESC, tag LIMIT 1",
                db::IMAGE_COLUMNS
            ),
            params![name, digest, reference.tag()],
            db::image_row,
        ),
        None => c.query_row(
            &format!(
                "SELECT {} FROM images WHERE name = ?1 AND tag = ?2",
                db::IMAGE_COLUMNS
            ),
            params![name, reference.tag()],
            db::image_row,
        ),
    }
    .optional()
}

fn default_root_for(
    is_root: bool,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib/ferry");
    }
    // The XDG spec says relative values are invalid and must be ignored.
    match xdg_data_home.filter(|p| p.is_absolute()) {
        Some(data) => data.join("ferry"),
        None => home
            .unwrap_or_else(std::env::temp_dir)
            .join(".local/share/ferry"),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Inner {
    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    /// Where the ingest of `d` keeps its bytes until commit: `ROOT/ingest/<alg>/<hex>`.
    fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("ingest")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(d);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat blob", path, e)),
        }
    }

    /// Records a committed blob, or marks an existing record used.
    fn record_blob(
        &self,
        d: &Digest,
        size: u64,
        media_type: &str,
        source: Option<&str>,
    ) -> Result<()> {
        self.db(|c| {
            c.execute(
                "INSERT INTO blobs (digest, size, media_type, source, created, last_used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (digest) DO UPDATE SET size = excluded.size, last_used = excluded.last_used",
                params![d, size, media_type, source, unix_now()],
            )
            .map(drop)
        })
    }

    /// Runs `f` on the database connection, naming the database in errors.
    fn db<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        // A panic mid-transaction rolled it back when the transaction dropped.
        let mut conn = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut conn).map_err(|source| Error::Database {
            path: self.db_path.clone(),
            source,
        })
    }

    /// Locks `ROOT/gc.lock`; `None` if `wait` is `Try` and it is held.
    fn gc_lock(&self, mode: lock::Mode, wait: lock::Wait) -> Result<Option<File>> {
        let path = self.root.join("gc.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        Ok(lock::flock(&file, mode, wait, &path)?.then_some(file))
    }

    fn busy(&self, reason: &str) -> Error {
        Error::Busy {
            path: self.root.clone(),
            what: "gc",
            reason: reason.to_string(),
        }
    }
}

/// A shared hold on the store's GC lock: [`Store::gc`] waits until every lease is dropped.
#[derive(Debug)]
pub struct Lease {
    _file: File,
    store: Arc<Inner>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.store.leases.fetch_sub(1, Ordering::SeqCst);
        // The flock goes when `_file` closes.
    }
}
