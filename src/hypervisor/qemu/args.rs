//! QEMU's command line: what credbridge reads from the argv it is given (the argv's own SMBIOS
//! type 11 strings, monitors, inherited fds) and what it adds (one `-smbios type=11,path=` per
//! OEM string, each a sealed memfd, and its own QMP monitor on a socketpair).
//!
//! QEMU's grammar, as checked against qemu-system-x86_64 7.2: an option is `-name` or `--name`,
//! its argument is always the next argv element (`-smbios=x` is not accepted), and an argument
//! is a list of `key=value` items separated by `,`, where `,,` stands for a literal comma.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::credentials::SecretBytes;

use crate::fwcfg::FwCfgItem;
use crate::oem::{OemString, Origin};

/// Id of the chardev credbridge's QMP monitor runs on.
pub const QMP_CHARDEV_ID: &str = "credbridge-qmp";

/// QEMU 7.2's options that take no argument (every other option takes exactly one). Taken from
/// `qemu-options.hx` and checked one by one with `qemu-system-x86_64 OPTION -version`.
const NO_ARGUMENT: &[&str] = &[
    "h",
    "help",
    "version",
    "S",
    "s",
    "async-teardown",
    "daemonize",
    "enable-kvm",
    "enable-sync-profile",
    "full-screen",
    "mem-prealloc",
    "no-acpi",
    "no-fd-bootchk",
    "no-hpet",
    "no-reboot",
    "no-shutdown",
    "no-user-config",
    "nodefaults",
    "nographic",
    "only-migratable",
    "portrait",
    "preconfig",
    "semihosting",
    "singlestep",
    "snapshot",
    "usb",
    "win2k-hack",
    "xen-attach",
    "xen-domid-restrict",
];

/// Options whose argument may name an inherited fd (`fd=N`, `fds=N:M`, `vhostfd=N`, ...).
const FD_KEYS: &[&str] = &["fd", "fds", "vhostfd", "vhostfds"];

#[derive(Debug, thiserror::Error)]
pub enum ArgvError {
    #[error(
        "QEMU option {option} has no argument\nhint: every QEMU option except flags like -S takes the next argv element"
    )]
    MissingArgument { option: String },
    #[error("-smbios {arg:?}: {reason}\nhint: QEMU would refuse it too")]
    Smbios { arg: String, reason: String },
    /// `key` is `type=11,path` or `file`: both files are read before QEMU starts.
    #[error("cannot read -smbios {key}={}: {source}\nhint: credbridge reads the file to check the SMBIOS limits before QEMU starts", path.display())]
    ReadPath {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("-smbios {key}={} is a {kind}, not a regular file; credbridge reads the file to check the SMBIOS limits, which would take a pipe's data away from QEMU, block on a FIFO, or never end (/dev/zero)\nhint: use a regular file, or --oem-string", path.display())]
    PathNotRegular {
        key: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("-smbios {key}={} is {size} bytes; all of QEMU's SMBIOS tables together hold at most {max} bytes (QEMU refuses to start beyond)\nhint: name the right file", path.display(), max = crate::hypervisor::qemu::SMBIOS_TABLES_MAX)]
    TooLarge {
        key: &'static str,
        path: PathBuf,
        size: u64,
    },
    #[error("-smbios type=11,path={} contains a NUL byte at offset {offset}; QEMU would cut the string there\nhint: remove it, or pass binary data as a credential (base64 form)", path.display())]
    PathNul { path: PathBuf, offset: usize },
    #[error("-smbios file={} holds a binary type 11 structure; QEMU then ignores every -smbios type=11 string, credbridge's included\nhint: give those strings as -smbios type=11,value=... or path=... instead", path.display())]
    BinaryType11 { path: PathBuf },
    #[error(
        "-daemonize: QEMU would fork into the background and its first process exit at once, leaving nothing to supervise\nhint: remove -daemonize; systemd keeps credbridge in the background"
    )]
    Daemonize,
    #[error(
        "the argv already has a chardev with id {QMP_CHARDEV_ID:?}, which credbridge uses for its own QMP monitor\nhint: rename that chardev"
    )]
    ChardevIdTaken,
}

/// An `-smbios type=11` string of the argv, before it is checked with the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgvSource {
    /// `value=`, with `,,` already turned into `,`.
    Value,
    /// `path=FILE`: the file's content.
    Path(PathBuf),
}

