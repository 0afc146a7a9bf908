//! The `vm.create` request body: the VM config with the OEM strings escaped straight into a
//! zeroizing buffer, and the devices (`--net fd=`, `--device fd=`) that must follow it through
//! `vm.add-net`/`vm.add-device` with their fds attached.

use std::os::fd::RawFd;

use serde_json::Value;

use super::ChPlanError;
use crate::credentials::SecretBytes;
use crate::oem::OemString;
use crate::plan::PlanError;

/// The vm.create request and the devices that must follow it with fds attached.
pub struct CreatePlan {
    /// The VM config with `platform.oem_strings` left for [`CreatePlan::body`] to fill.
    config: Value,
    /// `--net fd=[...]`: vm.create drops fds, so these go through vm.add-net with SCM_RIGHTS.
    pub add_nets: Vec<(Value, Vec<RawFd>)>,
    /// `--device fd=N`: likewise through vm.add-device.
    pub add_devices: Vec<(Value, RawFd)>,
}

impl CreatePlan {
    pub(super) fn split(mut config: Value) -> Result<CreatePlan, ChPlanError> {
        if config
            .pointer("/platform/iommufd_fd")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ChPlanError::NotExpressible {
                what: "--platform iommufd_fd".into(),
            });
        }
        let mut add_nets = Vec::new();
        if let Some(Value::Array(nets)) = config.get_mut("net") {
            let mut kept = Vec::new();
            for mut net in nets.drain(..) {
                match net.as_object_mut().and_then(|o| o.remove("fds")) {
                    Some(Value::Array(fds)) => {
                        let fds: Vec<RawFd> = fds
                            .iter()
                            .filter_map(|v| v.as_i64())
                            .map(|v| v as RawFd)
                            .collect();
                        for &fd in &fds {
                            if !crate::sys::fd_is_open(fd) {
                                return Err(PlanError::FdNotOpen {
                                    fd,
                                    option: "--net fd=",
                                }
                                .into());
                            }
                        }
                        add_nets.push((net, fds));
                    }
                    Some(Value::Null) | None => kept.push(net),
                    Some(other) => {
                        net["fds"] = other;
                        kept.push(net)
                    }
                }
            }
            *nets = kept;
        }
        if config
            .get("net")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            config.as_object_mut().map(|o| o.remove("net"));
        }
        let mut add_devices = Vec::new();
        if let Some(Value::Array(devices)) = config.get_mut("devices") {
            let mut kept = Vec::new();
            for mut dev in devices.drain(..) {
                match dev
                    .as_object_mut()
                    .and_then(|o| o.remove("fd"))
                    .and_then(|v| v.as_i64())
                {
                    Some(fd) => {
                        let fd = fd as RawFd;
                        if !crate::sys::fd_is_open(fd) {
                            return Err(PlanError::FdNotOpen {
                                fd,
                                option: "--device fd=",
                            }
                            .into());
                        }
                        add_devices.push((dev, fd))
                    }
                    None => kept.push(dev),
                }
            }
            *devices = kept;
        }
        if config
            .get("devices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            config.as_object_mut().map(|o| o.remove("devices"));
        }
        Ok(CreatePlan {
            config,
            add_nets,
            add_devices,
        })
    }

    /// Fills `platform.oem_strings` with placeholders; `fill` replaces each by its string.
    fn skeleton(&self, count: usize, fw_cfg: &[(String, String)]) -> (String, Vec<String>) {
        let mut config = self.config.clone();
        if !fw_cfg.is_empty() {
            config["payload"]["fw_cfg_config"] = fw_cfg_config(&config["payload"], fw_cfg);
        }
        let marks: Vec<String> = (0..count)
            .map(|i| format!("\u{0}credbridge-oem-{i}\u{0}"))
            .collect();
        if !config.get("platform").is_some_and(Value::is_object) {
            // cloud-hypervisor's own defaults for a --platform without other keys.
            config["platform"] = serde_json::json!({
                "num_pci_segments": 1,
                "iommu_address_width_bits": 64,
                "iommufd": false,
                "vfio_p2p_dma": true,
            });
        }
        config["platform"]["oem_strings"] =
            Value::Array(marks.iter().cloned().map(Value::String).collect());
        let text = serde_json::to_string(&config).expect("a Value always serializes");
        let encoded_marks = marks
            .iter()
            .map(|m| serde_json::to_string(m).expect("string"))
            .collect();
        (text, encoded_marks)
    }

    /// The vm.create body, built directly into a zeroizing buffer sized up front.
    ///
    /// The secrets never pass through a `serde_json::Value` (whose strings are freed without
    /// zeroing): the config is serialized with placeholders, and each string is escaped into
    /// the final buffer in place of its placeholder.
    pub fn body(&self, strings: &[OemString], fw_cfg: &[(String, String)]) -> SecretBytes {
        let (text, marks) = self.skeleton(strings.len(), fw_cfg);
        // JSON escaping at most sextuples a byte (\u00XX) plus the two quotes.
        let cap = text.len() + strings.iter().map(|s| s.len() * 6 + 2).sum::<usize>();
        let mut out = SecretBytes::with_capacity(cap);
        let mut rest = text.as_str();
        for (mark, s) in marks.iter().zip(strings) {
            let Some(at) = rest.find(mark.as_str()) else {
                continue;
            };
            out.extend_from_slice(&rest.as_bytes()[..at]);
            write_json_string(&mut out, s.expose());
            rest = &rest[at + mark.len()..];
        }
        out.extend_from_slice(rest.as_bytes());
        out
    }

    /// The vm.create body as `render` shows it: every credential redacted.
    pub fn redacted_json(&self, strings: &[OemString], fw_cfg: &[(String, String)]) -> String {
        let (text, marks) = self.skeleton(strings.len(), fw_cfg);
        let mut out = text;
        for (mark, s) in marks.iter().zip(strings) {
            let shown = serde_json::to_string(&s.redacted()).expect("string");
            out = out.replacen(mark.as_str(), &shown, 1);
        }
        let v: Value = serde_json::from_str(&out).expect("valid JSON");
        serde_json::to_string_pretty(&v).expect("a Value always serializes")
    }
}

