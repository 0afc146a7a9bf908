//! A small asynchronous QMP client: the greeting, `qmp_capabilities`, commands with
//! timeouts, and the events QEMU sends between them.
//!
//! QMP (docs/interop/qmp-spec.txt) is one JSON object per line in each direction. QEMU may
//! send events at any time, also between a command and its reply (seen with `quit`: the
//! SHUTDOWN event comes first), so one reader task reads every line: replies go to the command
//! that waits for them, matched by the `id` credbridge puts into each command; events go to
//! [`QmpEvents`]. [`Qmp`] is a cheap handle, clonable into futures like the supervisor's other
//! requests, and every command gives up after its timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

/// Default for the greeting and each command: QMP answers in milliseconds unless QEMU hangs.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line accepted from QEMU; its messages are a few hundred bytes.
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP: {what} got no answer within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("QMP: the connection closed (QEMU exited or closed its monitor)")]
    Closed,
    #[error("QMP: unexpected message from QEMU: {0}")]
    Protocol(String),
    #[error("QMP: {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// An asynchronous QMP event (docs/interop/qmp-events).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `SHUTDOWN`, `POWERDOWN`, `RESET`, `STOP`, `RESUME`, `GUEST_PANICKED`, ...
    pub name: String,
    /// The event's `data`, `Value::Null` if it has none.
    pub data: Value,
}

/// The events the supervisor acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The VM is shutting down (QEMU exits next, unless `-no-shutdown`). `guest` is true when
    /// the guest asked for it (ACPI poweroff); `reason` e.g. `guest-shutdown`, `host-qmp-quit`,
    /// `host-signal`, `guest-reset` (with `-no-reboot`).
    Shutdown {
        guest: bool,
        reason: String,
    },
    /// `system_powerdown` pressed the ACPI power button (the guest may ignore it).
    Powerdown,
    /// The VM reset (a guest reboot without `-no-reboot`).
    Reset {
        guest: bool,
        reason: String,
    },
    /// The vCPUs stopped (pause, `-S` start, shutdown with `-no-shutdown`).
    Stop,
    /// The vCPUs run again (also the first start after `-S` and `cont`).
    Resume,
    /// The guest kernel panicked (pvpanic); `action` is `pause`, `poweroff` or `run`.
    GuestPanicked {
        action: String,
    },
    Other,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        let s = |k: &str| {
            self.data
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let guest = self
            .data
            .get("guest")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match self.name.as_str() {
            "SHUTDOWN" => EventKind::Shutdown {
                guest,
                reason: s("reason"),
            },
            "POWERDOWN" => EventKind::Powerdown,
            "RESET" => EventKind::Reset {
                guest,
                reason: s("reason"),
            },
            "STOP" => EventKind::Stop,
            "RESUME" => EventKind::Resume,
            "GUEST_PANICKED" => EventKind::GuestPanicked {
                action: s("action"),
            },
            _ => EventKind::Other,
        }
    }
}

type Reply = Result<Value, (String, String)>;

#[derive(Default)]
struct Pending {
    closed: bool,
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
}

struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Shared with the reader task, which must not hold the writer: dropping the last
    /// handle drops the write half, QEMU sees EOF and closes its end, and the reader ends.
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    version: String,
}

/// A handle to one QMP connection. Clones share it.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
    timeout: Duration,
}

/// The events of a connection, in the order QEMU sent them. `recv` returns `None` once the
/// connection closed (QEMU exited): a useful end-of-VM signal besides the child's exit.
#[derive(Debug)]
pub struct QmpEvents {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl QmpEvents {
    /// The next event. Cancel-safe (an `mpsc` receive), so it can sit in a `select!`.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.inner.version)
            .field("timeout", &self.timeout)
            .finish()
    }
}

async fn read_message(reader: &mut BufReader<OwnedReadHalf>) -> Result<Option<Value>, QmpError> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut *reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
            return Err(QmpError::Protocol(format!(
                "a line longer than {MAX_LINE} bytes"
            )));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| QmpError::Protocol(format!("not JSON ({e})")));
    }
}

