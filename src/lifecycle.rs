//! The guest's lifecycle as its own systemd reports it (#14): what a message, a VM reset or the
//! hypervisor's exit means for the unit. Pure: the supervisor feeds in guest messages,
//! hypervisor resets and the exit, and carries out the [`Effect`]s and the [`Verdict`].
//!
//! systemd >= 256 as PID 1 sends `X_SYSTEMD_*` fields to `vmm.notify_socket` (systemd(1),
//! "supervisor" notifications). A guest that has sent any of them has shown it speaks the
//! protocol, and only then are silence about a shutdown and an unannounced reset read as a
//! crash. Older guests send `READY=1` and `STATUS=` only; for them nothing changes.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::guestnotify::{GuestMessage, ShutdownKind};

/// This many crashes within [`CRASH_WINDOW`] stop the VM and fail the unit: a guest that panics
/// at boot with `panic=-1` is reset by the hypervisor and would loop forever, and systemd's own
/// `Restart=`/`StartLimitBurst=` then decides (its default burst is 5 in 10 s, which a VM never
/// reaches). Three in five minutes lets one or two unlucky crashes pass.
pub const CRASH_LIMIT: usize = 3;
pub const CRASH_WINDOW: Duration = Duration::from_secs(300);
/// A reboot notice read this soon after a reset still explains that reset: systemd-shutdown's
/// message and the hypervisor's reset event travel on different channels, and the reset can be
/// seen first.
pub const LATE_NOTICE: Duration = Duration::from_secs(2);

/// Resets this close to the last one are the same reset: Linux's reboot on x86 tries its reset
/// methods one after the other, and QEMU (7.2, TCG, `pc`) was seen to emit two `RESET` events
/// (`guest-reset`) 36 ms apart for one `systemctl reboot` or one panic. Measured from the last
/// reset taken, not sliding, so a guest that crashes faster than this still counts.
pub const RESET_MERGE: Duration = Duration::from_secs(1);

/// What the supervisor does for the lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `STATUS=` to systemd (not logged).
    Status(String),
    Info(String),
    Warn(String),
    /// The guest is up for the first time: `READY=1`.
    Ready(String),
    /// The guest is up again after a reset: the reboot deadline is off.
    Running,
    /// The VM was reset: the guest must be up again within `--ready-timeout`.
    AwaitReady,
    /// Fail the unit and stop the VM.
    Fail(String),
}

/// How the hypervisor's exit becomes credbridge's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The old rule: the hypervisor's status is credbridge's.
    Passthrough,
    /// The guest powered off (or halted) with this exit status.
    Exit(u8),
    /// A failure although the hypervisor exited 0.
    Fail(String),
}

pub struct Lifecycle {
    /// `--ready guest` (readiness comes from the guest) and `--ready guest:TARGET`'s target.
    guest_ready: bool,
    target: Option<String>,
    /// Any `X_SYSTEMD_*` seen since start: the guest runs systemd >= 256.
    speaks: bool,
    hostname: Option<String>,
    machine_id: Option<String>,
    /// The guest reported itself up in this boot.
    up: bool,
    /// Ever up: the unit's READY=1 was sent.
    ever_up: bool,
    /// Between a reset and the guest being up again.
    rebooting: bool,
    /// `X_SYSTEMD_SHUTDOWN=` and `EXIT_STATUS=` of this boot.
    shutdown: Option<(ShutdownKind, Option<u8>)>,
    crashes: VecDeque<Instant>,
    /// The last reset, when it was counted as a crash.
    last_crash_reset: Option<Instant>,
    refused: bool,
    /// The last reset taken (see [`RESET_MERGE`]).
    last_reset: Option<Instant>,
    /// Any message at all from the guest.
    heard: bool,
}

impl Lifecycle {
    /// `guest_ready`: `--ready guest[:TARGET]`; `target`: its TARGET.
    pub fn new(guest_ready: bool, target: Option<String>) -> Self {
        Lifecycle {
            guest_ready,
            target,
            speaks: false,
            hostname: None,
            machine_id: None,
            up: false,
            ever_up: false,
            rebooting: false,
            shutdown: None,
            crashes: VecDeque::new(),
            last_crash_reset: None,
            refused: false,
            last_reset: None,
            heard: false,
        }
    }

    /// Whether the guest has shown it runs systemd >= 256.
    pub fn speaks(&self) -> bool {
        self.speaks
    }

