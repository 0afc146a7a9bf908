//! The neutral plan: what every hypervisor's run needs, checked before anything exists. The
//! OEM strings and fw_cfg items in order, readiness, timeouts, the guest's notify channel and
//! the warnings. What only one hypervisor needs (its parsed argv, its API, its devices) is
//! that hypervisor's own plan, beside it in `crate::hypervisor`, which builds both.
//!
//! Nothing is started, bound or created here: bad input must be refused before anything exists.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::time::Duration;

use zeroize::{Zeroize, Zeroizing};

use crate::cli::{HypervisorKind, Ready, RunArgs};
use crate::credentials::{self, CredentialError};
use crate::guestnotify::GuestNotifyPlan;
use crate::hostenv::HostEnv;
use crate::oem::{self, Limits, OemError, OemString, Origin};

/// What any hypervisor's plan refuses: credentials, OEM limits, channels, the notify channel.
/// Each hypervisor's own refusals are its plan error, which wraps this one.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Oem(#[from] OemError),
    #[error(transparent)]
    Channel(#[from] crate::fwcfg::ChannelError),
    #[error("--vsock-uds {path}: {why}")]
    VsockUds { path: String, why: &'static str },
    #[error(
        "{subject} says {value}; credbridge relays only vsock-stream:2:PORT, a stream connection to the host (cloud-hypervisor's vsock is stream only; credbridge's vhost-vsock listener is a stream socket)\nhint: use io.systemd.credential:vmm.notify_socket=vsock-stream:2:PORT, or drop it and let credbridge add it (--notify-port)"
    )]
    NotifySocketForm { subject: String, value: String },
    #[error(
        "--vsock-cid {0} is reserved (0, 1, 2 and 4294967295 are not guest CIDs)\nhint: use a CID of 3 or more, unique on this host"
    )]
    BadCid(u32),
    #[error(
        "--smbios-budget {budget} is above what {hypervisor} can hold ({max} bytes for the type 11 entry)\nhint: use at most {max}"
    )]
    BudgetTooLarge {
        budget: usize,
        max: usize,
        hypervisor: &'static str,
    },
    #[error(
        "the hypervisor argv names fd {fd} ({option}), but credbridge did not inherit fd {fd}\nhint: open it before exec, as microvm.nix's runner does for macvtap"
    )]
    FdNotOpen { fd: RawFd, option: &'static str },
}

pub struct Plan {
    pub kind: HypervisorKind,
    pub program: OsString,
    pub argv0: OsString,
    pub user_args: Vec<OsString>,
    /// Every OEM string in SMBIOS order: the argv's own, `--oem-string`, then credentials.
    pub strings: Vec<OemString>,
    /// The credentials that go as fw_cfg files instead (#15), and where each went and why.
    pub fw_cfg: Vec<crate::fwcfg::FwCfgItem>,
    pub choices: Vec<crate::fwcfg::Choice>,
    pub credential_count: usize,
    pub budget: usize,
    pub ready: Ready,
    /// `--ready guest:TARGET`'s target.
    pub ready_target: Option<String>,
    /// `--ready guest`: where the guest's notifications arrive.
    pub guest_notify: Option<GuestNotifyPlan>,
    pub ready_timeout: Option<Duration>,
    pub stop_timeout: Duration,
    pub warnings: Vec<String>,
}

/// cloud-hypervisor's notify port when neither the argv nor `--notify-port` names one, as in
/// microvm.nix. Ports of its hybrid vsock are per VM, so every VM can use the same one.
pub const DEFAULT_NOTIFY_PORT: u32 = 8888;

/// The longest port, for sizing credbridge's `vmm.notify_socket` string before the kernel
/// has picked the real one (VMADDR_PORT_ANY, u32::MAX, is never picked).
const WIDEST_PORT: u32 = u32::MAX - 1;

fn notify_socket_string(port: u32) -> String {
    format!("io.systemd.credential:vmm.notify_socket=vsock-stream:2:{port}")
}

/// A guest CID QEMU and the kernel accept: 0, 1 and 2 are the hypervisor, local and host.
pub fn is_guest_cid(cid: u64) -> bool {
    (3..u64::from(u32::MAX)).contains(&cid)
}

/// Child argv that may hold secrets (argv delivery): zeroed on drop.
pub struct ChildArgs(pub Vec<OsString>);

impl Drop for ChildArgs {
    fn drop(&mut self) {
        for a in self.0.drain(..) {
            let mut bytes = std::os::unix::ffi::OsStringExt::into_vec(a);
            bytes.zeroize();
        }
    }
}