/// What credbridge needs to know about the QEMU argv it was given.
#[derive(Debug, Default)]
pub struct QemuArgv {
    /// The argv's own type 11 strings, in the order QEMU puts them into the entry. They come
    /// before every string credbridge adds, because credbridge's `-smbios` options follow the
    /// argv (verified with QEMU 7.2 and a systemd 252 guest: on a duplicate name the argv's
    /// string, the first, wins).
    /// Zeroed on drop and hidden from Debug: a `path=` file may hold a secret.
    pub oem_strings: Vec<(SecretBytes, ArgvSource)>,
    /// The argv's own monitors (`-qmp`, `-qmp-pretty`, `-mon`, `-monitor`), kept as given;
    /// credbridge adds its own QMP monitor regardless.
    pub monitors: Vec<String>,
    /// Fds the argv names (`fd=`, `fds=`, `vhostfd=`, `vhostfds=`, `/dev/fd/N` paths,
    /// `-add-fd fd=`): the child must inherit them at the same numbers.
    pub inherited_fds: Vec<RawFd>,
    /// `-S`: QEMU starts paused; the VM runs only after a `cont` (QMP status `prelaunch`).
    pub start_paused: bool,
    /// `-no-shutdown`: QEMU stays alive, paused, after the guest powers off.
    pub no_shutdown: bool,
    /// `-no-reboot`: a guest reboot makes QEMU exit.
    pub no_reboot: bool,
    /// The `-machine`/`-M` type, if the argv names one.
    pub machine: Option<String>,
    /// `-no-acpi` or `-machine ...,acpi=off`: `system_powerdown` (the ACPI power button) then
    /// reaches no guest, so a graceful stop can only wait for the stop timeout. microvm.nix's
    /// QEMU runner passes `-no-acpi` and stops guests with Ctrl-Alt-Del on an i8042 instead.
    pub acpi_off: bool,
    /// The argv's first kernel vhost-vsock device (`-device vhost-vsock-pci,guest-cid=N`, as
    /// microvm.nix's runner writes it for `microvm.vsock.cid`).
    pub vsock: Option<ArgvVsock>,
    /// The argv has a `vhost-user-vsock-*` device: a user-space backend owns the host side.
    pub vhost_user_vsock: bool,
    /// The argv's own `-fw_cfg` file names: they take QEMU fw_cfg slots, and one under
    /// `opt/io.systemd.credentials/` is a credential the guest imports.
    pub fw_cfg_names: Vec<String>,
}

/// A `vhost-vsock-*` device of the argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgvVsock {
    pub driver: String,
    /// `guest-cid=` as written (QEMU requires it: 3 or more, at most 32 bits); `None` if absent
    /// or not a number.
    pub guest_cid: Option<u64>,
}

/// QEMU's kernel vhost-vsock drivers (`-device help`, QEMU 7.2).
const VHOST_VSOCK_DRIVERS: &[&str] = &[
    "vhost-vsock-pci",
    "vhost-vsock-pci-non-transitional",
    "vhost-vsock-device",
    "vhost-vsock-ccw",
];

impl QemuArgv {
    /// The argv's own strings as [`OemString`]s with [`Origin::Argv`], to put first in the
    /// list that [`crate::oem::validate`] checks.
    pub fn argv_oem_strings(&self) -> Vec<OemString> {
        self.oem_strings
            .iter()
            .map(|(bytes, source)| match source {
                ArgvSource::Value => {
                    OemString::public(&String::from_utf8_lossy(bytes), Origin::Argv)
                }
                ArgvSource::Path(p) => OemString::from_argv_file(bytes, p.clone()),
            })
            .collect()
    }
}

/// Whether `program` is a QEMU system emulator (`qemu-system-*`, or `qemu-kvm` as some
/// distributions name it), by its file name.
pub fn is_qemu(program: &OsStr) -> bool {
    let name = Path::new(program)
        .file_name()
        .map(OsStr::as_bytes)
        .unwrap_or_default();
    name.starts_with(b"qemu-system-") || name == b"qemu-kvm"
}

/// The machine a QEMU binary picks without `-machine`, where that matters: Debian's
/// `qemu-system-x86_64-microvm` defaults to `microvm`, which has no SMBIOS.
pub fn default_machine(program: &OsStr) -> Option<&'static str> {
    let name = Path::new(program).file_name()?.as_bytes();
    name.ends_with(b"-microvm").then_some("microvm")
}

/// One `key=value` item of a QEMU option argument; `value` is `None` for a bare flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// Splits an option argument at single commas, turning `,,` into `,` (QEMU's
/// `qemu_opts_parse`). A bare `key` is a flag.
pub fn split_items(arg: &[u8]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i <= arg.len() {
        if i == arg.len() || arg[i] == b',' {
            if i + 1 < arg.len() && arg[i] == b',' && arg[i + 1] == b',' {
                cur.push(b',');
                i += 2;
                continue;
            }
            if !cur.is_empty() || i < arg.len() {
                let item = match cur.iter().position(|&b| b == b'=') {
                    Some(eq) => Item {
                        key: String::from_utf8_lossy(&cur[..eq]).into_owned(),
                        value: Some(cur[eq + 1..].to_vec()),
                    },
                    None => Item {
                        key: String::from_utf8_lossy(&cur).into_owned(),
                        value: None,
                    },
                };
                items.push(item);
            }
            cur.clear();
            i += 1;
            continue;
        }
        cur.push(arg[i]);
        i += 1;
    }
    items
}

