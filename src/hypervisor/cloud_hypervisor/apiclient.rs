//! A client for cloud-hypervisor's REST API over its Unix socket (hyper, HTTP/1.1), with the two
//! things hyper does not do: fds as SCM_RIGHTS on a request (`vm.add-net` for macvtap), and a
//! request body that is zeroed once sent.

use std::convert::Infallible;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use zeroize::Zeroizing;

use crate::credentials::SecretBytes;
use crate::sockpath::PeerRule;

/// The most credbridge reads of an answer. `vm.info`, the largest, is the VM's config: tens
/// of KiB with the largest OEM strings cloud-hypervisor can hold (about 64 KiB).
pub const MAX_RESPONSE: usize = 4 << 20;
/// Error text longer than this is not shown (it is scrubbed of secrets whole, never cut,
/// because a cut could leave part of a value that no longer matches).
pub const MAX_ERROR_TEXT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to the cloud-hypervisor API socket: {0}")]
    Connect(io::Error),
    #[error(
        "the API socket is served by another listener ({who}), not the one credbridge set up; nothing was sent\nhint: someone may have replaced the socket; keep it in a directory only credbridge's user and root can write"
    )]
    WrongPeer { who: String },
    #[error("{route}: HTTP exchange with cloud-hypervisor failed: {source}")]
    Http { route: String, source: hyper::Error },
    #[error("{route}: cloud-hypervisor did not answer within {secs} s")]
    Timeout { route: String, secs: u64 },
    #[error(
        "{route}: cloud-hypervisor's answer is larger than {limit} bytes, the most credbridge reads; connection closed"
    )]
    TooLarge { route: String, limit: usize },
    #[error("{route}: cloud-hypervisor answered {status}: {}", Joined(errors))]
    Status {
        route: String,
        status: u16,
        /// Zeroed on drop: a hypervisor may quote the values it was sent.
        errors: Zeroizing<Vec<String>>,
    },
}

/// `errors.join("; ")` without a temporary copy of the text.
struct Joined<'a>(&'a [String]);

impl std::fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(e)?;
        }
        Ok(())
    }
}

pub struct Response {
    pub status: u16,
    /// Zeroized on drop: `vm.info` answers with the whole config, OEM strings included.
    pub body: Zeroizing<Vec<u8>>,
}

