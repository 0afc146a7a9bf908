//! What the option translators share: the error helpers, the strict key parser, and the PCI
//! and rate-limiter keys that both VM-level options (vmconfig.rs) and device options
//! (devices.rs) carry. Its own file so that those two do not import each other.

use serde::Serialize;

use super::ArgvError;
use super::grammar::{GrammarError, Options};

pub(crate) type Result<T> = std::result::Result<T, ArgvError>;

pub(crate) fn invalid(option: &str, reason: impl Into<String>) -> ArgvError {
    ArgvError::Invalid {
        option: option.into(),
        reason: reason.into(),
    }
}

pub(crate) fn grammar(option: &str) -> impl Fn(GrammarError) -> ArgvError + '_ {
    move |error| ArgvError::Value {
        option: option.into(),
        error,
    }
}

pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

pub(crate) const PCI3: &[&str] = &["id", "pci_segment", "pci_device_id"];
pub(crate) const PCI4: &[&str] = &["id", "iommu", "pci_segment", "pci_device_id"];

/// Parses `input` strictly against `keys` (plus the PCI keys in `pci`).
pub(crate) fn options(
    option: &str,
    input: &str,
    keys: &[&'static str],
    pci: &[&'static str],
) -> Result<Options> {
    let mut all = keys.to_vec();
    all.extend_from_slice(pci);
    let mut parsed = Options::new(&all);
    parsed.parse(input).map_err(grammar(option))?;
    Ok(parsed)
}

pub(crate) fn required(option: &str, value: Option<String>, key: &str) -> Result<String> {
    value.ok_or_else(|| invalid(option, format!("`{key}` is required")))
}

#[derive(Serialize, Default, Clone, Debug)]
pub(crate) struct PciCommon {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub iommu: bool,
    pub pci_segment: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
}

impl PciCommon {
    /// CH reads the PCI keys in a second, lenient pass over the same string.
    pub(crate) fn parse(option: &str, input: &str) -> Result<Self> {
        let mut o = Options::new(PCI4);
        let err = grammar(option);
        o.parse_subset(input).map_err(&err)?;
        Ok(Self {
            id: o.get("id"),
            iommu: o.toggle("iommu").map_err(&err)?.unwrap_or(false),
            pci_segment: o
                .scalar("pci_segment", "a PCI segment number")
                .map_err(&err)?
                .unwrap_or(0),
            pci_device_id: o
                .scalar("pci_device_id", "a PCI device number")
                .map_err(&err)?,
        })
    }
}

#[derive(Serialize, Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    pub size: u64,
    pub one_time_burst: u64,
    pub refill_time: u64,
}

#[derive(Serialize, Clone, Copy, Debug)]
pub(crate) struct RateLimiter {
    pub bandwidth: Option<TokenBucket>,
    pub ops: Option<TokenBucket>,
}

pub(crate) const BUCKET_KEYS: &[&str] = &[
    "bw_size",
    "bw_one_time_burst",
    "bw_refill_time",
    "ops_size",
    "ops_one_time_burst",
    "ops_refill_time",
];

impl RateLimiter {
    /// The `bw_*`/`ops_*` keys: plain integers (no K/M/G). A bucket exists only with both a
    /// size and a refill time.
    pub(crate) fn parse(option: &str, o: &Options) -> Result<Self> {
        let err = grammar(option);
        let mut numbers = [0u64; 6];
        for (slot, key) in numbers.iter_mut().zip(BUCKET_KEYS) {
            *slot = o.scalar(key, "an integer").map_err(&err)?.unwrap_or(0);
        }
        let [
            bw_size,
            bw_burst,
            bw_refill,
            ops_size,
            ops_burst,
            ops_refill,
        ] = numbers;
        let bucket = |size, one_time_burst, refill_time| {
            (size != 0 && refill_time != 0).then_some(TokenBucket {
                size,
                one_time_burst,
                refill_time,
            })
        };
        Ok(Self {
            bandwidth: bucket(bw_size, bw_burst, bw_refill),
            ops: bucket(ops_size, ops_burst, ops_refill),
        })
    }

    pub(crate) fn any(self) -> Option<Self> {
        (self.bandwidth.is_some() || self.ops.is_some()).then_some(self)
    }
}
