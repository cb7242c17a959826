//! The `oci-layout` driver: an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`) that holds many images under their full names, e.g. a USB stick.
//!
//! Format and rules: `specs/oci-layout.md` (IDs `OCI-n` below refer to it). Every path below
//! the layout directory is opened relative to a directory descriptor without following
//! symlinks, so neither `index.json` nor a digest can make the driver read or write outside
//! the layout (OCI-7).

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ferry_core::manifest::MAX_MANIFEST_SIZE;
use ferry_core::oci_spec::image::{Descriptor, ANNOTATION_REF_NAME};
use ferry_core::{Digest, Hasher, ManifestBlob, Reference};
use futures::StreamExt as _;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio_util::io::ReaderStream;

use crate::{
    BlobBody, ByteRange, ByteStream, Capabilities, Driver, Error, ErrorKind, ManifestBytes, Result,
};

/// Name of the file holding the layout version (OCI image layout spec).
const LAYOUT_FILE: &str = "oci-layout";
/// Content of [`LAYOUT_FILE`] that ferry writes.
const LAYOUT_VERSION: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// The one `imageLayoutVersion` the image spec defines, and so the one ferry reads.
const KNOWN_LAYOUT_VERSION: &str = "1.0.0";
/// Bytes of `oci-layout` read at most.
const MAX_LAYOUT_FILE_SIZE: u64 = 4096;
/// The index of named manifests.
const INDEX_FILE: &str = "index.json";
/// Directory of the blobs.
const BLOBS_DIR: &str = "blobs";
/// Directory for files being written (OCI-5).
const TMP_DIR: &str = ".ferry-tmp";
/// Lock file serializing `index.json` updates between ferry processes (OCI-6).
const LOCK_FILE: &str = ".ferry-lock";
/// Largest `index.json` read.
const MAX_INDEX_SIZE: u64 = 16 * 1024 * 1024;
/// Bytes per chunk when streaming a blob from disk.
const READ_CHUNK: usize = 64 * 1024;

/// An OCI image layout directory as a source (and sink) of images.
#[derive(Debug, Clone)]
pub struct OciLayoutDriver {
    source_name: String,
    root: PathBuf,
    plain_tag_name: Option<String>,
}

impl OciLayoutDriver {
    /// A driver for the layout at `path`; nothing is read or created until it is used.
    pub fn new(source_name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        OciLayoutDriver {
            source_name: source_name.into(),
            root: path.into(),
            plain_tag_name: None,
        }
    }

    /// Treats ref names that are plain tags (`1`, `latest`) as tags of image `name` (OCI-3).
    pub fn with_plain_tags_of(mut self, name: &str) -> Result<Self> {
        self.check_name(name)?;
        self.plain_tag_name = Some(name.to_string());
        Ok(self)
    }

    /// The layout directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Checks that `name` is a full, normalized image name (`host/path`).
    fn check_name(&self, name: &str) -> Result<()> {
        check_name_tag(&self.source_name, name, None).map(drop)
    }

