//! Fixture images built at test time with umoci from Debian's busybox-static.
//!
//! One OCI image layout holds them all; it is built once per checkout (under the target
//! directory) and shared by every test process.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::{run_ok, target_dir};

/// Applets linked to busybox in the fixture images.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "pwd", "env", "true", "false", "hostname", "sleep", "ip",
    "mkdir", "rm", "test", "wc", "head", "stat", "readlink", "touch", "uname",
];
/// Fixed creation time, so configs do not change between builds.
const CREATED: &str = "2026-01-01T00:00:00Z";
/// Bumped whenever the fixtures change, so stale caches are rebuilt.
const VERSION: &str = "v1";

/// Tag of the one-layer busybox image in the layout.
pub const BUSYBOX: &str = "busybox";
/// Tag of the two-layer image whose config sets Entrypoint, Cmd, Env, WorkingDir and User.
pub const APP: &str = "app";
/// Tag of busybox plus a 16 MiB incompressible layer (for interrupted transfers).
pub const BIG: &str = "big";
/// Size of the random file in [`BIG`].
pub const BIG_FILE_SIZE: usize = 16 << 20;
/// Tag of the multi-platform index (linux/amd64 = busybox, linux/arm64 = a config-only variant).
pub const INDEX: &str = "multi";

/// The fixture layout, built on first use.
pub struct Fixtures {
    layout: PathBuf,
}

impl Fixtures {
    /// Builds the fixture layout if this checkout has none yet, and returns it.
    pub fn get() -> Fixtures {
        let dir = target_dir()
            .join("testkit")
            .join(format!("fixtures-{VERSION}"));
        if !dir.join("index.json").exists() {
            build(&dir);
        }
        Fixtures { layout: dir }
    }

    /// The OCI image layout directory.
    pub fn layout(&self) -> &Path {
        &self.layout
    }

    /// `oci:LAYOUT:TAG`, for skopeo.
    pub fn oci_ref(&self, tag: &str) -> String {
        format!("oci:{}:{}", self.layout.display(), tag)
    }

    /// Pushes fixture `tag` to `docker://HOST/NAME` on a plain-HTTP registry with skopeo.
    ///
    /// `v2s2` converts it to a Docker schema 2 image. Returns the pushed manifest's digest.
    pub fn push(
        &self,
        tag: &str,
        host: &str,
        name: &str,
        v2s2: bool,
        creds: Option<(&str, &str)>,
    ) -> String {
        let dest = format!("docker://{host}/{name}");
        let digest_file = tempfile::NamedTempFile::new().expect("temp file");
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--dest-tls-verify=false", "--digestfile"])
            .arg(digest_file.path());
        if v2s2 {
            cmd.args(["--format", "v2s2"]);
        } else {
            cmd.arg("--preserve-digests");
        }
        if let Some((u, p)) = creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(self.oci_ref(tag)).arg(&dest);
        run_ok(&mut cmd);
        fs::read_to_string(digest_file.path())
            .expect("skopeo digest file")
            .trim()
            .to_string()
    }

    /// The manifest (or index) digest of fixture `tag` in the layout.
    pub fn digest(&self, tag: &str) -> String {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(self.layout.join("index.json")).expect("index.json"))
                .expect("json");
        index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .and_then(|m| m["digest"].as_str())
            .unwrap_or_else(|| panic!("no fixture {tag}"))
            .to_string()
    }

    /// Reads a blob of the layout by digest.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let (alg, hex) = digest.split_once(':').expect("digest");
        fs::read(self.layout.join("blobs").join(alg).join(hex)).expect("blob in layout")
    }
}

fn umoci(args: &[&str]) {
    run_ok(Command::new("umoci").args(args));
}

