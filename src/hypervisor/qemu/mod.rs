//! QEMU: its command line ([`args`]), how a run is planned ([`plan`]) and driven
//! ([`backend`]), its QMP monitor ([`qmp`]), and the SMBIOS limits that QEMU and the guest
//! impose.
//!
//! Facts checked with qemu-system-x86_64 7.2 (Debian 12) and systemd 252/257 guests:
//! - every `-smbios type=11` string, `value=` or `path=`, goes into ONE type 11 entry, in argv
//!   order (reference/systemd.md section 2; again here with a memfd `path=/dev/fd/N`);
//! - `path=/dev/fd/N` of a sealed memfd the child inherited is read whole, byte for byte;
//! - a connected socketpair end works as `-chardev socket,id=..,fd=N` for a QMP monitor;
//! - QEMU refuses to start when all its SMBIOS tables exceed 65535 bytes ("SMBIOS 2.1 table
//!   length N exceeds 65535", exit 1); its other tables take 321 bytes on `-machine pc` with
//!   one socket and 512 MiB (309 on q35), 68 more per extra socket;
//! - the `microvm` machine has no SMBIOS at all: QEMU accepts `-smbios` for it and the guest
//!   kernel logs "DMI not present" (so [`parse_argv`] refuses it).

pub mod args;
pub mod backend;
pub mod plan;
pub mod qmp;

pub use args::{ArgvError, Launch, QemuArgv, child_args, is_qemu, launch, parse_argv};
pub use qmp::{Event, Qmp, QmpError, QmpEvents};

use crate::credentials::CredentialError;
use crate::fwcfg::ChannelError;
use crate::oem::{Limits, OemError};
use crate::plan::PlanError;

/// What QEMU's plan refuses besides what every plan refuses ([`PlanError`]).
#[derive(Debug, thiserror::Error)]
pub enum QemuPlanError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("QEMU argv: {0}")]
    QemuArgv(#[from] ArgvError),
    #[error(
        "{flag} applies to cloud-hypervisor only; QEMU always gets the OEM strings through sealed memfds (-smbios type=11,path=/dev/fd/N), never in argv\nhint: drop {flag}"
    )]
    NotForQemu { flag: &'static str },
    #[error(
        "--ready guest needs a vsock device for the guest's notifications, and the QEMU argv has no vhost-vsock device{user}\nhint: pass --vsock-cid CID (credbridge adds -device vhost-vsock-pci and reserves the CID), or add -device vhost-vsock-pci,guest-cid=CID to the argv",
        user = if *.vhost_user { " but a vhost-user-vsock device, whose host side is a user-space backend's Unix socket\nhint: pass --vsock-uds with that backend's hybrid-vsock socket (vhost-device-vsock's uds-path)" } else { "" }
    )]
    QemuNoVsock { vhost_user: bool },
    #[error(
        "-device {driver}: {what}; QEMU needs a guest-cid of 3 to 4294967294, and credbridge needs it to tell the guest's connections from other VMs'\nhint: add guest-cid=CID, unique on this host (microvm.nix: microvm.vsock.cid)",
        what = match .cid { None => "no numeric guest-cid".to_owned(), Some(c) => format!("guest-cid={c} is not a guest CID") }
    )]
    QemuVsockCid { driver: String, cid: Option<u64> },
}

impl From<CredentialError> for QemuPlanError {
    fn from(e: CredentialError) -> Self {
        Self::Plan(e.into())
    }
}

impl From<OemError> for QemuPlanError {
    fn from(e: OemError) -> Self {
        Self::Plan(e.into())
    }
}

impl From<ChannelError> for QemuPlanError {
    fn from(e: ChannelError) -> Self {
        Self::Plan(e.into())
    }
}

/// The SMBIOS 2.1 entry point's structure table length is a u16; QEMU 7.2 exits rather than
/// write a larger table.
pub const SMBIOS_TABLES_MAX: usize = 65535;

/// Room left for QEMU's own tables (types 0, 1, 3, 4, 16, 17, 19, 32, 127 and the argv's
/// `-smbios type=0..4,17` strings). Measured: 321 bytes for a one-socket `pc` machine, +68
/// per extra socket, a type 17 per 16 GiB of RAM. 4096 covers about 55 sockets with room for
/// the argv's own strings; beyond that QEMU itself still refuses to start (it never writes a
/// cut table), so this reserve only decides whose error the operator sees first.
pub const OTHER_TABLES_RESERVE: usize = 4096;

/// Header (5 bytes) and terminating NUL of the type 11 entry.
const ENTRY_OVERHEAD: usize = 6;

/// Ceiling on sum(len + 1) of the type 11 strings: 65535 - 4096 - 6 = 61433.
pub const STRINGS_CEILING: usize = SMBIOS_TABLES_MAX - OTHER_TABLES_RESERVE - ENTRY_OVERHEAD;

/// The limits to check QEMU's OEM strings against. `budget` is `--smbios-budget` (default
/// [`crate::oem::DEFAULT_BUDGET`], 4096: QEMU puts all strings into one entry, and systemd
/// < 257 reads only 4 KiB of it). `max_budget()` of the result is 61439.
pub fn limits(budget: usize) -> Limits {
    Limits {
        budget,
        strings_ceiling: STRINGS_CEILING,
        hypervisor: "QEMU",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oem::{OemError, OemString, Origin, validate};

    #[test]
    fn ceiling_at_below_and_above() {
        let l = limits(usize::MAX);
        assert_eq!(STRINGS_CEILING, 61433);
        assert_eq!(l.max_budget(), 61439);
        let one = |n: usize| vec![OemString::public(&"a".repeat(n), Origin::Flag)];
        assert!(validate(&one(STRINGS_CEILING - 1), &l).is_ok());
        let e = validate(&one(STRINGS_CEILING), &l).unwrap_err();
        assert!(matches!(
            e,
            OemError::OverCeiling {
                hypervisor: "QEMU",
                ..
            }
        ));
    }

    #[test]
    fn default_budget_is_the_old_guests_4_kib() {
        let l = limits(crate::oem::DEFAULT_BUDGET);
        let one = |n: usize| vec![OemString::public(&"a".repeat(n), Origin::Flag)];
        assert!(validate(&one(4089), &l).is_ok());
        assert!(matches!(
            validate(&one(4090), &l),
            Err(OemError::OverBudget { size: 4097, .. })
        ));
    }
}
