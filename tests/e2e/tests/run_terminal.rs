//! `ferry run -it` in a real terminal (specs/runtime.md RUN-30): a tmux session types into a
//! shell in the container, reads its output from the pane, resizes the window, leaves with
//! Ctrl-D and finds its terminal sane again, through the builtin runtime and runc.
//!
//! Needs root (namespaces, overlayfs) and tmux: CI runs as root; elsewhere the test prints a
//! notice and returns.

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testkit::fixtures::{Fixtures, BUSYBOX};
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::{ferry, ferry_bin, is_root, run_ok};

/// A detached tmux session on its own server socket, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: format!("ferry-test-{}-{name}", std::process::id()),
        };
        run_ok(tmux.cmd().args([
            "new-session",
            "-d",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "sh",
        ]));
        tmux
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "-f", "/dev/null"]);
        cmd
    }

    /// Types `text` (tmux key names allowed, e.g. `Enter`, `C-d`).
    fn keys(&self, keys: &[&str]) {
        run_ok(self.cmd().arg("send-keys").args(keys));
    }

    fn pane(&self) -> String {
        run_ok(self.cmd().args(["capture-pane", "-p", "-J"]))
    }

    /// Waits until the pane shows a line for which `want` holds; panics after 20 s.
    fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let pane = self.pane();
            if pane.lines().any(&want) {
                return pane;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "waited for {what}; the pane shows:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn clear(&self) {
        run_ok(self.cmd().args(["send-keys", "clear", "Enter"]));
        std::thread::sleep(Duration::from_millis(200));
        run_ok(self.cmd().args(["clear-history"]));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

#[test]
fn interactive_shell_types_resizes_and_leaves_the_terminal_sane() {
    if !is_root() {
        eprintln!("skipped: ferry run needs root (CI runs as root)");
        return;
    }
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &registry.host(), "busybox:1", false, None);
    let image = format!("{}/busybox:1", registry.host());
    let root = tempfile::tempdir().unwrap();
    // Pull once outside the terminal so the session only shows the container.
    run_ok(ferry(root.path()).args(["pull", &image]));

    for runtime in ["builtin", "runc"] {
        let tmux = Tmux::start(runtime, 80, 24);
        let command = format!(
            "FERRY_ROOT={} {} run -it --rm --runtime {runtime} {image} sh",
            root.path().display(),
            ferry_bin().display()
        );
        tmux.keys(&[&command, "Enter"]);
        tmux.wait_for("the container's prompt", |l| l.trim_end() == "/ #");

        tmux.keys(&["echo answer=$((6*7)) tty=$(busybox tty)", "Enter"]);
        let pane = tmux.wait_for("the command's output", |l| l.starts_with("answer="));
        assert!(
            pane.contains("answer=42 tty=/dev/pts/"),
            "{runtime}:\n{pane}"
        );

        tmux.keys(&["busybox stty size", "Enter"]);
        tmux.wait_for("the first size", |l| l.trim() == "24 80");
        run_ok(tmux.cmd().args(["resize-window", "-x", "100", "-y", "30"]));
        std::thread::sleep(Duration::from_millis(300));
        tmux.keys(&["busybox stty size", "Enter"]);
        tmux.wait_for("the new size after SIGWINCH", |l| l.trim() == "30 100");

        // Ctrl-C reaches the container's foreground process, not ferry.
        tmux.keys(&["sleep 30; echo slept", "Enter"]);
        std::thread::sleep(Duration::from_millis(500));
        tmux.keys(&["C-c"]);
        tmux.keys(&["echo after=interrupt", "Enter"]);
        let pane = tmux.wait_for("the shell after Ctrl-C", |l| l.starts_with("after="));
        assert!(!pane.lines().any(|l| l == "slept"), "{runtime}:\n{pane}");

        // Ctrl-D ends the shell, the container and ferry; the host shell's terminal is sane.
        tmux.keys(&["C-d"]);
        std::thread::sleep(Duration::from_millis(500));
        tmux.clear();
        tmux.keys(&["echo ferry=$?; stty -a", "Enter"]);
        let pane = tmux.wait_for("the host shell", |l| l.starts_with("ferry="));
        assert!(pane.contains("ferry=0"), "{runtime}:\n{pane}");
        let flags: Vec<&str> = pane.split_whitespace().collect();
        for flag in ["icanon", "echo", "isig", "icrnl", "opost"] {
            assert!(flags.contains(&flag), "{runtime}: {flag} is off:\n{pane}");
        }
    }
}