impl Plan {
    /// The neutral plan from what a wing's planner settled: the channels it chose, the guest's
    /// notify channel and its warnings. Both wings fill it in the same way, here once.
    pub fn assemble(
        args: &RunArgs,
        kind: HypervisorKind,
        program: &OsString,
        user_args: &[OsString],
        split: crate::fwcfg::Split,
        guest_notify: Option<GuestNotifyPlan>,
        warnings: Vec<String>,
    ) -> Plan {
        Plan {
            kind,
            program: program.clone(),
            argv0: args.argv0.clone().unwrap_or_else(|| program.clone()),
            user_args: user_args.to_vec(),
            credential_count: split.smbios.iter().filter(|s| s.is_secret()).count()
                + split.fw_cfg.iter().filter(|i| !i.public).count(),
            strings: split.smbios,
            fw_cfg: split.fw_cfg,
            choices: split.choices,
            budget: args.smbios_budget,
            ready: args.ready.mode,
            ready_target: args.ready.target.clone(),
            guest_notify,
            ready_timeout: args.ready_timeout,
            stop_timeout: args.stop_timeout,
            warnings,
        }
    }

    /// `--oem-string`s, then the credentials, encoded for the channel.
    pub fn flag_and_credential_strings(
        args: &RunArgs,
        env: &HostEnv,
        plain_ok: bool,
    ) -> Result<Vec<OemString>, PlanError> {
        let dir = args
            .credentials_dir
            .clone()
            .or_else(|| env.credentials_directory())
            .ok_or(CredentialError::NoDirectory)?;
        let creds = credentials::load(&dir, &args.credentials)?;
        let mut strings: Vec<OemString> = args
            .oem_strings
            .iter()
            .map(|s| OemString::public(s, Origin::Flag))
            .collect();
        strings.extend(
            creds
                .iter()
                .map(|c| OemString::from_credential(c, plain_ok)),
        );
        Ok(strings)
    }

    pub fn check_limits(strings: &[OemString], limits: &Limits) -> Result<(), PlanError> {
        if limits.budget > limits.max_budget() {
            return Err(PlanError::BudgetTooLarge {
                budget: limits.budget,
                max: limits.max_budget(),
                hypervisor: limits.hypervisor,
            });
        }
        Ok(oem::validate(strings, limits)?)
    }

    /// The guest's notify port: from a `vmm.notify_socket` string the argv or the credentials
    /// already have, else `--notify-port`, else `default`. When credbridge adds the string, it
    /// goes before the credentials, so that it lands in the first 4 KiB old guests read; with
    /// no port known yet (`None`, the kernel picks at start) it is sized for the widest port.
    pub fn notify_port(
        args: &RunArgs,
        strings: &mut Vec<OemString>,
        default: Option<u32>,
    ) -> Result<Option<u32>, PlanError> {
        let existing = strings
            .iter()
            .find(|s| s.guest_name.as_deref() == Some("vmm.notify_socket"));
        if let Some(s) = existing {
            // It may be a credential: the copy is zeroized.
            let text = Zeroizing::new(String::from_utf8_lossy(s.expose()).into_owned());
            let value = text.split_once('=').map(|(_, v)| v).unwrap_or("");
            // A binary-form string would need decoding; the plain form is what microvm.nix
            // and credbridge write.
            let port =
                crate::guestnotify::port_of(value).ok_or_else(|| PlanError::NotifySocketForm {
                    subject: s.subject(),
                    // A vmm.notify_socket from the credentials directory is still a credential.
                    value: if s.is_confidential() {
                        "<redacted>".to_owned()
                    } else {
                        format!("{value:?}")
                    },
                })?;
            return Ok(Some(port));
        }
        let port = args.notify_port.or(default);
        let at = strings
            .iter()
            .position(|s| s.is_secret())
            .unwrap_or(strings.len());
        strings.insert(
            at,
            OemString::public(
                &notify_socket_string(port.unwrap_or(WIDEST_PORT)),
                Origin::Credbridge,
            ),
        );
        Ok(port)
    }

