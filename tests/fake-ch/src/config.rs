//! The parts of `VmConfig::parse` the fake models exactly: `--platform` (parse and validate,
//! `vmm/src/config.rs` `PlatformConfig::parse/validate`), `--vsock` (cid, socket), `--net`
//! (its keys and `fd=[..]`), the payload. Other options stay opaque strings; the resulting JSON is
//! a partial `VmConfig` (what `vm.info` returns for an argv-configured VM).

use serde_json::{Map, Value, json};

use crate::cli::Matches;
use crate::grammar::{OptError, OptionParser};

/// One link of CH's error chain, printed as `  N: text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// e.g. `Error parsing --platform`
    pub context: String,
    /// e.g. `Invalid syntax: oem_strings=[a`
    pub cause: String,
    /// `{:?}` of the error as CH logs it in its "Fatal error" line.
    pub debug: String,
}

impl ConfigError {
    fn parse(option: &str, variant: &str, e: OptError) -> Self {
        ConfigError {
            context: format!("Error parsing {option}"),
            cause: e.to_string(),
            debug: format!("{variant}({})", e.debug_name()),
        }
    }

    fn validation(cause: String, debug: String) -> Self {
        ConfigError {
            context: "Error validating configuration".into(),
            cause,
            debug: format!("Validation({debug})"),
        }
    }
}

const PLATFORM_STRING_KEYS: [&str; 8] = [
    "system_manufacturer",
    "system_product_name",
    "system_version",
    "system_serial_number",
    "system_uuid",
    "system_sku_number",
    "system_family",
    "chassis_asset_tag",
];

/// `PlatformConfig`, as JSON fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub num_pci_segments: u16,
    pub iommu_segments: Option<Vec<u16>>,
    pub iommu_address_width_bits: u8,
    pub strings: Vec<(&'static str, String)>,
    pub oem_strings: Option<Vec<String>>,
    pub iommufd: bool,
    pub iommufd_fd: Option<i32>,
    pub vfio_p2p_dma: bool,
}

impl Platform {
    /// `PlatformConfig::parse`, conversions in CH's order.
    pub fn parse(value: &str) -> Result<Platform, OptError> {
        let mut keys = vec![
            "num_pci_segments",
            "iommu_segments",
            "iommu_address_width",
            "serial_number",
            "uuid",
            "oem_strings",
            "iommufd",
            "iommufd_fd",
            "vfio_p2p_dma",
        ];
        keys.extend(PLATFORM_STRING_KEYS);
        let mut p = OptionParser::new(&keys);
        p.parse(value)?;
        let num_pci_segments = p.convert::<u16>("num_pci_segments")?.unwrap_or(1);
        // IntegerList elements are cast with `as`, silently truncating (config.rs).
        let iommu_segments = p
            .integer_list("iommu_segments")?
            .map(|v| v.into_iter().map(|e| e as u16).collect());
        let iommu_address_width_bits = p.convert::<u8>("iommu_address_width")?.unwrap_or(64);
        let oem_strings = p.string_list("oem_strings")?;
        let iommufd_fd = p.convert::<i32>("iommufd_fd")?;
        let iommufd = p.toggle("iommufd")?.unwrap_or(iommufd_fd.is_some());
        let vfio_p2p_dma = p.toggle("vfio_p2p_dma")?.unwrap_or(true);
        let mut strings = Vec::new();
        for key in PLATFORM_STRING_KEYS {
            if let Some(v) = p.convert::<String>(key)? {
                strings.push((key, v));
            }
        }
        // Deprecated aliases; the `system_*` key wins.
        for (alias, key) in [
            ("serial_number", "system_serial_number"),
            ("uuid", "system_uuid"),
        ] {
            if let Some(v) = p.convert::<String>(alias)? {
                eprintln!(
                    "{}",
                    crate::log_line(
                        "WARN",
                        "vmm/src/config.rs",
                        &format!("'{alias}' in --platform is deprecated; use '{key}'.")
                    )
                );
                if !strings.iter().any(|(k, _)| *k == key) {
                    strings.push((key, v));
                }
            }
        }
        Ok(Platform {
            num_pci_segments,
            iommu_segments,
            iommu_address_width_bits,
            strings,
            oem_strings,
            iommufd,
            iommufd_fd,
            vfio_p2p_dma,
        })
    }