impl Qmp {
    /// Reads QEMU's greeting, spawns the reader task and negotiates capabilities
    /// (`qmp_capabilities`; until then QEMU accepts no other command and sends no event).
    /// Every step, and later every command, gives up after `timeout`. Must run inside a tokio
    /// runtime.
    pub async fn connect(
        stream: UnixStream,
        timeout: Duration,
    ) -> Result<(Qmp, QmpEvents), QmpError> {
        let (r, w) = stream.into_split();
        let mut reader = BufReader::new(r);
        let greeting = tokio::time::timeout(timeout, read_message(&mut reader))
            .await
            .map_err(|_| QmpError::Timeout {
                what: "the greeting".into(),
                after: timeout,
            })??
            .ok_or(QmpError::Closed)?;
        let Some(qmp) = greeting.get("QMP") else {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {greeting}"
            )));
        };
        let v = &qmp["version"]["qemu"];
        let version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);

        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(w),
            pending: Arc::new(Mutex::new(Pending::default())),
            next_id: AtomicU64::new(1),
            version,
        });
        tokio::spawn(read_loop(reader, Arc::clone(&inner.pending), tx));
        let qmp = Qmp { inner, timeout };
        qmp.execute("qmp_capabilities", None).await?;
        Ok((qmp, QmpEvents { rx }))
    }

    /// [`Qmp::connect`] on a std socket, such as [`crate::hypervisor::qemu::Launch::qmp`].
    pub async fn connect_std(
        stream: std::os::unix::net::UnixStream,
        timeout: Duration,
    ) -> Result<(Qmp, QmpEvents), QmpError> {
        stream.set_nonblocking(true)?;
        Qmp::connect(UnixStream::from_std(stream)?, timeout).await
    }

    /// QEMU's version from the greeting, `major.minor.micro`.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The same connection with another command timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Qmp {
        Qmp {
            inner: Arc::clone(&self.inner),
            timeout,
        }
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.pending.lock().expect("not poisoned");
            if p.closed {
                return Err(QmpError::Closed);
            }
            p.waiters.insert(id, tx);
        }
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).expect("a Value always serializes");
        line.push(b'\n');
        let exchange = async {
            self.inner.writer.lock().await.write_all(&line).await?;
            rx.await.map_err(|_| QmpError::Closed)
        };
        let result = tokio::time::timeout(self.timeout, exchange).await;
        // On every early exit (timeout, write error), no reply is awaited any more.
        self.inner
            .pending
            .lock()
            .expect("not poisoned")
            .waiters
            .remove(&id);
        match result {
            Err(_) => Err(QmpError::Timeout {
                what: command.into(),
                after: self.timeout,
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.into(),
                class,
                desc,
            }),
        }
    }

    /// The run state: `running`, `paused`, `prelaunch` (`-S`, not started yet), `shutdown`
    /// (guest powered off with `-no-shutdown`), `guest-panicked`, `internal-error`, ...
    pub async fn query_status(&self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(format!("query-status returned {v}")))
    }

    /// Presses the ACPI power button. Returns once QEMU accepted it, not when the guest acted.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Starts the vCPUs of a VM started with `-S`.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// Ends QEMU at once (the guest gets no say). The connection closing before the reply
    /// counts as success: QEMU may exit before it flushes the answer.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    pending: Arc<Mutex<Pending>>,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let msg = match read_message(&mut reader).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("{e}; closing the QMP connection");
                break;
            }
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            tracing::debug!("QMP event {name}");
            let _ = events.send(Event {
                name: name.to_owned(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            });
            continue;
        }
        let reply = if let Some(v) = msg.get("return") {
            Ok(v.clone())
        } else if let Some(e) = msg.get("error") {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
            Err((s("class"), s("desc")))
        } else {
            tracing::debug!("QMP: ignoring a message that is neither event nor reply");
            continue;
        };
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            // QEMU answers without id only when it could not parse the command at all.
            tracing::warn!("QMP: a reply without id: {msg}");
            continue;
        };
        let waiter = pending.lock().expect("not poisoned").waiters.remove(&id);
        if let Some(w) = waiter {
            let _ = w.send(reply);
        }
    }
    // Waiters see their sender dropped: Closed. New commands fail at once.
    let mut p = pending.lock().expect("not poisoned");
    p.closed = true;
    p.waiters.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A fake QEMU: greets, then answers each command through `answer`, which returns the
    /// lines to send (with `{id}` replaced by the command's id) or None to go silent.
    fn fake(
        peer: UnixStream,
        answer: impl Fn(&str) -> Option<Vec<String>> + Send + 'static,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let (r, mut w) = peer.into_split();
            w.write_all(format!("{GREETING}\r\n").as_bytes())
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_owned();
                let id = v["id"].to_string();
                seen.push(cmd.clone());
                match answer(&cmd) {
                    Some(out) => {
                        for l in out {
                            let l = l.replace("{id}", &id);
                            if w.write_all(format!("{l}\r\n").as_bytes()).await.is_err() {
                                return seen;
                            }
                        }
                    }
                    None if cmd == "close" => return seen,
                    None => {}
                }
            }
            seen
        })
    }

    fn ok() -> Vec<String> {
        vec![r#"{"return": {}, "id": {id}}"#.into()]
    }

    #[tokio::test]
    async fn events_between_a_command_and_its_reply_are_kept() {
        let (a, b) = UnixStream::pair().unwrap();
        let peer = fake(b, |cmd| {
            match cmd {
            "qmp_capabilities" => Some(ok()),
            "query-status" => Some(vec![
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#.into(),
                r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": {id}}"#.into(),
            ]),
            "system_powerdown" => Some(vec![
                r#"{"return": {}, "id": {id}}"#.into(),
                r#"{"event": "POWERDOWN"}"#.into(),
                r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#.into(),
            ]),
            _ => None,
        }
        });
        let (qmp, mut events) = Qmp::connect(a, DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!(qmp.version(), "7.2.22");
        assert_eq!(qmp.query_status().await.unwrap(), "running");
        assert_eq!(events.recv().await.unwrap().kind(), EventKind::Resume);
        qmp.system_powerdown().await.unwrap();
        assert_eq!(events.recv().await.unwrap().kind(), EventKind::Powerdown);
        assert_eq!(
            events.recv().await.unwrap().kind(),
            EventKind::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }
        );
        drop(qmp);
        // Dropping the last handle closes our write side; the peer sees EOF and stops.
        let seen = peer.await.unwrap();
        assert_eq!(
            seen,
            vec!["qmp_capabilities", "query-status", "system_powerdown"]
        );
        assert!(
            events.recv().await.is_none(),
            "events end with the connection"
        );
    }

    #[tokio::test]
    async fn errors_timeouts_and_closing() {
        let (a, b) = UnixStream::pair().unwrap();
        let _peer = fake(b, |cmd| {
            match cmd {
            "qmp_capabilities" => Some(ok()),
            "bogus" => Some(vec![
                r#"{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": {id}}"#.into(),
            ]),
            "quit" => Some(vec![
                r#"{"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#.into(),
            ]),
            _ => None,
        }
        });
        let (qmp, mut events) = Qmp::connect(a, Duration::from_millis(200)).await.unwrap();
        let e = qmp.execute("bogus", None).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "QMP: bogus failed: CommandNotFound: The command bogus has not been found"
        );
        let e = qmp.execute("silent", None).await.unwrap_err();
        assert!(
            matches!(e, QmpError::Timeout { ref what, .. } if what == "silent"),
            "{e}"
        );
        // A late command still works after a timed-out one.
        let e = qmp.execute("bogus", None).await.unwrap_err();
        assert!(matches!(e, QmpError::Command { .. }));
        // quit: the peer sends the event, then closes without a reply, then we see Closed.
        let q = qmp.clone();
        let quit = tokio::spawn(async move { q.with_timeout(DEFAULT_TIMEOUT).quit().await });
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.name, "SHUTDOWN");
        assert_eq!(
            ev.kind(),
            EventKind::Shutdown {
                guest: false,
                reason: "host-qmp-quit".into()
            }
        );
        // The fake does not close on quit; make it close.
        let closer = qmp.with_timeout(Duration::from_millis(500));
        let _ = closer.execute("close", None).await;
        assert!(
            quit.await.unwrap().is_ok(),
            "quit counts a closed connection as done"
        );
        assert!(matches!(qmp.query_status().await, Err(QmpError::Closed)));
        assert!(events.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_at_the_greeting() {
        let (a, _b) = UnixStream::pair().unwrap();
        let e = Qmp::connect(a, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "QMP: the greeting got no answer within 100ms"
        );
    }

    #[tokio::test]
    async fn a_peer_that_is_not_qmp_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_r, mut w) = b.into_split();
        w.write_all(b"{\"hello\": 1}\n").await.unwrap();
        let e = Qmp::connect(a, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, QmpError::Protocol(_)), "{e}");
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = Qmp::connect(a, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, QmpError::Closed), "{e}");
    }
}
