//! The guest's sd_notify messages (`credbridge::guestnotify`): text from an untrusted guest
//! that ends up in `systemctl status` and the journal.
//!
//! Input: byte 0 picks where the rest is cut into two messages `a` and `b`.
//!
//! Checked:
//! - `parse` never panics, on any bytes;
//! - the free text it passes on (STATUS, ERRNO) has no control characters and at most 200
//!   characters; the X_SYSTEMD_* values pass systemd's rule for them (a unit name may be up to
//!   255 bytes, as systemd's UNIT_NAME_MAX allows) and have no control characters;
//! - it is line by line, as sd_notify(3) is: `a` and `b` joined by a newline read as `a` then
//!   `b` (flags add up, the later value of a field wins), however the bytes are cut;
//! - `port_of` never panics and reads back the port it finds.
#![no_main]

use credbridge::guestnotify::{self, GuestMessage};
use libfuzzer_sys::fuzz_target;

fn check_fields(m: &GuestMessage) {
    // Free text is sanitized and cut (docs/readiness.md: "cut at 200 characters").
    for v in [&m.status, &m.errno].into_iter().flatten() {
        assert!(v.chars().count() <= 200, "{} characters", v.chars().count());
        assert!(
            !v.chars().any(char::is_control),
            "control character in {v:?}"
        );
    }
    // The X_SYSTEMD_* values are kept only when they pass systemd's own rule, which bounds
    // them (64, 32 and below 256 bytes) and allows no control character.
    if let Some(h) = &m.hostname {
        assert!(guestnotify::hostname_is_valid(h) && h.len() <= 64, "{h:?}");
    }
    if let Some(id) = &m.machine_id {
        assert!(
            guestnotify::machine_id_is_valid(id) && id.len() == 32,
            "{id:?}"
        );
    }
    for u in [&m.unit_active, &m.unit_inactive].into_iter().flatten() {
        assert!(guestnotify::unit_name_is_valid(u) && u.len() < 256, "{u:?}");
        assert!(
            !u.chars().any(char::is_control),
            "control character in {u:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let (a, b) = rest.split_at(cut);
    let (ma, mb) = (guestnotify::parse(a), guestnotify::parse(b));
    let mut joined = a.to_vec();
    joined.push(b'\n');
    joined.extend_from_slice(b);
    let m = guestnotify::parse(&joined);
    for x in [&ma, &mb, &m] {
        check_fields(x);
    }
    assert_eq!(m.ready, ma.ready || mb.ready);
    assert_eq!(m.stopping, ma.stopping || mb.stopping);
    assert_eq!(m.status, mb.status.clone().or(ma.status.clone()));
    assert_eq!(m.errno, mb.errno.clone().or(ma.errno.clone()));
    // A value that fails its rule is dropped and leaves the earlier one (#14).
    assert_eq!(m.exit_status, mb.exit_status.or(ma.exit_status));
    assert_eq!(m.shutdown, mb.shutdown.or(ma.shutdown));
    assert_eq!(m.hostname, mb.hostname.clone().or(ma.hostname.clone()));
    assert_eq!(
        m.unit_active,
        mb.unit_active.clone().or(ma.unit_active.clone())
    );
    assert_eq!(m.x_systemd, ma.x_systemd || mb.x_systemd);

    let text = String::from_utf8_lossy(rest);
    if let Some(port) = guestnotify::port_of(&text) {
        assert_eq!(
            guestnotify::port_of(&format!("vsock-stream:2:{port}")),
            Some(port)
        );
    }
});
