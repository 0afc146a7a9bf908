//! The guest's own sd_notify messages, relayed natively: since systemd 253 a guest sends
//! `READY=1` and `STATUS=` to the address in its `vmm.notify_socket` credential,
//! `vsock-stream:2:PORT`. With cloud-hypervisor's hybrid vsock that connection arrives on the
//! host Unix socket `<vsock socket>_PORT`; with QEMU's kernel vhost-vsock on an AF_VSOCK
//! listener (`crate::vsock`), where only the guest's own CID is heard.
//!
//! One message per connection, closed as soon as it is in: a guest with systemd >= 256 waits
//! for the peer to close each connection, and a relay that lingers stalls its boot by seconds
//! per message (microvm.nix issues #297, #568).
//!
//! The guest is an adversary here (#11): it may connect as often as it likes, send too much or
//! nothing, and hold connections open. Everything it controls is bounded: [`MAX_CONNECTIONS`]
//! read at once (the rest wait in the kernel's backlog), [`MAX_MESSAGE`] bytes and
//! `CONNECTION_DEADLINE` per connection, no queue beyond the connections being read, and
//! rate-limited log lines for what goes wrong.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::sockpath::{self, Probe};
use crate::vsock::{self, VsockError};

/// The longest notification accepted (#11). systemd's own are a few hundred bytes (READY=1 with
/// a STATUS= line); a longer one is read no further than one byte past this, then dropped
/// unparsed with the connection, and reported as a problem.
pub const MAX_MESSAGE: usize = 4096;
/// After the first bytes, how long a connection may stay quiet before what it sent is taken as
/// the whole message. Only senders whose half-close never reaches us wait for it: the guest's
/// systemd >= 256 shuts down its write side after each message (sd-daemon.c,
/// pid_notify_with_fds_internal(): shutdown(SHUT_WR), then recv() until the host closes),
/// and earlier ones close the socket; kernel vhost-vsock and cloud-hypervisor >= 53 pass that on
/// as end of stream, which ends the read at once. cloud-hypervisor <= 52 never passes on the
/// half-close (microvm.nix lib/runners/cloud-hypervisor.nix, PR #297), and waiting for an end
/// that never comes would stall the guest's PID 1 for the full wait on every sd_notify() it
/// makes (microvm.nix #568): so a quiet pause this long ends the message too.
const TAIL_WAIT: Duration = Duration::from_millis(5);
/// The most one connection may take from accept to a complete message: a connection that
/// sends nothing is closed after this, and one still trickling bytes is dropped unparsed.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(1);
/// Guest connections read at once. Further ones wait in the kernel's listen backlog (we stop
/// accepting at the limit, rather than accept and close them): a flood then costs the guest
/// its own connect() calls, not our memory, and a legitimate message queued behind junk is
/// reached in the order it came.
pub const MAX_CONNECTIONS: usize = 8;
/// fds kept free for the supervisor itself while guest connections are open: the API
/// connections for the ACPI power button and the watchdog's ping, above all.
const FD_RESERVE: usize = 8;
/// How long accepting pauses after it failed (doubling per failure up to the maximum): running
/// out of fds (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM) leaves the connection in the
/// backlog and the listener readable, so retrying at once would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Problem reports (dropped connections, accept failures) let through per window; the rest are
/// counted and the count is said with the next report and at exit.
const PROBLEM_BURST: u32 = 10;
const PROBLEM_WINDOW: Duration = Duration::from_secs(60);
/// Distinct stranger CIDs named in a warning of their own; any further ones count as problems.
const MAX_STRANGERS: usize = 64;

/// What a guest said, reduced to what the host acts on. Every field is bounded: free text
/// (`STATUS=`, `ERRNO=`) is sanitized and cut, and the `X_SYSTEMD_*` values are kept only when
/// they pass the rule systemd itself applies to such a value, so a guest cannot put arbitrary
/// text into the log or STATUS through them, nor make them large.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestMessage {
    pub ready: bool,
    pub status: Option<String>,
    pub stopping: bool,
    pub errno: Option<String>,
    /// `EXIT_STATUS=`: systemd-shutdown sends `%i` of its exit code, 0..=255 for `systemctl
    /// exit N` (src/shutdown/shutdown.c, `notify_supervisor()`).
    pub exit_status: Option<u8>,
    /// `X_SYSTEMD_HOSTNAME=` (systemd >= 256, src/shared/hostname-setup.c).
    pub hostname: Option<String>,
    /// `X_SYSTEMD_MACHINE_ID=` (systemd >= 256, src/shared/machine-id-setup.c).
    pub machine_id: Option<String>,
    /// `X_SYSTEMD_UNIT_ACTIVE=` / `X_SYSTEMD_UNIT_INACTIVE=` (systemd >= 256, sent for target
    /// units: `.notify_supervisor = true` in src/core/target.c).
    pub unit_active: Option<String>,
    pub unit_inactive: Option<String>,
    /// `X_SYSTEMD_SHUTDOWN=` (systemd >= 256, src/shutdown/shutdown.c).
    pub shutdown: Option<ShutdownKind>,
    /// Any `X_SYSTEMD_*` key, valid value or not: the sender is systemd 256 or later.
    pub x_systemd: bool,
    /// Keys whose value failed its rule, for a debug line (at most one entry per key).
    pub rejected: Vec<&'static str>,
}

