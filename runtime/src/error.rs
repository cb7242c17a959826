//! The one error type of `ferry-runtime`.
//!
//! Shared by several modules: add variants, keep each message one line naming what and where.

use std::path::PathBuf;

/// Everything that can go wrong unpacking or running an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the store or the image model.
    #[error(transparent)]
    Core(#[from] ferry_core::Error),
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Where (relative to the rootfs when inside one).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A layer entry is malformed or hostile and was refused (specs/unpack.md).
    #[error("layer {layer}: entry {entry:?} rejected: {reason}")]
    UnpackRejected {
        /// The layer (its expected diff_id when known).
        layer: String,
        /// The entry's name as stored in the tar, or where in the stream.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// A file-system operation applying a layer entry failed.
    #[error("layer {layer}: entry {entry:?}: {op}: {source}")]
    UnpackIo {
        /// The layer (its expected diff_id when known).
        layer: String,
        /// The entry's name as stored in the tar.
        entry: String,
        /// What was attempted.
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or decompressing a layer stream failed.
    #[error("layer {layer}: reading the {what} stream: {source}")]
    LayerStream {
        /// The layer (its expected diff_id when known).
        layer: String,
        /// Which stream: `gzip`, `zstd`, `tar`.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A layer's bytes do not match the compression its media type declares.
    #[error("layer {layer}: media type declares {declared} compression but the stream starts like {found}")]
    CompressionMismatch {
        /// The layer (its expected diff_id when known).
        layer: String,
        /// Compression named by the media type.
        declared: String,
        /// Compression the magic bytes show.
        found: String,
    },
    /// A layer's uncompressed digest differs from the diff_id the image config lists.
    #[error(
        "layer {layer}: diff_id mismatch: expected {expected}, the uncompressed stream is {actual}"
    )]
    DiffIdMismatch {
        /// The layer (its expected diff_id when known).
        layer: String,
        /// The diff_id the config lists.
        expected: ferry_core::Digest,
        /// The digest of the uncompressed stream.
        actual: ferry_core::Digest,
    },
    /// Unpacking an image reached one of its [`Limits`](crate::unpack::Limits).
    #[error(
        "layer {layer}: unpack limit {what} ({}) reached at entry {entry:?}; raise it with \
         --{what} or [unpack] {what} in the site config",
        shown_limit(.what, *.limit)
    )]
    UnpackLimit {
        /// The layer (its expected diff_id when known).
        layer: String,
        /// Which limit: `max-bytes` (uncompressed bytes) or `max-entries`.
        what: &'static str,
        /// The limit for the whole image.
        limit: u64,
        /// The entry being read when the limit was hit, or where in the stream.
        entry: String,
    },
    /// Neither the image config nor the command line names a command to run.
    #[error("no command to run: the image config has no Entrypoint or Cmd and none was given")]
    NoCommand,
    /// A user or group cannot be resolved in the image's root filesystem.
    #[error("user {user:?}: {reason}")]
    User {
        /// The `user[:group]` asked for.
        user: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The OCI runtime spec cannot be built or written.
    #[error("runtime spec: {0}")]
    Spec(String),
    /// Running containers needs root.
    #[error(
        "running containers needs root: an ordinary user's ferry command runs them in a user namespace"
    )]
    NotRoot,
    /// Setting up a container failed before its command started.
    #[error("container {id}: {step}: {source}")]
    ContainerSetup {
        /// The container id.
        id: String,
        /// The step that failed, with what it acted on.
        step: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A run option (`-v`, `--tmpfs`, `--cap-add`, a seccomp profile, …) is malformed or
    /// names something that does not exist.
    #[error("{option}: {reason}")]
    RunOption {
        /// The option as given, e.g. `-v /srv:/data:ro` or `seccomp profile /etc/p.json`.
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The container's command exists but cannot be executed, or does not exist (RUN-38).
    #[error("container {id}: cannot execute {command:?}: {source}")]
    Exec {
        /// The container id.
        id: String,
        /// The command (`process.args[0]`).
        command: String,
        /// Why: `ENOENT` when it is not found, `EACCES`/`ENOEXEC` when it cannot run.
        #[source]
        source: std::io::Error,
    },
    /// An external OCI runtime (runc) could not be run or failed.
    #[error("{program}: {reason}")]
    ExternalRuntime {
        /// The program, e.g. `runc`.
        program: String,
        /// What went wrong.
        reason: String,
    },
    /// A container's cgroup cannot be set up as its limits need (RUN-40).
    #[error("cgroup {path}: {reason}")]
    Cgroup {
        /// The cgroup (the spec's `cgroupsPath`).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Entering the user namespace of a rootless ferry failed (RUN-44).
    #[error("rootless: {reason}")]
    Rootless {
        /// What failed.
        reason: String,
    },
    /// A snapshot cannot be removed because a container's overlay uses it.
    #[error("snapshot {path} is in use by a container; remove the container first")]
    SnapshotInUse {
        /// The snapshot directory.
        path: PathBuf,
    },
    /// A layer applied in one pass, as its bytes arrived, failed (RUN-24); the applying
    /// thread reports the error itself, this is how the download sees it.
    #[error("{reason}")]
    OnePass {
        /// The layer's error, as reported.
        reason: String,
        /// The layer's bytes are not the layer the image describes (a diff_id mismatch).
        corrupt: bool,
    },
    /// An image's manifest and config disagree on its layers.
    #[error("image has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCount {
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
}

impl Error {
    /// The same error with its layer named by position too (`layer 3/5 sha256:…`), for
    /// errors of the `index`-th (from 1) of an image's `count` layers.
    pub(crate) fn in_layer(mut self, index: usize, count: usize) -> Self {
        match &mut self {
            Error::UnpackRejected { layer, .. }
            | Error::UnpackIo { layer, .. }
            | Error::LayerStream { layer, .. }
            | Error::CompressionMismatch { layer, .. }
            | Error::DiffIdMismatch { layer, .. }
            | Error::UnpackLimit { layer, .. } => *layer = format!("{index}/{count} {layer}"),
            _ => {}
        }
        self
    }
}

/// A limit for messages: bytes in the largest binary unit that divides them exactly
/// (`10 MiB`), entries as a count.
fn shown_limit(what: &str, limit: u64) -> String {
    if what != "max-bytes" {
        return format!("{limit} entries");
    }
    let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    match units
        .iter()
        .find(|(shift, _)| limit >= 1 << shift && limit.is_multiple_of(1 << shift))
    {
        Some((shift, unit)) => format!("{} {unit}", limit >> shift),
        None => format!("{limit} bytes"),
    }
}