#[derive(Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    /// Checked on every connection before a byte is sent: the listener must be the one
    /// credbridge set up, not one put at the same path by someone else.
    peer: PeerRule,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(addr: SocketAddr, peer: PeerRule, timeout: Duration) -> Self {
        ApiClient {
            addr,
            peer,
            timeout,
        }
    }

    pub fn with_timeout(&self, timeout: Duration) -> Self {
        ApiClient {
            addr: self.addr.clone(),
            peer: self.peer,
            timeout,
        }
    }

    /// One request on a fresh connection, like ch-remote. `fds` travel as SCM_RIGHTS with the
    /// first bytes of the request, where cloud-hypervisor's HTTP server looks for them.
    pub async fn request(
        &self,
        method: Method,
        route: &str,
        body: Option<SecretBytes>,
        fds: &[RawFd],
    ) -> Result<Response, ApiError> {
        let fut = self.exchange(method, route, body, fds);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout {
                route: route.to_owned(),
                secs: self.timeout.as_secs().max(1),
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        route: &str,
        body: Option<SecretBytes>,
        fds: &[RawFd],
    ) -> Result<Response, ApiError> {
        let std_stream =
            std::os::unix::net::UnixStream::connect_addr(&self.addr).map_err(ApiError::Connect)?;
        self.peer
            .check(&std_stream)
            .map_err(|who| ApiError::WrongPeer { who })?;
        std_stream
            .set_nonblocking(true)
            .map_err(ApiError::Connect)?;
        let stream = tokio::net::UnixStream::from_std(std_stream).map_err(ApiError::Connect)?;
        let io = TokioIo::new(FdStream {
            inner: stream,
            pending_fds: fds.to_vec(),
        });
        let http = |source| ApiError::Http {
            route: route.to_owned(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http)?;
        let has_body = body.is_some();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://localhost/api/v1/{route}"))
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if has_body {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(SecretBody {
                buf: body.map(|data| SecretBuf { data, pos: 0 }),
            })
            .expect("static request parts are valid");
        let too_large = || ApiError::TooLarge {
            route: route.to_owned(),
            limit: MAX_RESPONSE,
        };
        let exchange = async move {
            let resp = sender.send_request(req).await.map_err(http)?;
            let status = resp.status().as_u16();
            let mut incoming = resp.into_body();
            let hint = incoming.size_hint().lower() as usize;
            if hint > MAX_RESPONSE {
                return Err(too_large());
            }
            let mut body = Zeroizing::new(Vec::with_capacity(hint));
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(http)?;
                if let Ok(data) = frame.into_data() {
                    if body.len() + data.len() > MAX_RESPONSE {
                        return Err(too_large());
                    }
                    append_zeroizing(&mut body, &data);
                }
            }
            // Dropping the sender lets the keep-alive connection task finish.
            drop(sender);
            Ok((status, body))
        };
        // The connection task must run alongside the request; it ends once the sender and the
        // body are gone, which an early error return drops too.
        let (result, _conn) = tokio::join!(exchange, conn);
        let (status, body) = result?;
        if status >= 400 {
            return Err(ApiError::Status {
                route: route.to_owned(),
                status,
                errors: Zeroizing::new(error_strings(&body)),
            });
        }
        Ok(Response { status, body })
    }

    pub async fn put(&self, route: &str, body: Option<SecretBytes>) -> Result<(), ApiError> {
        self.request(Method::PUT, route, body, &[]).await.map(drop)
    }

    pub async fn ping(&self) -> Result<(), ApiError> {
        self.request(Method::GET, "vmm.ping", None, &[])
            .await
            .map(drop)
    }
}

/// Appends without leaving the old allocation behind unzeroed, as `Vec` growth would.
fn append_zeroizing(buf: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    if buf.capacity() - buf.len() < data.len() {
        let want = (buf.len() + data.len()).max(buf.capacity() * 2);
        let mut bigger = Zeroizing::new(Vec::with_capacity(want.min(MAX_RESPONSE)));
        bigger.extend_from_slice(buf);
        *buf = bigger;
    }
    buf.extend_from_slice(data);
}

/// cloud-hypervisor answers errors with a JSON array of strings; anything else is shown as
/// text. Not cut: the caller scrubs it of values first, and a cut value would not be found.
fn error_strings(body: &[u8]) -> Vec<String> {
    if body.len() > MAX_ERROR_TEXT {
        return vec![format!(
            "(an error text of {} bytes, not shown: over {MAX_ERROR_TEXT})",
            body.len()
        )];
    }
    if let Ok(list) = serde_json::from_slice::<Vec<String>>(body) {
        return list;
    }
    let mut text = String::from_utf8_lossy(body).into_owned();
    let trimmed = text.trim().to_owned();
    zeroize::Zeroize::zeroize(&mut text);
    if trimmed.is_empty() {
        return vec!["(no error text)".into()];
    }
    vec![trimmed]
}

/// A request body that is handed to hyper whole and zeroed when hyper drops it. hyper queues a
/// `Buf` body for a vectored write instead of copying it when the transport supports vectored
/// writes (tokio's UnixStream does), so the secret exists only in this buffer.
struct SecretBody {
    buf: Option<SecretBuf>,
}

struct SecretBuf {
    data: SecretBytes,
    pos: usize,
}

impl bytes::Buf for SecretBuf {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    fn chunk(&self) -> &[u8] {
        &self.data[self.pos..]
    }
    fn advance(&mut self, cnt: usize) {
        self.pos = (self.pos + cnt).min(self.data.len());
    }
}

impl Body for SecretBody {
    type Data = SecretBuf;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<SecretBuf>, Infallible>>> {
        Poll::Ready(self.buf.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.buf.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.buf.as_ref().map_or(0, |b| b.data.len() as u64))
    }
}

/// A Unix stream whose first write carries `pending_fds` as SCM_RIGHTS.
struct FdStream {
    inner: tokio::net::UnixStream,
    pending_fds: Vec<RawFd>,
}

impl FdStream {
    fn poll_sendmsg(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let fd = self.inner.as_raw_fd();
            let fds = &self.pending_fds;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                let cmsgs = [ControlMessage::ScmRights(fds)];
                sendmsg::<()>(fd, bufs, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(n) => {
                    self.pending_fds.clear();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending_fds.is_empty() {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        } else {
            self.poll_sendmsg(cx, &[IoSlice::new(buf)])
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pending_fds.is_empty() {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        } else {
            self.poll_sendmsg(cx, bufs)
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers with a `len`-byte body of zeros, as fast as it is read; returns
    /// how many body bytes it could write.
    fn huge_answer(path: &std::path::Path, len: usize) -> std::thread::JoinHandle<usize> {
        use std::io::{Read, Write};
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 4096];
            let _ = c.read(&mut req);
            write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").unwrap();
            let chunk = vec![0u8; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                match c.write(&chunk[..chunk.len().min(len - sent)]) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            sent
        })
    }

    /// #11: a hypervisor's answer is read up to a limit, not to the end.
    #[test]
    fn a_huge_answer_is_refused_with_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("api.sock");
        let len = 64 << 20;
        let server = huge_answer(&p, len);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr = SocketAddr::from_pathname(&p).unwrap();
        let client = ApiClient::new(addr, PeerRule::ours(), Duration::from_secs(20));
        let r = rt.block_on(client.request(Method::GET, "vm.info", None, &[]));
        let e = r.err().expect("the answer is refused");
        assert!(e.to_string().contains("larger than"), "{e}");
        drop(rt);
        let sent = server.join().unwrap();
        assert!(
            sent < len / 2,
            "read only up to the limit: the server sent {sent}"
        );
    }

    #[test]
    fn error_bodies_become_strings() {
        assert_eq!(
            error_strings(br#"["Error creating VM: x","cause"]"#),
            vec!["Error creating VM: x", "cause"]
        );
        assert_eq!(error_strings(b"  plain  "), vec!["plain"]);
        assert_eq!(error_strings(b""), vec!["(no error text)"]);
        // Not cut to a length: a value cut in two would no longer be found by the scrubber.
        let long = "x".repeat(MAX_ERROR_TEXT);
        assert_eq!(error_strings(long.as_bytes()), vec![long.clone()]);
        let longer = format!("{long}y");
        assert_eq!(
            error_strings(longer.as_bytes()),
            vec![format!(
                "(an error text of {} bytes, not shown: over {MAX_ERROR_TEXT})",
                MAX_ERROR_TEXT + 1
            )]
        );
    }
}
