//! A fake cloud-hypervisor 54 for credbridge's integration tests. It follows the start-up order
//! of `cloud-hypervisor/src/main.rs` (clap -> `--api-socket` parse -> logger -> event monitor ->
//! `vmm:starting` -> API socket -> `VmConfig::parse` -> create -> boot), its exit codes (2 usage,
//! 1 config/boot, 0 poweroff/SIGTERM/SIGINT/`vmm.shutdown`) and leaves SIGHUP alone (default
//! action: death by signal 1). No KVM: "booting" only checks that the payload file opens.

pub mod cli;
pub mod config;
pub mod events;
pub mod grammar;
pub mod http;
pub mod knobs;
pub mod notify;
pub mod record;
pub mod vmm;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::{Mode, umask};
use serde_json::{Value, json};

use crate::cli::CliExit;
use crate::grammar::OptionParser;
use crate::knobs::Knobs;

/// The `--api-socket path=` socket, removed on a clean exit only (like CH).
static API_SOCKET_PATH: OnceLock<PathBuf> = OnceLock::new();
/// The `<path>.lock` lock, held for the life of the process.
static API_SOCKET_LOCK: Mutex<Option<Flock<File>>> = Mutex::new(None);

/// Ends the process; exit 0 is a clean exit and removes the `path=` API socket.
pub fn exit_process(code: i32) -> ! {
    if code == 0
        && let Some(p) = API_SOCKET_PATH.get()
    {
        let _ = fs::remove_file(p);
    }
    record::append_line("exit.log", &format!("{:.3} exit {code}", record::mono_ms()));
    std::process::exit(code);
}

/// CH's default log format: `cloud-hypervisor: {boottime}s: <{thread}> {level}:{location} -- {msg}`.
pub fn log_line(level: &str, location: &str, msg: &str) -> String {
    let t = record::mono_ms() / 1000.0;
    let thread = thread::current();
    let name = match thread.name() {
        Some("main") | None => "cloud-hypervisor",
        Some(n) => n,
    };
    format!("cloud-hypervisor: {t:.6}s: <{name}> {level}:{location} -- {msg}")
}

/// `cli_print_error_chain`: the "Fatal error" log line (when the logger is up), then the chain.
fn fatal(chain: &[String], debug: Option<&str>) -> ! {
    if let Some(d) = debug {
        eprintln!(
            "{}",
            log_line(
                "ERROR",
                "cloud-hypervisor/src/lib.rs",
                &format!("Fatal error: {d}")
            )
        );
    }
    if chain.len() == 1 {
        eprintln!(
            "Error: Cloud Hypervisor exited with the following error:\n  {}",
            chain[0]
        );
    } else {
        eprintln!("Error: Cloud Hypervisor exited with the following chain of errors:");
        for (i, c) in chain.iter().enumerate() {
            eprintln!("  {i}: {c}");
        }
    }
    exit_process(1);
}

fn record_startup(args: &[OsString]) {
    if !record::enabled() {
        return;
    }
    let fds = record::open_fds();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    record::write_json("fds.json", &Value::Array(fds));
    record::write_json(
        "argv.json",
        &json!({
            "argv0": record::os_json(&argv0),
            "args": args.iter().map(|a| record::os_json(a)).collect::<Vec<_>>(),
        }),
    );
    let env: serde_json::Map<String, Value> = std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), record::os_json(&v)))
        .collect();
    record::write_json("env.json", &Value::Object(env));
    record::write_file("pid", format!("{}\n", std::process::id()).as_bytes());
}

/// `parse_api_socket`: option errors are ignored (values set before the error stay), `fd` wins,
/// then `path`, else the whole string is a path.
enum ApiSocket {
    Fd(RawFd),
    Path(String),
}

fn parse_api_socket(v: &str) -> Result<ApiSocket, String> {
    let mut p = OptionParser::new(&["path", "fd"]);
    let _ = p.parse(v);
    if let Some(fd) = p.get("fd") {
        fd.parse::<RawFd>()
            .map(ApiSocket::Fd)
            .map_err(|e| e.to_string())
    } else if let Some(path) = p.get("path") {
        Ok(ApiSocket::Path(path))
    } else {
        Ok(ApiSocket::Path(v.to_owned()))
    }
}