/// The kinds systemd-shutdown names in `X_SYSTEMD_SHUTDOWN=` (its verbs, src/shutdown/shutdown.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    Poweroff,
    Halt,
    Reboot,
    Kexec,
}

impl ShutdownKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "poweroff" => Self::Poweroff,
            "halt" => Self::Halt,
            "reboot" => Self::Reboot,
            "kexec" => Self::Kexec,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::Halt => "halt",
            Self::Reboot => "reboot",
            Self::Kexec => "kexec",
        }
    }
}

/// Parses one notify datagram's worth of `KEY=VALUE` lines (sd_notify(3)). Unknown keys and
/// malformed lines are ignored, as systemd does.
pub fn parse(bytes: &[u8]) -> GuestMessage {
    let mut m = GuestMessage::default();
    let text = String::from_utf8_lossy(bytes);
    fn reject(m: &mut GuestMessage, key: &'static str) {
        if !m.rejected.contains(&key) {
            m.rejected.push(key);
        }
    }
    for line in text.split('\n') {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.starts_with("X_SYSTEMD_") {
            m.x_systemd = true;
        }
        match key {
            "READY" => m.ready |= value == "1",
            "STATUS" => m.status = Some(sanitize(value)),
            "STOPPING" => m.stopping |= value == "1",
            "ERRNO" => m.errno = Some(sanitize(value)),
            "EXIT_STATUS" => match value.parse::<u8>() {
                Ok(n) => m.exit_status = Some(n),
                Err(_) => reject(&mut m, "EXIT_STATUS"),
            },
            "X_SYSTEMD_HOSTNAME" if hostname_is_valid(value) => {
                m.hostname = Some(value.to_owned());
            }
            "X_SYSTEMD_HOSTNAME" => reject(&mut m, "X_SYSTEMD_HOSTNAME"),
            "X_SYSTEMD_MACHINE_ID" if machine_id_is_valid(value) => {
                m.machine_id = Some(value.to_owned());
            }
            "X_SYSTEMD_MACHINE_ID" => reject(&mut m, "X_SYSTEMD_MACHINE_ID"),
            "X_SYSTEMD_UNIT_ACTIVE" if unit_name_is_valid(value) => {
                m.unit_active = Some(value.to_owned());
            }
            "X_SYSTEMD_UNIT_ACTIVE" => reject(&mut m, "X_SYSTEMD_UNIT_ACTIVE"),
            "X_SYSTEMD_UNIT_INACTIVE" if unit_name_is_valid(value) => {
                m.unit_inactive = Some(value.to_owned());
            }
            "X_SYSTEMD_UNIT_INACTIVE" => reject(&mut m, "X_SYSTEMD_UNIT_INACTIVE"),
            "X_SYSTEMD_SHUTDOWN" => match ShutdownKind::parse(value) {
                Some(k) => m.shutdown = Some(k),
                None => reject(&mut m, "X_SYSTEMD_SHUTDOWN"),
            },
            _ => {}
        }
    }
    m
}

