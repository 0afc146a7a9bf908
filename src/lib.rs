//! credbridge: systemd service credentials to microVM guests as SMBIOS type 11 OEM strings,
//! with the hypervisor supervised for systemd.
#![deny(unsafe_code)]

pub mod apiclient;
pub mod apisocket;
pub mod ch;
pub mod cli;
pub mod credentials;
pub mod events;
pub mod hostenv;
pub mod logging;
pub mod notify;
pub mod oem;
pub mod sys;