/// Escapes a value for a QEMU option argument: every `,` doubled.
pub fn escape_value(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    for &b in v {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    out
}

/// A QEMU number as `qemu_strtou64(.., base 0)` reads it: decimal, `0x` hex or `0` octal.
fn parse_number(s: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(s).ok()?.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

fn fd_of_path(p: &[u8]) -> Option<RawFd> {
    let n = p
        .strip_prefix(b"/dev/fd/")
        .or_else(|| p.strip_prefix(b"/proc/self/fd/"))?;
    std::str::from_utf8(n).ok()?.parse().ok()
}

fn file_kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO or pipe"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

fn short(arg: &[u8]) -> String {
    let s = String::from_utf8_lossy(arg);
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s.into_owned()
    }
}

/// Reads a file the argv's `-smbios` names (`key`: `type=11,path` or `file`) as QEMU will: whole
/// (QEMU 7.2 uses g_file_get_contents). Only regular files: a pipe read here would be empty for
/// QEMU, a FIFO blocks, a device like /dev/zero never ends. O_NONBLOCK keeps open(2) of a FIFO
/// from waiting for a writer; fstat then judges what was opened. Nothing above QEMU's 64 KiB of
/// SMBIOS tables is read (#11).
fn read_argv_file(key: &'static str, path: &Path) -> Result<SecretBytes, ArgvError> {
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| ArgvError::ReadPath {
        key,
        path: path.into(),
        source,
    };
    let mut file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.file_type().is_file() {
        return Err(ArgvError::PathNotRegular {
            key,
            path: path.into(),
            kind: file_kind(meta.file_type()),
        });
    }
    let max = crate::hypervisor::qemu::SMBIOS_TABLES_MAX;
    let too_large = |size| ArgvError::TooLarge {
        key,
        path: path.into(),
        size,
    };
    if meta.len() > max as u64 {
        return Err(too_large(meta.len()));
    }
    // At most `max` + 1 bytes are read, even from a file that grew since the fstat.
    crate::credentials::read_secret(&mut file, max).map_err(|e| {
        if e.kind() == io::ErrorKind::FileTooLarge {
            too_large(max as u64 + 1)
        } else {
            read_err(e)
        }
    })
}

/// A `path=` string: the file's bytes, which must hold no NUL.
fn read_path_string(path: &Path) -> Result<SecretBytes, ArgvError> {
    let bytes = read_argv_file("type=11,path", path)?;
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(ArgvError::PathNul {
            path: path.into(),
            offset,
        });
    }
    Ok(bytes)
}

/// The structure types in an `-smbios file=` blob: each is a formatted area (its length in
/// byte 1) followed by strings ending in a double NUL.
fn blob_types(blob: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 4 <= blob.len() {
        types.push(blob[at]);
        let mut i = at + (blob[at + 1] as usize).max(4);
        // The string set ends at the first double NUL after the formatted area.
        while i + 1 < blob.len() && !(blob[i] == 0 && blob[i + 1] == 0) {
            i += 1;
        }
        at = i + 2;
    }
    types
}

fn smbios(arg: &[u8], out: &mut QemuArgv) -> Result<(), ArgvError> {
    let items = split_items(arg);
    let err = |reason: String| ArgvError::Smbios {
        arg: short(arg),
        reason,
    };
    if let Some(file) = items.iter().find(|i| i.key == "file") {
        let path = PathBuf::from(OsStr::from_bytes(file.value.as_deref().unwrap_or_default()));
        // Read like a path= file: QEMU reads it whole before it starts, and so must we, to
        // learn whether it holds a type 11 structure.
        let blob = read_argv_file("file", &path)?;
        if blob_types(&blob).contains(&11) {
            return Err(ArgvError::BinaryType11 { path });
        }
        return Ok(());
    }
    // qemu_opt_get returns the last `type=`.
    let Some(ty) = items.iter().rev().find(|i| i.key == "type") else {
        return Err(err("no type= and no file=".into()));
    };
    let ty = ty
        .value
        .as_deref()
        .and_then(parse_number)
        .ok_or_else(|| err("type= is not a number".into()))?;
    if ty != 11 {
        return Ok(());
    }
    // QEMU reads value= and path= items in the order given (save_opt_list walks the list).
    for item in items.iter().filter(|i| i.key != "type") {
        match (item.key.as_str(), &item.value) {
            ("value", Some(v)) => out
                .oem_strings
                .push((SecretBytes::from_slice(v), ArgvSource::Value)),
            ("path", Some(p)) => {
                if let Some(fd) = fd_of_path(p) {
                    out.inherited_fds.push(fd);
                }
                let path = PathBuf::from(OsStr::from_bytes(p));
                let bytes = read_path_string(&path)?;
                out.oem_strings.push((bytes, ArgvSource::Path(path)));
            }
            (k, _) => {
                return Err(err(format!(
                    "type 11 takes only value= and path=, not {k:?}"
                )));
            }
        }
    }
    Ok(())
}

fn collect_fds(option: &str, arg: &[u8], out: &mut QemuArgv) {
    for item in split_items(arg) {
        let Some(v) = &item.value else { continue };
        if FD_KEYS.contains(&item.key.as_str()) {
            for n in v.split(|&b| b == b':') {
                if let Some(fd) = std::str::from_utf8(n).ok().and_then(|s| s.parse().ok()) {
                    out.inherited_fds.push(fd);
                }
            }
        } else if option != "smbios" {
            if let Some(fd) = fd_of_path(v) {
                out.inherited_fds.push(fd);
            }
        }
    }
}

