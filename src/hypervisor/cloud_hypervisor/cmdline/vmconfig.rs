//! Per-option translation of CH 54's vm-config options into the `VmConfig` that `vm.create`
//! takes, with the JSON shape CH itself serializes (`None` fields omitted, defaults written out).
//!
//! Options are parsed in the order of CH's `VmConfig::parse` so that, of several bad options, the
//! same one is blamed. Device options live in `devices.rs`, cross-option checks in `validate.rs`.

use std::os::fd::RawFd;

use serde::Serialize;

use super::argv::Matches;
use super::common::{
    BUCKET_KEYS, PCI4, PciCommon, RateLimiter, Result, grammar, invalid, options, required,
};
use super::devices::{
    Balloon, Console, ConsoleCommon, DebugConsole, Device, Disk, Fs, GenericVhostUser, Net, Pmem,
    Rng, Rtc, UserDevice, Vdpa, Vsock, parse_serial,
};
use super::grammar::parse_integer_list;

#[derive(Serialize, Debug)]
pub(crate) struct Topology {
    pub threads_per_core: u16,
    pub cores_per_die: u16,
    pub dies_per_package: u16,
    pub packages: u16,
}

#[derive(Serialize, Debug)]
pub(crate) struct CpuAffinity {
    pub vcpu: u32,
    pub host_cpus: Vec<usize>,
}

#[derive(Serialize, Debug)]
pub(crate) struct CpuFeatures {
    pub amx: bool,
}

#[derive(Serialize, Debug)]
pub(crate) struct Cpus {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    pub kvm_hyperv: bool,
    pub max_phys_bits: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Vec<CpuAffinity>>,
    pub features: CpuFeatures,
    pub nested: bool,
    pub core_scheduling: &'static str,
    pub profile: &'static str,
}

fn parse_topology(s: &str) -> Option<Topology> {
    let parts: Vec<&str> = s.split(':').collect();
    let [t, c, d, p] = parts.as_slice() else {
        return None;
    };
    Some(Topology {
        threads_per_core: t.parse().ok()?,
        cores_per_die: c.parse().ok()?,
        dies_per_package: d.parse().ok()?,
        packages: p.parse().ok()?,
    })
}

impl Cpus {
    fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--cpus";
        let keys = &[
            "boot",
            "max",
            "topology",
            "kvm_hyperv",
            "max_phys_bits",
            "affinity",
            "features",
            "nested",
            "core_scheduling",
            "profile",
        ];
        let o = options(OPT, input, keys, &[])?;
        let err = grammar(OPT);
        let boot_vcpus = o.scalar("boot", "a vCPU count").map_err(&err)?.unwrap_or(1);
        let max_vcpus = o
            .scalar("max", "a vCPU count")
            .map_err(&err)?
            .unwrap_or(boot_vcpus);
        let topology = o
            .scalar_with("topology", "threads:cores:dies:packages", parse_topology)
            .map_err(&err)?;
        let kvm_hyperv = o.toggle("kvm_hyperv").map_err(&err)?.unwrap_or(false);
        let max_phys_bits = o
            .scalar("max_phys_bits", "a bit count")
            .map_err(&err)?
            .unwrap_or(46);
        let affinity = o
            .tuple_list::<u32, Vec<usize>>("affinity", parse_integer_list::<usize>)
            .map_err(&err)?
            .map(|list| {
                list.into_iter()
                    .map(|(vcpu, host_cpus)| CpuAffinity { vcpu, host_cpus })
                    .collect()
            });
        // CpuProfile is read through serde, so only the exact variant name works.
        let profile = o
            .scalar_with("profile", "Host", |s| (s == "Host").then_some("Host"))
            .map_err(&err)?
            .unwrap_or("Host");
        let mut features = CpuFeatures { amx: false };
        for feature in o.string_list("features").map_err(&err)?.unwrap_or_default() {
            match feature.as_str() {
                "amx" => features.amx = true,
                _ => {
                    return Err(invalid(
                        OPT,
                        format!("unknown feature `{feature}` in features"),
                    ));
                }
            }
        }
        let nested = o.toggle("nested").map_err(&err)?.unwrap_or(true);
        let core_scheduling = o
            .scalar_with("core_scheduling", "vm|vcpu|off", |s| {
                match s.to_lowercase().as_str() {
                    "vm" => Some("Vm"),
                    "vcpu" => Some("Vcpu"),
                    "off" => Some("Off"),
                    _ => None,
                }
            })
            .map_err(&err)?
            .unwrap_or("Vm");
        Ok(Self {
            boot_vcpus,
            max_vcpus,
            topology,
            kvm_hyperv,
            max_phys_bits,
            affinity,
            features,
            nested,
            core_scheduling,
            profile,
        })
    }
}

