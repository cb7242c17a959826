//! `--init`: a small PID 1 that forwards signals to the command and reaps orphans
//! (specs/runtime.md RUN-35).
//!
//! Both runtimes run the same spec, so the init must be a program inside the container.
//! ferry bind-mounts the host's statically linked `tini` (Debian's `tini` package, which is
//! also what Docker ships as `docker-init`) read-only at [`INIT_PATH`] and runs
//! `INIT_PATH -- COMMAND…`: it works in any image, needs no libraries from it, and writes
//! nothing into the container's layer (`/dev` is a tmpfs).

use std::path::PathBuf;

use crate::{Error, Result};

/// Where the init program appears in the container.
pub const INIT_PATH: &str = "/dev/init";

/// Host programs tried as the init, in order.
const CANDIDATES: [&str; 3] = [
    "/usr/bin/tini-static",
    "/usr/libexec/docker/docker-init",
    "/usr/bin/docker-init",
];

/// The host's static init program; an error naming the paths tried when there is none.
pub(crate) fn init_binary() -> Result<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| Error::RunOption {
            option: "--init".into(),
            reason: format!(
                "no static init program found (tried {}; install Debian's tini package)",
                CANDIDATES.join(", ")
            ),
        })
}
