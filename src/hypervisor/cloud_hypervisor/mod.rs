//! cloud-hypervisor: its command line (grammar and translation to `vm.create`), its REST API
//! (client and socket), its event monitor, and how a run drives it.

pub mod apiclient;
pub mod apisocket;
pub mod backend;
pub mod cmdline;
pub mod events;
