//! credbridge: systemd service credentials to microVM guests as SMBIOS type 11 OEM strings,
//! with the hypervisor supervised for systemd.
#![deny(unsafe_code)]

pub mod cli;
pub mod credentials;
pub mod fwcfg;
pub mod guestnotify;
pub mod hostenv;
pub mod hypervisor;
pub mod lifecycle;
pub mod logging;
pub mod notify;
pub mod oem;
pub mod plan;
pub mod render;
pub mod scrub;
pub mod select;
pub mod sockpath;
pub mod supervisor;
pub mod sys;
pub mod vsock;

/// credbridge's own failures: bad input, nothing could be started, or the start failed
/// although the hypervisor exited 0. Chosen outside the hypervisor's own codes (0, 1, 2) and
/// systemd's reserved range, like `env`/`timeout`'s 125.
pub const EXIT_FAILURE: i32 = 125;
