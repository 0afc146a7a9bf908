//! The black-box test rig: the real credbridge binary, the fake cloud-hypervisor, a notify
//! socket the test owns, and credentials made by `systemd-creds encrypt` + `decrypt`.
#![allow(dead_code)]

pub mod guest;

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn credbridge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_credbridge"))
}

/// The fake is a workspace member, so `cargo test`/`nextest` of the workspace builds it next to
/// credbridge. Built here if a narrower command left it out.
pub fn fake_bin() -> PathBuf {
    let dir = credbridge_bin().parent().unwrap().to_owned();
    let fake = dir.join("fake-cloud-hypervisor");
    if !fake.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "fake-cloud-hypervisor"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build -p fake-cloud-hypervisor");
        assert!(st.success(), "building the fake cloud-hypervisor failed");
    }
    fake
}

pub enum NotifyAddr {
    Path(PathBuf),
    Abstract(String),
}

/// A notify socket owned by the test, collecting every datagram with its arrival time.
pub struct Notify {
    pub env_value: OsString,
    rx: mpsc::Receiver<(Instant, String)>,
    pub seen: Vec<(Instant, String)>,
}

impl Notify {
    pub fn new(addr: NotifyAddr) -> Notify {
        let (sock, env_value) = match addr {
            NotifyAddr::Path(p) => (UnixDatagram::bind(&p).unwrap(), p.into_os_string()),
            NotifyAddr::Abstract(name) => (
                UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                    .unwrap(),
                OsString::from(format!("@{name}")),
            ),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), msg)).is_err() {
                    break;
                }
            }
        });
        Notify {
            env_value,
            rx,
            seen: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
    }

    /// Waits for a message containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some((_, m)) = self.seen.iter().find(|(_, m)| m.contains(needle)) {
                return Some(m.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if let Ok(m) = self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                self.seen.push(m);
            }
        }
    }

    pub fn messages(&mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(50));
        self.drain();
        self.seen.iter().map(|(_, m)| m.clone()).collect()
    }

    /// Index of the first message containing `needle`.
    pub fn index_of(&mut self, needle: &str) -> Option<usize> {
        self.messages().iter().position(|m| m.contains(needle))
    }
}

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub creds: PathBuf,
    pub record: PathBuf,
    pub notify: Notify,
    secret_key: PathBuf,
    /// Every credential value the test created, for leak sweeps.
    pub secrets: Vec<Vec<u8>>,
}

impl Rig {
    pub fn new() -> Rig {
        Self::with_notify(|dir| NotifyAddr::Path(dir.join("notify")))
    }