    /// `PlatformConfig::validate`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.num_pci_segments == 0 || self.num_pci_segments > 96 {
            return Err(ConfigError::validation(
                format!(
                    "Number of PCI segments ({}) not in range of 1 to 96",
                    self.num_pci_segments
                ),
                format!("InvalidNumPciSegments({})", self.num_pci_segments),
            ));
        }
        for s in self.iommu_segments.iter().flatten() {
            if *s >= self.num_pci_segments {
                return Err(ConfigError::validation(
                    format!("Invalid PCI segment id: {s}"),
                    format!("InvalidPciSegment({s})"),
                ));
            }
        }
        if self.iommu_address_width_bits > 64 {
            return Err(ConfigError::validation(
                format!(
                    "IOMMU address width in bits ({}) should be less than or equal to 64",
                    self.iommu_address_width_bits
                ),
                format!(
                    "InvalidIommuAddressWidthBits({})",
                    self.iommu_address_width_bits
                ),
            ));
        }
        if self.iommufd_fd.is_some() && !self.iommufd {
            return Err(ConfigError::validation(
                "Platform `iommufd_fd=<fd>` requires `iommufd=on`".into(),
                "IommufdFdRequiresIommufd".into(),
            ));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("num_pci_segments".into(), json!(self.num_pci_segments));
        if let Some(s) = &self.iommu_segments {
            m.insert("iommu_segments".into(), json!(s));
        }
        m.insert(
            "iommu_address_width_bits".into(),
            json!(self.iommu_address_width_bits),
        );
        for (k, v) in &self.strings {
            m.insert((*k).into(), json!(v));
        }
        if let Some(o) = &self.oem_strings {
            m.insert("oem_strings".into(), json!(o));
        }
        m.insert("iommufd".into(), json!(self.iommufd));
        if let Some(fd) = self.iommufd_fd {
            m.insert("iommufd_fd".into(), json!(fd));
        }
        m.insert("vfio_p2p_dma".into(), json!(self.vfio_p2p_dma));
        Value::Object(m)
    }
}

const PCI_COMMON: [&str; 4] = ["id", "iommu", "pci_segment", "pci_device_id"];

fn parse_vsock(value: &str) -> Result<Value, ConfigError> {
    let err = |e| ConfigError::parse("--vsock", "ParseVsock", e);
    let mut keys = vec!["socket", "cid"];
    keys.extend(PCI_COMMON);
    let mut p = OptionParser::new(&keys);
    p.parse(value).map_err(err)?;
    let socket = p.get("socket").ok_or_else(|| ConfigError {
        context: "Error parsing --vsock: socket missing".into(),
        cause: String::new(),
        debug: "ParseVsockSockMissing".into(),
    })?;
    let cid = p
        .convert::<u32>("cid")
        .map_err(err)?
        .ok_or_else(|| ConfigError {
            context: "Error parsing --vsock: cid missing".into(),
            cause: String::new(),
            debug: "ParseVsockCidMissing".into(),
        })?;
    let mut m = Map::new();
    m.insert("cid".into(), json!(cid));
    m.insert("socket".into(), json!(socket));
    if let Some(id) = p.get("id") {
        m.insert("id".into(), json!(id));
    }
    m.insert(
        "pci_segment".into(),
        json!(p.convert::<u16>("pci_segment").map_err(err)?.unwrap_or(0)),
    );
    Ok(Value::Object(m))
}