/// `--event-monitor path=|fd=`.
fn open_event_monitor(v: &str) -> File {
    let mut p = OptionParser::new(&["path", "fd"]);
    if let Err(e) = p.parse(v) {
        fatal(
            &["Error parsing --event-monitor".into(), e.to_string()],
            Some(&format!("ParsingEventMonitor({})", e.debug_name())),
        );
    }
    if p.is_set("fd") {
        let fd = match p.convert::<RawFd>("fd") {
            Ok(Some(fd)) => fd,
            // `fd=` (empty): CH unwraps a None here and panics.
            Ok(None) => panic!("called `Option::unwrap()` on a `None` value"),
            Err(e) => fatal(
                &["Error parsing --event-monitor".into(), e.to_string()],
                Some(&format!("ParsingEventMonitor({})", e.debug_name())),
            ),
        };
        // SAFETY: as CH does (`File::from_raw_fd(fd)`), we take ownership of the fd number the
        // caller handed us on the command line; it is not otherwise used in this process. If it
        // is not open, `set_monitor`'s fcntl fails with EBADF and we exit.
        unsafe { File::from_raw_fd(fd) }
    } else if let Some(path) = p.get("path") {
        match OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => fatal(
                &["Error doing event monitor I/O".into(), e.to_string()],
                Some(&format!("EventMonitorIo({e:?})")),
            ),
        }
    } else {
        fatal(
            &["Error parsing --event-monitor: path or fd required".into()],
            Some("BareEventMonitor"),
        )
    }
}

fn start_api(sock: ApiSocket) {
    let listener = match sock {
        ApiSocket::Fd(fd) => {
            if record::fdinfo_flags(fd).is_none() {
                fatal(
                    &[
                        "Failed to start the VMM thread".into(),
                        "Error creating API server".into(),
                        "Bad file descriptor (os error 9)".into(),
                    ],
                    Some("StartVmmThread(CreateApiServer(..))"),
                );
            }
            // SAFETY: `--api-socket fd=N` hands us ownership of fd N (CH does
            // `HttpServer::new_from_fd(fd)`); it was checked open just above and is used by
            // nothing else here. It is used as is: never bound, never `listen()`ed.
            unsafe { UnixListener::from_raw_fd(fd) }
        }
        ApiSocket::Path(path) => {
            let lock_path = format!("{path}.lock");
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                        format!("API socket {path} is in use by another instance ({e})")
                    })
                });
            match lock {
                Ok(l) => *API_SOCKET_LOCK.lock().unwrap_or_else(|e| e.into_inner()) = Some(l),
                Err(e) => fatal(
                    &["Failed to start the VMM thread".into(), e],
                    Some("StartVmmThread(ApiSocketInUse)"),
                ),
            }
            let _ = fs::remove_file(&path);
            match UnixListener::bind(&path) {
                Ok(l) => {
                    let _ = API_SOCKET_PATH.set(PathBuf::from(&path));
                    l
                }
                Err(e) => fatal(
                    &[
                        "Failed to start the VMM thread".into(),
                        "Error creating API server socket".into(),
                        e.to_string(),
                    ],
                    Some(&format!("StartVmmThread(CreateApiServerSocket({e:?}))")),
                ),
            }
        }
    };
    http::serve(listener);
}

