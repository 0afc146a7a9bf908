//! fake-cloud-hypervisor: a test double of cloud-hypervisor 54 for credbridge's integration
//! tests. It parses argv like CH (options, once-only rules, the `--platform` grammar), serves
//! CH's REST API on `--api-socket`, writes CH-format events to `--event-monitor`, and records
//! what it saw. See `lib.rs` for the behaviour and `record.rs` for the files.
//!
//! Environment (all optional; read once at start):
//! - `FAKE_CH_RECORD_DIR=<dir>`: record into this existing directory: `argv.json`, `env.json`,
//!   `fds.json`, `pid` (at start), `vm_config.json` (at create and add-net/add-device),
//!   `oem_strings.json` (at boot), `requests.jsonl` (one line per API request),
//!   `events.log` (every event and whether it was written), `guest_notify.jsonl`,
//!   `accept_errors.jsonl`, `signals.log`, `exit.log`.
//! - `FAKE_CH_EXIT_BEFORE_BOOT=<code>`: at boot, after `vm:booting`, exit with `<code>`
//!   (before `vm:booted`).
//! - `FAKE_CH_BOOT_DELAY_MS=<ms>`: boot takes this long (between `vm:booting` and `vm:booted`;
//!   API requests wait meanwhile, as CH's single control loop makes them).
//! - `FAKE_CH_EXIT_AFTER_BOOT=<code>:<delay_ms>`: exit with `<code>` that long after boot.
//! - `FAKE_CH_KILL_SELF_AFTER_BOOT_MS=<ms>`: SIGKILL itself that long after boot (a crash).
//! - `FAKE_CH_IGNORE_POWER_BUTTON=1`: `vm.power-button` answers 204 but the guest never powers off.
//! - `FAKE_CH_POWEROFF_DELAY_MS=<ms>` (default 100): time from `vm.power-button` to poweroff.
//! - `FAKE_CH_PING_STOP_AFTER_MS=<ms>`: from that time after start, `vmm.ping` requests are
//!   read but never answered.
//! - `FAKE_CH_NO_EVENTS=1`: write no events (the monitor fd still gets O_NONBLOCK).
//! - `FAKE_CH_CLOSE_EVENTS_AFTER_BOOT=1`: close the event monitor fd right after `vm:booted`.
//! - `FAKE_CH_API_ERROR=<route>:<status>[,...]`: that route (e.g. `vm.create`, the path after
//!   `/api/v1/`) answers `<status>` with a JSON array of error strings
//!   (`["Error creating VM: fake failure"]` for vm.create) and has no effect.
//! - `FAKE_CH_API_ERROR_ECHO=1`: a test knob, not cloud-hypervisor behaviour: the errors of
//!   `FAKE_CH_API_ERROR` also quote the request body back, and each of its OEM strings raw,
//!   Debug-escaped, JSON-escaped (serde_json's and ASCII-only `\uXXXX`/`\/`), Debug of JSON,
//!   its value in base64 and, for a binary credential, decoded (issue #11).
//! - `FAKE_CH_API_HANG=<route>[,...]`: requests to that route are read and never answered.
//! - `FAKE_CH_BIND_DELAY_MS=<ms>`: sleep before binding (`path=`) or serving (`fd=`) the API.
//! - `FAKE_CH_IGNORE_SIGTERM=1`: ignore SIGTERM (SIGINT still exits), for kill escalation tests.
//! - `FAKE_CH_DIE_BY_SIGTERM=1`: die by SIGTERM's default action instead of CH's clean exit 0
//!   (a hypervisor, or a wrapper, that does not handle it).
//! - `FAKE_CH_VCPU_ERROR_AFTER_BOOT_MS=<ms>`: that long after boot, fail like a vCPU error in
//!   CH 54 (`VCPU generated error` logged, the exit event written): `vm:shutdown`,
//!   `vm:deleted`, `vmm:shutdown`, exit 0, exactly as a guest poweroff looks.
//! - `FAKE_CH_GUEST_NOTIFY=<port>:<msg1>|<msg2>|...`: after `vm:booted`, act as the guest's
//!   systemd sending each message to `vsock-stream:2:<port>` (a literal `\n` in a message
//!   becomes a newline); `@reboot`, `@crash`, `@poweroff`, `@vcpu-error` in the list are guest
//!   actions at that point instead of messages; see `notify.rs`.
//! - `FAKE_CH_GUEST_NOTIFY_GAP_MS=<ms>` (default 10): pause between messages.
//! - `FAKE_CH_GUEST_NOTIFY_CLOSE_TIMEOUT_MS=<ms>` (default 2000): how long each message waits
//!   for the host to close before giving up (recorded as `timed_out`).
//! - `FAKE_CH_GUEST_NOTIFY_HALF_CLOSE=1`: shut down the write side after each message, as the
//!   host sees systemd >= 256 through cloud-hypervisor >= 53 (without it: <= 52, which never
//!   passes the guest's half-close on).
//! - `FAKE_CH_FW_CFG=1`: be a build with the non-default `fw_cfg` feature (reference section 7):
//!   `vmm.ping` lists `fw_cfg`, and `payload.fw_cfg_config` is kept, checked and loaded at
//!   `vm.boot` (recorded in `fw_cfg.json`). Without it, as a stock build, `vmm.ping` lists
//!   `["io_uring","kvm"]` and vm.create silently drops `fw_cfg_config`.

fn main() {
    fake_cloud_hypervisor::run()
}