    /// "guest vm1", or "guest" before the hostname is known.
    fn who(&self) -> String {
        match &self.hostname {
            Some(h) => format!("guest {h}"),
            None => "guest".into(),
        }
    }

    pub fn on_message(&mut self, m: &GuestMessage, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        self.heard |= *m != GuestMessage::default();
        self.speaks |= m.x_systemd;
        if let Some(id) = &m.machine_id {
            // Logged once; again only if a reboot brought another machine ID.
            if self.machine_id.as_ref() != Some(id) {
                out.push(Effect::Info(format!("the guest's machine ID is {id}")));
                self.machine_id = Some(id.clone());
            }
        }
        if let Some(h) = &m.hostname {
            if self.hostname.as_ref() != Some(h) {
                out.push(Effect::Info(format!("the guest's hostname is {h}")));
                self.hostname = Some(h.clone());
            }
        }
        if let Some(unit) = &m.unit_active {
            // While the guest boots, the last target reached is its progress; afterwards
            // targets come and go (timers, shutdown) and would only churn the status.
            if !self.up {
                out.push(Effect::Status(format!("{}: {unit}", self.who())));
            }
            if self.target.as_ref() == Some(unit) {
                self.guest_up(&format!("the guest reached {unit}"), &mut out);
            }
        }
        if let Some(unit) = &m.unit_inactive {
            if self.target.as_ref() == Some(unit) && self.up {
                out.push(Effect::Info(format!("{}: {unit} stopped", self.who())));
            }
        }
        if let Some(kind) = m.shutdown {
            self.on_shutdown_notice(kind, m.exit_status, now, &mut out);
        }
        if m.ready && self.guest_ready {
            match &self.target {
                None => self.guest_up("the guest's systemd sent READY=1", &mut out),
                Some(t) if !self.speaks && !self.refused => {
                    self.refused = true;
                    out.push(Effect::Fail(format!(
                        "the guest's systemd sent READY=1 without any X_SYSTEMD_* field, so it is older than 256 and never reports targets: --ready guest:{t} cannot be met\nhint: use --ready guest, or a guest with systemd 256 or later"
                    )));
                }
                Some(_) => {}
            }
        }
        out
    }

    fn on_shutdown_notice(
        &mut self,
        kind: ShutdownKind,
        exit_status: Option<u8>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let who = self.who();
        if kind == ShutdownKind::Reboot
            && !self.up
            && self
                .last_crash_reset
                .is_some_and(|t| now.duration_since(t) <= LATE_NOTICE)
        {
            // The reset was this reboot: take back the crash it was counted as.
            self.crashes.pop_back();
            self.last_crash_reset = None;
            out.push(Effect::Info(format!(
                "{who} announced its reboot just after the reset: not a crash"
            )));
            out.push(Effect::Status(format!("{who}: rebooting")));
            return;
        }
        self.shutdown = Some((kind, exit_status));
        let code = exit_status
            .map(|n| format!(", exit status {n}"))
            .unwrap_or_default();
        match kind {
            ShutdownKind::Reboot => {
                out.push(Effect::Info(format!("{who} is rebooting")));
                out.push(Effect::Status(format!("{who}: rebooting")));
            }
            ShutdownKind::Kexec => {
                // kexec starts the next kernel inside the guest: no reset event follows, so the
                // next boot begins now.
                out.push(Effect::Info(format!("{who} is rebooting through kexec")));
                out.push(Effect::Status(format!("{who}: rebooting (kexec)")));
                self.shutdown = None;
                self.new_boot(out);
            }
            ShutdownKind::Poweroff | ShutdownKind::Halt => {
                let k = kind.as_str();
                out.push(Effect::Info(format!("{who} is shutting down ({k}{code})")));
                out.push(Effect::Status(format!("{who}: shutting down ({k}{code})")));
            }
        }
    }

    /// Why `--ready guest[:TARGET]` may not have been met, for the ready timeout's message: a
    /// guest whose systemd is too old says nothing, or nothing about targets.
    pub fn not_ready_hint(&self) -> Option<String> {
        if !self.guest_ready {
            return None;
        }
        if !self.heard {
            return Some(
                "the guest sent no notification at all (systemd before 253 sends none to vmm.notify_socket)".into(),
            );
        }
        match &self.target {
            Some(t) if !self.speaks => Some(format!(
                "the guest's systemd sent no X_SYSTEMD_* field, so it is older than 256 and never reports {t}"
            )),
            _ => None,
        }
    }

