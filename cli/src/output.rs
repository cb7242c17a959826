//! What ferry prints: progress (bars on a terminal, plain lines when piped, JSON events
//! with `--json`) and human sizes.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_drivers::transfer::progress::{BlobKind, Event, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a blob's progress is reported when not drawing bars.
const PLAIN_INTERVAL: Duration = Duration::from_secs(1);
const JSON_INTERVAL: Duration = Duration::from_millis(250);

/// Renders transfer progress (pull, save, load) in the mode the output calls for.
pub struct ProgressPrinter {
    mode: Mode,
    state: Mutex<HashMap<String, BlobState>>,
}

enum Mode {
    Bars(MultiProgress),
    Plain,
    Json,
}

struct BlobState {
    kind: BlobKind,
    started: Instant,
    last_report: Instant,
    bar: Option<ProgressBar>,
}

impl BlobState {
    fn new(kind: BlobKind, bar: Option<ProgressBar>) -> Self {
        BlobState {
            kind,
            started: Instant::now(),
            last_report: Instant::now(),
            bar,
        }
    }
}

impl ProgressPrinter {
    /// JSON events on stdout with `json`; otherwise bars if stderr is a terminal, else plain lines on stderr.
    pub fn new(json: bool) -> Self {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Mode::Plain
        };
        ProgressPrinter {
            mode,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Whether it prints plain lines (stderr is not a terminal and no `--json`).
    pub fn is_plain(&self) -> bool {
        matches!(self.mode, Mode::Plain)
    }

    /// Clears any bars still drawn.
    pub fn finish(&self) {
        if let Mode::Bars(multi) = &self.mode {
            let _ = multi.clear();
        }
    }

    fn line(&self, text: String) {
        match &self.mode {
            Mode::Bars(multi) => {
                let _ = multi.println(text);
            }
            _ => eprintln!("{text}"),
        }
    }

    fn json(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    }
}

fn kind_name(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Manifest => "manifest",
        BlobKind::Config => "config",
        BlobKind::Layer => "layer",
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

/// A byte count in human units (decimal, like registries and containerd).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How long ago an RFC 3339 time was, in docker's words ("3 days ago"); the text itself
/// when it is not such a time, and "" when there is none.
pub fn time_ago(rfc3339: Option<&str>, now: std::time::SystemTime) -> String {
    let Some(text) = rfc3339 else {
        return String::new();
    };
    let Ok(then) = chrono::DateTime::parse_from_rfc3339(text) else {
        return text.to_string();
    };
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match now - then.timestamp() {
        s if s < 0 => text.to_string(),
        s => format!("{} ago", human_duration(s as u64)),
    }
}

/// A duration in seconds as docker words it ("About an hour", "2 weeks").
fn human_duration(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match seconds {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < MINUTE => format!("{s} seconds"),
        s if s < 2 * MINUTE => "About a minute".into(),
        s if s < HOUR => format!("{} minutes", s / MINUTE),
        s if s < 2 * HOUR => "About an hour".into(),
        s if s < 2 * DAY => format!("{} hours", s / HOUR),
        s if s < 14 * DAY => format!("{} days", s / DAY),
        s if s < 60 * DAY => format!("{} weeks", s / (7 * DAY)),
        s if s < 730 * DAY => format!("{} months", s / (30 * DAY)),
        s => format!("{} years", s / (365 * DAY)),
    }
}

impl Progress for ProgressPrinter {
    fn event(&self, event: &Event) {
        if let Mode::Json = self.mode {
            if let Event::BlobProgress { digest, done, size } = event {
                let mut state = self.state.lock().expect("progress state");
                if let Some(s) = state.get_mut(digest) {
                    if done < size && s.last_report.elapsed() < JSON_INTERVAL {
                        return;
                    }
                    s.last_report = Instant::now();
                }
            } else if let Event::BlobStart { digest, kind, .. } = event {
                self.state
                    .lock()
                    .expect("progress state")
                    .insert(digest.clone(), BlobState::new(*kind, None));
            }
            self.json(event);
            return;
        }
        match event {
            Event::Resolving { reference } => self.line(format!("resolving {reference}")),
            Event::Resolved {
                digest, media_type, ..
            } => self.line(format!("resolved  {digest} ({media_type})")),
            Event::BlobStart {
                digest,
                kind,
                size,
                resumed_from,
            } => {
                let bar = match &self.mode {
                    Mode::Bars(multi) => {
                        let bar = multi.add(ProgressBar::new(*size));
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix:<22} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
                            )
                            .expect("valid template")
                            .progress_chars("=> "),
                        );
                        bar.set_prefix(format!("{} {}", kind_name(*kind), short(digest)));
                        bar.set_position(*resumed_from);
                        Some(bar)
                    }
                    _ => {
                        let resumed = if *resumed_from > 0 {
                            format!(", resuming at {}", human_size(*resumed_from))
                        } else {
                            String::new()
                        };
                        self.line(format!(
                            "{:<9} {} downloading ({}{resumed})",
                            kind_name(*kind),
                            short(digest),
                            human_size(*size)
                        ));
                        None
                    }
                };
                self.state
                    .lock()
                    .expect("progress state")
                    .insert(digest.clone(), BlobState::new(*kind, bar));
            }
            Event::BlobProgress { digest, done, size } => {
                let mut state = self.state.lock().expect("progress state");
                let Some(s) = state.get_mut(digest) else {
                    return;
                };
                if let Some(bar) = &s.bar {
                    bar.set_position(*done);
                } else if s.last_report.elapsed() >= PLAIN_INTERVAL {
                    s.last_report = Instant::now();
                    let rate = *done as f64 / s.started.elapsed().as_secs_f64().max(0.001);
                    let line = format!(
                        "{:<9} {} downloading {}/{} {}/s",
                        kind_name(s.kind),
                        short(digest),
                        human_size(*done),
                        human_size(*size),
                        human_size(rate as u64)
                    );
                    drop(state);
                    self.line(line);
                }
            }
            Event::BlobDone {
                digest,
                kind,
                size,
                present,
                source,
            } => {
                let state = self.state.lock().expect("progress state").remove(digest);
                let what = if *present {
                    "already present".to_string()
                } else {
                    let took = state.as_ref().map(|s| s.started.elapsed());
                    let from = source
                        .as_deref()
                        .map(|s| format!(" from {s:?}"))
                        .unwrap_or_default();
                    match took {
                        Some(t) => format!(
                            "done ({} in {:.1}s{from})",
                            human_size(*size),
                            t.as_secs_f64()
                        ),
                        None => format!("done ({}{from})", human_size(*size)),
                    }
                };
                if let Some(bar) = state.and_then(|s| s.bar) {
                    bar.finish_and_clear();
                }
                self.line(format!("{:<9} {} {what}", kind_name(*kind), short(digest)));
            }
            Event::Done {
                size,
                transferred,
                elapsed_ms,
                ..
            } => self.line(format!(
                "elapsed: {:.1}s  total: {}  transferred: {}",
                *elapsed_ms as f64 / 1000.0,
                human_size(*size),
                human_size(*transferred)
            )),
            // save and load print their own summary line.
            Event::Saved { .. } | Event::Loaded { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_use_decimal_units() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500), "1.5 kB");
        assert_eq!(human_size(52_400_000), "52.4 MB");
    }

    #[test]
    fn creation_times_read_as_docker_words_them() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let created = Some("2026-01-01T00:00:00Z");
        let base = 1_767_225_600; // 2026-01-01T00:00:00Z
        assert_eq!(time_ago(created, at(base)), "Less than a second ago");
        assert_eq!(time_ago(created, at(base + 90)), "About a minute ago");
        assert_eq!(time_ago(created, at(base + 3 * 86_400)), "3 days ago");
        assert_eq!(time_ago(created, at(base + 21 * 86_400)), "3 weeks ago");
        assert_eq!(time_ago(created, at(base + 400 * 86_400)), "13 months ago");
        assert_eq!(
            time_ago(Some("2026-01-01T02:00:00+02:00"), at(base + 7_200)),
            "2 hours ago"
        );
        assert_eq!(time_ago(Some("yesterday"), at(base)), "yesterday");
        assert_eq!(time_ago(None, at(base)), "");
    }

    #[test]
    fn short_digest_is_twelve_hex() {
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    }
}
