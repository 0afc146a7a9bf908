//! The VMM's state machine and its API actions, following `vmm/src/lib.rs` (`vm_create`,
//! `vm_boot`, `vm_shutdown`, `vm_delete`, `vmm_shutdown`, `vm_add_net`, the control loop's
//! `GuestExit`/`Exit` handling) and the HTTP handlers of `vmm/src/api/http/`.
//! Event order (from that source): boot = `vm:booting` .. `vm:booted`; guest poweroff without
//! `--no-shutdown` = `vm:shutdown`, `vm:deleted`, `vmm:shutdown`, exit 0; with it only
//! `vm:shutdown` (the VMM stays); SIGTERM/SIGINT and `vmm.shutdown` = the same three, exit 0.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::knobs::Knobs;
use crate::{events, exit_process, log_line, notify, record};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Created,
    Running,
    Paused,
}

impl VmState {
    fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
        }
    }
}

#[derive(Default)]
pub struct Vmm {
    pub config: Option<Value>,
    /// `None`: no `Vm` object (never booted, or shut down).
    pub vm: Option<VmState>,
    /// fds received with `vm.add-net`/`vm.add-device`, kept open like CH does.
    kept_fds: Vec<OwnedFd>,
    hotplug_count: u32,
}

pub struct Shared {
    pub knobs: Knobs,
    pub no_shutdown: bool,
    pub verbosity: usize,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static VMM: Mutex<Option<Vmm>> = Mutex::new(None);

pub fn init(shared: Shared) {
    let _ = SHARED.set(shared);
    *lock() = Some(Vmm::default());
}

pub fn shared() -> &'static Shared {
    SHARED.get().expect("vmm::init not called")
}

pub struct Guard(MutexGuard<'static, Option<Vmm>>);

impl std::ops::Deref for Guard {
    type Target = Vmm;
    fn deref(&self) -> &Vmm {
        self.0.as_ref().expect("vmm::init not called")
    }
}
impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Vmm {
        self.0.as_mut().expect("vmm::init not called")
    }
}

fn lock() -> MutexGuard<'static, Option<Vmm>> {
    VMM.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn state() -> Guard {
    Guard(lock())
}