    fn invalid(&self, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, &self.source_name, message)
    }

    /// Categorizes an I/O failure on `rel` (a path inside the layout) during `op`.
    fn io_error(&self, op: &str, rel: &str, e: io::Error) -> Error {
        let at = format!("{op} {rel} in OCI layout {}: {e}", self.root.display());
        let kind = match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
            Errno::ENOENT => ErrorKind::NotFound,
            Errno::EACCES | Errno::EPERM => ErrorKind::Unauthorized,
            Errno::ELOOP | Errno::ENOTDIR => {
                return self.invalid(format!("{at} (symlinks inside a layout are not followed)"))
            }
            _ => ErrorKind::Unavailable,
        };
        Error::new(kind, &self.source_name, at)
    }

    /// Opens the layout directory for reading; a missing one is `Unavailable` (not mounted).
    fn open_root(&self) -> Result<Dir> {
        Dir::open(&self.root).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::unavailable(
                    &self.source_name,
                    format!(
                        "OCI layout {} does not exist (not mounted?)",
                        self.root.display()
                    ),
                )
            } else {
                self.io_error("open", ".", e)
            }
        })
    }

    /// Checks the `oci-layout` file: there, JSON, and of an `imageLayoutVersion` ferry knows
    /// (OCI-11). A directory with neither it nor `index.json` is `Unavailable` (not mounted).
    fn check_layout_file(&self, root: &Dir) -> Result<()> {
        let bytes = match read_limited(root, &[LAYOUT_FILE], MAX_LAYOUT_FILE_SIZE) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let has_index =
                    exists(root, INDEX_FILE).map_err(|e| self.io_error("stat", INDEX_FILE, e))?;
                let message = format!(
                    "{} is not an OCI layout: it has no {LAYOUT_FILE} file",
                    self.root.display()
                );
                return Err(if has_index {
                    self.invalid(message)
                } else {
                    Error::unavailable(&self.source_name, message)
                });
            }
            Err(e) => return Err(self.io_error("read", LAYOUT_FILE, e)),
        };
        let version = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("imageLayoutVersion")?.as_str().map(str::to_owned));
        match version.as_deref() {
            Some(KNOWN_LAYOUT_VERSION) => Ok(()),
            Some(other) => Err(Error::new(
                ErrorKind::Unsupported,
                &self.source_name,
                format!(
                    "{}/{LAYOUT_FILE}: imageLayoutVersion {:?} is not one ferry knows ({KNOWN_LAYOUT_VERSION})",
                    self.root.display(),
                    other.chars().take(64).collect::<String>()
                ),
            )),
            None => Err(self.invalid(format!(
                "{}/{LAYOUT_FILE} is not a JSON object with an imageLayoutVersion string",
                self.root.display()
            ))),
        }
    }

    /// Reads and parses `index.json` (OCI-2), after checking `oci-layout` (OCI-11).
    fn read_index(&self, root: &Dir) -> Result<Value> {
        self.check_layout_file(root)?;
        let bytes = match read_limited(root, &[INDEX_FILE], MAX_INDEX_SIZE) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::unavailable(
                    &self.source_name,
                    format!(
                        "{} is not an OCI layout: it has no {INDEX_FILE}",
                        self.root.display()
                    ),
                ))
            }
            Err(e) => return Err(self.io_error("read", INDEX_FILE, e)),
        };
        let index: Value = serde_json::from_slice(&bytes).map_err(|e| {
            self.invalid(format!(
                "{INDEX_FILE} in OCI layout {} is not JSON: {e}",
                self.root.display()
            ))
        })?;
        if !index.get("manifests").is_some_and(Value::is_array) {
            return Err(self.invalid(format!(
                "{INDEX_FILE} in OCI layout {} has no \"manifests\" array",
                self.root.display()
            )));
        }
        Ok(index)
    }

    /// The tags of `name` among `index`'s ref names, in index order.
    fn tags_in<'a>(&self, index: &'a Value, name: &str) -> Vec<(String, &'a Value)> {
        manifests(index)
            .filter_map(|entry| {
                let ref_name = entry
                    .get("annotations")?
                    .get(ANNOTATION_REF_NAME)?
                    .as_str()?;
                let tag = match parse_ref_name(ref_name)? {
                    RefName::Full(r) if r.name() == name => r.tag()?.to_string(),
                    RefName::Plain(tag) if self.plain_tag_name.as_deref() == Some(name) => tag,
                    _ => return None,
                };
                Some((tag, entry))
            })
            .collect()
    }

    /// Opens blob `digest` for reading, with its size.
    fn open_blob(&self, digest: &Digest) -> Result<(File, u64)> {
        let root = self.open_root()?;
        let rel = blob_rel(digest);
        let file = open_beneath(
            &root,
            &[BLOBS_DIR, digest.algorithm().as_str(), digest.hex()],
        )
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::not_found(
                &self.source_name,
                format!(
                    "blob {digest} ({rel} in OCI layout {})",
                    self.root.display()
                ),
            ),
            _ => self.io_error("open", &rel, e),
        })?;
        let meta = file
            .metadata()
            .map_err(|e| self.io_error("stat", &rel, e))?;
        if !meta.is_file() {
            return Err(self.invalid(format!(
                "{rel} in OCI layout {} is not a regular file",
                self.root.display()
            )));
        }
        // Only a blob that is there makes the layout's version matter: an empty directory
        // about to become a layout has no blobs.
        self.check_layout_file(&root)?;
        Ok((file, meta.len()))
    }

    /// Makes sure the layout exists for writing: the directory, `oci-layout`, `index.json`.
    fn ensure_layout(&self) -> Result<Dir> {
        std::fs::create_dir_all(&self.root).map_err(|e| self.io_error("create", ".", e))?;
        let root = self.open_root()?;
        if exists(&root, LAYOUT_FILE).map_err(|e| self.io_error("stat", LAYOUT_FILE, e))? {
            // Never write into a layout of a version ferry does not know.
            self.check_layout_file(&root)?;
            if exists(&root, INDEX_FILE).map_err(|e| self.io_error("stat", INDEX_FILE, e))? {
                return Ok(root);
            }
        }
        let _lock = self.lock(&root)?;
        for (file, content) in [
            (LAYOUT_FILE, LAYOUT_VERSION),
            (INDEX_FILE, r#"{"schemaVersion":2,"manifests":[]}"#),
        ] {
            if !exists(&root, file).map_err(|e| self.io_error("stat", file, e))? {
                self.write_atomically(&root, file, content.as_bytes())?;
            }
        }
        Ok(root)
    }

    /// Takes the layout's writer lock (OCI-6); released when the guard drops.
    fn lock(&self, root: &Dir) -> Result<Flock<File>> {
        let file = root
            .openat(
                LOCK_FILE,
                OFlag::O_RDWR | OFlag::O_CREAT,
                Mode::from_bits_truncate(0o644),
            )
            .map(File::from)
            .map_err(|e| self.io_error("open", LOCK_FILE, e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| self.io_error("lock", LOCK_FILE, errno.into()))
    }

    /// Writes `bytes` to `name` in the layout's top directory via a temporary file and rename.
    fn write_atomically(&self, root: &Dir, name: &str, bytes: &[u8]) -> Result<()> {
        let mut tmp = TempFile::create(root)
            .map_err(|e| self.io_error("create temporary file in", TMP_DIR, e))?;
        tmp.file
            .write_all(bytes)
            .and_then(|()| tmp.file.sync_all())
            .map_err(|e| self.io_error("write", &tmp.rel(), e))?;
        tmp.commit(root, name)
            .map_err(|e| self.io_error("rename into", name, e))
    }

    /// Streams `body` into blob `digest` of an existing layout, visible only once all `size`
    /// bytes check out (OCI-5).
    async fn write_blob(&self, digest: &Digest, size: u64, mut body: ByteStream) -> Result<()> {
        let this = self.clone();
        let tmp = blocking(move || {
            let root = this.open_root()?;
            TempFile::create(&root)
                .map_err(|e| this.io_error("create temporary file in", TMP_DIR, e))
        })
        .await?;
        let rel = tmp.rel();
        let mut file = tokio::fs::File::from_std(
            tmp.file
                .try_clone()
                .map_err(|e| self.io_error("open", &rel, e))?,
        );
        let mut hasher = Hasher::new(digest.algorithm());
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            if written > size {
                return Err(Error::corrupt(
                    &self.source_name,
                    format!("blob {digest}: body is longer than the declared {size} bytes"),
                ));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| self.io_error("write", &rel, e))?;
        }
        if written != size {
            return Err(Error::corrupt(
                &self.source_name,
                format!("blob {digest}: body has {written} bytes, declared {size}"),
            ));
        }
        let actual = hasher.finish();
        if &actual != digest {
            return Err(Error::corrupt(
                &self.source_name,
                format!("blob {digest}: digest mismatch: the body hashes to {actual}; not stored"),
            ));
        }
        file.sync_all()
            .await
            .map_err(|e| self.io_error("sync", &rel, e))?;
        drop(file);
        let this = self.clone();
        let digest = digest.clone();
        blocking(move || {
            let root = this.open_root()?;
            let blobs = root
                .sub_or_create(BLOBS_DIR)
                .map_err(|e| this.io_error("create", BLOBS_DIR, e))?;
            let alg = digest.algorithm().as_str();
            let dir = blobs
                .sub_or_create(alg)
                .map_err(|e| this.io_error("create", &format!("{BLOBS_DIR}/{alg}"), e))?;
            tmp.commit(&dir, digest.hex())
                .map_err(|e| this.io_error("rename into", &blob_rel(&digest), e))
        })
        .await
    }

    /// Replaces the entries named `name:tag` in `index.json` by one for `desc` (OCI-4).
    fn tag_manifest(&self, name: &str, tag: &str, desc: &Descriptor) -> Result<()> {
        let root = self.ensure_layout()?;
        let _lock = self.lock(&root)?;
        let mut index = self.read_index(&root)?;
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .expect("read_index checked the manifests array");
        manifests.retain(|entry| {
            let ref_name = entry
                .get("annotations")
                .and_then(|a| a.get(ANNOTATION_REF_NAME))
                .and_then(Value::as_str);
            !match ref_name.and_then(parse_ref_name) {
                Some(RefName::Full(r)) => r.name() == name && r.tag() == Some(tag),
                Some(RefName::Plain(t)) => self.plain_tag_name.as_deref() == Some(name) && t == tag,
                None => false,
            }
        });
        let mut entry = serde_json::to_value(desc)
            .map_err(|e| self.invalid(format!("descriptor to JSON: {e}")))?;
        entry["annotations"] = serde_json::json!({ ANNOTATION_REF_NAME: format!("{name}:{tag}") });
        manifests.push(entry);
        let bytes = serde_json::to_vec(&index)
            .map_err(|e| self.invalid(format!("{INDEX_FILE} to JSON: {e}")))?;
        self.write_atomically(&root, INDEX_FILE, &bytes)
    }
}

