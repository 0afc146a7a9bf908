//! The API server: HTTP/1.1 over a Unix stream socket, keep-alive, bodies by `Content-Length`
//! up to 4 MiB (`HTTP_PAYLOAD_MAX_SIZE`), fds arriving as SCM_RIGHTS on any read of a request
//! (read with `recvmsg`, as micro_http does). Responses are byte-for-byte micro_http's:
//! `HTTP/1.1 204 \r\n` (no reason phrase), `Server: Cloud Hypervisor API`,
//! `Connection: keep-alive`, and `Content-Type`/`Content-Length` only when there is a body.

use std::io::{self, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use serde_json::json;

use crate::vmm::{self, Answer};
use crate::{exit_process, log_line, record};

const MAX_PAYLOAD: usize = 4 << 20;
const MAX_HEADERS: usize = 64 << 10;
const API_ROOT: &str = "/api/v1/";

/// Accepts forever on a thread. The listener is used as it is: when it came in by `fd=` and
/// is not listening, `accept` fails (EINVAL) every time; real CH then spins at 100% CPU, the
/// fake logs and retries every 10 ms.
pub fn serve(listener: UnixListener) {
    thread::Builder::new()
        .name("http-server".into())
        .spawn(move || {
            let mut failures: u64 = 0;
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        thread::spawn(move || connection(stream));
                    }
                    Err(e) => {
                        failures += 1;
                        if failures <= 3 || failures.is_multiple_of(100) {
                            eprintln!(
                                "{}",
                                log_line(
                                    "ERROR",
                                    "vmm/src/api/http/mod.rs",
                                    &format!(
                                        "HTTP server error on retrieving incoming request. Error: {e} (failure {failures})"
                                    )
                                )
                            );
                            record::append_json(
                                "accept_errors.jsonl",
                                &json!({"t_ms": record::mono_ms(), "error": e.to_string(), "count": failures}),
                            );
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })
        .expect("spawn http-server thread");
}

/// One `recvmsg`, collecting SCM_RIGHTS fds.
fn recv_some(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; 253]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let n = msg.bytes;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            for fd in received {
                // SAFETY: the kernel just installed `fd` in our table for this message;
                // nothing else refers to it, so we are its sole owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(n)
}

struct Request {
    method: String,
    path: String,
    body: Option<Vec<u8>>,
    close: bool,
    fds: Vec<OwnedFd>,
}

enum ReadOutcome {
    Request(Request),
    Eof,
    TooLarge(usize),
    Malformed,
}

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn read_request(stream: &UnixStream, pending: &mut Vec<u8>) -> io::Result<ReadOutcome> {
    let mut fds = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let head_end = loop {
        if let Some(p) = find_header_end(pending) {
            break p;
        }
        if pending.len() > MAX_HEADERS {
            return Ok(ReadOutcome::Malformed);
        }
        let n = recv_some(stream, &mut chunk, &mut fds)?;
        if n == 0 {
            return Ok(ReadOutcome::Eof);
        }
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(ReadOutcome::Malformed);
    };
    let mut len = 0usize;
    let mut close = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                match v.trim().parse() {
                    Ok(n) => len = n,
                    Err(_) => return Ok(ReadOutcome::Malformed),
                }
            } else if k == "connection" && v.trim().eq_ignore_ascii_case("close") {
                close = true;
            }
        }
    }
    if len > MAX_PAYLOAD {
        return Ok(ReadOutcome::TooLarge(len));
    }
    let path = target
        .strip_prefix("http://localhost")
        .unwrap_or(target)
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let method = method.to_owned();
    pending.drain(..head_end + 4);
    while pending.len() < len {
        let n = recv_some(stream, &mut chunk, &mut fds)?;
        if n == 0 {
            return Ok(ReadOutcome::Eof);
        }
        pending.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = pending.drain(..len).collect();
    Ok(ReadOutcome::Request(Request {
        method,
        path,
        body: if body.is_empty() { None } else { Some(body) },
        close,
        fds,
    }))
}

fn write_response(mut stream: &UnixStream, status: u16, body: Option<&[u8]>) -> io::Result<()> {
    let mut out =
        format!("HTTP/1.1 {status} \r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n")
            .into_bytes();
    if let Some(b) = body {
        out.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )
            .as_bytes(),
        );
    } else if status != 204 {
        out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    stream.write_all(&out)
}

fn hang_forever(_stream: UnixStream) -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn fd_info(fd: &OwnedFd) -> serde_json::Value {
    let n = fd.as_raw_fd();
    let link = format!("/proc/self/fd/{n}");
    let target = std::fs::read_link(&link)
        .map(|t| record::os_json(t.as_os_str()))
        .unwrap_or(serde_json::Value::Null);
    let meta = std::fs::metadata(&link).ok();
    json!({
        "fd": n,
        "target": target,
        "st_dev": meta.as_ref().map(MetadataExt::dev),
        "st_ino": meta.as_ref().map(MetadataExt::ino),
    })
}