pub fn try_state() -> Option<Guard> {
    match VMM.try_lock() {
        Ok(g) => Some(Guard(g)),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(Guard(e.into_inner())),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// An API failure: HTTP status and the error chain CH puts in the body (a JSON array).
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub chain: Vec<String>,
}

/// `HttpError::ApiError`: "Error from API" followed by the `ApiError` chain.
fn fail(status: u16, chain: &[&str]) -> ApiFailure {
    let mut v = vec!["Error from API".to_string()];
    v.extend(chain.iter().map(|s| s.to_string()));
    ApiFailure { status, chain: v }
}

fn plain(status: u16, msg: &str) -> ApiFailure {
    ApiFailure {
        status,
        chain: vec![msg.to_string()],
    }
}

/// `vm_create`: stores the config (no validation: that happens at boot).
pub fn create(vmm: &mut Vmm, config: Value) -> Result<(), ApiFailure> {
    if vmm.config.is_some() {
        return Err(fail(
            500,
            &["The VM could not be created", "VM is already created"],
        ));
    }
    if shared().verbosity >= 1 {
        // CH logs the whole VmConfig at info level with `-v` (secrets included).
        eprintln!(
            "{}",
            log_line("INFO", "vmm/src/lib.rs", &format!("VM config: {config}"))
        );
    }
    let mut config = config;
    if !shared().knobs.fw_cfg_build {
        // No config struct denies unknown fields: a stock build drops fw_cfg_config silently.
        if let Some(p) = config.get_mut("payload").and_then(Value::as_object_mut) {
            p.remove("fw_cfg_config");
        }
    } else if let Some(items) = config.pointer("/payload/fw_cfg_config/items")
        && !items.get("item_list").is_some_and(Value::is_array)
    {
        // `items` is a struct holding `item_list`; a bare list does not deserialize.
        return Err(plain(
            400,
            "Error parsing body: fw_cfg_config.items: expected a struct with item_list",
        ));
    }
    record::write_json("vm_config.json", &config);
    vmm.config = Some(config);
    Ok(())
}

/// fw_cfg at vm.boot, as a `fw_cfg` build does it: each of the toggles `kernel`, `cmdline`,
/// `initramfs` (default true) needs that payload part; a `file=` is opened now, sized by its
/// metadata and read with pread (a pipe reads as empty); names are cut to 55 bytes.
fn load_fw_cfg(payload: &Value) -> Result<Option<Value>, ApiFailure> {
    let Some(cfg) = payload.get("fw_cfg_config").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let booting = |msg: String| ApiFailure {
        status: 500,
        chain: vec!["Error from API".into(), "The VM could not boot".into(), msg],
    };
    for part in ["kernel", "cmdline", "initramfs"] {
        let on = cfg.get(part).and_then(Value::as_bool).unwrap_or(true);
        if on && payload.get(part).is_none_or(Value::is_null) {
            return Err(booting(format!("missing --{part}")));
        }
    }
    let mut loaded = Vec::new();
    let list = cfg.pointer("/items/item_list").and_then(Value::as_array);
    for item in list.into_iter().flatten() {
        let mut name = item["name"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        name.truncate(55);
        let content = if let Some(path) = item["file"].as_str() {
            let read = || -> std::io::Result<Vec<u8>> {
                use std::os::unix::fs::FileExt;
                let f = File::open(path)?;
                let mut buf = vec![0u8; f.metadata()?.len() as usize];
                match f.read_exact_at(&mut buf, 0) {
                    Err(e) if e.raw_os_error() == Some(nix::libc::ESPIPE) => Ok(Vec::new()),
                    r => r.map(|()| buf),
                }
            };
            read().map_err(|e| booting(format!("Error adding fw_cfg item: {e}")))?
        } else {
            item["string"]
                .as_str()
                .unwrap_or_default()
                .as_bytes()
                .to_vec()
        };
        loaded.push(json!({
            "name": String::from_utf8_lossy(&name),
            "size": content.len(),
            "content": record::b64(&content),
        }));
    }
    Ok(Some(Value::Array(loaded)))
}

/// `vm_boot`. `source` is "argv" or "api" (recorded with the OEM strings).
pub fn boot(vmm: &mut Vmm, source: &str) -> Result<(), ApiFailure> {
    if vmm.vm.is_some() {
        return Err(fail(
            500,
            &["The VM could not boot", "VM is already created"],
        ));
    }
    events::emit("vm", "booting");
    let Some(config) = vmm.config.clone() else {
        return Err(fail(
            404,
            &["The VM could not boot", "VM config is missing"],
        ));
    };
    let knobs = &shared().knobs;
    if let Some(code) = knobs.exit_before_boot {
        eprintln!(
            "fake-cloud-hypervisor: FAKE_CH_EXIT_BEFORE_BOOT={code}: exiting before vm:booted"
        );
        std::process::exit(code);
    }
    if knobs.boot_delay_ms > 0 {
        thread::sleep(Duration::from_millis(knobs.boot_delay_ms));
    }
    // Vm::new succeeded: from here a `Vm` exists even when loading the payload fails.
    vmm.vm = Some(VmState::Created);
    let payload = &config["payload"];
    if let Some(firmware) = payload["firmware"].as_str() {
        if let Err(e) = File::open(firmware) {
            return Err(ApiFailure {
                status: 500,
                chain: vec![
                    "Error from API".into(),
                    "The VM could not boot".into(),
                    "Error manipulating firmware file".into(),
                    e.to_string(),
                ],
            });
        }
    } else if let Some(kernel) = payload["kernel"].as_str()
        && let Err(e) = File::open(kernel)
    {
        return Err(ApiFailure {
            status: 500,
            chain: vec![
                "Error from API".into(),
                "The VM could not boot".into(),
                "Cannot open kernel file".into(),
                e.to_string(),
            ],
        });
    }
    if shared().knobs.fw_cfg_build
        && let Some(loaded) = load_fw_cfg(payload)?
    {
        record::write_json("fw_cfg.json", &loaded);
    }
    vmm.vm = Some(VmState::Running);
    let oem = config["platform"]["oem_strings"].as_array().map(|a| {
        a.iter()
            .map(|s| json!(record::b64(s.as_str().unwrap_or_default().as_bytes())))
            .collect::<Vec<_>>()
    });
    record::write_json(
        "oem_strings.json",
        &json!({ "source": source, "oem_strings": oem }),
    );
    events::emit("vm", "booted");
    after_boot(&config);
    Ok(())
}

/// Threads started by a successful boot: the fault knobs and the guest's notify messages.
fn after_boot(config: &Value) {
    let knobs = &shared().knobs;
    if knobs.close_events_after_boot {
        events::close();
    }
    if let Some((code, delay)) = knobs.exit_after_boot {
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(delay));
            eprintln!("fake-cloud-hypervisor: FAKE_CH_EXIT_AFTER_BOOT: exiting with {code}");
            exit_process(code);
        });
    }
    if let Some(ms) = knobs.vcpu_error_after_boot_ms {
        // cpu.rs: `error!("VCPU generated error: ...")`, then `exit_evt.write(1)`; the control
        // loop's Exit arm runs vmm_shutdown and the process exits 0, as for a guest poweroff.
        let vcpu = thread::Builder::new().name("vcpu0".into());
        let _ = vcpu.spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            eprintln!(
                "{}",
                log_line(
                    "ERROR",
                    "vmm/src/cpu.rs",
                    "VCPU generated error: VcpuRun(Failed to run vcpu)"
                )
            );
            let mut vmm = state();
            vmm_shutdown(&mut vmm);
            exit_process(0);
        });
    }
    if let Some(ms) = knobs.kill_self_after_boot_ms {
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        });
    }
    if let Some((port, msgs)) = knobs.guest_notify.clone() {
        let vsock = config["vsock"]["socket"].as_str().map(str::to_owned);
        thread::spawn(move || notify::run(vsock, port, msgs));
    }
}

