//! CH 54's `VmConfig::validate`, which its command line runs before any VM exists: the checks
//! across options (queue counts against vCPUs, shared memory for vhost-user, PCI segments, unique
//! ids, ...), in CH's order, plus the two mutations it makes (the derived `iommu` flag, and
//! dropping `cmdline`/`initramfs` when firmware is the payload).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::common::{PciCommon, Result, invalid};
use super::vmconfig::VmConfig;

const MAX_VCPUS: u32 = 8192;
const MAX_PCI_SEGMENTS: u16 = 96;
const MAX_IOMMU_ADDRESS_WIDTH: u8 = 64;
const PCI_DEVICE_IDS: u8 = 32;
const BLOCK_SERIAL_MAX: usize = 20;
const BLOCK_QUEUE_MIN: u16 = 2;
const NET_MTU_MIN: u16 = 1280;

/// Ids must be unique across every kind of device, and `__` is reserved for CH's own.
#[derive(Default)]
struct Ids(BTreeSet<String>);

impl Ids {
    fn add(&mut self, option: &str, id: Option<&String>) -> Result<()> {
        let Some(id) = id else { return Ok(()) };
        if id.starts_with("__") {
            return Err(invalid(
                option,
                format!("identifier `{id}` is reserved (starts with __)"),
            ));
        }
        if !self.0.insert(id.clone()) {
            return Err(invalid(option, format!("identifier `{id}` is not unique")));
        }
        Ok(())
    }
}

fn queue_size(option: &str, size: u16) -> Result<()> {
    if !size.is_power_of_two() {
        return Err(invalid(
            option,
            format!("queue size {size} is not a power of 2"),
        ));
    }
    Ok(())
}

fn too_many_queues(option: &str, queues: usize, boot: u32) -> super::ArgvError {
    invalid(
        option,
        format!("queue count ({queues}) must not exceed boot vCPUs ({boot})"),
    )
}

impl VmConfig {
    fn num_pci_segments(&self) -> u16 {
        self.platform.as_ref().map_or(1, |p| p.num_pci_segments)
    }

    fn pci(&self, option: &str, pci: &PciCommon) -> Result<()> {
        if pci.pci_segment >= self.num_pci_segments() {
            return Err(invalid(
                option,
                format!("invalid PCI segment id {}", pci.pci_segment),
            ));
        }
        let on_iommu_segment = self
            .platform
            .as_ref()
            .and_then(|p| p.iommu_segments.as_ref())
            .is_some_and(|segments| segments.contains(&pci.pci_segment));
        if on_iommu_segment && !pci.iommu {
            return Err(invalid(
                option,
                format!(
                    "device is on IOMMU PCI segment {} but not placed behind the IOMMU (iommu=on)",
                    pci.pci_segment
                ),
            ));
        }
        match pci.pci_device_id {
            Some(id) if id >= PCI_DEVICE_IDS => Err(invalid(
                option,
                format!("PCI device id {id} is out of range 0..{PCI_DEVICE_IDS}"),
            )),
            Some(0) if pci.pci_segment == 0 => {
                Err(invalid(option, "PCI device id 0 is reserved on segment 0"))
            }
            _ => Ok(()),
        }
    }

    /// `None` where CH itself would panic (`size=0` without `--memory-zone`).
    fn shared_memory(&self, option: &str) -> Result<bool> {
        if self.memory.shared || self.memory.hugepages {
            return Ok(true);
        }
        if self.memory.size != 0 {
            return Ok(false);
        }
        let zones = self.memory.zones.as_ref().ok_or_else(|| {
            invalid(
                option,
                "--memory size=0 needs --memory-zone to tell whether memory is shared",
            )
        })?;
        Ok(zones.iter().all(|z| z.shared || z.hugepages))
    }

    fn require_shared(&self, option: &str, what: &str) -> Result<()> {
        if !self.shared_memory(option)? {
            return Err(invalid(
                option,
                format!("{what} requires shared memory or huge pages (--memory shared=on)"),
            ));
        }
        Ok(())
    }