/// systemd's `hostname_is_valid()` without flags but `VALID_HOSTNAME_TRAILING_DOT`, as PID 1
/// applies it to the name it then announces (src/basic/hostname-util.c): letters, digits and
/// hyphens in dot-separated labels, no empty label, no hyphen at a label's start or end, a
/// trailing dot only after at least two labels, at most 64 bytes (Linux's HOST_NAME_MAX).
pub fn hostname_is_valid(s: &str) -> bool {
    const HOST_NAME_MAX: usize = 64;
    if s.is_empty() || s.len() > HOST_NAME_MAX {
        return false;
    }
    let (body, trailing_dot) = match s.strip_suffix('.') {
        Some(b) => (b, true),
        None => (s, false),
    };
    let labels: Vec<&str> = body.split('.').collect();
    if trailing_dot && labels.len() < 2 {
        return false;
    }
    labels.iter().all(|l| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// 32 lowercase hex digits: `SD_ID128_FORMAT_STR` as src/shared/machine-id-setup.c formats it.
pub fn machine_id_is_valid(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// systemd's `unit_name_is_valid()` for a plain or instance name (src/basic/unit-name.c): below
/// UNIT_NAME_MAX (256) bytes, a prefix and optional `@instance` of `VALID_CHARS` (letters,
/// digits, `:-_.\\`), and a known unit type suffix. Only targets are announced, but any type
/// is accepted as systemd would.
pub fn unit_name_is_valid(s: &str) -> bool {
    const UNIT_NAME_MAX: usize = 256;
    const SUFFIXES: [&str; 11] = [
        "service",
        "mount",
        "swap",
        "socket",
        "target",
        "device",
        "automount",
        "timer",
        "path",
        "slice",
        "scope",
    ];
    if s.is_empty() || s.len() >= UNIT_NAME_MAX {
        return false;
    }
    let Some((name, suffix)) = s.rsplit_once('.') else {
        return false;
    };
    if !SUFFIXES.contains(&suffix) {
        return false;
    }
    let valid = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'\\'))
    };
    match name.split_once('@') {
        // A template (`getty@.target`) is never active, so an instance needs its instance part.
        Some((prefix, instance)) => {
            !prefix.is_empty() && !instance.is_empty() && valid(prefix) && valid(instance)
        }
        None => !name.is_empty() && valid(name),
    }
}

/// The guest is not trusted: its text is shown in `systemctl status` and the journal, so
/// control characters go and the length is bounded.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|&c| !c.is_control() && !is_format_or_separator(c))
        .take(200)
        .collect()
}

/// Unicode's format characters (general category Cf: bidirectional controls, zero-width and
/// invisible characters, tags) and the line and paragraph separators (Zl U+2028, Zp U+2029,
/// #11): they could make a guest's text break lines or read differently in a terminal or the
/// journal than it is. The Cf list is Unicode 16's, written out rather than taken from a crate
/// because it is short and changes rarely; an unlisted future Cf character is at worst shown.
fn is_format_or_separator(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061c}'
            | '\u{06dd}'
            | '\u{070f}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

/// The port in a `vmm.notify_socket` value, if it is one credbridge can relay.
pub fn port_of(value: &str) -> Option<u32> {
    let rest = value.strip_prefix("vsock-stream:2:")?;
    rest.parse().ok()
}

/// Where the guest's notifications arrive, as the plan decided.
pub enum GuestNotifyPlan {
    /// cloud-hypervisor's hybrid vsock: a guest connection to host CID 2, port PORT, arrives
    /// on the Unix socket `listen_path`, `<vsock socket>_PORT`.
    Hybrid { listen_path: PathBuf },
    /// QEMU's kernel vhost-vsock: an AF_VSOCK listener on the host, read only for connections
    /// from `cid`. `port: None`: the kernel picks a free one at start, and
    /// [`crate::plan::Plan::set_notify_port`] writes it into credbridge's `vmm.notify_socket`
    /// string.
    Vhost { cid: u32, port: Option<u32> },
}

#[derive(Debug, thiserror::Error)]
pub enum GuestNotifyError {
    #[error("cannot listen for guest notifications on {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("{} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket { path: PathBuf },
    #[error(transparent)]
    Vsock(#[from] VsockError),
}

/// Where the guest's notifications arrive, while credbridge relays them.
pub enum Relay {
    /// cloud-hypervisor's hybrid vsock: removed from disk when dropped.
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
    /// QEMU's kernel vhost-vsock.
    Vsock(vsock::Listener),
}

pub enum Bound {
    Relay(Relay),
    /// Someone else (microvm.nix's socat relay) already serves the Unix socket.
    Foreign(PathBuf),
}

/// A connection that reached the relay.
pub enum Accepted {
    Guest(Box<dyn AsyncRead + Unpin + Send>),
    /// From another vsock CID: another VM on the host, or the host itself. Closed unread.
    Stranger {
        cid: u32,
    },
}

impl Relay {
    /// Binds the listener the plan names. Needs a tokio runtime.
    pub fn bind(plan: &GuestNotifyPlan) -> Result<Bound, GuestNotifyError> {
        match plan {
            GuestNotifyPlan::Hybrid { listen_path } => Self::bind_unix(listen_path),
            GuestNotifyPlan::Vhost { cid, port } => {
                // Without the device no guest can connect; say so rather than wait for nothing.
                if !vsock::host_has_vhost() {
                    return Err(VsockError::NoDevice.into());
                }
                Ok(Bound::Relay(Relay::Vsock(vsock::Listener::bind(
                    *port, *cid,
                )?)))
            }
        }
    }

    /// The vsock port when the kernel has just picked it.
    pub fn port(&self) -> Option<u32> {
        match self {
            Relay::Unix { .. } => None,
            Relay::Vsock(l) => Some(l.port()),
        }
    }