/// `vm_shutdown`: the VM stops, the config stays.
fn vm_shutdown(vmm: &mut Vmm) -> Result<(), ApiFailure> {
    if vmm.vm.take().is_none() {
        return Err(fail(
            500,
            &["The VM could not shutdown", "VM is not running"],
        ));
    }
    events::emit("vm", "shutdown");
    Ok(())
}

/// `vm_delete`.
fn vm_delete(vmm: &mut Vmm) {
    if vmm.config.is_none() {
        return;
    }
    if vmm.vm.is_some() {
        let _ = vm_shutdown(vmm);
    }
    vmm.config = None;
    events::emit("vm", "deleted");
}

/// `vmm_shutdown`: `vm_delete` then `vmm:shutdown`. The caller exits.
pub fn vmm_shutdown(vmm: &mut Vmm) {
    vm_delete(vmm);
    events::emit("vmm", "shutdown");
}

/// The guest powered off (ACPI power button honoured): control loop's `GuestExit`.
pub fn guest_poweroff() {
    let mut vmm = state();
    if vmm.vm != Some(VmState::Running) {
        return;
    }
    if shared().no_shutdown {
        let _ = vm_shutdown(&mut vmm);
    } else {
        vmm_shutdown(&mut vmm);
        exit_process(0);
    }
}

/// A guest reboot, or a guest kernel panic with `panic=-1`, or a triple fault: CH resets the VM
/// inside the same process (cloud-hypervisor.md section 5), seen as `vm:rebooting`, `vm:rebooted`.
pub fn guest_reset() {
    let vmm = state();
    if vmm.vm != Some(VmState::Running) {
        return;
    }
    events::emit("vm", "rebooting");
    events::emit("vm", "rebooted");
}

/// A vCPU error: CH v54 exits 0 although the guest never powered off (cloud-hypervisor.md
/// section 5: "exit 0 does not prove a clean poweroff; stderr tells"). No shutdown events.
pub fn vcpu_error_exit() -> ! {
    eprintln!("fake-cloud-hypervisor: a vCPU error (fake): exiting 0 without a guest shutdown");
    exit_process(0)
}

/// Answer of one API route.
pub enum Answer {
    NoContent,
    Json(Value),
    Error(ApiFailure),
    /// micro_http's plain 400 (no body).
    BadRequest,
    /// `vmm.shutdown`: 204, then exit 0.
    NoContentThenExit,
}