fn parse_net(value: &str) -> Result<Value, ConfigError> {
    let err = |e| ConfigError::parse("--net", "ParseNetwork", e);
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
        "bw_size",
        "bw_one_time_burst",
        "bw_refill_time",
        "ops_size",
        "ops_one_time_burst",
        "ops_refill_time",
    ];
    keys.extend(PCI_COMMON);
    let mut p = OptionParser::new(&keys);
    p.parse(value).map_err(err)?;
    let mut m = Map::new();
    for key in ["tap", "mac", "host_mac", "ip", "mask", "id", "socket"] {
        if let Some(v) = p.get(key) {
            let name = if key == "socket" { "vhost_socket" } else { key };
            m.insert(name.into(), json!(v));
        }
    }
    m.insert(
        "num_queues".into(),
        json!(p.convert::<usize>("num_queues").map_err(err)?.unwrap_or(2)),
    );
    m.insert(
        "queue_size".into(),
        json!(p.convert::<u16>("queue_size").map_err(err)?.unwrap_or(256)),
    );
    // `fd=[..]` elements are cast with `as i32` (config.rs), silently truncating.
    if let Some(fds) = p.integer_list("fd").map_err(err)? {
        let fds: Vec<i32> = fds.into_iter().map(|f| f as i32).collect();
        m.insert("fds".into(), json!(fds));
    }
    m.insert(
        "pci_segment".into(),
        json!(p.convert::<u16>("pci_segment").map_err(err)?.unwrap_or(0)),
    );
    Ok(Value::Object(m))
}

/// Builds the (partial) VmConfig JSON from argv, in CH's parse order (net, vsock, platform),
/// then validates the platform.
pub fn vm_config_from_args(m: &Matches) -> Result<Value, ConfigError> {
    let mut cfg = Map::new();
    let mut payload = Map::new();
    for (opt, key) in [
        ("kernel", "kernel"),
        ("firmware", "firmware"),
        ("cmdline", "cmdline"),
        ("initramfs", "initramfs"),
    ] {
        if let Some(v) = m.one(opt) {
            payload.insert(key.into(), json!(v));
        }
    }
    // validate() clears cmdline/initramfs when firmware is the payload.
    if payload.contains_key("firmware") {
        payload.remove("cmdline");
        payload.remove("initramfs");
    }
    cfg.insert("payload".into(), Value::Object(payload));
    cfg.insert("memory".into(), json!({"size": 536870912u64}));
    let nets = m
        .all("net")
        .iter()
        .map(|v| parse_net(v))
        .collect::<Result<Vec<_>, _>>()?;
    if !nets.is_empty() {
        cfg.insert("net".into(), Value::Array(nets));
    }
    if let Some(v) = m.one("vsock") {
        cfg.insert("vsock".into(), parse_vsock(v)?);
    }
    let platform = match m.one("platform") {
        Some(v) => Some(
            Platform::parse(v).map_err(|e| ConfigError::parse("--platform", "ParsePlatform", e))?,
        ),
        None => None,
    };
    if let Some(p) = &platform {
        p.validate()?;
        cfg.insert("platform".into(), p.to_json());
    }
    cfg.insert("watchdog".into(), json!(m.flag("watchdog")));
    cfg.insert("pvpanic".into(), json!(m.flag("pvpanic")));
    cfg.insert("landlock_enable".into(), json!(m.flag("landlock")));
    Ok(Value::Object(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_defaults_and_aliases() {
        let p = Platform::parse("serial_number=legacy,system_serial_number=new").unwrap();
        assert_eq!(p.num_pci_segments, 1);
        assert_eq!(p.iommu_address_width_bits, 64);
        assert_eq!(p.strings, vec![("system_serial_number", "new".to_string())]);
        let p = Platform::parse("iommufd_fd=7").unwrap();
        assert!(p.iommufd);
        assert!(
            Platform::parse("iommufd=off,iommufd_fd=7")
                .unwrap()
                .validate()
                .is_err()
        );
        assert_eq!(
            Platform::parse("system_serial_number=\"a,b=c\"")
                .unwrap()
                .strings,
            vec![("system_serial_number", "a,b=c".to_string())]
        );
    }

    #[test]
    fn net_fds_truncate() {
        let v = parse_net("fd=[3,4294967299]").unwrap();
        assert_eq!(v["fds"], json!([3, 3]));
    }
}