    /// For the log: where the relay listens.
    pub fn describe(&self) -> String {
        match self {
            Relay::Unix { path, .. } => path.display().to_string(),
            Relay::Vsock(l) => format!(
                "vsock port {}, from guest CID {} only",
                l.port(),
                l.guest_cid()
            ),
        }
    }

    pub async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Relay::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok(Accepted::Guest(Box::new(stream)))
            }
            Relay::Vsock(l) => {
                let (stream, cid) = l.accept().await?;
                Ok(if l.is_guest(cid) {
                    Accepted::Guest(Box::new(stream))
                } else {
                    Accepted::Stranger { cid }
                })
            }
        }
    }

    /// Binds `<vsock socket>_PORT`, replacing a stale socket but never a live one, nor one
    /// whose state the probe cannot tell. Mode 0600 from the start (`sockpath::bind_listen`):
    /// only the hypervisor, which runs as our user, connects.
    fn bind_unix(path: &Path) -> Result<Bound, GuestNotifyError> {
        let bind_err = |source| GuestNotifyError::Bind {
            path: path.to_owned(),
            source,
        };
        match sockpath::probe(path).map_err(bind_err)? {
            Probe::NotASocket => {
                return Err(GuestNotifyError::NotASocket {
                    path: path.to_owned(),
                });
            }
            Probe::Live => return Ok(Bound::Foreign(path.to_owned())),
            Probe::Stale => std::fs::remove_file(path).map_err(bind_err)?,
            Probe::Absent => {}
        }
        let fd = sockpath::bind_listen(path, 0o600).map_err(bind_err)?;
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = UnixListener::from_std(std_listener).map_err(bind_err)?;
        Ok(Bound::Relay(Relay::Unix {
            listener,
            path: path.to_owned(),
        }))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Relay::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Why a guest connection carried no message the host acts on.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("a guest notification longer than {MAX_MESSAGE} bytes was dropped unread")]
    TooLong,
    #[error(
        "a guest notification connection sent nothing within {CONNECTION_DEADLINE:?} and was closed"
    )]
    Silent,
    #[error(
        "a guest notification was still arriving after {CONNECTION_DEADLINE:?} and was dropped"
    )]
    TooSlow,
    #[error("reading a guest notification failed: {0}")]
    Io(io::Error),
}

