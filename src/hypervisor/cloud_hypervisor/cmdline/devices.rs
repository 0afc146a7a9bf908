//! The device options of a CH 54 command line (`--disk`, `--net`, `--fs`, `--console`, ...),
//! each read into the JSON object CH serializes for it, PCI keys flattened in.

use std::net::IpAddr;
use std::os::fd::RawFd;

use serde::Serialize;

use super::common::{
    BUCKET_KEYS, PCI3, PCI4, PciCommon, RateLimiter, Result, grammar, invalid, options, required,
};
use super::grammar::{Options, parse_integer_list};

#[derive(Serialize, Debug)]
pub(crate) struct QueueAffinity {
    pub queue_index: u16,
    pub host_cpus: Vec<usize>,
}

#[derive(Serialize, Debug)]
pub(crate) struct Disk {
    #[serde(flatten)]
    pub pci: PciCommon,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub readonly: bool,
    pub direct: bool,
    pub num_queues: usize,
    pub queue_size: u16,
    pub vhost_user: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<RateLimiter>,
    pub disable_io_uring: bool,
    pub disable_aio: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_affinity: Option<Vec<QueueAffinity>>,
    pub backing_files: bool,
    pub sparse: bool,
    pub image_type: &'static str,
    pub lock_granularity: &'static str,
}

impl Disk {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--disk";
        let mut keys = vec![
            "path",
            "readonly",
            "direct",
            "queue_size",
            "num_queues",
            "vhost_user",
            "socket",
            "_disable_io_uring",
            "_disable_aio",
            "serial",
            "rate_limit_group",
            "queue_affinity",
            "backing_files",
            "sparse",
            "image_type",
            "lock_granularity",
        ];
        keys.extend_from_slice(BUCKET_KEYS);
        let o = options(OPT, input, &keys, PCI4)?;
        let err = grammar(OPT);
        let vhost_socket = o.get("socket");
        // CH does not even look at image_type for a vhost-user disk.
        let image_type = match vhost_socket {
            Some(_) => None,
            None => o
                .scalar_with("image_type", "raw|qcow2|vhd|vhdx|vmdk", |s| {
                    match s.to_lowercase().as_str() {
                        "vmdk" => Some("FlatVmdk"),
                        "vhd" => Some("FixedVhd"),
                        "qcow2" => Some("Qcow2"),
                        "raw" => Some("Raw"),
                        "vhdx" => Some("Vhdx"),
                        _ => None,
                    }
                })
                .map_err(&err)?,
        };
        Ok(Self {
            path: o.get("path"),
            readonly: o.toggle("readonly").map_err(&err)?.unwrap_or(false),
            direct: o.toggle("direct").map_err(&err)?.unwrap_or(false),
            queue_size: o
                .scalar("queue_size", "a queue size")
                .map_err(&err)?
                .unwrap_or(128),
            num_queues: o
                .scalar("num_queues", "a queue count")
                .map_err(&err)?
                .unwrap_or(1),
            vhost_user: o.toggle("vhost_user").map_err(&err)?.unwrap_or(false),
            disable_io_uring: o
                .toggle("_disable_io_uring")
                .map_err(&err)?
                .unwrap_or(false),
            disable_aio: o.toggle("_disable_aio").map_err(&err)?.unwrap_or(false),
            rate_limit_group: o.get("rate_limit_group"),
            rate_limiter_config: RateLimiter::parse(OPT, &o)?.any(),
            serial: o.get("serial"),
            queue_affinity: o
                .tuple_list::<u16, Vec<usize>>("queue_affinity", parse_integer_list::<usize>)
                .map_err(&err)?
                .map(|list| {
                    list.into_iter()
                        .map(|(queue_index, host_cpus)| QueueAffinity {
                            queue_index,
                            host_cpus,
                        })
                        .collect()
                }),
            backing_files: o.toggle("backing_files").map_err(&err)?.unwrap_or(false),
            image_type: image_type.unwrap_or("Unknown"),
            lock_granularity: o
                .scalar_with("lock_granularity", "byte-range|full", |s| match s {
                    "byte-range" => Some("ByteRange"),
                    "full" => Some("Full"),
                    _ => None,
                })
                .map_err(&err)?
                .unwrap_or("ByteRange"),
            sparse: o.toggle("sparse").map_err(&err)?.unwrap_or(true),
            vhost_socket,
            pci: PciCommon::parse(OPT, input)?,
        })
    }
}