const DEFAULT_MEMORY: u64 = 512 << 20;

#[derive(Serialize, Debug)]
pub(crate) struct MemoryZone {
    pub id: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub shared: bool,
    pub hugepages: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_numa_node: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotplugged_size: Option<u64>,
    pub prefault: bool,
    pub reserve: bool,
    pub mergeable: bool,
}

#[derive(Serialize, Debug)]
pub(crate) struct Memory {
    pub size: u64,
    pub mergeable: bool,
    pub hotplug_method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotplugged_size: Option<u64>,
    pub shared: bool,
    pub hugepages: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    pub prefault: bool,
    pub reserve: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<MemoryZone>>,
    pub thp: bool,
}

impl Memory {
    fn parse(input: &str, zones: Option<Vec<&str>>) -> Result<Self> {
        const OPT: &str = "--memory";
        let keys = &[
            "size",
            "file",
            "mergeable",
            "hotplug_method",
            "hotplug_size",
            "hotplugged_size",
            "shared",
            "hugepages",
            "hugepage_size",
            "prefault",
            "reserve",
            "thp",
        ];
        // `file` is accepted and ignored by CH: no field takes it.
        let o = options(OPT, input, keys, &[])?;
        let err = grammar(OPT);
        let size = o
            .byte_sized("size")
            .map_err(&err)?
            .unwrap_or(DEFAULT_MEMORY);
        let mergeable = o.toggle("mergeable").map_err(&err)?.unwrap_or(false);
        let hotplug_method = o
            .scalar_with("hotplug_method", "acpi|virtio-mem", |s| {
                match s.to_lowercase().as_str() {
                    "acpi" => Some("Acpi"),
                    "virtio-mem" => Some("VirtioMem"),
                    _ => None,
                }
            })
            .map_err(&err)?
            .unwrap_or("Acpi");
        let hotplug_size = o.byte_sized("hotplug_size").map_err(&err)?;
        let hotplugged_size = o.byte_sized("hotplugged_size").map_err(&err)?;
        let shared = o.toggle("shared").map_err(&err)?.unwrap_or(false);
        let hugepages = o.toggle("hugepages").map_err(&err)?.unwrap_or(false);
        let hugepage_size = o.byte_sized("hugepage_size").map_err(&err)?;
        let prefault = o.toggle("prefault").map_err(&err)?.unwrap_or(false);
        let reserve = o.toggle("reserve").map_err(&err)?.unwrap_or(false);
        let thp = o.toggle("thp").map_err(&err)?.unwrap_or(true);
        let zones = zones
            .map(|zones| {
                zones
                    .into_iter()
                    .map(|zone| MemoryZone::parse(zone, mergeable))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Self {
            size,
            mergeable,
            hotplug_method,
            hotplug_size,
            hotplugged_size,
            shared,
            hugepages,
            hugepage_size,
            prefault,
            reserve,
            zones,
            thp,
        })
    }

    /// RAM the guest can have at once; CH's sums wrap silently in release builds.
    pub fn total_size(&self) -> u64 {
        let zones = self.zones.iter().flatten();
        let zone_sizes = zones.clone().fold(0u64, |acc, z| acc.wrapping_add(z.size));
        let hotplugged = zones
            .filter_map(|z| z.hotplugged_size)
            .fold(self.hotplugged_size.unwrap_or(0), u64::wrapping_add);
        self.size.wrapping_add(zone_sizes).wrapping_add(hotplugged)
    }
}

impl MemoryZone {
    fn parse(input: &str, default_mergeable: bool) -> Result<Self> {
        const OPT: &str = "--memory-zone";
        let keys = &[
            "id",
            "size",
            "file",
            "shared",
            "hugepages",
            "hugepage_size",
            "host_numa_node",
            "hotplug_size",
            "hotplugged_size",
            "prefault",
            "reserve",
            "mergeable",
        ];
        let o = options(OPT, input, keys, &[])?;
        let err = grammar(OPT);
        Ok(Self {
            id: required(OPT, o.get("id"), "id")?,
            size: o
                .byte_sized("size")
                .map_err(&err)?
                .unwrap_or(DEFAULT_MEMORY),
            file: o.get("file"),
            shared: o.toggle("shared").map_err(&err)?.unwrap_or(false),
            hugepages: o.toggle("hugepages").map_err(&err)?.unwrap_or(false),
            hugepage_size: o.byte_sized("hugepage_size").map_err(&err)?,
            host_numa_node: o
                .scalar("host_numa_node", "a NUMA node number")
                .map_err(&err)?,
            hotplug_size: o.byte_sized("hotplug_size").map_err(&err)?,
            hotplugged_size: o.byte_sized("hotplugged_size").map_err(&err)?,
            prefault: o.toggle("prefault").map_err(&err)?.unwrap_or(false),
            reserve: o.toggle("reserve").map_err(&err)?.unwrap_or(false),
            mergeable: o
                .toggle("mergeable")
                .map_err(&err)?
                .unwrap_or(default_mergeable),
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct RateLimitGroup {
    pub id: String,
    pub rate_limiter_config: RateLimiter,
}

impl RateLimitGroup {
    fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--rate-limit-group";
        let mut keys = BUCKET_KEYS.to_vec();
        keys.push("id");
        let o = options(OPT, input, &keys, &[])?;
        Ok(Self {
            id: o.get("id").unwrap_or_default(),
            rate_limiter_config: RateLimiter::parse(OPT, &o)?,
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct PciSegment {
    pub pci_segment: u16,
    pub mmio32_aperture_weight: u32,
    pub mmio64_aperture_weight: u32,
}

impl PciSegment {
    fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--pci-segment";
        let o = options(
            OPT,
            input,
            &[
                "mmio32_aperture_weight",
                "mmio64_aperture_weight",
                "pci_segment",
            ],
            &[],
        )?;
        let err = grammar(OPT);
        Ok(Self {
            pci_segment: o
                .scalar("pci_segment", "a PCI segment number")
                .map_err(&err)?
                .unwrap_or(0),
            mmio32_aperture_weight: o
                .scalar("mmio32_aperture_weight", "a weight")
                .map_err(&err)?
                .unwrap_or(1),
            mmio64_aperture_weight: o
                .scalar("mmio64_aperture_weight", "a weight")
                .map_err(&err)?
                .unwrap_or(1),
        })
    }
}

/// The SMBIOS strings of `--platform`, in the order CH applies them (the deprecated
/// `serial_number`/`uuid` land in their `system_*` fields).
pub const SMBIOS_KEYS: &[&str] = &[
    "system_manufacturer",
    "system_product_name",
    "system_version",
    "system_serial_number",
    "system_uuid",
    "system_sku_number",
    "system_family",
    "chassis_asset_tag",
];

pub(crate) const PLATFORM_KEYS: &[&str] = &[
    "num_pci_segments",
    "iommu_segments",
    "iommu_address_width",
    "serial_number",
    "uuid",
    "oem_strings",
    "iommufd",
    "iommufd_fd",
    "vfio_p2p_dma",
    "system_manufacturer",
    "system_product_name",
    "system_version",
    "system_serial_number",
    "system_uuid",
    "system_sku_number",
    "system_family",
    "chassis_asset_tag",
];

#[derive(Serialize, Debug, Default)]
pub(crate) struct Platform {
    pub num_pci_segments: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iommu_segments: Option<Vec<u16>>,
    pub iommu_address_width_bits: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oem_strings: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_product_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_sku_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chassis_asset_tag: Option<String>,
    pub iommufd: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iommufd_fd: Option<RawFd>,
    pub vfio_p2p_dma: bool,
}

impl Platform {
    pub(crate) fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--platform";
        let o = options(OPT, input, PLATFORM_KEYS, &[])?;
        let err = grammar(OPT);
        let num_pci_segments = o
            .scalar("num_pci_segments", "a segment count")
            .map_err(&err)?
            .unwrap_or(1);
        // CH truncates with `as u16` (iommu_segments=[65537] is segment 1).
        let iommu_segments = o
            .integer_list::<u64>("iommu_segments")
            .map_err(&err)?
            .map(|list| list.into_iter().map(|s| s as u16).collect());
        let iommu_address_width_bits = o
            .scalar("iommu_address_width", "a bit count")
            .map_err(&err)?
            .unwrap_or(64);
        let oem_strings = o.string_list("oem_strings").map_err(&err)?;
        let iommufd_fd = o
            .scalar("iommufd_fd", "a file descriptor number")
            .map_err(&err)?;
        // `iommufd_fd=<n>` implies `iommufd=on` unless iommufd is given.
        let iommufd = o
            .toggle("iommufd")
            .map_err(&err)?
            .unwrap_or(iommufd_fd.is_some());
        let vfio_p2p_dma = o.toggle("vfio_p2p_dma").map_err(&err)?.unwrap_or(true);
        let mut platform = Self {
            num_pci_segments,
            iommu_segments,
            iommu_address_width_bits,
            oem_strings,
            iommufd,
            iommufd_fd,
            vfio_p2p_dma,
            ..Self::default()
        };
        for key in SMBIOS_KEYS {
            let Some(value) = o.get(key) else { continue };
            let slot = match *key {
                "system_manufacturer" => &mut platform.system_manufacturer,
                "system_product_name" => &mut platform.system_product_name,
                "system_version" => &mut platform.system_version,
                "system_serial_number" => &mut platform.system_serial_number,
                "system_uuid" => &mut platform.system_uuid,
                "system_sku_number" => &mut platform.system_sku_number,
                "system_family" => &mut platform.system_family,
                _ => &mut platform.chassis_asset_tag,
            };
            *slot = Some(value);
        }
        // Deprecated spellings; the `system_*` key wins.
        if platform.system_serial_number.is_none() {
            platform.system_serial_number = o.get("serial_number");
        }
        if platform.system_uuid.is_none() {
            platform.system_uuid = o.get("uuid");
        }
        Ok(platform)
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct NumaDistance {
    pub destination: u32,
    pub distance: u8,
}

#[derive(Serialize, Debug)]
pub(crate) struct Numa {
    pub guest_numa_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distances: Option<Vec<NumaDistance>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_zones: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_segments: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

impl Numa {
    fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--numa";
        let keys = &[
            "guest_numa_id",
            "cpus",
            "distances",
            "device_id",
            "memory_zones",
            "pci_segments",
        ];
        let o = options(OPT, input, keys, &[])?;
        let err = grammar(OPT);
        let guest_numa_id = o
            .scalar("guest_numa_id", "a NUMA node number")
            .map_err(&err)?
            .ok_or_else(|| invalid(OPT, "`guest_numa_id` is required"))?;
        // The `as` casts are CH's: out-of-range numbers wrap (distance 300 is 44).
        let cpus = o
            .integer_list::<u64>("cpus")
            .map_err(&err)?
            .map(|list| list.into_iter().map(|c| c as u32).collect());
        let distances = o
            .tuple_list::<u64, u64>("distances", |s| s.parse().ok())
            .map_err(&err)?
            .map(|list| {
                list.into_iter()
                    .map(|(destination, distance)| NumaDistance {
                        destination: destination as u32,
                        distance: distance as u8,
                    })
                    .collect()
            });
        let device_id = o.get("device_id");
        let memory_zones = o.string_list("memory_zones").map_err(&err)?;
        let pci_segments = o
            .integer_list::<u64>("pci_segments")
            .map_err(&err)?
            .map(|list| list.into_iter().map(|s| s as u16).collect());
        if device_id.is_some() && (cpus.is_some() || memory_zones.is_some()) {
            return Err(invalid(
                OPT,
                "`device_id` cannot be used with `cpus` or `memory_zones`",
            ));
        }
        Ok(Self {
            guest_numa_id,
            cpus,
            distances,
            memory_zones,
            pci_segments,
            device_id,
        })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Tpm {
    pub socket: String,
}

#[derive(Serialize, Debug)]
pub(crate) struct LandlockRule {
    pub path: String,
    pub access: String,
}

impl LandlockRule {
    fn parse(input: &str) -> Result<Self> {
        const OPT: &str = "--landlock-rules";
        let o = options(OPT, input, &["path", "access"], &[])?;
        let path = required(OPT, o.get("path"), "path")?;
        let access = required(OPT, o.get("access"), "access")?;
        if access.chars().count() > 2 {
            return Err(invalid(OPT, "`access` is at most two of r and w"));
        }
        Ok(Self { path, access })
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Payload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
}

#[derive(Serialize, Debug)]
pub(crate) struct VmConfig {
    pub cpus: Cpus,
    pub memory: Memory,
    pub payload: Payload,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_groups: Option<Vec<RateLimitGroup>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<Disk>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<Net>>,
    pub rng: Rng,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generic_vhost_user: Option<Vec<GenericVhostUser>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<Vec<Fs>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pmem: Option<Vec<Pmem>>,
    pub serial: ConsoleCommon,
    pub console: Console,
    pub debug_console: DebugConsole,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<Device>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_devices: Option<Vec<UserDevice>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdpa: Option<Vec<Vdpa>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    pub pvpanic: bool,
    pub iommu: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numa: Option<Vec<Numa>>,
    pub watchdog: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtc: Option<Rtc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_segments: Option<Vec<PciSegment>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Tpm>,
    pub landlock_enable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landlock_rules: Option<Vec<LandlockRule>>,
}

fn each<T>(values: Option<Vec<&str>>, parse: impl Fn(&str) -> Result<T>) -> Result<Option<Vec<T>>> {
    values
        .map(|values| values.into_iter().map(parse).collect())
        .transpose()
}

impl VmConfig {
    /// Builds the config from clap-level matches that include a payload, in CH's order, then
    /// runs CH's own validation (which also derives `iommu` and drops what firmware ignores).
    pub(crate) fn from_matches(m: &Matches) -> Result<Self> {
        let rate_limit_groups = each(m.many("rate-limit-group"), RateLimitGroup::parse)?;
        let disks = each(m.many("disk"), Disk::parse)?;
        let net = each(m.many("net"), Net::parse)?;
        let rng = Rng::parse(m.one("rng").unwrap_or("src=/dev/urandom"))?;
        let rtc = m
            .one("rtc")
            .map(|input| -> Result<Rtc> {
                options("--rtc", input, &[], PCI4)?;
                Ok(Rtc {
                    pci: PciCommon::parse("--rtc", input)?,
                })
            })
            .transpose()?;
        let balloon = m.one("balloon").map(Balloon::parse).transpose()?;
        let fs = each(m.many("fs"), Fs::parse)?;
        let generic_vhost_user = each(m.many("generic-vhost-user"), GenericVhostUser::parse)?;
        let pmem = each(m.many("pmem"), Pmem::parse)?;
        let console = Console::parse(m.one("console").unwrap_or("tty"))?;
        let serial = parse_serial(m.one("serial").unwrap_or("null"))?;
        let debug_console =
            DebugConsole::parse(m.one("debug-console").unwrap_or("off,iobase=0xe9"))?;
        let devices = each(m.many("device"), Device::parse)?;
        let user_devices = each(m.many("user-device"), UserDevice::parse)?;
        let vdpa = each(m.many("vdpa"), Vdpa::parse)?;
        let vsock = m.one("vsock").map(Vsock::parse).transpose()?;
        let pci_segments = each(m.many("pci-segment"), PciSegment::parse)?;
        let platform = m.one("platform").map(Platform::parse).transpose()?;
        let numa = each(m.many("numa"), Numa::parse)?;
        let payload = Payload {
            firmware: m.one("firmware").map(str::to_owned),
            kernel: m.one("kernel").map(str::to_owned),
            cmdline: m.one("cmdline").map(str::to_owned),
            initramfs: m.one("initramfs").map(str::to_owned),
        };
        let tpm = m
            .one("tpm")
            .map(|input| -> Result<Tpm> {
                let o = options("--tpm", input, &["socket"], &[])?;
                Ok(Tpm {
                    socket: required("--tpm", o.get("socket"), "socket")?,
                })
            })
            .transpose()?;
        let landlock_rules = each(m.many("landlock-rules"), LandlockRule::parse)?;
        let cpus = Cpus::parse(m.one("cpus").unwrap_or("boot=1,max_phys_bits=46"))?;
        let memory = Memory::parse(
            m.one("memory").unwrap_or("size=512M"),
            m.many("memory-zone"),
        )?;

        let mut config = Self {
            cpus,
            memory,
            payload,
            rate_limit_groups,
            disks,
            net,
            rng,
            balloon,
            generic_vhost_user,
            fs,
            pmem,
            serial,
            console,
            debug_console,
            devices,
            user_devices,
            vdpa,
            vsock,
            pvpanic: m.present("pvpanic"),
            iommu: false,
            numa,
            watchdog: m.present("watchdog"),
            rtc,
            pci_segments,
            platform,
            tpm,
            landlock_enable: m.present("landlock"),
            landlock_rules,
        };
        config.validate()?;
        Ok(config)
    }

    /// The fds the config names, which must be open in CH: net `fd=`, device `fd=`, platform
    /// `iommufd_fd=`, in that order.
    pub(crate) fn inherited_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self
            .net
            .iter()
            .flatten()
            .flat_map(|net| net.fds.iter().flatten().copied())
            .collect();
        fds.extend(self.devices.iter().flatten().filter_map(|d| d.fd));
        fds.extend(self.platform.as_ref().and_then(|p| p.iommufd_fd));
        fds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology() {
        assert!(parse_topology("1:2:1:2").is_some());
        assert!(parse_topology("2:1:1").is_none());
        assert!(parse_topology("1:2:1:2:1").is_none());
        assert!(parse_topology("1:2:1:x").is_none());
    }
}
