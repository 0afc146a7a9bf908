//! The guest's systemd sending sd_notify messages to `vsock-stream:2:<port>`, as the host sees
//! them through CH's vsock muxer (`virtio-devices/src/vsock/unix/muxer.rs`,
//! `handle_peer_request_pkt`): for a guest-initiated connection CH connects a Unix stream socket
//! to `<--vsock socket>_<port>` and forwards bytes; nothing is written to the host side first
//! (the `CONNECT`/`OK <port>` handshake exists only for host-initiated connections). A relative
//! socket path is relative to CH's cwd.
//! Like the guest's systemd >= 256, each message goes on its own connection and the sender
//! waits for the host to close (up to `FAKE_CH_GUEST_NOTIFY_CLOSE_TIMEOUT_MS`, default 2000,
//! like the stall seen in guests). systemd shuts down its write side after the message
//! (sd-daemon.c, pid_notify_with_fds_internal()); cloud-hypervisor <= 52 never passes that on
//! to the host socket, >= 53 does (microvm.nix, lib/runners/cloud-hypervisor.nix): the write
//! side stays open here unless `FAKE_CH_GUEST_NOTIFY_HALF_CLOSE=1`.
//! A message that is one of `@reboot`/`@crash` (the VM is reset: `vm:rebooting`,
//! `vm:rebooted`), `@poweroff` (the guest powers off: CH exits 0 with its shutdown events) or
//! `@vcpu-error` (CH exits 0 without them) is that guest action instead of a message.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::record;

/// Sends each message; records one line per message in `guest_notify.jsonl`.
pub fn run(vsock_socket: Option<String>, port: u32, messages: Vec<String>) {
    let knobs = &crate::vmm::shared().knobs;
    let Some(base) = vsock_socket else {
        record::append_json(
            "guest_notify.jsonl",
            &json!({"error": "no vsock device configured", "port": port}),
        );
        return;
    };
    let path = format!("{base}_{port}");
    for (i, msg) in messages.iter().enumerate() {
        if i > 0 {
            thread::sleep(Duration::from_millis(knobs.guest_notify_gap_ms));
        }
        // Guest actions between messages (#14): what the VM does, not what it says.
        match msg.as_str() {
            "@reboot" | "@crash" => {
                crate::vmm::guest_reset();
                continue;
            }
            "@poweroff" => crate::vmm::guest_poweroff(),
            "@vcpu-error" => crate::vmm::vcpu_error_exit(),
            _ => {}
        }
        let mut rec = json!({
            "index": i,
            "path": path,
            "message": msg,
            "connect_ms": record::mono_ms(),
        });
        let mut stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                rec["connect_failed"] = json!(true);
                rec["error"] = json!(e.to_string());
                record::append_json("guest_notify.jsonl", &rec);
                continue;
            }
        };
        rec["connect_failed"] = json!(false);
        if let Err(e) = stream.write_all(msg.as_bytes()) {
            rec["error"] = json!(format!("write: {e}"));
            record::append_json("guest_notify.jsonl", &rec);
            continue;
        }
        rec["written_ms"] = json!(record::mono_ms());
        rec["written_realtime_ns"] = json!(record::realtime_ns().to_string());
        if knobs.guest_notify_half_close {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        let timeout = Duration::from_millis(knobs.guest_notify_close_timeout_ms);
        let deadline = Instant::now() + timeout;
        let mut extra = Vec::new();
        let mut buf = [0u8; 4096];
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break "timeout";
            }
            let _ = stream.set_read_timeout(Some(left));
            match stream.read(&mut buf) {
                Ok(0) => break "closed",
                Ok(n) => extra.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break "timeout";
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break "closed",
            }
        };
        if outcome == "closed" {
            rec["peer_closed_ms"] = json!(record::mono_ms());
            rec["peer_closed_realtime_ns"] = json!(record::realtime_ns().to_string());
        } else {
            rec["peer_closed_ms"] = json!(null);
            rec["timed_out"] = json!(true);
        }
        if !extra.is_empty() {
            rec["host_sent_b64"] = json!(record::b64(&extra));
        }
        record::append_json("guest_notify.jsonl", &rec);
    }
}
