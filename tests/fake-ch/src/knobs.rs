//! Fault knobs, read once from the environment at start (the list is in `main.rs`).

use std::env;

#[derive(Debug, Default, Clone)]
pub struct Knobs {
    pub record_dir: Option<std::path::PathBuf>,
    pub exit_before_boot: Option<i32>,
    pub boot_delay_ms: u64,
    pub exit_after_boot: Option<(i32, u64)>,
    pub kill_self_after_boot_ms: Option<u64>,
    pub ignore_power_button: bool,
    pub poweroff_delay_ms: u64,
    pub ping_stop_after_ms: Option<u64>,
    pub no_events: bool,
    pub close_events_after_boot: bool,
    pub api_error: Vec<(String, u16)>,
    pub api_hang: Vec<String>,
    pub api_error_echo: bool,
    pub bind_delay_ms: u64,
    pub ignore_sigterm: bool,
    pub die_by_sigterm: bool,
    pub vcpu_error_after_boot_ms: Option<u64>,
    pub guest_notify: Option<(u32, Vec<String>)>,
    pub guest_notify_gap_ms: u64,
    pub guest_notify_close_timeout_ms: u64,
    pub guest_notify_half_close: bool,
    /// `FAKE_CH_FW_CFG=1`: behave as a build with the `fw_cfg` cargo feature.
    pub fw_cfg_build: bool,
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn num<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = var(name)?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("fake-cloud-hypervisor: ignoring {name}={v:?}: not a number");
            None
        }
    }
}

fn on(name: &str) -> bool {
    var(name).is_some_and(|v| v != "0")
}

impl Knobs {
    pub fn from_env() -> Knobs {
        let exit_after_boot = var("FAKE_CH_EXIT_AFTER_BOOT").and_then(|v| {
            let (c, d) = v.split_once(':').unwrap_or((&v, "0"));
            Some((c.trim().parse().ok()?, d.trim().parse().ok()?))
        });
        let api_error = var("FAKE_CH_API_ERROR")
            .map(|v| {
                v.split(',')
                    .filter_map(|e| {
                        let (r, s) = e.rsplit_once(':')?;
                        Some((r.trim().to_owned(), s.trim().parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let api_hang = var("FAKE_CH_API_HANG")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default();
        let guest_notify = var("FAKE_CH_GUEST_NOTIFY").and_then(|v| {
            let (port, msgs) = v.split_once(':')?;
            let msgs = msgs.split('|').map(|m| m.replace("\\n", "\n")).collect();
            Some((port.trim().parse().ok()?, msgs))
        });
        Knobs {
            record_dir: env::var_os("FAKE_CH_RECORD_DIR")
                .filter(|v| !v.is_empty())
                .map(Into::into),
            exit_before_boot: num("FAKE_CH_EXIT_BEFORE_BOOT"),
            boot_delay_ms: num("FAKE_CH_BOOT_DELAY_MS").unwrap_or(0),
            exit_after_boot,
            kill_self_after_boot_ms: num("FAKE_CH_KILL_SELF_AFTER_BOOT_MS"),
            ignore_power_button: on("FAKE_CH_IGNORE_POWER_BUTTON"),
            poweroff_delay_ms: num("FAKE_CH_POWEROFF_DELAY_MS").unwrap_or(100),
            ping_stop_after_ms: num("FAKE_CH_PING_STOP_AFTER_MS"),
            no_events: on("FAKE_CH_NO_EVENTS"),
            close_events_after_boot: on("FAKE_CH_CLOSE_EVENTS_AFTER_BOOT"),
            api_error,
            api_hang,
            api_error_echo: on("FAKE_CH_API_ERROR_ECHO"),
            bind_delay_ms: num("FAKE_CH_BIND_DELAY_MS").unwrap_or(0),
            ignore_sigterm: on("FAKE_CH_IGNORE_SIGTERM"),
            die_by_sigterm: on("FAKE_CH_DIE_BY_SIGTERM"),
            vcpu_error_after_boot_ms: num("FAKE_CH_VCPU_ERROR_AFTER_BOOT_MS"),
            guest_notify,
            guest_notify_gap_ms: num("FAKE_CH_GUEST_NOTIFY_GAP_MS").unwrap_or(10),
            guest_notify_close_timeout_ms: num("FAKE_CH_GUEST_NOTIFY_CLOSE_TIMEOUT_MS")
                .unwrap_or(2000),
            guest_notify_half_close: on("FAKE_CH_GUEST_NOTIFY_HALF_CLOSE"),
            fw_cfg_build: on("FAKE_CH_FW_CFG"),
        }
    }

    pub fn api_error_for(&self, route: &str) -> Option<u16> {
        self.api_error
            .iter()
            .find(|(r, _)| r == route)
            .map(|(_, s)| *s)
    }

    pub fn hangs(&self, route: &str) -> bool {
        self.api_hang.iter().any(|r| r == route)
    }
}