/// SIGTERM/SIGINT: CH's signal thread writes the exit event; the control loop runs
/// `vmm_shutdown` and the process exits 0. They were blocked in `main` before any thread.
fn start_signal_thread(set: SigSet, ignore_sigterm: bool, die_by_sigterm: bool) {
    thread::Builder::new()
        .name("signal_handler".into())
        .spawn(move || {
            loop {
                let Ok(sig) = set.wait() else { continue };
                if sig == Signal::SIGTERM && ignore_sigterm {
                    eprintln!("fake-cloud-hypervisor: FAKE_CH_IGNORE_SIGTERM: ignoring SIGTERM");
                    record::append_line(
                        "signals.log",
                        &format!("{:.3} SIGTERM ignored", record::mono_ms()),
                    );
                    continue;
                }
                if sig == Signal::SIGTERM && die_by_sigterm {
                    record::append_line(
                        "signals.log",
                        &format!("{:.3} SIGTERM death", record::mono_ms()),
                    );
                    // The disposition is the default; only the mask kept it pending.
                    let mut term = SigSet::empty();
                    term.add(Signal::SIGTERM);
                    let _ = term.thread_unblock();
                    let _ = nix::sys::signal::raise(Signal::SIGTERM);
                }
                record::append_line(
                    "signals.log",
                    &format!("{:.3} {sig} exit", record::mono_ms()),
                );
                // A boot in progress holds the state lock; do not wait for it long.
                for _ in 0..50 {
                    if let Some(mut g) = vmm::try_state() {
                        vmm::vmm_shutdown(&mut g);
                        exit_process(0);
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                events::emit("vmm", "shutdown");
                exit_process(0);
            }
        })
        .expect("spawn signal thread");
}

/// The whole program; never returns.
pub fn run() -> ! {
    let knobs = Knobs::from_env();
    record::init(knobs.record_dir.clone());
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // First, before this process opens anything: which fds did we inherit?
    record_startup(&args);

    // main(): umask 077, so a `path=` socket is 0700 and files 0600.
    umask(Mode::from_bits_truncate(0o077));

    // Block the handled signals before any thread exists (start_vmm does this too).
    let mut handled = SigSet::empty();
    handled.add(Signal::SIGTERM);
    handled.add(Signal::SIGINT);
    let _ = handled.thread_block();

    let matches = match cli::parse(&args) {
        Ok(m) => m,
        Err(CliExit::Help) => {
            print!("{}", cli::help_text());
            exit_process(0);
        }
        Err(CliExit::Usage(text)) => {
            eprint!("{text}");
            std::process::exit(2);
        }
    };
    if matches.flag("version") {
        println!("cloud-hypervisor v54.0.0");
        println!("Migration Protocol Versions: 1.0");
        exit_process(0);
    }

    let api_socket = match matches.one("api-socket").map(parse_api_socket) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            // Printed before the logger exists: no "Fatal error" line.
            eprintln!(
                "Error: Cloud Hypervisor exited with the following chain of errors:\n  0: Error parsing --api-socket\n  1: {e}"
            );
            exit_process(1);
        }
    };

    if let Some(path) = matches.one("log-file")
        && let Err(e) = File::create(path)
    {
        fatal(&["Error creating log file".into(), e.to_string()], None);
    }

    vmm::init(vmm::Shared {
        knobs: knobs.clone(),
        no_shutdown: matches.flag("no-shutdown"),
        verbosity: matches.count("v"),
    });

    // Without `--event-monitor` CH has no monitor at all (events go nowhere).
    if let Some(monitor) = matches.one("event-monitor").map(open_event_monitor)
        && let Err(e) = events::set_monitor(monitor, knobs.no_events)
    {
        fatal(
            &["Error doing event monitor I/O".into(), e.to_string()],
            Some(&format!("EventMonitorIo({e:?})")),
        );
    }
    events::emit("vmm", "starting");

    // Signals are handled from here on (a SIGTERM that came earlier was pending, blocked), so
    // a SIGTERM during FAKE_CH_BIND_DELAY_MS ends the process at once.
    start_signal_thread(handled, knobs.ignore_sigterm, knobs.die_by_sigterm);
    if knobs.bind_delay_ms > 0 {
        thread::sleep(Duration::from_millis(knobs.bind_delay_ms));
    }
    if let Some(sock) = api_socket {
        start_api(sock);
    }

    if matches.payload_present() {
        let cfg = match config::vm_config_from_args(&matches) {
            Ok(c) => c,
            Err(e) => {
                // The exit event runs vmm_shutdown: nothing created, so only vmm:shutdown.
                vmm::vmm_shutdown(&mut vmm::state());
                let mut chain = vec!["Error parsing config".to_string(), e.context];
                if !e.cause.is_empty() {
                    chain.push(e.cause);
                }
                fatal(&chain, Some(&format!("ParsingConfig({})", e.debug)));
            }
        };
        let mut st = vmm::state();
        if let Err(e) = vmm::create(&mut st, cfg) {
            vmm::vmm_shutdown(&mut st);
            let mut chain = vec!["Error creating VM".to_string()];
            chain.extend(e.chain.into_iter().skip(1));
            fatal(&chain, Some("VmCreate(..)"));
        }
        if let Err(e) = vmm::boot(&mut st, "argv") {
            vmm::vmm_shutdown(&mut st);
            let mut chain = vec!["Error booting VM".to_string()];
            chain.extend(e.chain.into_iter().skip(1));
            fatal(&chain, Some("VmBoot(..)"));
        }
        drop(st);
    } else if matches.one("restore").is_some() {
        eprintln!(
            "{}",
            log_line(
                "WARN",
                "fake-cloud-hypervisor",
                "--restore is not modelled; running as a VMM without a VM"
            )
        );
    }
    loop {
        thread::park();
    }
}