    pub(crate) fn validate(&mut self) -> Result<()> {
        let mut ids = Ids::default();
        let boot = self.cpus.boot_vcpus;

        if self.payload.firmware.is_some() {
            if self.payload.kernel.is_some() {
                return Err(invalid(
                    "--firmware",
                    "--kernel and --firmware exclude each other",
                ));
            }
            // CH warns and drops what a firmware payload cannot use.
            self.payload.cmdline = None;
            self.payload.initramfs = None;
        }

        if self.cpus.max_vcpus < boot {
            return Err(invalid(
                "--cpus",
                format!("max ({}) is lower than boot ({boot})", self.cpus.max_vcpus),
            ));
        }
        if self.cpus.max_vcpus > MAX_VCPUS {
            return Err(invalid(
                "--cpus",
                format!("max is above the limit of {MAX_VCPUS}"),
            ));
        }

        for group in self.rate_limit_groups.iter().flatten() {
            let config = &group.rate_limiter_config;
            if config.bandwidth.is_none() && config.ops.is_none() {
                return Err(invalid(
                    "--rate-limit-group",
                    "needs bw_size and bw_refill_time, or ops_size and ops_refill_time",
                ));
            }
            if group.id.is_empty() {
                return Err(invalid("--rate-limit-group", "`id` is required"));
            }
            ids.add("--rate-limit-group", Some(&group.id))?;
        }

        for disk in self.disks.iter().flatten() {
            const OPT: &str = "--disk";
            if disk.vhost_socket.is_some() && disk.path.is_some() {
                return Err(invalid(OPT, "`path` and `socket` exclude each other"));
            }
            if disk.vhost_user {
                self.require_shared(OPT, "vhost-user")?;
                if disk.vhost_socket.is_none() {
                    return Err(invalid(OPT, "vhost_user=on needs `socket`"));
                }
                if disk.rate_limiter_config.is_some() || disk.rate_limit_group.is_some() {
                    return Err(invalid(
                        OPT,
                        "rate limiting is not supported with vhost-user",
                    ));
                }
            }
            if let Some(group) = &disk.rate_limit_group {
                let known = self
                    .rate_limit_groups
                    .iter()
                    .flatten()
                    .any(|g| &g.id == group);
                if !known {
                    return Err(invalid(OPT, format!("unknown rate_limit_group `{group}`")));
                }
            }
            self.pci(OPT, &disk.pci)?;
            if disk.num_queues > boot as usize {
                return Err(too_many_queues(OPT, disk.num_queues, boot));
            }
            queue_size(OPT, disk.queue_size)?;
            if disk.queue_size <= BLOCK_QUEUE_MIN {
                return Err(invalid(
                    OPT,
                    format!("queue size must be greater than {BLOCK_QUEUE_MIN}"),
                ));
            }
            if disk.vhost_user && disk.pci.iommu {
                return Err(invalid(
                    OPT,
                    "a vhost-user device cannot be placed behind the IOMMU",
                ));
            }
            if disk.rate_limiter_config.is_some() && disk.rate_limit_group.is_some() {
                return Err(invalid(
                    OPT,
                    "`rate_limit_group` and bw_*/ops_* exclude each other",
                ));
            }
            if let Some(serial) = &disk.serial {
                if serial.len() > BLOCK_SERIAL_MAX {
                    return Err(invalid(
                        OPT,
                        format!(
                            "`serial` is {} bytes, at most {BLOCK_SERIAL_MAX}",
                            serial.len()
                        ),
                    ));
                }
            }
            self.iommu |= disk.pci.iommu;
            ids.add(OPT, disk.pci.id.as_ref())?;
        }

        for net in self.net.iter().flatten() {
            const OPT: &str = "--net";
            if net.vhost_user {
                self.require_shared(OPT, "vhost-user")?;
                if net.vhost_socket.is_none() {
                    return Err(invalid(OPT, "vhost_user=on needs `socket`"));
                }
                if net.rate_limiter_config.is_some() {
                    return Err(invalid(
                        OPT,
                        "rate limiting is not supported with vhost-user",
                    ));
                }
            }
            self.pci(OPT, &net.pci)?;
            if net.num_queues < 2 {
                return Err(invalid(OPT, "`num_queues` must be at least 2"));
            }
            if let Some(fds) = &net.fds {
                let queues = fds.len().saturating_mul(2);
                if queues != net.num_queues {
                    return Err(invalid(
                        OPT,
                        format!(
                            "num_queues ({}) is not twice the number of fds ({})",
                            net.num_queues,
                            fds.len()
                        ),
                    ));
                }
                if let Some(fd) = fds.iter().find(|&&fd| fd <= 2) {
                    return Err(invalid(OPT, format!("fd {fd} is reserved (<= 2)")));
                }
            }
            if net.num_queues / 2 > boot as usize {
                return Err(too_many_queues(OPT, net.num_queues, boot));
            }
            queue_size(OPT, net.queue_size)?;
            if net.vhost_user && net.pci.iommu {
                return Err(invalid(
                    OPT,
                    "a vhost-user device cannot be placed behind the IOMMU",
                ));
            }
            if let Some(mtu) = net.mtu {
                if mtu < NET_MTU_MIN {
                    return Err(invalid(OPT, format!("mtu {mtu} is below {NET_MTU_MIN}")));
                }
            }
            if !net.offload_csum && (net.offload_tso || net.offload_ufo) {
                return Err(invalid(
                    OPT,
                    "offload_tso and offload_ufo need offload_csum",
                ));
            }
            if net.mask.is_some() && net.ip.is_none() {
                return Err(invalid(OPT, "`mask` without `ip`"));
            }
            if net.ip.is_some() && net.mask.is_none() {
                return Err(invalid(OPT, "`ip` without `mask`"));
            }
            self.iommu |= net.pci.iommu;
            ids.add(OPT, net.pci.id.as_ref())?;
        }

        if let Some(fses) = &self.fs {
            const OPT: &str = "--fs";
            if !fses.is_empty() {
                self.require_shared(OPT, "virtio-fs (vhost-user)")?;
            }
            for fs in fses {
                if fs.num_queues > boot as usize {
                    return Err(too_many_queues(OPT, fs.num_queues, boot));
                }
                queue_size(OPT, fs.queue_size)?;
                self.pci(OPT, &fs.pci)?;
                ids.add(OPT, fs.pci.id.as_ref())?;
            }
        }

        if let Some(devices) = &self.generic_vhost_user {
            const OPT: &str = "--generic-vhost-user";
            if !devices.is_empty() {
                self.require_shared(OPT, "vhost-user")?;
            }
            for device in devices {
                for &size in &device.queue_sizes {
                    queue_size(OPT, size)?;
                }
                self.pci(OPT, &device.pci)?;
                ids.add(OPT, device.pci.id.as_ref())?;
            }
        }

        for pmem in self.pmem.iter().flatten() {
            self.pci("--pmem", &pmem.pci)?;
            self.iommu |= pmem.pci.iommu;
            ids.add("--pmem", pmem.pci.id.as_ref())?;
        }

        self.pci("--rng", &self.rng.pci)?;
        ids.add("--rng", self.rng.pci.id.as_ref())?;
        self.iommu |= self.rng.pci.iommu;

        if let Some(rtc) = &self.rtc {
            self.pci("--rtc", &rtc.pci)?;
            ids.add("--rtc", rtc.pci.id.as_ref())?;
            self.iommu |= rtc.pci.iommu;
        }

        self.pci("--console", &self.console.pci)?;
        ids.add("--console", self.console.pci.id.as_ref())?;
        self.iommu |= self.console.pci.iommu;

        if let Some(t) = &self.cpus.topology {
            let parts = [
                t.threads_per_core,
                t.cores_per_die,
                t.dies_per_package,
                t.packages,
            ];
            if parts.contains(&0) {
                return Err(invalid("--cpus", "no part of the topology can be zero"));
            }
            if t.threads_per_core > 2 {
                return Err(invalid(
                    "--cpus",
                    "the topology allows at most 2 threads per core",
                ));
            }
            let product = parts
                .iter()
                .fold(1u32, |acc, &part| acc.wrapping_mul(u32::from(part)));
            if product != self.cpus.max_vcpus {
                return Err(invalid(
                    "--cpus",
                    "the topology's product does not match max vCPUs",
                ));
            }
        }

        if let Some(size) = self.memory.hugepage_size {
            if !self.memory.hugepages {
                return Err(invalid("--memory", "hugepage_size needs hugepages=on"));
            }
            if !size.is_power_of_two() {
                return Err(invalid("--memory", "hugepage_size is not a power of 2"));
            }
        }
        if self.memory.shared && self.memory.mergeable {
            return Err(invalid(
                "--memory",
                "shared=on and mergeable=on exclude each other",
            ));
        }
        for zone in self.memory.zones.iter().flatten() {
            const OPT: &str = "--memory-zone";
            if zone.shared && zone.mergeable {
                return Err(invalid(
                    OPT,
                    "shared=on and mergeable=on exclude each other",
                ));
            }
            if let Some(size) = zone.hugepage_size {
                if !zone.hugepages {
                    return Err(invalid(OPT, "hugepage_size needs hugepages=on"));
                }
                if !size.is_power_of_two() {
                    return Err(invalid(OPT, "hugepage_size is not a power of 2"));
                }
            }
        }

        if let Some(devices) = &self.user_devices {
            const OPT: &str = "--user-device";
            if !devices.is_empty() {
                self.require_shared(OPT, "a user device")?;
            }
            for device in devices {
                self.pci(OPT, &device.pci)?;
                ids.add(OPT, device.pci.id.as_ref())?;
            }
        }

        for vdpa in self.vdpa.iter().flatten() {
            self.pci("--vdpa", &vdpa.pci)?;
            self.iommu |= vdpa.pci.iommu;
            ids.add("--vdpa", vdpa.pci.id.as_ref())?;
        }

        if let Some(vsock) = &self.vsock {
            if [u32::MAX, 0, 1, 2].contains(&vsock.cid) {
                return Err(invalid(
                    "--vsock",
                    format!("{} is a special vsock CID", vsock.cid),
                ));
            }
        }

        if let Some(balloon) = &self.balloon {
            self.pci("--balloon", &balloon.pci)?;
            ids.add("--balloon", balloon.pci.id.as_ref())?;
            self.iommu |= balloon.pci.iommu;
            let ram = self.memory.total_size();
            if balloon.size >= ram {
                return Err(invalid(
                    "--balloon",
                    format!("size ({}) is not below the guest RAM ({ram})", balloon.size),
                ));
            }
        }

        if let Some(devices) = &self.devices {
            const OPT: &str = "--device";
            let mut paths = BTreeSet::new();
            for device in devices {
                if let Some(path) = &device.path {
                    if !paths.insert(path.as_str()) {
                        return Err(invalid(OPT, format!("duplicated device path {path}")));
                    }
                }
                self.pci(OPT, &device.pci)?;
                match (&device.path, device.fd) {
                    (None, None) => return Err(invalid(OPT, "needs `path=` or `fd=`")),
                    (Some(_), Some(_)) => {
                        return Err(invalid(OPT, "`path=` and `fd=` exclude each other"));
                    }
                    (None, Some(_)) => {
                        let iommufd_fd = self.platform.as_ref().and_then(|p| p.iommufd_fd);
                        if iommufd_fd.is_none() {
                            return Err(invalid(OPT, "`fd=` needs --platform iommufd_fd=<fd>"));
                        }
                    }
                    (Some(_), None) => {}
                }
                if device.x_nv_gpudirect_clique.is_some()
                    && !self.platform.as_ref().is_none_or(|p| p.vfio_p2p_dma)
                {
                    return Err(invalid(OPT, "x_nv_gpudirect_clique needs vfio_p2p_dma=on"));
                }
                if let Some(bar) = device.x_exclude_mmap_bars.iter().find(|&&bar| bar > 5) {
                    return Err(invalid(
                        OPT,
                        format!("invalid excluded-mmap BAR index {bar}"),
                    ));
                }
                self.iommu |= device.pci.iommu;
                ids.add(OPT, device.pci.id.as_ref())?;
            }
        }

        if let Some(vsock) = &self.vsock {
            self.pci("--vsock", &vsock.pci)?;
            self.iommu |= vsock.pci.iommu;
            ids.add("--vsock", vsock.pci.id.as_ref())?;
        }

        let segments = self.num_pci_segments();
        if let Some(nodes) = &self.numa {
            const OPT: &str = "--numa";
            let mut zone_owner: HashMap<&str, u32> = HashMap::new();
            let mut segment_owner: HashMap<u16, u32> = HashMap::new();
            for node in nodes {
                match (&node.device_id, &node.cpus, &node.memory_zones) {
                    (Some(id), None, None) if id.is_empty() => {
                        return Err(invalid(OPT, "`device_id` cannot be empty"));
                    }
                    (Some(_), None, None) | (None, Some(_), _) | (None, None, Some(_)) => {}
                    _ => {
                        return Err(invalid(
                            OPT,
                            "needs either `device_id` or `cpus`/`memory_zones`",
                        ));
                    }
                }
                let id = node.guest_numa_id;
                for zone in node.memory_zones.iter().flatten() {
                    if let Some(first) = zone_owner.insert(zone, id) {
                        return Err(invalid(
                            OPT,
                            format!("memory zone {zone} belongs to NUMA nodes {first} and {id}"),
                        ));
                    }
                }
                for &segment in node.pci_segments.iter().flatten() {
                    if segment >= segments {
                        return Err(invalid(OPT, format!("invalid PCI segment id {segment}")));
                    }
                    if segment == 0 && id != 0 {
                        return Err(invalid(
                            OPT,
                            format!("default PCI segment assigned to non-zero NUMA node {id}"),
                        ));
                    }
                    if let Some(first) = segment_owner.insert(segment, id) {
                        return Err(invalid(
                            OPT,
                            format!("PCI segment {segment} belongs to NUMA nodes {first} and {id}"),
                        ));
                    }
                }
            }
        }

        for zone in self.memory.zones.iter().flatten() {
            ids.add("--memory-zone", Some(&zone.id))?;
        }

        for segment in self.pci_segments.iter().flatten() {
            const OPT: &str = "--pci-segment";
            if segment.pci_segment >= segments {
                return Err(invalid(
                    OPT,
                    format!("invalid PCI segment id {}", segment.pci_segment),
                ));
            }
            if segment.mmio32_aperture_weight == 0 || segment.mmio64_aperture_weight == 0 {
                return Err(invalid(OPT, "aperture weights cannot be 0"));
            }
        }

        if let Some(platform) = &self.platform {
            const OPT: &str = "--platform";
            if platform.num_pci_segments == 0 || platform.num_pci_segments > MAX_PCI_SEGMENTS {
                return Err(invalid(
                    OPT,
                    format!("num_pci_segments must be 1 to {MAX_PCI_SEGMENTS}"),
                ));
            }
            for &segment in platform.iommu_segments.iter().flatten() {
                if segment >= platform.num_pci_segments {
                    return Err(invalid(OPT, format!("invalid PCI segment id {segment}")));
                }
            }
            if platform.iommu_address_width_bits > MAX_IOMMU_ADDRESS_WIDTH {
                return Err(invalid(
                    OPT,
                    format!("iommu_address_width must be at most {MAX_IOMMU_ADDRESS_WIDTH}"),
                ));
            }
            if platform.iommufd_fd.is_some() && !platform.iommufd {
                return Err(invalid(OPT, "iommufd_fd needs iommufd=on"));
            }
            self.iommu |= platform.iommu_segments.is_some();
        }

        for rule in self.landlock_rules.iter().flatten() {
            const OPT: &str = "--landlock-rules";
            // CH checks this at parse time, on the host it runs on.
            if !Path::new(&rule.path).exists() {
                return Err(invalid(OPT, format!("path {:?} does not exist", rule.path)));
            }
            if rule.access.is_empty() || !rule.access.chars().all(|c| c == 'r' || c == 'w') {
                return Err(invalid(OPT, "`access` must be made of r and w"));
            }
        }

        Ok(())
    }
}