/// An option's `key=` value, or its leading bare item, which QEMU takes as that key
/// (`-machine q35` is `type=q35`, `-device vhost-vsock-pci` is `driver=vhost-vsock-pci`).
fn implied(items: &[Item], key: &str) -> Option<String> {
    items
        .iter()
        .find(|i| i.key == key)
        .and_then(|i| i.value.clone())
        .or_else(|| {
            items
                .first()
                .filter(|i| i.value.is_none())
                .map(|i| i.key.clone().into_bytes())
        })
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// `-device` in either syntax: `DRIVER,key=value,...` (or `driver=DRIVER,...`) or, since QEMU
/// 6.2, a JSON object.
fn device(arg: &[u8], out: &mut QemuArgv) {
    let (driver, guest_cid) = if arg.first() == Some(&b'{') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(arg) else {
            return;
        };
        (
            v.get("driver")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            v.get("guest-cid").and_then(serde_json::Value::as_u64),
        )
    } else {
        let items = split_items(arg);
        let driver = implied(&items, "driver");
        let cid = items
            .iter()
            .rev()
            .find(|i| i.key == "guest-cid")
            .and_then(|i| i.value.as_deref())
            .and_then(parse_number);
        (driver, cid)
    };
    let Some(driver) = driver else { return };
    if VHOST_VSOCK_DRIVERS.contains(&driver.as_str()) {
        if out.vsock.is_none() {
            out.vsock = Some(ArgvVsock { driver, guest_cid });
        }
    } else if driver.starts_with("vhost-user-vsock") {
        out.vhost_user_vsock = true;
    }
}

/// Reads the argv given after the program. Reads `-smbios type=11,path=` files (to learn
/// their strings); starts and creates nothing.
pub fn parse_argv(args: &[OsString]) -> Result<QemuArgv, ArgvError> {
    let mut out = QemuArgv::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_bytes();
        i += 1;
        let Some(name) = a.strip_prefix(b"--").or_else(|| a.strip_prefix(b"-")) else {
            // A bare argument is the disk image (-hda); nothing of ours.
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if NO_ARGUMENT.contains(&name.as_str()) {
            match name.as_str() {
                "daemonize" => return Err(ArgvError::Daemonize),
                "S" => out.start_paused = true,
                "no-shutdown" => out.no_shutdown = true,
                "no-reboot" => out.no_reboot = true,
                "no-acpi" => out.acpi_off = true,
                _ => {}
            }
            continue;
        }
        let Some(arg) = args.get(i) else {
            return Err(ArgvError::MissingArgument {
                option: String::from_utf8_lossy(a).into_owned(),
            });
        };
        i += 1;
        let arg = arg.as_bytes();
        match name.as_str() {
            "smbios" => smbios(arg, &mut out)?,
            "qmp" | "qmp-pretty" | "mon" | "monitor" => {
                out.monitors.push(format!("-{name} {}", short(arg)))
            }
            "chardev" => {
                let items = split_items(arg);
                if items
                    .iter()
                    .any(|i| i.key == "id" && i.value.as_deref() == Some(QMP_CHARDEV_ID.as_bytes()))
                {
                    return Err(ArgvError::ChardevIdTaken);
                }
            }
            "device" => device(arg, &mut out),
            // `-fw_cfg [name=]NAME,file=PATH|string=STR`.
            "fw_cfg" => {
                if let Some(n) = implied(&split_items(arg), "name") {
                    out.fw_cfg_names.push(n);
                }
            }
            "machine" | "M" => {
                let items = split_items(arg);
                if let Some(t) = implied(&items, "type") {
                    out.machine = Some(t);
                }
                if items
                    .iter()
                    .any(|i| i.key == "acpi" && i.value.as_deref() == Some(b"off".as_slice()))
                {
                    out.acpi_off = true;
                }
            }
            _ => {}
        }
        collect_fds(&name, arg, &mut out);
    }
    out.inherited_fds.sort_unstable();
    out.inherited_fds.dedup();
    Ok(out)
}

