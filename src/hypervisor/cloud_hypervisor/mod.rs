//! cloud-hypervisor: its command line (grammar and translation to `vm.create`), its REST API
//! (client and socket), its event monitor, and how a run drives it.

pub mod apiclient;
pub mod apisocket;
pub mod backend;
pub mod cmdline;
pub mod create;
pub mod events;
pub mod plan;

use crate::credentials::CredentialError;
use crate::fwcfg::ChannelError;
use crate::oem::OemError;
use crate::plan::PlanError;

/// What cloud-hypervisor's plan refuses besides what every plan refuses ([`PlanError`]).
#[derive(Debug, thiserror::Error)]
pub enum ChPlanError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "hypervisor argv: {0}\nhint: credbridge refuses what cloud-hypervisor would refuse, before starting it"
    )]
    Argv(#[from] cmdline::ArgvError),
    #[error(
        "cloud-hypervisor on {0} has no SMBIOS: it parses oem_strings and drops them, so the guest would get no credentials\nhint: credbridge needs an x86_64 host for cloud-hypervisor"
    )]
    NoSmbios(&'static str),
    #[error(
        "--ready guest needs a vsock device for the guest's notifications, and the argv has no --vsock\nhint: pass --vsock-cid CID (credbridge adds the device), or add --vsock cid=CID,socket=PATH to the argv"
    )]
    NoVsock,
    #[error(
        "the vsock socket path {0:?} contains characters the argv grammar cannot carry\nhint: set RUNTIME_DIRECTORY= to a plain path, or use --delivery api"
    )]
    VsockPath(String),
    #[error(
        "the hypervisor argv has no --kernel or --firmware, so there is no VM to give the credentials to\nhint: pass the complete cloud-hypervisor command line after `--`"
    )]
    NoVm,
    #[error(
        "{what} cannot be expressed through cloud-hypervisor's API (vm.create)\nhint: use --delivery argv for this VM, accepting that the OEM strings are visible in the process list"
    )]
    NotExpressible { what: String },
    #[error(
        "{subject} contains {what}, which the --platform oem_strings=[...] grammar cannot carry\nhint: use --delivery api (the default), which passes any bytes"
    )]
    NotArgvSafe { subject: String, what: &'static str },
}

impl From<CredentialError> for ChPlanError {
    fn from(e: CredentialError) -> Self {
        Self::Plan(e.into())
    }
}

impl From<OemError> for ChPlanError {
    fn from(e: OemError) -> Self {
        Self::Plan(e.into())
    }
}

impl From<ChannelError> for ChPlanError {
    fn from(e: ChannelError) -> Self {
        Self::Plan(e.into())
    }
}