/// What CH 54's parser and `VmConfig::validate` accept but creating the VM refuses, so that a
/// config passes the command line's checks and fails only at `vm.create` (with `--delivery
/// argv`: the process exits 1). Checked on the config [`super::parse_argv`] produced.
///
/// - `--console socket=`: `pre_create_console_devices` refuses it with "No socket option support
///   for console device" (vmm/src/console_devices.rs); only the serial port has a socket mode.
pub fn refused_at_create(config: &serde_json::Value) -> Result<()> {
    if config.pointer("/console/mode").and_then(|m| m.as_str()) == Some("Socket") {
        return Err(invalid(
            "--console",
            "socket= is refused by cloud-hypervisor when it creates the VM (\"No socket option \
             support for console device\"); only the serial port can be a socket: use --serial \
             socket=PATH, or --console pty, file=PATH or off",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use crate::hypervisor::cloud_hypervisor::cmdline::parse_argv;

    fn accepted(extra: &[&str]) -> Result<(), String> {
        let mut args: Vec<OsString> = vec!["--kernel".into(), "/k".into()];
        args.extend(extra.iter().map(OsString::from));
        parse_argv(&args).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn limits_at_and_above() {
        let serial20 = format!("path=/a,serial={}", "s".repeat(20));
        let serial21 = format!("path=/a,serial={}", "s".repeat(21));
        let tag36 = format!("tag={},socket=/s", "t".repeat(36));
        let tag37 = format!("tag={},socket=/s", "t".repeat(37));
        let table: &[(&[&str], bool)] = &[
            (&["--cpus", "boot=1,max=8192"], true),
            (&["--cpus", "boot=1,max=8193"], false),
            (&["--cpus", "boot=2,max=1"], false),
            (&["--disk", &serial20], true),
            (&["--disk", &serial21], false),
            (&["--memory", "shared=on", "--fs", &tag36], true),
            (&["--memory", "shared=on", "--fs", &tag37], false),
            (&["--net", "tap=t,mtu=1280"], true),
            (&["--net", "tap=t,mtu=1279"], false),
            (&["--platform", "num_pci_segments=96"], true),
            (&["--platform", "num_pci_segments=97"], false),
            (&["--platform", "num_pci_segments=0"], false),
            (&["--platform", "iommu_address_width=64"], true),
            (&["--platform", "iommu_address_width=65"], false),
            (&["--disk", "path=/a,queue_size=4"], true),
            (&["--disk", "path=/a,queue_size=2"], false),
            (&["--disk", "path=/a,queue_size=3"], false),
            (&["--balloon", "size=511M"], true),
            (&["--balloon", "size=512M"], false),
            (&["--vsock", "cid=3,socket=/v"], true),
            (&["--vsock", "cid=2,socket=/v"], false),
            (&["--vsock", "cid=4294967294,socket=/v"], true),
            (&["--vsock", "cid=4294967295,socket=/v"], false),
            (&["--disk", "path=/a,pci_device_id=31"], true),
            (&["--disk", "path=/a,pci_device_id=32"], false),
            (&["--disk", "path=/a,pci_device_id=0,pci_segment=0"], false),
            (&["--device", "path=/d,x_exclude_mmap_bars=[5]"], true),
            (&["--device", "path=/d,x_exclude_mmap_bars=[6]"], false),
            (&["--cpus", "boot=2,topology=2:1:1:1"], true),
            (&["--cpus", "boot=3,topology=3:1:1:1"], false),
            (&["--net", "tap=t,num_queues=2"], true),
            (&["--net", "tap=t,num_queues=1"], false),
            (&["--cpus", "boot=2", "--net", "tap=t,num_queues=4"], true),
            (&["--net", "fd=[3],num_queues=2"], true),
            (&["--net", "fd=[3],num_queues=4"], false),
        ];
        for (extra, ok) in table {
            let got = accepted(extra);
            assert_eq!(got.is_ok(), *ok, "{extra:?}: {got:?}");
        }
    }

    #[test]
    fn iommu_is_derived() {
        let iommu = |extra: &[&str]| {
            let mut args: Vec<OsString> = vec!["--kernel".into(), "/k".into()];
            args.extend(extra.iter().map(OsString::from));
            parse_argv(&args).unwrap().vm_config.unwrap()["iommu"].clone()
        };
        assert_eq!(iommu(&[]), false);
        assert_eq!(iommu(&["--rng", "iommu=on"]), true);
        // An IOMMU segment turns the flag on even with no device on it.
        assert_eq!(
            iommu(&["--platform", "num_pci_segments=2,iommu_segments=[1]"]),
            true
        );
    }

    #[test]
    fn firmware_drops_kernel_only_parts() {
        let args: Vec<OsString> = ["--firmware", "/fw", "--cmdline", "x", "--initramfs", "/i"]
            .iter()
            .map(OsString::from)
            .collect();
        let config = parse_argv(&args).unwrap().vm_config.unwrap();
        assert_eq!(config["payload"], serde_json::json!({"firmware": "/fw"}));
    }

    #[test]
    fn console_socket_parses_but_is_refused_at_create() {
        // The parser takes it, like CH's (fixture "console-socket-parses"); vm.create does not
        // (#11).
        let args: Vec<OsString> = ["--kernel", "/k", "--console", "socket=/run/c.sock"]
            .iter()
            .map(OsString::from)
            .collect();
        let parsed = parse_argv(&args).unwrap();
        let e = super::refused_at_create(parsed.vm_config.as_ref().unwrap()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("--console: socket=")
                && text.contains("No socket option support for console device")
                && text.contains("--serial socket=PATH"),
            "{text}"
        );
        for ok in [
            &["--serial", "socket=/run/s.sock"][..],
            &["--console", "pty"],
            &[],
        ] {
            let mut args: Vec<OsString> = vec!["--kernel".into(), "/k".into()];
            args.extend(ok.iter().map(OsString::from));
            let parsed = parse_argv(&args).unwrap();
            assert!(
                super::refused_at_create(parsed.vm_config.as_ref().unwrap()).is_ok(),
                "{ok:?}"
            );
        }
    }
}