/// Reads one message, to the end of the stream or a quiet `TAIL_WAIT` after its last bytes,
/// within `CONNECTION_DEADLINE` and [`MAX_MESSAGE`]. The caller closes the connection by
/// dropping it, which is what the guest's systemd waits for.
pub async fn read_one<S: AsyncRead + Unpin>(mut stream: S) -> Result<Vec<u8>, ReadError> {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    // One byte more than the limit tells a message at the limit from a longer one.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut len = 0;
    loop {
        let until = if len == 0 {
            deadline
        } else {
            (Instant::now() + TAIL_WAIT).min(deadline)
        };
        match tokio::time::timeout_at(until, stream.read(&mut buf[len..])).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                len += n;
                if len > MAX_MESSAGE {
                    return Err(ReadError::TooLong);
                }
            }
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Err(_) if len == 0 => return Err(ReadError::Silent),
            Err(_) if until == deadline => return Err(ReadError::TooSlow),
            Err(_) => break,
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// A rate limit for log lines: at most `burst` per `window`; the rest are counted.
#[derive(Debug)]
pub struct LogLimit {
    burst: u32,
    window: Duration,
    started: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(burst: u32, window: Duration) -> LogLimit {
        LogLimit {
            burst,
            window,
            started: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now; if so, also how many were suppressed before it.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .started
            .is_none_or(|s| now.duration_since(s) >= self.window)
        {
            self.started = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Lines suppressed since the last one let through; the count starts again.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// The relay at work: accepts guest connections up to a limit, reads each on its own task, and
/// hands the supervisor one parsed message at a time. Nothing the guest sends is queued beyond
/// the connections being read: at most `limit` buffers of [`MAX_MESSAGE`] bytes (#11).
pub struct Inbox {
    relay: Relay,
    reading: JoinSet<Result<Vec<u8>, ReadError>>,
    limit: usize,
    paused_until: Option<Instant>,
    pause: Duration,
    /// Accept failures since the last success; only the first of a run is logged.
    failing: u64,
    problems: LogLimit,
    strangers: HashSet<u32>,
}

impl Inbox {
    /// Starts relaying. The connection limit is [`MAX_CONNECTIONS`], lowered when the fd limit
    /// (`LimitNOFILE=`) would not leave `FD_RESERVE` fds free beside it; so call this once
    /// the supervisor's own fds are open.
    pub fn new(relay: Relay) -> Inbox {
        let limit = match crate::sys::fd_headroom() {
            Ok(free) => {
                let limit = connection_limit(free);
                if limit < MAX_CONNECTIONS {
                    tracing::warn!(
                        "only {free} more fds may be opened (LimitNOFILE=), so the guest's notifications are read {limit} connection{} at a time instead of {MAX_CONNECTIONS}",
                        if limit == 1 { "" } else { "s" }
                    );
                }
                limit
            }
            Err(e) => {
                tracing::debug!("cannot count free fds ({e}); assuming enough");
                MAX_CONNECTIONS
            }
        };
        Inbox {
            relay,
            reading: JoinSet::new(),
            limit,
            paused_until: None,
            pause: ACCEPT_PAUSE,
            failing: 0,
            problems: LogLimit::new(PROBLEM_BURST, PROBLEM_WINDOW),
            strangers: HashSet::new(),
        }
    }

    /// The next message from the guest that says anything. Cancel safe: all state is in
    /// `self`, and every await in it is a cancel-safe accept, sleep or join.
    pub async fn next(&mut self) -> GuestMessage {
        loop {
            let may_accept = self.paused_until.is_none() && self.reading.len() < self.limit;
            tokio::select! {
                conn = self.relay.accept(), if may_accept => self.on_accept(conn),
                _ = crate::select::sleep_until(self.paused_until), if self.paused_until.is_some() => {
                    self.paused_until = None;
                }
                Some(done) = self.reading.join_next() => match done {
                    Ok(Ok(bytes)) => {
                        let m = parse(&bytes);
                        if m != GuestMessage::default() {
                            return m;
                        }
                    }
                    Ok(Err(e)) => self.problem(format_args!("{e}")),
                    Err(e) => self.problem(format_args!("a guest notification reader failed: {e}")),
                },
            }
        }
    }

    fn on_accept(&mut self, conn: io::Result<Accepted>) {
        match conn {
            Ok(Accepted::Guest(stream)) => {
                if self.failing > 0 {
                    tracing::info!(
                        "accepting the guest's notifications again, after {} failed attempt{}",
                        self.failing,
                        if self.failing == 1 { "" } else { "s" }
                    );
                    self.failing = 0;
                }
                self.pause = ACCEPT_PAUSE;
                // Each connection is read on its own task, so a slow or silent one never holds
                // up the others or the supervisor.
                self.reading.spawn(read_one(stream));
            }
            Ok(Accepted::Stranger { cid }) => {
                if self.strangers.len() < MAX_STRANGERS && self.strangers.insert(cid) {
                    tracing::warn!(
                        "ignored a notification connection from vsock CID {cid}; only the guest's CID may send (further ones from CID {cid} are logged at debug level)"
                    );
                } else if self.strangers.contains(&cid) {
                    tracing::debug!("ignored a notification connection from vsock CID {cid}");
                } else {
                    self.problem(format_args!(
                        "ignored a notification connection from vsock CID {cid}"
                    ));
                }
            }
            Err(e) => {
                let scarce = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if self.failing == 0 {
                    tracing::warn!(
                        "accepting a guest notification connection failed: {e}{}; retrying with pauses of up to {ACCEPT_PAUSE_MAX:?}, and said again only once it works",
                        if scarce {
                            " (out of fds or memory: raise LimitNOFILE=, or look for what holds them)"
                        } else {
                            ""
                        }
                    );
                }
                self.failing += 1;
                self.paused_until = Some(Instant::now() + self.pause);
                self.pause = (self.pause * 2).min(ACCEPT_PAUSE_MAX);
            }
        }
    }

    fn problem(&mut self, what: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.problems.admit(Instant::now()) {
            if suppressed > 0 {
                tracing::warn!("{suppressed} further guest notification problems suppressed");
            }
            tracing::warn!("{what}");
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let suppressed = self.problems.take_suppressed();
        if suppressed > 0 {
            tracing::warn!("{suppressed} further guest notification problems suppressed");
        }
    }
}

/// Guest connections read at once, given `free` fds: [`MAX_CONNECTIONS`] while that leaves
/// `FD_RESERVE` free, fewer when not, and always one, or the guest could never be heard.
fn connection_limit(free: usize) -> usize {
    free.saturating_sub(FD_RESERVE).clamp(1, MAX_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_the_host_acts_on() {
        let m = parse(b"READY=1\nSTATUS=Reached target multi-user\nX=y\nnoequals\n");
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("Reached target multi-user"));
        let m = parse(b"STOPPING=1\nERRNO=5\nEXIT_STATUS=3");
        assert!(m.stopping && !m.ready);
        assert_eq!(m.errno.as_deref(), Some("5"));
        assert_eq!(m.exit_status, Some(3));
        assert!(!parse(b"READY=0").ready);
        assert_eq!(parse(b"").status, None);
    }

    // #14: the messages PID 1 of systemd >= 256 sends to its supervisor, each as its source
    // writes it.
    #[test]
    fn parses_the_x_systemd_fields() {
        // src/shared/machine-id-setup.c: "X_SYSTEMD_MACHINE_ID=" SD_ID128_FORMAT_STR
        let m = parse(b"X_SYSTEMD_MACHINE_ID=bc7b125b9d8d47ffab31cefb22679654");
        assert_eq!(
            m.machine_id.as_deref(),
            Some("bc7b125b9d8d47ffab31cefb22679654")
        );
        assert!(m.x_systemd && !m.ready);
        // src/shared/hostname-setup.c: "X_SYSTEMD_HOSTNAME=%s"
        assert_eq!(
            parse(b"X_SYSTEMD_HOSTNAME=vm1").hostname.as_deref(),
            Some("vm1")
        );
        // src/core/target.c (.notify_supervisor) via src/core/unit.c
        let m = parse(b"X_SYSTEMD_UNIT_ACTIVE=multi-user.target");
        assert_eq!(m.unit_active.as_deref(), Some("multi-user.target"));
        let m = parse(b"X_SYSTEMD_UNIT_INACTIVE=multi-user.target");
        assert_eq!(m.unit_inactive.as_deref(), Some("multi-user.target"));
        // src/shutdown/shutdown.c, notify_supervisor(): "EXIT_STATUS=%i\nX_SYSTEMD_SHUTDOWN=%s"
        let m = parse(b"EXIT_STATUS=3\nX_SYSTEMD_SHUTDOWN=poweroff");
        assert_eq!(
            (m.exit_status, m.shutdown),
            (Some(3), Some(ShutdownKind::Poweroff))
        );
        let m = parse(b"EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=reboot\nX_SYSTEMD_REBOOT_PARAMETER=x");
        assert_eq!(m.shutdown, Some(ShutdownKind::Reboot));
        for (v, k) in [("halt", ShutdownKind::Halt), ("kexec", ShutdownKind::Kexec)] {
            assert_eq!(
                parse(format!("X_SYSTEMD_SHUTDOWN={v}").as_bytes()).shutdown,
                Some(k)
            );
        }
        // Any X_SYSTEMD_* field proves systemd >= 256, also one credbridge does not use.
        assert!(parse(b"X_SYSTEMD_SIGNALS_LEVEL=2").x_systemd);
        assert!(!parse(b"READY=1\nSTATUS=Ready.").x_systemd);
    }

    /// #14: a guest cannot put arbitrary text or unbounded data into the new fields.
    #[test]
    fn x_systemd_values_that_break_systemds_rules_are_dropped() {
        for bad in [
            "X_SYSTEMD_HOSTNAME=",
            "X_SYSTEMD_HOSTNAME=a b",
            "X_SYSTEMD_HOSTNAME=-a",
            "X_SYSTEMD_HOSTNAME=a..b",
            "X_SYSTEMD_HOSTNAME=.a",
            "X_SYSTEMD_HOSTNAME=a.",
            "X_SYSTEMD_HOSTNAME=a\x1b[31m",
            "X_SYSTEMD_MACHINE_ID=BC7B125B9D8D47FFAB31CEFB22679654",
            "X_SYSTEMD_MACHINE_ID=bc7b125b9d8d47ffab31cefb2267965",
            "X_SYSTEMD_UNIT_ACTIVE=multi-user",
            "X_SYSTEMD_UNIT_ACTIVE=multi user.target",
            "X_SYSTEMD_UNIT_ACTIVE=getty@.target",
            "X_SYSTEMD_UNIT_ACTIVE=.target",
            "X_SYSTEMD_UNIT_ACTIVE=a.exe",
            "X_SYSTEMD_UNIT_INACTIVE=\u{202e}x.target",
            "X_SYSTEMD_SHUTDOWN=suspend",
            "EXIT_STATUS=256",
            "EXIT_STATUS=-1",
        ] {
            let m = parse(bad.as_bytes());
            let clean = GuestMessage {
                x_systemd: m.x_systemd,
                rejected: m.rejected.clone(),
                ..GuestMessage::default()
            };
            assert_eq!(m, clean, "{bad:?} must be dropped");
            assert_eq!(m.rejected.len(), 1, "{bad:?}");
        }
        // The limits themselves: 64 bytes of hostname and 255 of unit name are fine.
        let h = format!("{}.{}", "a".repeat(32), "b".repeat(31));
        assert!(hostname_is_valid(&h) && !hostname_is_valid(&format!("{h}c")));
        assert!(hostname_is_valid("vm1.example.") && !hostname_is_valid("vm1."));
        let u = format!("{}.target", "a".repeat(248));
        assert!(unit_name_is_valid(&u) && !unit_name_is_valid(&format!("a{u}")));
        assert!(unit_name_is_valid("getty@tty1.target") && unit_name_is_valid("a\\x2d.target"));
        // A flood of rejected keys still leaves one entry per key.
        let flood = "X_SYSTEMD_HOSTNAME=-\n".repeat(1000);
        assert_eq!(parse(flood.as_bytes()).rejected, vec!["X_SYSTEMD_HOSTNAME"]);
    }

    #[test]
    fn guest_text_is_sanitized() {
        let m = parse(b"STATUS=a\x1b[31mb\rc");
        assert_eq!(m.status.as_deref(), Some("a[31mbc"));
        let long = format!("STATUS={}", "x".repeat(1000));
        assert_eq!(parse(long.as_bytes()).status.unwrap().len(), 200);
        let m = parse("STATUS=a\u{202e}b\u{200b}c".as_bytes());
        assert_eq!(m.status.as_deref(), Some("abc"));
        let m = parse(b"STATUS=\xff\xfe ok");
        assert!(m.status.unwrap().ends_with(" ok"));
    }

    #[test]
    fn line_separators_and_format_characters_are_dropped_from_guest_text_11() {
        // U+2028/U+2029 start a new line in the journal and in terminals that honour them.
        let m = parse("STATUS=a\u{2028}b\u{2029}c".as_bytes());
        assert_eq!(m.status.as_deref(), Some("abc"));
        // Isolates, a soft hyphen, a tag character, Arabic number sign, an interlinear anchor.
        let m = parse("STATUS=x\u{2066}y\u{2069}z\u{ad}\u{e0041}\u{600}\u{fff9}!".as_bytes());
        assert_eq!(m.status.as_deref(), Some("xyz!"));
        let m = parse("ERRNO=5\u{2028}\nEXIT_STATUS=\u{85}3".as_bytes());
        assert_eq!(m.errno.as_deref(), Some("5"));
        // Since #14 EXIT_STATUS= is a number 0..=255 (systemd-shutdown's "%i"), so a control
        // character makes it invalid rather than sanitized.
        assert_eq!(m.exit_status, None);
        assert_eq!(m.rejected, ["EXIT_STATUS"]);
        // Ordinary text outside ASCII stays.
        let m = parse("STATUS=Démarrage – 启动 ✓".as_bytes());
        assert_eq!(m.status.as_deref(), Some("Démarrage – 启动 ✓"));
    }

    /// A connected pair: the guest's end and ours.
    fn pair() -> (std::os::unix::net::UnixStream, tokio::net::UnixStream) {
        let (guest, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (guest, tokio::net::UnixStream::from_std(ours).unwrap())
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_half_closed_message_is_read_at_end_of_stream_without_a_wait_11() {
        use std::io::Write;
        let (mut guest, ours) = pair();
        guest.write_all(b"READY=1\nSTATUS=up").unwrap();
        guest.shutdown(std::net::Shutdown::Write).unwrap();
        // The clock is paused: any timer that fired would show as elapsed time.
        let t = Instant::now();
        assert_eq!(read_one(ours).await.unwrap(), b"READY=1\nSTATUS=up");
        assert_eq!(t.elapsed(), Duration::ZERO);

        // A sender whose half-close never reaches us (cloud-hypervisor <= 52): the message ends
        // after a quiet TAIL_WAIT.
        let (mut guest, ours) = pair();
        guest.write_all(b"READY=1").unwrap();
        let t = Instant::now();
        assert_eq!(read_one(ours).await.unwrap(), b"READY=1");
        assert_eq!(t.elapsed(), TAIL_WAIT);
        drop(guest);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn messages_are_bounded_in_size_and_time_11() {
        use std::io::Write;
        let at_limit = vec![b'x'; MAX_MESSAGE];
        let (mut guest, ours) = pair();
        guest.write_all(&at_limit).unwrap();
        guest.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_one(ours).await.unwrap().len(), MAX_MESSAGE);

        // One byte more is dropped, read no further than the limit and one byte: the guest's
        // side still holds what was never read.
        let (mut guest, ours) = pair();
        guest.set_nonblocking(true).unwrap();
        let big = vec![b'x'; 64 * 1024];
        let written = guest.write(&big).unwrap();
        assert!(written > MAX_MESSAGE + 1, "{written}");
        assert!(matches!(read_one(ours).await, Err(ReadError::TooLong)));

        // Nothing at all: closed at the deadline.
        let (guest, ours) = pair();
        let t = Instant::now();
        assert!(matches!(read_one(ours).await, Err(ReadError::Silent)));
        assert_eq!(t.elapsed(), CONNECTION_DEADLINE);
        drop(guest);

        // A trickle that never pauses for TAIL_WAIT: dropped at the deadline.
        let (guest, ours) = pair();
        let trickle = tokio::spawn(async move {
            let mut guest = guest;
            loop {
                if guest.write_all(b"x").is_err() {
                    break;
                }
                tokio::time::sleep(TAIL_WAIT / 2).await;
            }
        });
        let t = Instant::now();
        assert!(matches!(read_one(ours).await, Err(ReadError::TooSlow)));
        assert_eq!(t.elapsed(), CONNECTION_DEADLINE);
        trickle.abort();
    }

    #[test]
    fn log_limit_lets_a_burst_through_and_counts_the_rest_11() {
        let mut l = LogLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.admit(t0 + Duration::from_secs(59)), None);
        }
        // The next window: the first line carries the count of those dropped.
        assert_eq!(l.admit(t0 + Duration::from_secs(60)), Some(1000));
        assert_eq!(l.admit(t0 + Duration::from_secs(60)), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_secs(60)), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_secs(61)), None);
        assert_eq!(l.take_suppressed(), 1);
        assert_eq!(l.take_suppressed(), 0);
    }

    #[test]
    fn the_connection_limit_leaves_fds_for_the_supervisor_11() {
        assert_eq!(connection_limit(10_000), MAX_CONNECTIONS);
        assert_eq!(
            connection_limit(FD_RESERVE + MAX_CONNECTIONS),
            MAX_CONNECTIONS
        );
        assert_eq!(connection_limit(FD_RESERVE + 3), 3);
        assert_eq!(
            connection_limit(FD_RESERVE),
            1,
            "the guest can still be heard"
        );
        assert_eq!(connection_limit(0), 1);
        let free = crate::sys::fd_headroom().unwrap();
        assert!(free > 0 && free < 1 << 31, "{free}");
    }

    #[test]
    fn ports() {
        assert_eq!(port_of("vsock-stream:2:8888"), Some(8888));
        assert_eq!(port_of("vsock:2:8888"), None);
        assert_eq!(port_of("vsock-stream:3:8888"), None);
        assert_eq!(port_of("vsock-stream:2:x"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_one_message_and_closes_without_waiting_for_eof() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify.vsock_8888");
        let plan = GuestNotifyPlan::Hybrid {
            listen_path: p.clone(),
        };
        let Bound::Relay(relay) = Relay::bind(&plan).unwrap() else {
            panic!("fresh path")
        };
        assert_eq!(relay.port(), None);
        let mut guest = std::os::unix::net::UnixStream::connect(&p).unwrap();
        use std::io::{Read, Write};
        guest.write_all(b"READY=1").unwrap();
        let Accepted::Guest(conn) = relay.accept().await.unwrap() else {
            panic!("a Unix connection is the guest's")
        };
        let t = std::time::Instant::now();
        let msg = read_one(conn).await.unwrap();
        assert_eq!(msg, b"READY=1");
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        // The guest sees the close although it never shut down its write side.
        let mut rest = Vec::new();
        guest
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(guest.read_to_end(&mut rest).unwrap(), 0);
        drop(relay);
        assert!(!p.exists(), "the socket goes with the relay");
    }

    /// #11: the relay socket is never on disk with the umask's mode, not even for a moment.
    /// Sets the process umask to 0 (nextest runs each test in its own process).
    #[test]
    fn the_relay_socket_is_never_wider_than_0600() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n_8888");
        let stop = Arc::new(AtomicBool::new(false));
        let wider = Arc::new(Mutex::new(Vec::new()));
        let watcher = {
            let (p, stop, wider) = (p.clone(), stop.clone(), wider.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::symlink_metadata(&p) {
                        let mode = m.permissions().mode() & 0o777;
                        if mode != 0o600 {
                            wider.lock().unwrap().push(mode);
                        }
                    }
                }
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let plan = GuestNotifyPlan::Hybrid {
            listen_path: p.clone(),
        };
        rt.block_on(async {
            for _ in 0..300 {
                let Bound::Relay(relay) = Relay::bind(&plan).unwrap() else {
                    panic!("fresh path")
                };
                drop(relay);
            }
        });
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        let wider = wider.lock().unwrap();
        assert!(
            wider.is_empty(),
            "modes seen: {:?}",
            &wider[..wider.len().min(5)]
        );
    }

    #[test]
    fn a_live_listener_is_left_alone_and_a_stale_one_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n_8888");
        let live = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(Relay::bind_unix(&p), Ok(Bound::Foreign(_))));
            drop(live);
            assert!(matches!(Relay::bind_unix(&p), Ok(Bound::Relay(..))));
        });
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            Relay::bind_unix(&f),
            Err(GuestNotifyError::NotASocket { .. })
        ));
    }
}