/// `xx:xx:xx:xx:xx:xx`, written back in lower case as CH does.
fn parse_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut bytes = Vec::with_capacity(6);
    for part in parts {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        bytes.push(u8::from_str_radix(part, 16).ok()?);
    }
    Some(
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[derive(Serialize, Debug)]
pub(crate) struct Net {
    #[serde(flatten)]
    pub pci: PciCommon,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    pub num_queues: usize,
    pub queue_size: u16,
    pub vhost_user: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<String>,
    pub vhost_mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<RawFd>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<RateLimiter>,
    pub offload_tso: bool,
    pub offload_ufo: bool,
    pub offload_csum: bool,
}

impl Net {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--net";
        let mut keys = vec![
            "tap",
            "ip",
            "mask",
            "mac",
            "host_mac",
            "offload_tso",
            "offload_ufo",
            "offload_csum",
            "mtu",
            "queue_size",
            "num_queues",
            "vhost_user",
            "socket",
            "vhost_mode",
            "fd",
        ];
        keys.extend_from_slice(BUCKET_KEYS);
        let o = options(OPT, input, &keys, PCI4)?;
        let err = grammar(OPT);
        Ok(Self {
            tap: o.get("tap"),
            ip: o.scalar("ip", "an IP address").map_err(&err)?,
            mask: o.scalar("mask", "an IP address").map_err(&err)?,
            mac: o
                .scalar_with("mac", "a MAC address", parse_mac)
                .map_err(&err)?,
            host_mac: o
                .scalar_with("host_mac", "a MAC address", parse_mac)
                .map_err(&err)?,
            offload_tso: o.toggle("offload_tso").map_err(&err)?.unwrap_or(true),
            offload_ufo: o.toggle("offload_ufo").map_err(&err)?.unwrap_or(true),
            offload_csum: o.toggle("offload_csum").map_err(&err)?.unwrap_or(true),
            mtu: o.scalar("mtu", "an MTU").map_err(&err)?,
            queue_size: o
                .scalar("queue_size", "a queue size")
                .map_err(&err)?
                .unwrap_or(256),
            num_queues: o
                .scalar("num_queues", "a queue count")
                .map_err(&err)?
                .unwrap_or(2),
            vhost_user: o.toggle("vhost_user").map_err(&err)?.unwrap_or(false),
            vhost_socket: o.get("socket"),
            vhost_mode: o
                .scalar_with("vhost_mode", "client|server", |s| {
                    match s.to_lowercase().as_str() {
                        "client" => Some("Client"),
                        "server" => Some("Server"),
                        _ => None,
                    }
                })
                .map_err(&err)?
                .unwrap_or("Client"),
            // CH truncates with `as i32` (fd=[4294967299] is fd 3).
            fds: o
                .integer_list::<u64>("fd")
                .map_err(&err)?
                .map(|fds| fds.into_iter().map(|fd| fd as RawFd).collect()),
            rate_limiter_config: RateLimiter::parse(OPT, &o)?.any(),
            pci: PciCommon::parse(OPT, input)?,
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Rng {
    #[serde(flatten)]
    pub pci: PciCommon,
    pub src: String,
}

impl Rng {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--rng";
        let o = options(OPT, input, &["src"], PCI4)?;
        Ok(Self {
            src: o.get("src").unwrap_or_else(|| "/dev/urandom".into()),
            pci: PciCommon::parse(OPT, input)?,
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Rtc {
    #[serde(flatten)]
    pub pci: PciCommon,
}

#[derive(Serialize, Debug)]
pub(crate) struct Balloon {
    #[serde(flatten)]
    pub pci: PciCommon,
    pub size: u64,
    pub deflate_on_oom: bool,
    pub free_page_reporting: bool,
}

impl Balloon {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--balloon";
        let o = options(
            OPT,
            input,
            &["size", "deflate_on_oom", "free_page_reporting"],
            PCI4,
        )?;
        let err = grammar(OPT);
        Ok(Self {
            size: o.byte_sized("size").map_err(&err)?.unwrap_or(0),
            deflate_on_oom: o.toggle("deflate_on_oom").map_err(&err)?.unwrap_or(false),
            free_page_reporting: o
                .toggle("free_page_reporting")
                .map_err(&err)?
                .unwrap_or(false),
            pci: PciCommon::parse(OPT, input)?,
        })
    }
}

/// virtio-fs tags longer than this do not fit the device's config space.
const FS_TAG_MAX: usize = 36;

#[derive(Serialize, Debug)]
pub(crate) struct Fs {
    #[serde(flatten)]
    pub pci: PciCommon,
    pub tag: String,
    pub socket: String,
    pub num_queues: usize,
    pub queue_size: u16,
}

impl Fs {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--fs";
        let o = options(
            OPT,
            input,
            &["tag", "queue_size", "num_queues", "socket"],
            PCI3,
        )?;
        let err = grammar(OPT);
        let tag = required(OPT, o.get("tag"), "tag")?;
        if tag.len() > FS_TAG_MAX {
            return Err(invalid(
                OPT,
                format!("`tag` is longer than {FS_TAG_MAX} bytes"),
            ));
        }
        Ok(Self {
            tag,
            socket: required(OPT, o.get("socket"), "socket")?,
            queue_size: o
                .scalar("queue_size", "a queue size")
                .map_err(&err)?
                .unwrap_or(1024),
            num_queues: o
                .scalar("num_queues", "a queue count")
                .map_err(&err)?
                .unwrap_or(1),
            pci: PciCommon::parse(OPT, input)?,
        })
    }
}

/// virtio device type names as CH 54 accepts them for `device_type=`.
const VIRTIO_TYPES: &[(&str, u32)] = &[
    ("net", 1),
    ("block", 2),
    ("console", 3),
    ("rng", 4),
    ("balloon", 5),
    ("iomem", 6),
    ("rpmsg", 7),
    ("scsi", 8),
    ("9p", 9),
    ("mac80211_wlan", 10),
    ("rproc_serial", 11),
    ("caif", 12),
    ("memory_balloon", 13),
    ("gpu", 16),
    ("clock", 17),
    ("input", 18),
    ("vsock", 19),
    ("crypto", 20),
    ("signal_dist", 21),
    ("pstore", 22),
    ("iommu", 23),
    ("mem", 24),
    ("sound", 25),
    ("fs", 26),
    ("pmem", 27),
    ("rpmb", 28),
    ("mac80211_hwsim", 29),
    ("video_encoder", 30),
    ("video_decoder", 31),
    ("scmi", 32),
    ("nitro_sec_mod", 33),
    ("i2c", 34),
    ("watchdog", 35),
    ("can", 36),
    ("dmabuf", 37),
    ("param_serv", 38),
    ("audio_policy", 39),
    ("bt", 40),
    ("gpio", 41),
    ("rdma", 42),
    ("camera", 43),
    ("ism", 44),
    ("spi", 45),
    ("tee", 46),
    ("cpu_balloon", 47),
    ("media", 48),
    ("usb", 49),
];
const VIRTIO_ID_IOMMU: u32 = 23;
const VIRTIO_ID_WATCHDOG: u32 = 35;

#[derive(Serialize, Debug)]
pub(crate) struct GenericVhostUser {
    #[serde(flatten)]
    pub pci: PciCommon,
    pub socket: String,
    pub queue_sizes: Vec<u16>,
    pub device_type: u32,
}

impl GenericVhostUser {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--generic-vhost-user";
        let o = options(
            OPT,
            input,
            &["device_type", "virtio_id", "queue_sizes", "socket"],
            PCI3,
        )?;
        let err = grammar(OPT);
        let socket = required(OPT, o.get("socket"), "socket")?;
        let queue_sizes = o
            .integer_list::<u16>("queue_sizes")
            .map_err(&err)?
            .ok_or_else(|| invalid(OPT, "`queue_sizes` is required"))?;
        // `virtio_id` is the deprecated spelling; `device_type` wins.
        let name = o
            .get("device_type")
            .or_else(|| o.get("virtio_id"))
            .ok_or_else(|| invalid(OPT, "`device_type` is required"))?;
        let device_type = match VIRTIO_TYPES.iter().find(|(n, _)| *n == name) {
            Some(&(_, id)) => id,
            // Decimal ids are allowed, but not with a leading zero.
            None if name.starts_with(|c: char| ('1'..='9').contains(&c)) => name
                .parse()
                .map_err(|_| invalid(OPT, "`device_type` is not a known virtio device"))?,
            None => return Err(invalid(OPT, "`device_type` is not a known virtio device")),
        };
        if device_type == VIRTIO_ID_WATCHDOG || device_type == VIRTIO_ID_IOMMU {
            return Err(invalid(
                OPT,
                "this `device_type` cannot be implemented via vhost-user",
            ));
        }
        Ok(Self {
            socket,
            queue_sizes,
            device_type,
            pci: PciCommon::parse(OPT, input)?,
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Pmem {
    #[serde(flatten)]
    pub pci: PciCommon,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub discard_writes: bool,
}

impl Pmem {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--pmem";
        let o = options(OPT, input, &["size", "file", "discard_writes"], PCI4)?;
        let err = grammar(OPT);
        let pci = PciCommon::parse(OPT, input)?;
        Ok(Self {
            pci,
            file: required(OPT, o.get("file"), "file")?,
            size: o.byte_sized("size").map_err(&err)?,
            discard_writes: o.toggle("discard_writes").map_err(&err)?.unwrap_or(false),
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct ConsoleCommon {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

const CONSOLE_MODES: &[&str] = &["off", "pty", "tty", "null"];

impl ConsoleCommon {
    /// The first of `off, pty, tty, null, file=, socket=` that is present decides; the others
    /// are ignored (`null,tty` is a tty).
    fn from_options(option: &str, o: &Options, socket_allowed: bool) -> Result<Self> {
        let mode = ["off", "pty", "tty", "null"]
            .into_iter()
            .zip(["Off", "Pty", "Tty", "Null"])
            .find(|(key, _)| o.is_set(key))
            .map(|(_, mode)| mode);
        let (mode, file, socket) = match mode {
            Some(mode) => (mode, None, None),
            None if o.is_set("file") => {
                let file = o
                    .get("file")
                    .ok_or_else(|| invalid(option, "`file=` needs a path"))?;
                ("File", Some(file), None)
            }
            None if socket_allowed && o.is_set("socket") => {
                let socket = o
                    .get("socket")
                    .ok_or_else(|| invalid(option, "`socket=` needs a path"))?;
                ("Socket", None, Some(socket))
            }
            None => {
                return Err(invalid(
                    option,
                    "no output mode given (off, pty, tty, null, file= or socket=)",
                ));
            }
        };
        Ok(Self { file, mode, socket })
    }

    fn parse(option: &str, input: &str) -> Result<Self> {
        let mut o = Options::new(&["file", "socket"]).with_valueless(CONSOLE_MODES);
        o.parse_subset(input).map_err(grammar(option))?;
        Self::from_options(option, &o, true)
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Console {
    #[serde(flatten)]
    pub common: ConsoleCommon,
    #[serde(flatten)]
    pub pci: PciCommon,
}

impl Console {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--console";
        let mut all = vec!["file", "socket"];
        all.extend_from_slice(PCI4);
        let mut o = Options::new(&all).with_valueless(CONSOLE_MODES);
        o.parse(input).map_err(grammar(OPT))?;
        Ok(Self {
            common: ConsoleCommon::parse(OPT, input)?,
            pci: PciCommon::parse(OPT, input)?,
        })
    }
}

pub(crate) fn parse_serial(input: &str) -> Result<ConsoleCommon> {
    const OPT: &str = "--serial";
    let mut o = Options::new(&["file", "socket"]).with_valueless(CONSOLE_MODES);
    o.parse(input).map_err(grammar(OPT))?;
    ConsoleCommon::parse(OPT, input)
}

#[derive(Serialize, Debug)]
pub(crate) struct DebugConsole {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iobase: Option<u16>,
}

impl DebugConsole {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        // CH reports this option's parse errors as `Error parsing --console` (a CH bug); we name
        // the option the user actually wrote.
        const OPT: &str = "--debug-console";
        let mut o = Options::new(&["file", "iobase"]).with_valueless(CONSOLE_MODES);
        o.parse(input).map_err(grammar(OPT))?;
        let common = ConsoleCommon::from_options(OPT, &o, false)?;
        // Hex with a mandatory `0x`; without `iobase` CH leaves the port unset (the default
        // `off,iobase=0xe9` only applies when the whole option is absent).
        let iobase = match o.get("iobase") {
            None => None,
            Some(text) => {
                let port = text
                    .strip_prefix("0x")
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| invalid(OPT, "`iobase` must be a 16-bit hex port with 0x"))?;
                Some(port)
            }
        };
        Ok(Self {
            file: common.file,
            mode: common.mode,
            iobase,
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Device {
    #[serde(flatten)]
    pub pci: PciCommon,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<RawFd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_nv_gpudirect_clique: Option<u8>,
    pub x_exclude_mmap_bars: Vec<u64>,
}

impl Device {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--device";
        let o = options(
            OPT,
            input,
            &["path", "fd", "x_nv_gpudirect_clique", "x_exclude_mmap_bars"],
            PCI4,
        )?;
        let err = grammar(OPT);
        let pci = PciCommon::parse(OPT, input)?;
        Ok(Self {
            pci,
            path: o.get("path"),
            fd: o.scalar("fd", "a file descriptor number").map_err(&err)?,
            x_nv_gpudirect_clique: o
                .scalar("x_nv_gpudirect_clique", "a clique number")
                .map_err(&err)?,
            x_exclude_mmap_bars: o
                .integer_list::<u64>("x_exclude_mmap_bars")
                .map_err(&err)?
                .unwrap_or_default(),
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct UserDevice {
    #[serde(flatten)]
    pub pci: PciCommon,
    pub socket: String,
}

impl UserDevice {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--user-device";
        let o = options(OPT, input, &["socket"], PCI3)?;
        let pci = PciCommon::parse(OPT, input)?;
        Ok(Self {
            pci,
            socket: required(OPT, o.get("socket"), "socket")?,
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Vdpa {
    #[serde(flatten)]
    pub pci: PciCommon,
    pub path: String,
    pub num_queues: usize,
}

impl Vdpa {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--vdpa";
        let o = options(OPT, input, &["path", "num_queues"], PCI4)?;
        let pci = PciCommon::parse(OPT, input)?;
        Ok(Self {
            pci,
            path: required(OPT, o.get("path"), "path")?,
            num_queues: o
                .scalar("num_queues", "a queue count")
                .map_err(grammar(OPT))?
                .unwrap_or(1),
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Vsock {
    #[serde(flatten)]
    pub pci: PciCommon,
    pub cid: u32,
    pub socket: String,
}

impl Vsock {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--vsock";
        let o = options(OPT, input, &["socket", "cid"], PCI4)?;
        let pci = PciCommon::parse(OPT, input)?;
        let socket = required(OPT, o.get("socket"), "socket")?;
        let cid = o
            .scalar("cid", "a context id")
            .map_err(grammar(OPT))?
            .ok_or_else(|| invalid(OPT, "`cid` is required"))?;
        Ok(Self { pci, cid, socket })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses() {
        let table = [
            ("02:00:00:00:00:0A", Some("02:00:00:00:00:0a")),
            ("52:54:00:12:34:56", Some("52:54:00:12:34:56")),
            ("02:00:00:00:00", None),
            ("2:00:00:00:00:00:0", None),
            ("+2:00:00:00:00:00", None),
            ("zz:00:00:00:00:00", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_mac(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn console_mode_precedence() {
        let table = [
            ("null,tty", "Tty"),
            ("off,pty", "Off"),
            ("file=/a,null", "Null"),
            ("socket=/s,file=/f", "File"),
            ("socket=/s", "Socket"),
        ];
        for (input, want) in table {
            assert_eq!(
                ConsoleCommon::parse("--console", input)
                    .map(|c| c.mode)
                    .ok(),
                Some(want)
            );
        }
        assert!(ConsoleCommon::parse("--console", "").is_err());
        assert!(ConsoleCommon::parse("--console", "file=").is_err());
    }

    #[test]
    fn debug_console_iobase() {
        let table = [
            ("off,iobase=0xe9", Some(Some(233))),
            ("tty", Some(None)),
            ("tty,iobase=0x3f8", Some(Some(0x3f8))),
            ("tty,iobase=e9", None),
            ("tty,iobase=0x10000", None),
            ("tty,iobase=0X10", None),
        ];
        for (input, want) in table {
            assert_eq!(
                DebugConsole::parse(input).map(|d| d.iobase).ok(),
                want,
                "{input:?}"
            );
        }
    }
}