fn build(dir: &Path) {
    let parent = dir.parent().expect("parent");
    fs::create_dir_all(parent).expect("mkdir testkit");
    let work = tempfile::tempdir_in(parent).expect("tempdir");
    let layout = work.path().join("layout");
    let l = layout.to_str().expect("utf-8 path");
    umoci(&["init", "--layout", l]);

    // busybox: one layer, /bin/busybox and applet links, root in /etc/passwd.
    let bundle = work.path().join("bundle");
    let b = bundle.to_str().expect("utf-8 path");
    let image = |tag: &str| format!("{l}:{tag}");
    umoci(&["new", "--image", &image(BUSYBOX)]);
    umoci(&["unpack", "--image", &image(BUSYBOX), b]);
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).expect("mkdir bin");
    fs::create_dir_all(rootfs.join("etc")).expect("mkdir etc");
    fs::create_dir_all(rootfs.join("tmp")).expect("mkdir tmp");
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("busybox-static is installed (apt-get install busybox-static)");
    for applet in APPLETS {
        symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink applet");
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");
    umoci(&["repack", "--image", &image(BUSYBOX), b]);
    umoci(&[
        "config",
        "--image",
        &image(BUSYBOX),
        "--config.cmd",
        "/bin/sh",
        "--history.created",
        CREATED,
        "--created",
        CREATED,
    ]);
    fs::remove_dir_all(&bundle).expect("rm bundle");

    // app: busybox plus a second layer with a user and a work dir; a full config.
    umoci(&["unpack", "--image", &image(BUSYBOX), b]);
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/work:/bin/sh\n",
    )
    .expect("passwd");
    fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .expect("group");
    fs::create_dir_all(rootfs.join("work")).expect("mkdir work");
    fs::write(rootfs.join("work/hello.txt"), "hello from app\n").expect("hello");
    umoci(&["repack", "--image", &format!("{l}:{APP}"), b]);
    umoci(&[
        "config",
        "--image",
        &format!("{l}:{APP}"),
        "--config.entrypoint",
        "/bin/sh",
        "--config.entrypoint",
        "-c",
        "--config.cmd",
        "echo uid=$(id -u) gid=$(id -g) cwd=$(pwd) foo=$FOO",
        "--config.env",
        "FOO=bar",
        "--config.workingdir",
        "/work",
        "--config.user",
        "app",
        "--history.created",
        CREATED,
        "--created",
        CREATED,
    ]);
    fs::remove_dir_all(&bundle).expect("rm bundle");

    // big: busybox plus one incompressible layer.
    umoci(&["unpack", "--image", &image(BUSYBOX), b]);
    let mut random = vec![0u8; BIG_FILE_SIZE];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .expect("read /dev/urandom");
    fs::write(rootfs.join("random.bin"), &random).expect("write random.bin");
    umoci(&["repack", "--image", &format!("{l}:{BIG}"), b]);
    fs::remove_dir_all(&bundle).expect("rm bundle");

    add_index(&layout);
    match fs::rename(&layout, dir) {
        Ok(()) => {}
        // Another test process built it first: theirs is as good as ours.
        Err(_) if dir.join("index.json").exists() => {}
        Err(e) => panic!("cannot move fixtures into {}: {e}", dir.display()),
    }
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex_sha256(bytes);
    fs::write(layout.join("blobs/sha256").join(&hex), bytes).expect("write blob");
    format!("sha256:{hex}")
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Adds the multi-platform index: linux/amd64 is the busybox manifest, linux/arm64 a copy
/// whose config says arm64.
fn add_index(layout: &Path) {
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).expect("index")).expect("json");
    let fixtures = Fixtures {
        layout: layout.to_path_buf(),
    };
    let amd_digest = fixtures.digest(BUSYBOX);
    let amd_bytes = fixtures.blob(&amd_digest);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&amd_bytes).expect("manifest json");
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string();
    let mut config: serde_json::Value =
        serde_json::from_slice(&fixtures.blob(&config_digest)).expect("config json");
    config["architecture"] = "arm64".into();
    config["variant"] = "v8".into();
    let config_bytes = serde_json::to_vec(&config).expect("json");
    manifest["config"]["digest"] = write_blob(layout, &config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    let arm_bytes = serde_json::to_vec(&manifest).expect("json");
    let arm_digest = write_blob(layout, &arm_bytes);
    let entry = |digest: &str, size: usize, arch: &str, variant: Option<&str>| {
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": platform,
        })
    };
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            entry(&amd_digest, amd_bytes.len(), "amd64", None),
            entry(&arm_digest, arm_bytes.len(), "arm64", Some("v8")),
        ],
    });
    let idx_bytes = serde_json::to_vec(&idx).expect("json");
    let idx_digest = write_blob(layout, &idx_bytes);
    index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": idx_digest, "size": idx_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": INDEX},
        }));
    fs::write(&index_path, serde_json::to_vec(&index).expect("json")).expect("write index.json");
}