fn connection(stream: UnixStream) {
    let mut pending = Vec::new();
    loop {
        let req = match read_request(&stream, &mut pending) {
            Ok(ReadOutcome::Request(r)) => r,
            Ok(ReadOutcome::Eof) | Err(_) => return,
            Ok(ReadOutcome::TooLarge(n)) => {
                let msg = format!(
                    "Request payload with size {n} is larger than the limit of {MAX_PAYLOAD} allowed by server."
                );
                let _ = write_response(&stream, 413, Some(msg.as_bytes()));
                return;
            }
            Ok(ReadOutcome::Malformed) => {
                let _ = write_response(&stream, 400, None);
                return;
            }
        };
        let route = req.path.strip_prefix(API_ROOT).unwrap_or("").to_owned();
        let knobs = &vmm::shared().knobs;
        let mut rec = json!({
            "t_ms": record::mono_ms(),
            "method": req.method,
            "path": req.path,
            "body_b64": req.body.as_deref().map(record::b64),
            "nfds": req.fds.len(),
            "fds": req.fds.iter().map(fd_info).collect::<Vec<_>>(),
        });
        let ping_stopped = route == "vmm.ping"
            && knobs
                .ping_stop_after_ms
                .is_some_and(|ms| record::mono_ms() >= ms as f64);
        if knobs.hangs(&route) || ping_stopped {
            rec["status"] = serde_json::Value::Null;
            rec["hung"] = json!(true);
            record::append_json("requests.jsonl", &rec);
            hang_forever(stream);
        }
        let (status, body, then_exit) = if let Some(status) = knobs.api_error_for(&route) {
            let mut msg = if route == "vm.create" {
                json!(["Error creating VM: fake failure"])
            } else {
                json!([format!("Error from API: fake failure on {route}")])
            };
            if let (true, Some(list), Some(body)) = (
                knobs.api_error_echo,
                msg.as_array_mut(),
                req.body.as_deref(),
            ) {
                list.extend(echo_forms(body).into_iter().map(serde_json::Value::from));
            }
            (status, Some(msg.to_string().into_bytes()), false)
        } else {
            match vmm::handle(&req.method, &route, &req.body, req.fds) {
                Answer::NoContent => (204, None, false),
                Answer::NoContentThenExit => (204, None, true),
                Answer::Json(v) => (200, Some(v.to_string().into_bytes()), false),
                Answer::BadRequest => (400, None, false),
                Answer::Error(f) => (
                    f.status,
                    Some(json!(f.chain).to_string().into_bytes()),
                    false,
                ),
            }
        };
        rec["status"] = json!(status);
        record::append_json("requests.jsonl", &rec);
        let written = write_response(&stream, status, body.as_deref());
        if then_exit {
            let _ = (&stream).flush();
            exit_process(0);
        }
        if written.is_err() || req.close {
            return;
        }
    }
}

/// `FAKE_CH_API_ERROR_ECHO`: the request body quoted back in an error, in every form a
/// hypervisor's error text might carry it (a test knob; cloud-hypervisor 54 itself quotes
/// only what it failed to parse, but its `-v` Debug output and other VMMs quote more).
fn echo_forms(body: &[u8]) -> Vec<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = String::from_utf8_lossy(body).into_owned();
    let mut out = vec![format!("request body (as sent): {text}")];
    let strings: Vec<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::from_value(v.pointer("/platform/oem_strings")?.clone()).ok())
        .unwrap_or_default();
    for s in &strings {
        out.push(format!("oem string (raw): {s}"));
        out.push(format!("oem string (Debug): {s:?}"));
        out.push(format!(
            "oem string (JSON): {}",
            serde_json::to_string(s).unwrap()
        ));
        out.push(format!(
            "oem string (JSON, ASCII only): \"{}\"",
            json_ascii(s)
        ));
        out.push(format!(
            "oem string (Debug of JSON): {:?}",
            serde_json::to_string(s).unwrap()
        ));
        if let Some((head, value)) = s.split_once('=') {
            out.push(format!("value (base64): {}", b64.encode(value)));
            if let (true, Ok(raw)) = (
                head.starts_with("io.systemd.credential.binary:"),
                b64.decode(value),
            ) {
                out.push(format!(
                    "value (decoded): {}",
                    String::from_utf8_lossy(&raw)
                ));
                out.push(format!(
                    "value (decoded, Debug): {:?}",
                    String::from_utf8_lossy(&raw)
                ));
            }
        }
    }
    out.push(format!("config (Debug): {strings:?}"));
    out
}

/// JSON string escaping as encoders that emit ASCII only write it: every non-ASCII character
/// as `\uXXXX` (surrogate pairs above U+FFFF) and `/` as `\/`.
fn json_ascii(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out
}