fn parse_body(body: &Option<Vec<u8>>) -> Result<Value, Answer> {
    let Some(body) = body else {
        return Err(Answer::BadRequest);
    };
    serde_json::from_slice::<Value>(body)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            if v.is_object() {
                Ok(v)
            } else {
                Err("invalid type: expected struct".to_string())
            }
        })
        .map_err(|e| {
            Answer::Error(ApiFailure {
                status: 400,
                chain: vec!["Failed to deserialize JSON".into(), e],
            })
        })
}

/// `attach_fds_to_cfg_inner`: JSON-given fds are never valid; log and drop them.
fn drop_body_fds(cfg: &mut Value, key: &str) {
    if let Some(obj) = cfg.as_object_mut()
        && obj.get(key).is_some_and(|v| !v.is_null())
    {
        let id = obj.get("id").and_then(Value::as_str);
        eprintln!(
            "{}",
            log_line(
                "WARN",
                "vmm/src/api/http/http_endpoint.rs",
                &format!(
                    "FD numbers were present in HTTP request body for device {id:?} but will be ignored"
                )
            )
        );
        obj.remove(key);
    }
}

/// Dispatches one request (route = path below `/api/v1/`).
pub fn handle(method: &str, route: &str, body: &Option<Vec<u8>>, fds: Vec<OwnedFd>) -> Answer {
    let known_put = [
        "vm.create",
        "vm.boot",
        "vm.shutdown",
        "vm.reboot",
        "vm.power-button",
        "vm.delete",
        "vm.pause",
        "vm.resume",
        "vm.add-net",
        "vm.add-device",
        "vmm.shutdown",
    ];
    let known_other = [
        "vm.add-user-device",
        "vm.add-disk",
        "vm.add-fs",
        "vm.add-generic-vhost-user",
        "vm.add-pmem",
        "vm.add-vdpa",
        "vm.add-vsock",
        "vm.counters",
        "vm.receive-migration",
        "vm.remove-device",
        "vm.resize",
        "vm.resize-disk",
        "vm.resize-zone",
        "vm.restore",
        "vm.send-migration",
        "vm.snapshot",
        "vm.nmi",
    ];
    let is_get = matches!(route, "vmm.ping" | "vm.info");
    if !is_get && !known_put.contains(&route) && !known_other.contains(&route) {
        return Answer::Error(plain(404, "Not Found"));
    }
    if method != "GET" && method != "PUT" {
        return Answer::BadRequest;
    }
    if (is_get && method != "GET") || (!is_get && method != "PUT") {
        return Answer::Error(plain(400, "Bad Request"));
    }
    let mut vmm = state();
    match route {
        "vmm.ping" => Answer::Json(json!({
            "build_version": "fake",
            "version": "v54.0.0",
            "pid": std::process::id(),
            "features": if shared().knobs.fw_cfg_build {
                json!(["fw_cfg", "io_uring", "kvm"])
            } else {
                json!(["io_uring", "kvm"])
            },
        })),
        "vm.info" => match &vmm.config {
            None => Answer::Error(fail(
                404,
                &["The VM info is not available", "VM is not created"],
            )),
            Some(cfg) => {
                let size = cfg["memory"]["size"].as_u64().unwrap_or(512 << 20);
                Answer::Json(json!({
                    "config": cfg,
                    "state": vmm.vm.unwrap_or(VmState::Created).as_str(),
                    "memory_actual_size": size,
                }))
            }
        },
        "vm.create" => {
            let mut cfg = match parse_body(body) {
                Ok(v) => v,
                Err(a) => return a,
            };
            // VmCreate never looks at the request's fds; JSON fds are dropped.
            for list in ["net", "devices"] {
                let key = if list == "net" { "fds" } else { "fd" };
                if let Some(items) = cfg.get_mut(list).and_then(Value::as_array_mut) {
                    for item in items {
                        drop_body_fds(item, key);
                    }
                }
            }
            drop(fds);
            match create(&mut vmm, cfg) {
                Ok(()) => Answer::NoContent,
                Err(e) => Answer::Error(e),
            }
        }
        "vm.boot" => match boot(&mut vmm, "api") {
            Ok(()) => Answer::NoContent,
            Err(e) => Answer::Error(e),
        },
        "vm.shutdown" => match vm_shutdown(&mut vmm) {
            Ok(()) => Answer::NoContent,
            Err(e) => Answer::Error(e),
        },
        "vm.delete" => {
            vm_delete(&mut vmm);
            Answer::NoContent
        }
        "vmm.shutdown" => {
            vmm_shutdown(&mut vmm);
            Answer::NoContentThenExit
        }
        "vm.power-button" => {
            if vmm.vm != Some(VmState::Running) {
                return Answer::Error(fail(
                    500,
                    &["Error triggering power button", "VM is not running"],
                ));
            }
            let knobs = &shared().knobs;
            if knobs.ignore_power_button {
                eprintln!("fake-cloud-hypervisor: FAKE_CH_IGNORE_POWER_BUTTON: guest ignores it");
            } else {
                let delay = knobs.poweroff_delay_ms;
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(delay));
                    guest_poweroff();
                });
            }
            Answer::NoContent
        }
        "vm.reboot" => {
            if vmm.vm != Some(VmState::Running) {
                return Answer::Error(fail(500, &["The VM could not reboot", "VM is not running"]));
            }
            events::emit("vm", "rebooting");
            events::emit("vm", "rebooted");
            Answer::NoContent
        }
        "vm.pause" | "vm.resume" => {
            let (from, to, ev) = if route == "vm.pause" {
                (VmState::Running, VmState::Paused, ["pausing", "paused"])
            } else {
                (VmState::Paused, VmState::Running, ["resuming", "resumed"])
            };
            if vmm.vm != Some(from) {
                return Answer::Error(fail(500, &["The VM could not be paused or resumed"]));
            }
            events::emit("vm", ev[0]);
            vmm.vm = Some(to);
            events::emit("vm", ev[1]);
            Answer::NoContent
        }
        "vm.add-net" | "vm.add-device" => {
            let (list, key, what) = if route == "vm.add-net" {
                (
                    "net",
                    "fds",
                    "The network device could not be added to the VM",
                )
            } else {
                ("devices", "fd", "The device could not be added to the VM")
            };
            // VmAddDevice: a DeviceConfig is backed by at most one fd.
            if route == "vm.add-device" && fds.len() > 1 {
                return Answer::Error(plain(400, "Bad Request"));
            }
            let mut cfg = match parse_body(body) {
                Ok(v) => v,
                Err(a) => return a,
            };
            drop_body_fds(&mut cfg, key);
            if !fds.is_empty() {
                let nums: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                let v = if key == "fd" {
                    json!(nums[0])
                } else {
                    json!(nums)
                };
                cfg[key] = v;
            }
            if vmm.config.is_none() {
                return Answer::Error(fail(404, &[what, "VM is not created"]));
            }
            vmm.kept_fds.extend(fds);
            if vmm.vm.is_some() {
                vmm.hotplug_count += 1;
                let n = vmm.hotplug_count;
                let id = cfg["id"].as_str().map(str::to_owned).unwrap_or_else(|| {
                    format!("_{}{}", if key == "fds" { "net" } else { "vfio" }, 100 + n)
                });
                add_to_config(&mut vmm, list, cfg);
                Answer::Json(json!({ "id": id, "bdf": format!("0000:00:{:02x}.0", 0x10 + n) }))
            } else {
                add_to_config(&mut vmm, list, cfg);
                Answer::NoContent
            }
        }
        _ => Answer::Error(fail(
            500,
            &["fake-cloud-hypervisor does not implement this endpoint"],
        )),
    }
}

fn add_to_config(vmm: &mut Vmm, list: &str, item: Value) {
    if let Some(cfg) = vmm.config.as_mut().and_then(Value::as_object_mut) {
        let entry = cfg.entry(list).or_insert_with(|| json!([]));
        if !entry.is_array() {
            *entry = json!([]);
        }
        if let Some(a) = entry.as_array_mut() {
            a.push(item);
        }
        record::write_json("vm_config.json", &Value::Object(cfg.clone()));
    }
}