/// The child's arguments after argv[0]: the user's argv unchanged, then the vhost-vsock device
/// credbridge adds (`vsock`: guest CID and the `/dev/vhost-vsock` fd that holds it), then one
/// `-smbios type=11,path=/dev/fd/N` per string credbridge adds (`smbios_fds`, in order), then
/// credbridge's QMP monitor on `qmp_fd`. Pure, so `render` can call it with placeholder fd
/// numbers; nothing secret is in it.
pub fn child_args<F: std::fmt::Display>(
    user_args: &[OsString],
    vsock: Option<(u32, F)>,
    machine: Option<&str>,
    smbios_fds: &[F],
    fw_cfg: &[(String, F)],
    qmp_fd: F,
) -> Vec<OsString> {
    let mut args = user_args.to_vec();
    if let Some((cid, fd)) = vsock {
        // The microvm machine has no PCI bus unless pcie=on; its devices sit on virtio-mmio.
        let driver = if machine == Some("microvm") {
            "vhost-vsock-device"
        } else {
            "vhost-vsock-pci"
        };
        args.push("-device".into());
        args.push(format!("{driver},guest-cid={cid},vhostfd={fd}").into());
    }
    for fd in smbios_fds {
        args.push("-smbios".into());
        args.push(format!("type=11,path=/dev/fd/{fd}").into());
    }
    // QEMU 7.2 reads a -fw_cfg file= whole at start (g_file_get_contents), like -smbios path=.
    for (name, fd) in fw_cfg {
        let mut a = b"name=".to_vec();
        a.extend(escape_value(name.as_bytes()));
        a.extend(format!(",file=/dev/fd/{fd}").as_bytes());
        args.push("-fw_cfg".into());
        args.push(OsString::from_vec(a));
    }
    // A connected socketpair end works as a client-mode socket chardev (QEMU 7.2: `fd=` of
    // an already connected stream socket; checked with qmp_capabilities, query-status and
    // quit). No path on disk, nobody else can connect, and no listen/accept race.
    args.push("-chardev".into());
    args.push(format!("socket,id={QMP_CHARDEV_ID},fd={qmp_fd}").into());
    args.push("-mon".into());
    args.push(format!("chardev={QMP_CHARDEV_ID},mode=control").into());
    args
}

/// Everything created for one QEMU start. Keep it alive until the child is spawned, then
/// drop [`Launch::memfds`] and [`Launch::qmp_child`] (the child has its own copies).
#[derive(Debug)]
pub struct Launch {
    /// The child's arguments after argv[0] (see [`child_args`]).
    pub args: Vec<OsString>,
    /// One sealed memfd per string credbridge adds, in SMBIOS order. Close-on-exec here.
    pub memfds: Vec<OwnedFd>,
    /// Credbridge's end of the QMP socketpair, for [`crate::hypervisor::qemu::qmp::Qmp::connect`].
    pub qmp: UnixStream,
    /// The child's end of the QMP socketpair (`-chardev socket,fd=N`).
    pub qmp_child: OwnedFd,
    /// The `/dev/vhost-vsock` fd holding the guest's CID (`--vsock-cid`), for QEMU's
    /// `vhostfd=`. Dropped with the memfds.
    pub vhost: Option<OwnedFd>,
    /// The fds whose close-on-exec flag the child must clear (`sys::prepare_child`'s `keep`):
    /// the memfds, the vhost fd, the child's QMP end and the argv's own inherited fds.
    pub keep: Vec<RawFd>,
}

