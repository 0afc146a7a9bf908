//! The guest's sd_notify messages (`credbridge::guestnotify`): text from an untrusted guest
//! that ends up in `systemctl status` and the journal.
//!
//! Input: byte 0 picks where the rest is cut into two messages `a` and `b`.
//!
//! Checked:
//! - `parse` never panics, on any bytes;
//! - the text it passes on (STATUS, ERRNO and the X_SYSTEMD_* names) has no control characters
//!   and at most 200 characters;
//! - it is line by line, as sd_notify(3) is: `a` and `b` joined by a newline read as `a` then
//!   `b` (flags add up, the later value of a field wins), however the bytes are cut;
//! - `port_of` never panics and reads back the port it finds.
#![no_main]

use credbridge::guestnotify::{self, GuestMessage};
use libfuzzer_sys::fuzz_target;

fn check_fields(m: &GuestMessage) {
    let texts = [
        &m.status,
        &m.errno,
        &m.hostname,
        &m.machine_id,
        &m.unit_active,
        &m.unit_inactive,
    ];
    for v in texts.into_iter().flatten() {
        assert!(v.chars().count() <= 200, "{} characters", v.chars().count());
        assert!(
            !v.chars().any(char::is_control),
            "control character in {v:?}"
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