    /// The hypervisor reset the VM (cloud-hypervisor's `vm:rebooting`, QEMU's `RESET`).
    pub fn on_reset(&mut self, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        if self
            .last_reset
            .is_some_and(|t| now.duration_since(t) < RESET_MERGE)
        {
            return out;
        }
        self.last_reset = Some(now);
        let announced = self.shutdown.take();
        let who = self.who();
        match announced {
            Some(_) => out.push(Effect::Info(format!(
                "{who}: the VM was reset for its reboot"
            ))),
            None if self.speaks => {
                while self
                    .crashes
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
                {
                    self.crashes.pop_front();
                }
                self.crashes.push_back(now);
                self.last_crash_reset = Some(now);
                let n = self.crashes.len();
                let window = CRASH_WINDOW.as_secs() / 60;
                if n >= CRASH_LIMIT {
                    out.push(Effect::Fail(format!(
                        "{who} crashed {n} times within {window} min (the VM was reset without the guest shutting down); stopping the VM"
                    )));
                    return out;
                }
                out.push(Effect::Warn(format!(
                    "{who} crashed: the VM was reset without the guest shutting down (crash {n}; {CRASH_LIMIT} within {window} min stop the VM)"
                )));
                out.push(Effect::Status(format!(
                    "{who} crashed and is restarting (crash {n} of {CRASH_LIMIT} allowed within {window} min)"
                )));
            }
            None => {
                // An older guest says nothing: a reboot and a crash look the same.
                out.push(Effect::Info(
                    "the VM was reset (the guest rebooted or crashed; a guest older than systemd 256 does not say which)".into(),
                ));
                self.up = false;
                return out;
            }
        }
        self.new_boot(&mut out);
        out
    }

    fn new_boot(&mut self, out: &mut Vec<Effect>) {
        self.up = false;
        if self.guest_ready && self.ever_up {
            self.rebooting = true;
            out.push(Effect::AwaitReady);
        }
    }

    fn guest_up(&mut self, why: &str, out: &mut Vec<Effect>) {
        if self.up {
            return;
        }
        self.up = true;
        self.last_crash_reset = None;
        if !self.ever_up {
            self.ever_up = true;
            out.push(Effect::Ready(why.to_owned()));
        } else if self.rebooting {
            self.rebooting = false;
            let who = self.who();
            out.push(Effect::Info(format!("{who} is running again ({why})")));
            out.push(Effect::Status(format!("{who}: running again after reboot")));
            out.push(Effect::Running);
        }
    }

    /// The hypervisor exited. `code_zero`: with status 0; `stop_requested`: credbridge asked
    /// for the stop (power button, quit, signals).
    pub fn on_exit(&self, code_zero: bool, stop_requested: bool) -> Verdict {
        if !code_zero {
            return Verdict::Passthrough;
        }
        match self.shutdown {
            Some((ShutdownKind::Poweroff | ShutdownKind::Halt, Some(n))) => Verdict::Exit(n),
            Some(_) => Verdict::Passthrough,
            None if self.speaks && !stop_requested => Verdict::Fail(format!(
                "the VM stopped without the {} shutting down (a vCPU error or a crash with -no-reboot?); see the hypervisor's messages above",
                self.who()
            )),
            None => Verdict::Passthrough,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestnotify::parse;

    // Message sequences as systemd >= 256 sends them, one per connection. Sources:
    // - X_SYSTEMD_MACHINE_ID: src/shared/machine-id-setup.c (machine_id_setup), 256+
    // - X_SYSTEMD_HOSTNAME: src/shared/hostname-setup.c (hostname_setup), 256+
    // - X_SYSTEMD_UNIT_ACTIVE/INACTIVE: src/core/target.c (.notify_supervisor = true), for each
    //   target as it starts and stops, 256+
    // - READY=1\nSTATUS=Ready.: src/core/manager.c once the boot's jobs are done (253+ to
    //   vmm.notify_socket)
    // - EXIT_STATUS=%i\nX_SYSTEMD_SHUTDOWN=%s: src/shutdown/shutdown.c (notify_supervisor),
    //   right before reboot(2), 256+
    const BOOT_257: &[&str] = &[
        "X_SYSTEMD_MACHINE_ID=bc7b125b9d8d47ffab31cefb22679654",
        "X_SYSTEMD_HOSTNAME=vm1",
        "X_SYSTEMD_UNIT_ACTIVE=sysinit.target",
        "X_SYSTEMD_UNIT_ACTIVE=basic.target",
        "READY=1\nSTATUS=Ready.",
        "X_SYSTEMD_UNIT_ACTIVE=multi-user.target",
    ];
    const POWEROFF_EXIT_3: &[&str] = &[
        "X_SYSTEMD_UNIT_INACTIVE=multi-user.target",
        "X_SYSTEMD_UNIT_ACTIVE=shutdown.target",
        "EXIT_STATUS=3\nX_SYSTEMD_SHUTDOWN=poweroff",
    ];
    const REBOOT: &[&str] = &[
        "X_SYSTEMD_UNIT_INACTIVE=multi-user.target",
        "X_SYSTEMD_UNIT_ACTIVE=shutdown.target",
        "EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=reboot",
    ];
    // systemd 252/253..255: src/core/manager.c's READY=1 and STATUS=, nothing else.
    const BOOT_252: &[&str] = &["STATUS=Startup finished in 2s.", "READY=1\nSTATUS=Ready."];

    fn feed(l: &mut Lifecycle, msgs: &[&str], now: Instant) -> Vec<Effect> {
        msgs.iter()
            .flat_map(|m| l.on_message(&parse(m.as_bytes()), now))
            .collect()
    }

    fn has(effects: &[Effect], f: impl Fn(&Effect) -> bool) -> bool {
        effects.iter().any(f)
    }

    fn ready_count(effects: &[Effect]) -> usize {
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Ready(_)))
            .count()
    }