/// Creates one sealed memfd per string that is not the argv's own (origin other than
/// [`Origin::Argv`]), in order, and the QMP socketpair, and builds the child's arguments.
///
/// `strings` is the validated list in SMBIOS order (the argv's own first, as
/// [`QemuArgv::argv_oem_strings`] gives them); the argv's strings are skipped because QEMU
/// already gets them from its own `-smbios` options.
pub fn launch(
    user_args: &[OsString],
    parsed: &QemuArgv,
    strings: &[OemString],
    fw_cfg: &[FwCfgItem],
    vhost: Option<(u32, OwnedFd)>,
) -> io::Result<Launch> {
    let mut memfds = Vec::new();
    for (i, s) in strings.iter().filter(|s| !s.is_from_argv()).enumerate() {
        memfds.push(crate::sys::sealed_memfd(
            &format!("credbridge-oem-{i}"),
            s.expose(),
        )?);
    }
    let smbios_count = memfds.len();
    for (i, item) in fw_cfg.iter().enumerate() {
        memfds.push(crate::sys::sealed_memfd(
            &format!("credbridge-fwcfg-{i}"),
            item.expose(),
        )?);
    }
    let (ours, theirs) = UnixStream::pair()?;
    let qmp_child = OwnedFd::from(theirs);
    let fds: Vec<RawFd> = memfds.iter().map(AsRawFd::as_raw_fd).collect();
    let fw_cfg_fds: Vec<(String, RawFd)> = fw_cfg
        .iter()
        .zip(&fds[smbios_count..])
        .map(|(item, fd)| (item.name(), *fd))
        .collect();
    let vsock = vhost.as_ref().map(|(cid, fd)| (*cid, fd.as_raw_fd()));
    let args = child_args(
        user_args,
        vsock,
        parsed.machine.as_deref(),
        &fds[..smbios_count],
        &fw_cfg_fds,
        qmp_child.as_raw_fd(),
    );
    let mut keep = fds;
    keep.push(qmp_child.as_raw_fd());
    keep.extend(vsock.map(|(_, fd)| fd));
    keep.extend(&parsed.inherited_fds);
    Ok(Launch {
        args,
        memfds,
        qmp: ours,
        qmp_child,
        vhost: vhost.map(|(_, fd)| fd),
        keep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn items_split_at_single_commas_only() {
        let items = split_items(b"type=11,value=a,,b,,,c=d,flag");
        assert_eq!(
            items,
            vec![
                Item {
                    key: "type".into(),
                    value: Some(b"11".to_vec())
                },
                Item {
                    key: "value".into(),
                    value: Some(b"a,b,".to_vec())
                },
                Item {
                    key: "c".into(),
                    value: Some(b"d".to_vec())
                },
                Item {
                    key: "flag".into(),
                    value: None
                },
            ]
        );
        assert_eq!(escape_value(b"a,b,,c"), b"a,,b,,,,c");
        assert_eq!(
            split_items(&[b"value=".as_slice(), &escape_value(b",x,")].concat())[0]
                .value
                .as_deref(),
            Some(b",x,".as_slice())
        );
    }

    #[test]
    fn recognises_qemu_by_file_name() {
        assert!(is_qemu(OsStr::new("qemu-system-x86_64")));
        assert!(is_qemu(OsStr::new("/nix/store/x/bin/qemu-system-aarch64")));
        assert!(is_qemu(OsStr::new("qemu-kvm")));
        assert!(!is_qemu(OsStr::new("cloud-hypervisor")));
        assert!(!is_qemu(OsStr::new("/usr/bin/qemu-img")));
    }

    #[test]
    fn reads_the_argvs_own_type_11_strings_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, b"io.systemd.credential:f=from, file\n").unwrap();
        let args = vec![
            OsString::from("-smbios"),
            OsString::from("type=1,serial=x"),
            OsString::from("--smbios"),
            OsString::from(
                "type=11,value=io.systemd.credential:a=1,,2,path=".to_owned() + f.to_str().unwrap(),
            ),
            OsString::from("-append"),
            OsString::from("-smbios type=11,value=not-an-option"),
            OsString::from("-smbios"),
            OsString::from("type=0xb,value=last"),
        ];
        let p = parse_argv(&args).unwrap();
        let got: Vec<&[u8]> = p.oem_strings.iter().map(|(b, _)| &b[..]).collect();
        assert_eq!(
            got,
            vec![
                b"io.systemd.credential:a=1,2".as_slice(),
                b"io.systemd.credential:f=from, file\n",
                b"last"
            ]
        );
        assert_eq!(p.oem_strings[1].1, ArgvSource::Path(f));
        // SecretBytes' Debug hides the bytes; a plain Vec<u8> would print them as numbers.
        let shown = format!("{p:?}");
        let as_numbers = format!("{:?}", &p.oem_strings[1].0[..8]);
        let as_numbers = as_numbers.trim_matches(|c| c == '[' || c == ']');
        assert!(
            !shown.contains(as_numbers),
            "Debug shows no content: {shown}"
        );
        let o = p.argv_oem_strings();
        assert_eq!(o[0].origin, Origin::Argv);
        assert_eq!(o[0].guest_name.as_deref(), Some("a"));
        // A file's string is checked like the others but never shown.
        assert!(matches!(o[1].origin, Origin::ArgvFile(_)));
        assert_eq!(o[1].guest_name.as_deref(), Some("f"));
    }

    #[test]
    fn refuses_what_would_break_delivery_or_supervision() {
        assert!(matches!(
            parse_argv(&os(&["-m", "1G", "-daemonize"])),
            Err(ArgvError::Daemonize)
        ));
        assert!(matches!(
            parse_argv(&os(&["-kernel"])),
            Err(ArgvError::MissingArgument { .. })
        ));
        assert!(matches!(
            parse_argv(&os(&["-smbios", "type=11,vaule=x"])),
            Err(ArgvError::Smbios { .. })
        ));
        assert!(matches!(
            parse_argv(&os(&["-chardev", "socket,id=credbridge-qmp,path=/x"])),
            Err(ArgvError::ChardevIdTaken)
        ));
        let e = parse_argv(&os(&["-smbios", "type=11,path=/nonexistent/x"])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read -smbios type=11,path=/nonexistent/x"),
            "{e}"
        );
        let e = parse_argv(&os(&["-smbios", "type=11,path=/dev/null"])).unwrap_err();
        assert!(
            matches!(
                e,
                ArgvError::PathNotRegular {
                    kind: "character device",
                    ..
                }
            ),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let nul = dir.path().join("nul");
        std::fs::write(&nul, b"ab\0c").unwrap();
        let e = parse_argv(&[
            OsString::from("-smbios"),
            format!("type=11,path={}", nul.display()).into(),
        ])
        .unwrap_err();
        assert!(matches!(e, ArgvError::PathNul { offset: 2, .. }));

        // A binary type 11 structure: header (type 11, length 5, handle), count, strings.
        let blob = dir.path().join("t11.bin");
        std::fs::write(&blob, b"\x0b\x05\x00\x0b\x01abc\0\0").unwrap();
        let e = parse_argv(&[
            OsString::from("-smbios"),
            format!("file={}", blob.display()).into(),
        ])
        .unwrap_err();
        assert!(matches!(e, ArgvError::BinaryType11 { .. }));
        let t1 = dir.path().join("t1.bin");
        std::fs::write(&t1, b"\x01\x04\x00\x01\0\0\x0b\x05\x00\x0b\x01x\0\0").unwrap();
        assert!(
            matches!(
                parse_argv(&[
                    OsString::from("-smbios"),
                    format!("file={}", t1.display()).into()
                ]),
                Err(ArgvError::BinaryType11 { .. })
            ),
            "a type 11 after another structure in the same blob"
        );
    }

    #[test]
    fn smbios_file_is_checked_like_path() {
        // Regression (#11): `file=/dev/zero` was read until memory ran out, and `file=` a FIFO
        // blocked in open(2) forever.
        let smbios = |arg: String| parse_argv(&[OsString::from("-smbios"), arg.into()]);
        let e = smbios("file=/dev/zero".into()).unwrap_err();
        assert!(
            matches!(
                e,
                ArgvError::PathNotRegular {
                    key: "file",
                    kind: "character device",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("-smbios file=/dev/zero is a character device"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for arg in [
            format!("file={}", fifo.display()),
            format!("type=11,path={}", fifo.display()),
        ] {
            let e = smbios(arg.clone()).unwrap_err();
            assert!(
                matches!(
                    e,
                    ArgvError::PathNotRegular {
                        kind: "FIFO or pipe",
                        ..
                    }
                ),
                "{arg}: {e}"
            );
        }
        let e = smbios(format!("file={}", dir.path().join("missing").display())).unwrap_err();
        assert!(matches!(e, ArgvError::ReadPath { key: "file", .. }), "{e}");
        // Nothing larger than all of QEMU's SMBIOS tables is read, for either key.
        let big = dir.path().join("big");
        std::fs::write(
            &big,
            vec![b'a'; crate::hypervisor::qemu::SMBIOS_TABLES_MAX + 1],
        )
        .unwrap();
        for (arg, key) in [
            (format!("file={}", big.display()), "file"),
            (format!("type=11,path={}", big.display()), "type=11,path"),
        ] {
            let e = smbios(arg).unwrap_err();
            assert!(
                matches!(e, ArgvError::TooLarge { key: k, size: 65536, .. } if k == key),
                "{e}"
            );
            assert!(e.to_string().contains("65535"), "{e}");
        }
        let fits = dir.path().join("fits");
        std::fs::write(
            &fits,
            vec![b'a'; crate::hypervisor::qemu::SMBIOS_TABLES_MAX],
        )
        .unwrap();
        assert!(smbios(format!("file={}", fits.display())).is_ok());
    }

    #[test]
    fn finds_monitors_flags_machine_and_fds() {
        let p = parse_argv(&os(&[
            "-M",
            "q35,accel=kvm",
            "-S",
            "-no-shutdown",
            "-qmp",
            "unix:/run/vm/qmp.sock,server,wait=off",
            "-netdev",
            "tap,id=n0,fd=7,vhostfds=9:10",
            "-add-fd",
            "fd=12,set=1",
            "-drive",
            "file=/dev/fd/13,if=virtio",
            "disk.img",
        ]))
        .unwrap();
        assert!(p.start_paused && p.no_shutdown && !p.no_reboot);
        assert_eq!(p.machine.as_deref(), Some("q35"));
        assert_eq!(
            p.monitors,
            vec!["-qmp unix:/run/vm/qmp.sock,server,wait=off"]
        );
        assert_eq!(p.inherited_fds, vec![7, 9, 10, 12, 13]);
        let p = parse_argv(&os(&["-machine", "type=pc"])).unwrap();
        assert_eq!(p.machine.as_deref(), Some("pc"));
        assert!(!p.acpi_off);
        assert!(parse_argv(&os(&["-no-acpi"])).unwrap().acpi_off);
        assert!(parse_argv(&os(&["-M", "q35,acpi=off"])).unwrap().acpi_off);
        // microvm.nix's default QEMU machine line (#15: the plan chooses fw_cfg for it).
        let p = parse_argv(&os(&[
            "-M",
            "microvm,x-option-roms=off,isa-serial=off,pit=off,pic=off,rtc=off",
        ]))
        .unwrap();
        assert_eq!(p.machine.as_deref(), Some("microvm"));
    }

    #[test]
    fn child_args_append_strings_then_the_monitor() {
        let tail = [
            "-smbios",
            "type=11,path=/dev/fd/5",
            "-smbios",
            "type=11,path=/dev/fd/6",
            "-chardev",
            "socket,id=credbridge-qmp,fd=7",
            "-mon",
            "chardev=credbridge-qmp,mode=control",
        ];
        let a = child_args(&os(&["-m", "1G"]), None, None, &[5, 6], &[], 7);
        assert_eq!(a, os(&[&["-m", "1G"][..], &tail].concat()));
        // credbridge's vhost-vsock device comes right after the user's argv.
        let a = child_args(&os(&["-m", "1G"]), Some((42, 4)), None, &[5, 6], &[], 7);
        let device = [
            "-m",
            "1G",
            "-device",
            "vhost-vsock-pci,guest-cid=42,vhostfd=4",
        ];
        assert_eq!(a, os(&[&device[..], &tail].concat()));
        // On the microvm machine (no PCI bus) it is the virtio-mmio one.
        let a = child_args(&[], Some((42, 4)), Some("microvm"), &[], &[], 7);
        assert_eq!(a[1], "vhost-vsock-device,guest-cid=42,vhostfd=4");
    }

    #[test]
    fn fw_cfg_files_follow_the_smbios_strings_with_commas_escaped() {
        let fw = [
            ("opt/io.systemd.credentials/a".to_owned(), 8),
            ("opt/io.systemd.credentials/b,c".to_owned(), 9),
        ];
        let a = child_args(&[], None, Some("microvm"), &[5], &fw, 7);
        let text: Vec<String> = a.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            text[..6],
            [
                "-smbios",
                "type=11,path=/dev/fd/5",
                "-fw_cfg",
                "name=opt/io.systemd.credentials/a,file=/dev/fd/8",
                "-fw_cfg",
                "name=opt/io.systemd.credentials/b,,c,file=/dev/fd/9",
            ]
        );
    }

    #[test]
    fn launch_makes_one_memfd_per_added_string() {
        let strings = vec![
            OemString::public("io.systemd.credential:argv=1", Origin::Argv),
            OemString::public("io.systemd.credential:flag=2", Origin::Flag),
            OemString::public("io.systemd.credential:x=a,b\n", Origin::Flag),
        ];
        let parsed = parse_argv(&os(&[
            "-smbios",
            "type=11,value=io.systemd.credential:argv=1",
        ]))
        .unwrap();
        let l = launch(
            &os(&["-smbios", "type=11,value=io.systemd.credential:argv=1"]),
            &parsed,
            &strings,
            &[],
            None,
        )
        .unwrap();
        assert!(l.vhost.is_none());
        assert_eq!(l.memfds.len(), 2);
        for (fd, s) in l.memfds.iter().zip(&strings[1..]) {
            let back = std::fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            assert_eq!(back, s.expose());
        }
        assert_eq!(l.keep.len(), 3);
        assert!(l.keep.contains(&l.qmp_child.as_raw_fd()));
        let text: Vec<String> = l
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            text.iter()
                .filter(|a| a.starts_with("type=11,path=/dev/fd/"))
                .count(),
            2
        );
        assert!(
            !text.iter().any(|a| a.contains("flag=2")),
            "no value in argv"
        );
    }

    #[test]
    fn vsock_devices_in_both_syntaxes() {
        let v = |a: &[&str]| parse_argv(&os(a)).unwrap();
        // microvm.nix's runner, PCI and non-PCI.
        let p = v(&["-device", "vhost-vsock-pci,guest-cid=5"]);
        assert_eq!(
            p.vsock,
            Some(ArgvVsock {
                driver: "vhost-vsock-pci".into(),
                guest_cid: Some(5)
            })
        );
        assert_eq!(
            v(&["-device", "vhost-vsock-device,guest-cid=0x10"])
                .vsock
                .unwrap()
                .guest_cid,
            Some(16)
        );
        assert_eq!(
            v(&[
                "-device",
                "driver=vhost-vsock-pci,id=v0,guest-cid=7,vhostfd=3"
            ])
            .vsock
            .unwrap()
            .guest_cid,
            Some(7)
        );
        let j = v(&["-device", r#"{"driver":"vhost-vsock-pci","guest-cid":9}"#]);
        assert_eq!(j.vsock.unwrap().guest_cid, Some(9));
        // Missing or garbled guest-cid is kept as None for the plan to explain.
        assert_eq!(
            v(&["-device", "vhost-vsock-pci"]).vsock.unwrap().guest_cid,
            None
        );
        assert_eq!(
            v(&["-device", "vhost-vsock-pci,guest-cid=x"])
                .vsock
                .unwrap()
                .guest_cid,
            None
        );
        // The first device counts.
        let two = v(&[
            "-device",
            "vhost-vsock-pci,guest-cid=3",
            "-device",
            "vhost-vsock-pci,guest-cid=4",
        ]);
        assert_eq!(two.vsock.unwrap().guest_cid, Some(3));
        // Not kernel vhost-vsock.
        let u = v(&["-device", "vhost-user-vsock-pci,chardev=c0"]);
        assert!(u.vsock.is_none() && u.vhost_user_vsock);
        let n = v(&[
            "-device",
            "virtio-net-pci,netdev=n0",
            "-netdev",
            "user,id=n0",
        ]);
        assert!(n.vsock.is_none() && !n.vhost_user_vsock);
        // vhostfd= of the argv's own device is an inherited fd like any other.
        let f = v(&["-device", "vhost-vsock-pci,guest-cid=3,vhostfd=3"]);
        assert_eq!(f.inherited_fds, vec![3]);
    }

    #[test]
    fn the_microvm_build_defaults_to_the_machine_without_smbios() {
        assert_eq!(
            default_machine(OsStr::new("/usr/bin/qemu-system-x86_64-microvm")),
            Some("microvm")
        );
        assert_eq!(default_machine(OsStr::new("qemu-system-x86_64")), None);
        assert_eq!(default_machine(OsStr::new("qemu-kvm")), None);
    }
}