/// `payload.fw_cfg_config` for (fw_cfg name, file path) items (cloud-hypervisor.md section 7):
/// `items` is an object holding `item_list`, and each of the toggles `kernel`, `cmdline` and
/// `initramfs` (default true) makes vm.boot fail unless the payload has that part, so the
/// absent ones are set false. The files hold the values; no secret is in this JSON.
fn fw_cfg_config(payload: &Value, items: &[(String, String)]) -> Value {
    let mut cfg = serde_json::json!({
        "items": {
            "item_list": items
                .iter()
                .map(|(name, file)| serde_json::json!({"name": name, "file": file}))
                .collect::<Vec<_>>(),
        },
    });
    for part in ["kernel", "cmdline", "initramfs"] {
        if payload.get(part).is_none_or(Value::is_null) {
            cfg[part] = Value::Bool(false);
        }
    }
    cfg
}

/// JSON string escaping into a buffer that must not reallocate. OEM strings are UTF-8 here:
/// argv and flag strings are Rust strings, binary-form credentials are base64, and plain-form
/// ones were chosen only for valid UTF-8.
fn write_json_string(out: &mut SecretBytes, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oem::Origin;

    #[test]
    fn json_escaping_round_trips_every_byte_of_utf8() {
        let s = "a,\"[]\\\n\t\r\u{1}\u{7f}é😀";
        let mut out = SecretBytes::with_capacity(s.len() * 6 + 2);
        write_json_string(&mut out, s.as_bytes());
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn create_body_holds_strings_exactly_and_moves_fd_nets_out() {
        let config = serde_json::json!({
            "payload": {"kernel": "/k"},
            "net": [{"tap": "t0"}, {"fds": [0, 1], "mac": "02:00:00:00:00:01"}],
        });
        let plan = CreatePlan::split(config).unwrap();
        assert_eq!(plan.add_nets.len(), 1);
        assert_eq!(plan.add_nets[0].1, vec![0, 1]);
        assert!(plan.add_nets[0].0.get("fds").is_none());
        let strings = vec![
            OemString::public(
                "io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888",
                Origin::Argv,
            ),
            OemString::public("x,\"[]\n\ty", Origin::Flag),
        ];
        let body = plan.body(&strings, &[]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["net"], serde_json::json!([{"tap": "t0"}]));
        assert_eq!(
            v["platform"]["oem_strings"],
            serde_json::json!([
                "io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888",
                "x,\"[]\n\ty"
            ])
        );
        assert_eq!(v["platform"]["num_pci_segments"], 1);
    }
}
