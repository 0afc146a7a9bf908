//! cloud-hypervisor's command line: its option grammar and the translation of a full argv into
//! the `vm.create` JSON.