    /// Writes the port the kernel picked into credbridge's `vmm.notify_socket` string (QEMU,
    /// no port given). The string was sized for the widest port, so the checked limits hold.
    pub fn set_notify_port(&mut self, port: u32) {
        let Some(GuestNotifyPlan::Vhost { port: p @ None, .. }) = &mut self.guest_notify else {
            return;
        };
        *p = Some(port);
        if let Some(s) = self.strings.iter_mut().find(|s| {
            s.origin == Origin::Credbridge && s.guest_name.as_deref() == Some("vmm.notify_socket")
        }) {
            *s = OemString::public(&notify_socket_string(port), Origin::Credbridge);
        }
        if let Some(item) = self
            .fw_cfg
            .iter_mut()
            .find(|i| i.public && i.guest_name == "vmm.notify_socket")
        {
            *item = crate::fwcfg::FwCfgItem::public(
                "vmm.notify_socket",
                &format!("vsock-stream:2:{port}"),
            );
        }
    }

    /// The hypervisor as messages name it.
    pub fn hypervisor_name(&self) -> &'static str {
        match self.kind {
            HypervisorKind::CloudHypervisor => "cloud-hypervisor",
            HypervisorKind::Qemu => "QEMU",
        }
    }

    pub fn entry_size(&self) -> usize {
        oem::entry_size(&self.strings)
    }

    /// Any argv with every credential value replaced by its size. Every intermediate string
    /// may hold a value, so each is zeroized and built without reallocation (#11).
    pub fn redact_args(&self, args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| {
                let mut s = Zeroizing::new(a.to_string_lossy().into_owned());
                for o in self.strings.iter().filter(|o| o.is_confidential()) {
                    let secret = Zeroizing::new(String::from_utf8_lossy(o.expose()).into_owned());
                    s = replace_exact(&s, &secret, &o.redacted());
                }
                // Every value is replaced: what is returned holds none.
                String::clone(&s)
            })
            .collect()
    }

    /// Replaces every secret's value in `text` (an error from the hypervisor, say) in any of
    /// its forms (`crate::scrub`) by its size. Needs the secrets: call before `forget_secrets`.
    pub fn scrub(&self, text: &str) -> String {
        let needles: Vec<_> = self
            .strings
            .iter()
            .filter(|o| o.is_confidential())
            .flat_map(crate::scrub::needles_of)
            .chain(
                self.fw_cfg
                    .iter()
                    .filter(|i| !i.public)
                    .flat_map(crate::fwcfg::FwCfgItem::needles),
            )
            .collect();
        crate::scrub::scrub(text, &needles)
    }

    /// Drops the secrets once they have been handed over.
    pub fn forget_secrets(&mut self) {
        self.strings.retain(|s| !s.is_confidential());
        self.fw_cfg.retain(|i| i.public);
    }

    /// (fw_cfg name, `{prefix}<fw_cfg-N>`) per fw_cfg credential, for `render`: the memfds
    /// exist only in `run`.
    pub fn fw_cfg_placeholders(&self, prefix: &str) -> Vec<(String, String)> {
        self.fw_cfg
            .iter()
            .enumerate()
            .map(|(i, item)| (item.name(), format!("{prefix}<fw_cfg-{}>", i + 1)))
            .collect()
    }
}

/// `hay` with every `from` replaced by `to`, in one allocation of the exact size, zeroed on
/// drop: `hay` may hold a secret, and a String that grows leaves copies of what it held in
/// freed memory (`str::replace` grows).
fn replace_exact(hay: &str, from: &str, to: &str) -> Zeroizing<String> {
    if from.is_empty() {
        return Zeroizing::new(hay.to_owned());
    }
    let n = hay.matches(from).count();
    let mut out = Zeroizing::new(String::with_capacity(
        hay.len() - n * from.len() + n * to.len(),
    ));
    let mut last = 0;
    for (at, _) in hay.match_indices(from) {
        out.push_str(&hay[last..at]);
        out.push_str(to);
        last = at + from.len();
    }
    out.push_str(&hay[last..]);
    debug_assert_eq!(out.len(), out.capacity());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_exact_builds_the_result_in_one_exact_allocation() {
        for (hay, from, to, want) in [
            (
                "a=SECRET,b=SECRET",
                "SECRET",
                "<redacted 6 bytes>",
                "a=<redacted 6 bytes>,b=<redacted 6 bytes>",
            ),
            ("SECRET", "SECRET", "", ""),
            ("none here", "SECRET", "x", "none here"),
            ("aaa", "aa", "b", "ba"),
            ("abc", "", "x", "abc"),
        ] {
            let out = replace_exact(hay, from, to);
            assert_eq!(out.as_str(), want);
            assert_eq!(
                out.capacity(),
                out.len(),
                "{hay:?}: no spare room, so no regrowth"
            );
        }
    }
}
