//! `ferry save` and `ferry load` report progress as `ferry pull` does: newline-delimited
//! JSON events with `--json` (blob-start, blob-progress, blob-done per blob, then `saved` or
//! `loaded`), bars on a terminal (a tmux pane), and only the summary line when piped
//! (specs/archive.md ARC-15).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testkit::fixtures::{Fixtures, APP};
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::{ferry, ferry_bin, output, run_ok};

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}")))
        .collect()
}

fn named<'a>(events: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// An image pulled into a store at `root`; returns `NAME:TAG` and its digest.
fn pulled(root: &Path, reg: &Registry) -> (String, String) {
    let fx = Fixtures::get();
    let digest = fx.push(APP, &reg.host(), "team/app:1", false, None);
    let name = format!("{}/team/app:1", reg.host());
    run_ok(ferry(root).args(["pull", &name]));
    (name, digest)
}

#[test]
fn save_and_load_stream_json_events_for_every_blob() {
    // ARC-15
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let a = tempfile::tempdir().unwrap();
    let (name, digest) = pulled(a.path(), &reg);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");

    let saved = events(&run_ok(
        ferry(a.path())
            .args(["save", "--json", &name, "-o"])
            .arg(&archive),
    ));
    let last = saved.last().unwrap();
    assert_eq!(last["event"], "saved", "{last}");
    assert_eq!(last["images"], serde_json::json!([name]));
    let blobs = last["blobs"].as_u64().unwrap() as usize;
    let starts = named(&saved, "blob-start");
    let dones = named(&saved, "blob-done");
    assert_eq!((starts.len(), dones.len()), (blobs, blobs), "{saved:?}");
    let bytes: u64 = dones.iter().map(|e| e["size"].as_u64().unwrap()).sum();
    assert_eq!(bytes, last["bytes"].as_u64().unwrap());
    assert!(
        dones.iter().any(|e| e["kind"] == "layer") && dones.iter().any(|e| e["kind"] == "config")
    );
    assert!(dones
        .iter()
        .any(|e| e["digest"] == digest.as_str() && e["kind"] == "manifest"));
    // Progress of a streamed blob ends at its size.
    let layer = dones.iter().find(|e| e["kind"] == "layer").unwrap();
    let progress: Vec<u64> = named(&saved, "blob-progress")
        .iter()
        .filter(|e| e["digest"] == layer["digest"])
        .map(|e| e["done"].as_u64().unwrap())
        .collect();
    assert_eq!(
        progress.last().copied(),
        layer["size"].as_u64(),
        "{progress:?}"
    );

    let b = tempfile::tempdir().unwrap();
    let loaded = events(&run_ok(
        ferry(b.path()).args(["load", "--json", "-i"]).arg(&archive),
    ));
    let last = loaded.last().unwrap();
    assert_eq!(last["event"], "loaded", "{last}");
    assert_eq!(
        last["images"],
        serde_json::json!([format!("{name}@{digest}")])
    );
    let dones = named(&loaded, "blob-done");
    assert_eq!(dones.len(), blobs, "{loaded:?}");
    assert_eq!(last["blobs_added"].as_u64(), Some(blobs as u64));
    assert!(dones.iter().all(|e| e["present"] == false));
    // The ferry archive's table of contents says what each blob is.
    assert!(dones
        .iter()
        .any(|e| e["digest"] == digest.as_str() && e["kind"] == "manifest"));

    // Again: every blob is there already.
    let again = events(&run_ok(
        ferry(b.path()).args(["load", "--json", "-i"]).arg(&archive),
    ));
    assert!(named(&again, "blob-done")
        .iter()
        .all(|e| e["present"] == true));
    assert_eq!(again.last().unwrap()["blobs_added"], 0);
}

#[test]
fn save_and_load_print_only_their_summary_when_not_on_a_terminal() {
    // ARC-15: piped, stderr holds one line (so an error stays alone on it, ARC-10).
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let a = tempfile::tempdir().unwrap();
    let (name, _) = pulled(a.path(), &reg);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    let out = output(
        ferry(a.path())
            .args(["save", &name, "--format", "docker-archive", "-o"])
            .arg(&archive),
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("saved "), "{err}");

    let b = tempfile::tempdir().unwrap();
    let out = output(ferry(b.path()).args(["load", "-i"]).arg(&archive));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("loaded "), "{err}");
}

#[test]
fn save_and_load_draw_bars_on_a_terminal() {
    // ARC-15: on a terminal each blob has a bar, and a line when it is done.
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let a = tempfile::tempdir().unwrap();
    let (name, _) = pulled(a.path(), &reg);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    let b = tempfile::tempdir().unwrap();
    let script = format!(
        "unset NO_COLOR; FERRY_ROOT={a} {ferry} save {name} -o {archive} && FERRY_ROOT={b} {ferry} load -i {archive}; echo EXIT=$?; sleep 60",
        a = a.path().display(),
        b = b.path().display(),
        ferry = ferry_bin().display(),
        archive = archive.display(),
    );
    let socket = format!("ferry-test-{}-archive", std::process::id());
    let tmux = || {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &socket, "-f", "/dev/null"]);
        cmd
    };
    run_ok(tmux().args([
        "new-session",
        "-d",
        "-x",
        "150",
        "-y",
        "40",
        "sh",
        "-c",
        &script,
    ]));
    let started = Instant::now();
    let pane = loop {
        let pane = run_ok(tmux().args(["capture-pane", "-p", "-J"]));
        if pane.contains("EXIT=") || started.elapsed() > Duration::from_secs(30) {
            break pane;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = tmux().arg("kill-server").status();
    assert!(pane.contains("EXIT=0"), "{pane}");
    assert!(
        pane.contains("saved ") && pane.contains("loaded "),
        "{pane}"
    );
    assert!(pane.contains("done ("), "{pane}");
    assert!(pane.contains("layer "), "{pane}");
}