    /// #14 rule 1: `systemctl exit 3` in the guest, then the hypervisor's exit 0, is exit 3.
    #[test]
    fn the_guests_exit_status_becomes_credbridges() {
        let now = Instant::now();
        let mut l = Lifecycle::new(true, None);
        feed(&mut l, BOOT_257, now);
        let e = feed(&mut l, POWEROFF_EXIT_3, now);
        assert!(has(&e, |e| *e
            == Effect::Status(
                "guest vm1: shutting down (poweroff, exit status 3)".into()
            )));
        assert_eq!(l.on_exit(true, false), Verdict::Exit(3));
        // The hypervisor's own failure still wins.
        assert_eq!(l.on_exit(false, false), Verdict::Passthrough);
        // halt too.
        let mut l = Lifecycle::new(true, None);
        feed(&mut l, &["EXIT_STATUS=7\nX_SYSTEMD_SHUTDOWN=halt"], now);
        assert_eq!(l.on_exit(true, false), Verdict::Exit(7));
    }

    /// #14 rule 2: a guest that speaks the protocol and ends without a shutdown notice, without
    /// a stop credbridge asked for, failed; an older guest keeps the old rule.
    #[test]
    fn a_vm_that_ends_without_the_guest_shutting_down_is_a_failure() {
        let now = Instant::now();
        let mut l = Lifecycle::new(true, None);
        feed(&mut l, BOOT_257, now);
        let Verdict::Fail(msg) = l.on_exit(true, false) else {
            panic!("exit 0 without X_SYSTEMD_SHUTDOWN must fail")
        };
        assert!(
            msg.starts_with("the VM stopped without the guest vm1 shutting down"),
            "{msg}"
        );
        // credbridge's own stop (SIGTERM to the hypervisor) is not the guest's failure.
        assert_eq!(l.on_exit(true, true), Verdict::Passthrough);
        let mut old = Lifecycle::new(true, None);
        feed(&mut old, BOOT_252, now);
        assert_eq!(old.on_exit(true, false), Verdict::Passthrough);
    }

