//! The event monitor, as `event_monitor/src/lib.rs` and `vmm::start_event_monitor_thread` do it:
//! O_NONBLOCK is set on the fd's open file description, each event is
//! `serde_json::to_string_pretty` of `{timestamp: Duration, source, event, properties}` (the
//! timestamp counts from `set_monitor`), written with `write_all(event).ok()` and then
//! `write_all(b"\n\n").ok()` — two separate writes whose errors are ignored, so an event that
//! meets EAGAIN is dropped (or cut short, if part of it fitted).
//! Events are written synchronously here (CH uses a channel and a thread), so an event is on the
//! fd before the action that emits it returns.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use serde::Serialize;

use crate::record;

#[derive(Serialize)]
struct Event<'a> {
    timestamp: Duration,
    source: &'a str,
    event: &'a str,
    properties: Option<&'a HashMap<Cow<'a, str>, Cow<'a, str>>>,
}

struct Monitor {
    file: Mutex<Option<File>>,
    start: Instant,
    /// `FAKE_CH_NO_EVENTS=1`: emit nothing.
    silent: bool,
}

static MONITOR: OnceLock<Monitor> = OnceLock::new();

/// `set_monitor`: sets O_NONBLOCK (an error here is fatal, as in CH: `EventMonitorIo`).
pub fn set_monitor(file: File, silent: bool) -> std::io::Result<()> {
    let flags = fcntl(&file, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags))?;
    let _ = MONITOR.set(Monitor {
        file: Mutex::new(Some(file)),
        start: Instant::now(),
        silent,
    });
    Ok(())
}

/// The exact bytes CH writes for one event (before the separate `"\n\n"`).
pub fn format_event(
    timestamp: Duration,
    source: &str,
    event: &str,
    properties: Option<&HashMap<Cow<'_, str>, Cow<'_, str>>>,
) -> String {
    serde_json::to_string_pretty(&Event {
        timestamp,
        source,
        event,
        properties,
    })
    .unwrap_or_default()
}

/// `write_all` that reports how far it got.
fn write_all_counting(f: &mut File, mut buf: &[u8]) -> (usize, Option<std::io::Error>) {
    let mut done = 0;
    while !buf.is_empty() {
        match f.write(buf) {
            Ok(0) => return (done, Some(ErrorKind::WriteZero.into())),
            Ok(n) => {
                done += n;
                buf = &buf[n..];
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

pub fn emit(source: &str, event: &str) {
    emit_with(source, event, &[]);
}

/// `event!(source, event, k, v, ...)`. Records every attempt in `events.log`:
/// `<mono_ms> <source>:<event> <outcome>` where outcome is `written`, `dropped (<error>)`,
/// `partial <n>/<len> (<error>)`, `no-monitor`, `closed` or `silenced`.
pub fn emit_with(source: &str, event: &str, props: &[(&str, &str)]) {
    let Some(m) = MONITOR.get() else {
        record::append_line(
            "events.log",
            &format!("{:.3} {source}:{event} no-monitor", record::mono_ms()),
        );
        return;
    };
    if m.silent {
        record::append_line(
            "events.log",
            &format!("{:.3} {source}:{event} silenced", record::mono_ms()),
        );
        return;
    }
    let map: Option<HashMap<Cow<str>, Cow<str>>> = if props.is_empty() {
        None
    } else {
        Some(
            props
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
                .collect(),
        )
    };
    let mut guard = m.file.lock().unwrap_or_else(|e| e.into_inner());
    let text = format_event(m.start.elapsed(), source, event, map.as_ref());
    let outcome = match guard.as_mut() {
        None => "closed".to_string(),
        Some(f) => {
            let (n, err) = write_all_counting(f, text.as_bytes());
            // CH ignores both results and always attempts the separator.
            let (_, sep_err) = write_all_counting(f, b"\n\n");
            match (n, err) {
                (_, None) if sep_err.is_none() => "written".to_string(),
                (_, None) => format!("separator-failed ({})", sep_err.unwrap()),
                (0, Some(e)) => format!("dropped ({e})"),
                (n, Some(e)) => format!("partial {n}/{} ({e})", text.len()),
            }
        }
    };
    drop(guard);
    record::append_line(
        "events.log",
        &format!("{:.3} {source}:{event} {outcome}", record::mono_ms()),
    );
}

/// `FAKE_CH_CLOSE_EVENTS_AFTER_BOOT`: close the monitor fd; later events are not written.
pub fn close() {
    if let Some(m) = MONITOR.get() {
        m.file.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_example_shape() {
        let s = format_event(Duration::new(0, 323310), "vmm", "starting", None);
        assert_eq!(
            s,
            "{\n  \"timestamp\": {\n    \"secs\": 0,\n    \"nanos\": 323310\n  },\n  \"source\": \"vmm\",\n  \"event\": \"starting\",\n  \"properties\": null\n}"
        );
        let mut p = HashMap::new();
        p.insert(Cow::Borrowed("id"), Cow::Borrowed("_net0"));
        let s = format_event(Duration::new(1, 2), "virtio-device", "activated", Some(&p));
        assert!(s.ends_with("\"properties\": {\n    \"id\": \"_net0\"\n  }\n}"));
    }
}