    pub fn with_notify(addr: impl FnOnce(&Path) -> NotifyAddr) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        let record = dir.path().join("record");
        std::fs::create_dir(&creds).unwrap();
        std::fs::create_dir(&record).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::create_dir(dir.path().join("encrypted")).unwrap();
        // Named like the real binary, so credbridge recognises it by file name.
        std::os::unix::fs::symlink(fake_bin(), dir.path().join("bin/cloud-hypervisor")).unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"not really a kernel").unwrap();
        let notify = Notify::new(addr(dir.path()));
        Rig {
            secret_key: dir.path().join("credential.secret"),
            dir,
            creds,
            record,
            notify,
            secrets: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn ch(&self) -> PathBuf {
        self.path("bin/cloud-hypervisor")
    }

    pub fn kernel(&self) -> String {
        self.path("vmlinux").to_string_lossy().into_owned()
    }

    /// A credential as systemd would hand it over: encrypted with a host key, then decrypted
    /// into the credentials directory (as PID 1 does for LoadCredentialEncrypted=).
    pub fn add_credential(&mut self, name: &str, value: &[u8]) {
        let plain = self.path(&format!("encrypted/{name}.plain"));
        let blob = self.path(&format!("encrypted/{name}.cred"));
        std::fs::write(&plain, value).unwrap();
        let run = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("systemd-creds")
                .args(args)
                .env("SYSTEMD_CREDENTIAL_SECRET", &self.secret_key)
                .output()
                .expect("systemd-creds is installed");
            assert!(
                out.status.success(),
                "systemd-creds failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let name_arg = OsString::from(format!("--name={name}"));
        run(&[
            "encrypt".as_ref(),
            "--with-key=host".as_ref(),
            &name_arg,
            plain.as_os_str(),
            blob.as_os_str(),
        ]);
        std::fs::remove_file(&plain).unwrap();
        run(&[
            "decrypt".as_ref(),
            &name_arg,
            blob.as_os_str(),
            self.creds.join(name).as_os_str(),
        ]);
        assert_eq!(std::fs::read(self.creds.join(name)).unwrap(), value);
        self.secrets.push(value.to_vec());
    }

    /// `credbridge <sub> <flags> -- <cloud-hypervisor> <ch_args>` with the rig's environment.
    pub fn command(&self, sub: &str, flags: &[&str], ch_args: &[&str]) -> Command {
        let mut c = Command::new(credbridge_bin());
        c.arg(sub)
            .args(flags)
            .arg("--")
            .arg(self.ch())
            .args(ch_args)
            .current_dir(self.dir.path())
            .env("CREDENTIALS_DIRECTORY", &self.creds)
            .env("NOTIFY_SOCKET", &self.notify.env_value)
            .env("FAKE_CH_RECORD_DIR", &self.record)
            .env("RUNTIME_DIRECTORY", self.dir.path())
            .env_remove("JOURNAL_STREAM")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `inner` started the way a runner script starts it: `sh -c SCRIPT` prepares fds or
    /// background children, then `exec "$@"` becomes credbridge (microvm.nix's `microvm-run`).
    pub fn through_shell(&self, script: &str, inner: &Command) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// A typical VM command line for the fake.
    pub fn vm_args(&self) -> Vec<String> {
        vec![
            "--kernel".into(),
            self.kernel(),
            "--cmdline".into(),
            "console=ttyS0".into(),
            "--seccomp".into(),
            "true".into(),
            "--platform".into(),
            "oem_strings=[io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888]".into(),
        ]
    }

    pub fn record_file(&self, name: &str) -> PathBuf {
        self.record.join(name)
    }

    pub fn wait_record(&self, name: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.record_file(name).exists())
    }

    pub fn read_record_json(&self, name: &str) -> Value {
        let text = std::fs::read_to_string(self.record_file(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.record_file("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn fake_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.record_file("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Asserts that no credential value, nor its base64, occurs in `hay`.
    pub fn assert_no_secret_in(&self, what: &str, hay: &[u8]) {
        use base64::Engine;
        for s in &self.secrets {
            if s.len() < 4 {
                continue;
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(s);
            assert!(
                !contains(hay, s),
                "{what} contains a credential value ({} bytes)",
                s.len()
            );
            assert!(
                !contains(hay, b64.as_bytes()),
                "{what} contains a credential value in base64"
            );
        }
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Waits for the child with a timeout, killing it on expiry so a hung test fails clearly.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("credbridge did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// One HTTP/1.1 GET on a Unix socket, like `curl --unix-socket` or ch-remote. Retries a refused
/// connect briefly: systemd-socket-activate binds before it listens.
pub fn http_get(sock: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = None;
    wait_until(Duration::from_secs(10), || {
        conn = std::os::unix::net::UnixStream::connect(sock).ok();
        conn.is_some()
    });
    let mut s = conn.expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A credential written straight into the directory (no systemd-creds round trip), remembered
/// for the sweep.
pub fn put(rig: &mut Rig, name: impl AsRef<std::ffi::OsStr>, value: &[u8]) {
    std::fs::write(rig.creds.join(name.as_ref()), value).unwrap();
    rig.secrets.push(value.to_vec());
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// How a credbridge the test started ended, with everything it said.
pub struct Ended {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub msgs: Vec<String>,
}

/// Waits for `child` (killed and failed after `timeout`) and collects its output and the
/// notify messages.
pub fn finish(rig: &mut Rig, mut child: Child, timeout: Duration) -> Ended {
    use std::io::Read;
    let status = wait_exit(&mut child, timeout);
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout).unwrap();
    }
    let stderr = stderr_of(&mut child);
    let msgs = rig.notify.messages();
    Ended {
        status,
        stdout,
        stderr,
        msgs,
    }
}

/// `Command::output` with a deadline: a case that wrongly starts the VM fails instead of
/// hanging the suite (the hypervisor dies with credbridge, by its parent-death signal).
pub trait OutputWithin {
    fn output_within(&mut self) -> std::process::Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> std::process::Output {
        use std::io::Read;
        let mut child = self
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(10));
        let mut stdout = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        let mut stderr = Vec::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_end(&mut stderr)
            .unwrap();
        std::process::Output {
            status,
            stdout,
            stderr,
        }
    }
}