    /// #14 rule 2: unannounced resets are crashes; CRASH_LIMIT within CRASH_WINDOW fail.
    #[test]
    fn unannounced_resets_are_crashes_and_a_loop_fails() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(true, None);
        feed(&mut l, BOOT_257, t0);
        let e = l.on_reset(t0 + Duration::from_secs(10));
        assert!(has(
            &e,
            |e| matches!(e, Effect::Warn(w) if w.starts_with("guest vm1 crashed"))
        ));
        assert!(has(
            &e,
            |e| matches!(e, Effect::Status(s) if s.contains("crashed and is restarting (crash 1 of 3"))
        ));
        assert!(has(&e, |e| *e == Effect::AwaitReady));
        // The guest comes back: running again, no second READY=1.
        let e = feed(&mut l, BOOT_257, t0 + Duration::from_secs(20));
        assert_eq!(ready_count(&e), 0);
        assert!(has(&e, |e| *e == Effect::Running));
        let e = l.on_reset(t0 + Duration::from_secs(30));
        assert!(!has(&e, |e| matches!(e, Effect::Fail(_))));
        let e = l.on_reset(t0 + Duration::from_secs(40));
        assert!(has(
            &e,
            |e| matches!(e, Effect::Fail(f) if f.contains("crashed 3 times within 5 min"))
        ));
    }

    #[test]
    fn crashes_further_apart_than_the_window_never_fail() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(true, None);
        feed(&mut l, BOOT_257, t0);
        for i in 1..10u64 {
            let e = l.on_reset(t0 + Duration::from_secs(160) * i as u32);
            assert!(!has(&e, |e| matches!(e, Effect::Fail(_))), "crash {i}");
        }
    }

    /// #14 rule 2, limits: an older guest's resets are not judged.
    #[test]
    fn an_older_guests_resets_are_not_crashes() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(true, None);
        feed(&mut l, BOOT_252, t0);
        for i in 1..6 {
            let e = l.on_reset(t0 + Duration::from_secs(10) * i);
            assert!(!has(&e, |e| matches!(
                e,
                Effect::Fail(_) | Effect::Warn(_) | Effect::AwaitReady
            )));
        }
    }

    /// #14 rule 3: an announced reboot is no crash; STATUS says so; READY=1 is not repeated.
    #[test]
    fn a_reboot_is_shown_and_the_guest_comes_back() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(true, None);
        assert_eq!(ready_count(&feed(&mut l, BOOT_257, t0)), 1);
        for round in 1..6 {
            let e = feed(&mut l, REBOOT, t0);
            assert!(has(&e, |e| *e == Effect::Status("guest vm1: rebooting".into())));
            let e = l.on_reset(t0 + Duration::from_secs(10) * round);
            assert!(
                !has(&e, |e| matches!(e, Effect::Warn(_) | Effect::Fail(_))),
                "{round}"
            );
            assert!(has(&e, |e| *e == Effect::AwaitReady));
            let e = feed(&mut l, BOOT_257, t0);
            assert_eq!(ready_count(&e), 0);
            assert!(has(&e, |e| *e
                == Effect::Status(
                    "guest vm1: running again after reboot".into()
                )));
            assert!(has(&e, |e| *e == Effect::Running));
        }
        // After a reboot the shutdown notice is spent: exit 0 now is unexplained.
        assert!(matches!(l.on_exit(true, false), Verdict::Fail(_)));
    }

    /// #14, seen with QEMU 7.2: one reboot, two RESET events 36 ms apart.
    #[test]
    fn a_double_reset_is_one_reset() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(true, None);
        feed(&mut l, BOOT_257, t0);
        feed(&mut l, REBOOT, t0);
        l.on_reset(t0);
        let e = l.on_reset(t0 + Duration::from_millis(36));
        assert!(e.is_empty(), "{e:?}");
        assert!(l.crashes.is_empty());
        // A crash the same way counts once.
        let t1 = t0 + Duration::from_secs(30);
        feed(&mut l, BOOT_257, t1);
        l.on_reset(t1);
        l.on_reset(t1 + Duration::from_millis(36));
        assert_eq!(l.crashes.len(), 1);
        // A guest that crashes every 0.6 s is still counted (every other reset).
        let t2 = t1 + Duration::from_secs(30);
        let mut failed = false;
        for i in 0..10u32 {
            failed |= has(&l.on_reset(t2 + Duration::from_millis(600) * i), |e| {
                matches!(e, Effect::Fail(_))
            });
        }
        assert!(failed);
    }

    /// #14 rule 3: the reset may be seen before the guest's reboot notice.
    #[test]
    fn a_reboot_notice_just_after_the_reset_takes_back_the_crash() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(true, None);
        feed(&mut l, BOOT_257, t0);
        for i in 1..6 {
            let t = t0 + Duration::from_secs(10) * i;
            l.on_reset(t);
            let e = feed(
                &mut l,
                &["EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=reboot"],
                t + Duration::from_millis(50),
            );
            assert!(has(
                &e,
                |e| matches!(e, Effect::Info(i) if i.contains("not a crash"))
            ));
            feed(&mut l, BOOT_257, t0);
        }
        assert!(l.crashes.is_empty());
        // Too late to explain it: the crash stands.
        let t = t0 + Duration::from_secs(100);
        l.on_reset(t);
        feed(
            &mut l,
            &["X_SYSTEMD_SHUTDOWN=reboot"],
            t + LATE_NOTICE + Duration::from_secs(1),
        );
        assert_eq!(l.crashes.len(), 1);
    }

    /// #14 rule 4: `--ready guest:TARGET` is ready at the target, not at READY=1.
    #[test]
    fn target_readiness_waits_for_the_target() {
        let now = Instant::now();
        let mut l = Lifecycle::new(true, Some("multi-user.target".into()));
        // BOOT_257 has READY=1 before multi-user.target, as systemd 260 was seen to send it.
        let mut readies = Vec::new();
        for m in BOOT_257 {
            let e = l.on_message(&parse(m.as_bytes()), now);
            readies.push(ready_count(&e));
        }
        assert_eq!(readies, [0, 0, 0, 0, 0, 1]);
        let mut l = Lifecycle::new(true, Some("ssh-access.target".into()));
        assert_eq!(ready_count(&feed(&mut l, BOOT_257, now)), 0);
    }

    /// #14 rule 4: an older guest cannot meet a target: refused at its READY=1, once.
    #[test]
    fn target_readiness_is_refused_for_an_older_guest() {
        let now = Instant::now();
        let mut l = Lifecycle::new(true, Some("multi-user.target".into()));
        let e = feed(&mut l, BOOT_252, now);
        let fails: Vec<_> = e.iter().filter(|e| matches!(e, Effect::Fail(_))).collect();
        assert_eq!(fails.len(), 1);
        let Effect::Fail(msg) = fails[0] else {
            unreachable!()
        };
        assert!(
            msg.contains("older than 256") && msg.contains("--ready guest:multi-user.target"),
            "{msg}"
        );
        assert_eq!(ready_count(&e), 0);
        assert!(
            feed(&mut l, BOOT_252, now)
                .iter()
                .all(|e| !matches!(e, Effect::Fail(_)))
        );
    }

    /// #14 rule 5: STATUS shows the hostname and the last target while booting; the machine
    /// ID is logged once.
    #[test]
    fn status_shows_hostname_and_target_while_booting() {
        let now = Instant::now();
        let mut l = Lifecycle::new(true, Some("multi-user.target".into()));
        let e = feed(&mut l, BOOT_257, now);
        let statuses: Vec<_> = e
            .iter()
            .filter_map(|e| match e {
                Effect::Status(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            statuses,
            [
                "guest vm1: sysinit.target",
                "guest vm1: basic.target",
                "guest vm1: multi-user.target"
            ]
        );
        let ids = |e: &[Effect]| {
            e.iter()
                .filter(|e| matches!(e, Effect::Info(i) if i.contains("machine ID")))
                .count()
        };
        assert_eq!(ids(&e), 1);
        // After readiness, targets no longer touch STATUS, and the same ID is not logged again.
        let e = feed(&mut l, BOOT_257, now);
        assert_eq!(ids(&e), 0);
        assert!(!has(&e, |e| matches!(e, Effect::Status(_))));
    }

    /// #14 rule 4: systemd 252 sends nothing; the ready timeout says why nothing came.
    #[test]
    fn the_ready_timeout_says_what_the_guest_did_not_send() {
        let now = Instant::now();
        let l = Lifecycle::new(true, Some("multi-user.target".into()));
        assert!(
            l.not_ready_hint()
                .unwrap()
                .contains("no notification at all")
        );
        let mut l = Lifecycle::new(true, Some("multi-user.target".into()));
        feed(&mut l, &["STATUS=Startup finished."], now);
        assert!(l.not_ready_hint().unwrap().contains("older than 256"));
        feed(&mut l, &["X_SYSTEMD_HOSTNAME=vm1"], now);
        assert_eq!(l.not_ready_hint(), None);
        assert_eq!(Lifecycle::new(false, None).not_ready_hint(), None);
    }

    /// Without `--ready guest` nothing here sends READY=1.
    #[test]
    fn other_ready_modes_never_get_ready_from_the_guest() {
        let now = Instant::now();
        let mut l = Lifecycle::new(false, None);
        assert_eq!(ready_count(&feed(&mut l, BOOT_257, now)), 0);
        assert!(!has(&l.on_reset(now), |e| *e == Effect::AwaitReady));
    }
}
