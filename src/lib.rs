//! credbridge: systemd service credentials to microVM guests as SMBIOS type 11 OEM strings.
#![deny(unsafe_code)]

pub mod ch;