#[async_trait]
impl Driver for OciLayoutDriver {
    fn source_name(&self) -> &str {
        &self.source_name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resolve: true,
            list_tags: true,
            write: true,
            ranges: true,
        }
    }

    async fn resolve(&self, name: &str, tag: &str) -> Result<Descriptor> {
        check_name_tag(&self.source_name, name, Some(tag))?;
        let this = self.clone();
        let (name, tag) = (name.to_string(), tag.to_string());
        blocking(move || {
            let index = this.read_index(&this.open_root()?)?;
            let tags = this.tags_in(&index, &name);
            // The last entry wins when a foreign tool left duplicates (OCI-2).
            let Some((_, entry)) = tags.iter().rev().find(|(t, _)| *t == tag) else {
                return Err(Error::not_found(
                    &this.source_name,
                    format!(
                        "{name}:{tag} (no such ref name in {INDEX_FILE} of OCI layout {})",
                        this.root.display()
                    ),
                ));
            };
            let desc: Descriptor = serde_json::from_value((*entry).clone()).map_err(|e| {
                this.invalid(format!(
                    "{INDEX_FILE} entry for {name}:{tag} is not a valid descriptor: {e}"
                ))
            })?;
            Digest::try_from(desc.digest()).map_err(|e| Error::from_core(&this.source_name, e))?;
            Ok(desc)
        })
        .await
    }

    async fn fetch_manifest(&self, name: &str, digest: &Digest) -> Result<ManifestBytes> {
        self.check_name(name)?;
        let this = self.clone();
        let digest = digest.clone();
        blocking(move || {
            let rel = blob_rel(&digest);
            let (mut file, size) = this.open_blob(&digest)?;
            if size > MAX_MANIFEST_SIZE {
                return Err(Error::from_core(
                    &this.source_name,
                    ferry_core::Error::TooLarge {
                        what: format!("manifest {digest} ({rel})"),
                        size,
                        limit: MAX_MANIFEST_SIZE,
                    },
                ));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).map_err(|e| this.io_error("read", &rel, e))?;
            let actual = Digest::of(digest.algorithm(), &bytes);
            if actual != digest {
                return Err(Error::corrupt(
                    &this.source_name,
                    format!("manifest {digest} ({rel} in OCI layout {}): digest mismatch: the file hashes to {actual}", this.root.display()),
                ));
            }
            // The index entry's media type, when the manifest is named there.
            let content_type = this.read_index(&this.open_root()?).ok().and_then(|index| {
                manifests(&index)
                    .find(|m| m.get("digest").and_then(Value::as_str) == Some(digest.to_string().as_str()))
                    .and_then(|m| m.get("mediaType")?.as_str().map(str::to_string))
            });
            Ok(ManifestBytes { bytes, content_type })
        })
        .await
    }

    async fn fetch_blob(&self, name: &str, digest: &Digest, range: ByteRange) -> Result<BlobBody> {
        self.check_name(name)?;
        let this = self.clone();
        let wanted = digest.clone();
        let (file, size) = blocking(move || this.open_blob(&wanted)).await?;
        if range.offset > size {
            return Err(self.invalid(format!(
                "blob {digest}: range starts at byte {} beyond its end ({size} bytes)",
                range.offset
            )));
        }
        // A range reaching past the end is cut at the end, as HTTP servers do.
        let len = range
            .len
            .map_or(size - range.offset, |l| l.min(size - range.offset));
        let mut file = tokio::fs::File::from_std(file);
        file.seek(io::SeekFrom::Start(range.offset))
            .await
            .map_err(|e| self.io_error("seek", &blob_rel(digest), e))?;
        let source = self.source_name.clone();
        let rel = blob_rel(digest);
        let stream = ReaderStream::with_capacity(file.take(len), READ_CHUNK).map(move |chunk| {
            chunk.map_err(|e| Error::unavailable(&source, format!("read {rel}: {e}")))
        });
        Ok(BlobBody {
            len: Some(len),
            stream: Box::pin(stream),
        })
    }

    async fn blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        self.check_name(name)?;
        let this = self.clone();
        let digest = digest.clone();
        blocking(move || match this.open_blob(&digest) {
            Ok((_, size)) => Ok(Some(size)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn list_tags(&self, name: &str) -> Result<Vec<String>> {
        self.check_name(name)?;
        let this = self.clone();
        let name = name.to_string();
        blocking(move || {
            let index = this.read_index(&this.open_root()?)?;
            let mut tags: Vec<String> = this
                .tags_in(&index, &name)
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            if tags.is_empty() {
                return Err(Error::not_found(
                    &this.source_name,
                    format!(
                        "image {name} (no ref name in {INDEX_FILE} of OCI layout {})",
                        this.root.display()
                    ),
                ));
            }
            tags.sort();
            tags.dedup();
            Ok(tags)
        })
        .await
    }

    async fn put_blob(
        &self,
        name: &str,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<()> {
        self.check_name(name)?;
        let this = self.clone();
        let wanted = digest.clone();
        let present = blocking(move || {
            this.ensure_layout()?;
            match this.open_blob(&wanted) {
                Ok((_, size)) => Ok(Some(size)),
                Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await?;
        if present == Some(size) {
            return Ok(());
        }
        self.write_blob(digest, size, body).await
    }

    async fn put_manifest(
        &self,
        name: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        check_name_tag(&self.source_name, name, tag)?;
        let blob = ManifestBlob::parse(bytes.to_vec(), Some(media_type), None)
            .map_err(|e| Error::from_core(&self.source_name, e))?;
        if blob.media_type != media_type {
            return Err(self.invalid(format!(
                "manifest {} declares media type {:?}, not {media_type:?}",
                blob.digest, blob.media_type
            )));
        }
        let size = bytes.len() as u64;
        let body = bytes::Bytes::copy_from_slice(bytes);
        self.put_blob(
            name,
            &blob.digest,
            size,
            Box::pin(futures::stream::once(async { Ok(body) })),
        )
        .await?;
        if let Some(tag) = tag {
            let this = self.clone();
            let (name, tag, desc) = (name.to_string(), tag.to_string(), blob.descriptor());
            blocking(move || this.tag_manifest(&name, &tag, &desc)).await?;
        }
        Ok(blob.digest)
    }
}

/// Checks that `name` is a full, normalized image name and `tag` (if any) a valid tag.
pub(crate) fn check_name_tag(
    source_name: &str,
    name: &str,
    tag: Option<&str>,
) -> Result<Reference> {
    let reference = Reference::with_name(name, Some(tag.unwrap_or("latest")), None)
        .map_err(|e| Error::new(ErrorKind::Invalid, source_name, e.to_string()))?;
    if reference.name() != name {
        return Err(Error::new(
            ErrorKind::Invalid,
            source_name,
            format!(
                "image name {name:?} is not a full name (expected {:?})",
                reference.name()
            ),
        ));
    }
    Ok(reference)
}

/// A ref name of `index.json` (OCI-1, OCI-3).
enum RefName {
    /// A full image name with tag, normalized.
    Full(Reference),
    /// A bare tag.
    Plain(String),
}

/// Classifies a ref name: with a `/` or `:` it is an image reference, else a plain tag.
fn parse_ref_name(s: &str) -> Option<RefName> {
    if s.contains('/') || s.contains(':') {
        let r = Reference::parse(s).ok()?;
        // `busybox@sha256:…` names no tag; such entries cannot be resolved by tag.
        (r.tag().is_some() && r.digest().is_none()).then_some(RefName::Full(r))
    } else {
        Reference::parse(&format!("x:{s}")).ok()?;
        Some(RefName::Plain(s.to_string()))
    }
}

/// The entries of `index.json`'s `manifests` array.
fn manifests(index: &Value) -> impl Iterator<Item = &Value> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// `blobs/<alg>/<hex>`, for messages.
fn blob_rel(digest: &Digest) -> String {
    format!(
        "{BLOBS_DIR}/{}/{}",
        digest.algorithm().as_str(),
        digest.hex()
    )
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Error::new(
            ErrorKind::Invalid,
            "",
            format!("OCI layout task failed: {e}"),
        )
    })?
}

/// A directory held open by descriptor; paths below it are opened relative to it.
#[derive(Debug)]
struct Dir {
    fd: OwnedFd,
}

/// Takes ownership of a descriptor that a successful `open`/`openat` just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful open call and nothing else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Dir {
    /// Opens the directory at `path` (the configured layout path may be a symlink).
    fn open(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir { fd: owned(fd) })
    }

    /// Opens `name` (one path component) in this directory without following a symlink.
    fn openat(&self, name: &str, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        debug_assert!(!name.contains('/') && name != ".." && name != ".");
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(Some(self.fd.as_raw_fd()), name, flags, mode)?;
        Ok(owned(fd))
    }

    /// Opens subdirectory `name`.
    fn sub(&self, name: &str) -> io::Result<Dir> {
        let fd = self.openat(name, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())?;
        Ok(Dir { fd })
    }

    /// Opens subdirectory `name`, creating it first if needed.
    fn sub_or_create(&self, name: &str) -> io::Result<Dir> {
        match nix::sys::stat::mkdirat(
            Some(self.fd.as_raw_fd()),
            name,
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(Errno::EEXIST) => self.sub(name),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves `from` in this directory to `to` in `dir`, replacing it.
    fn rename(&self, from: &str, dir: &Dir, to: &str) -> io::Result<()> {
        nix::fcntl::renameat(
            Some(self.fd.as_raw_fd()),
            from,
            Some(dir.fd.as_raw_fd()),
            to,
        )?;
        Ok(())
    }

    /// Removes file `name`.
    fn unlink(&self, name: &str) -> io::Result<()> {
        nix::unistd::unlinkat(Some(self.fd.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)?;
        Ok(())
    }
}

/// Whether `name` exists in `dir` (as anything, symlinks not followed).
fn exists(dir: &Dir, name: &str) -> io::Result<bool> {
    match nix::sys::stat::fstatat(
        Some(dir.fd.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Opens the file at `components` below `root`, following no symlink on the way.
///
/// `O_NONBLOCK` keeps a FIFO planted in a layout from blocking the open.
fn open_beneath(root: &Dir, components: &[&str]) -> io::Result<File> {
    let (file, dirs) = components.split_last().expect("a path has a file name");
    let mut owned_dir;
    let mut dir = root;
    for c in dirs {
        owned_dir = dir.sub(c)?;
        dir = &owned_dir;
    }
    let fd = dir.openat(file, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())?;
    Ok(File::from(fd))
}

/// Reads the regular file at `components` below `root`, refusing more than `limit` bytes.
fn read_limited(root: &Dir, components: &[&str], limit: u64) -> io::Result<Vec<u8>> {
    let file = open_beneath(root, components)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes, more than the {limit} read", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A file being written in the layout's `.ferry-tmp/`; removed on drop unless committed.
struct TempFile {
    dir: Dir,
    name: String,
    file: File,
    committed: bool,
}

impl TempFile {
    /// Creates a new, uniquely named temporary file in `root/.ferry-tmp/`.
    fn create(root: &Dir) -> io::Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = root.sub_or_create(TMP_DIR)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let fd = dir.openat(
            &name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(0o644),
        )?;
        Ok(TempFile {
            dir,
            name,
            file: File::from(fd),
            committed: false,
        })
    }

    /// `.ferry-tmp/<name>`, for messages.
    fn rel(&self) -> String {
        format!("{TMP_DIR}/{}", self.name)
    }

    /// Renames the file to `to` in `dir`, replacing what was there.
    fn commit(mut self, dir: &Dir, to: &str) -> io::Result<()> {
        self.dir.rename(&self.name, dir, to)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = self.dir.unlink(&self.name) {
                tracing::warn!("cannot remove temporary file {}: {e}", self.rel());
            }
        }
    }
}
