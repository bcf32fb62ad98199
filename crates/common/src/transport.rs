//! Transport for the worker RPC: length-delimited bincode frames with an explicit size limit,
//! over TCP with TCP_NODELAY (tarpc's own helpers leave Nagle on, which doubles small-call
//! latency) and keepalive, in plaintext or inside mutual TLS ([`crate::rpc_tls`]); or over a
//! worker's Unix socket on the same host ([`crate::local_link`]).

use crate::rpc::WorkerServiceClient;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tarpc::ClientMessage;
use tarpc::serde_transport::{self, Transport};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

/// Default largest RPC frame: big enough for a few hundred thousand floats per call.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Longest deadline one RPC may carry, on either end. tarpc keeps in-flight calls in a timer
/// wheel that panics on a deadline about two years away, which kills the connection's task: a
/// coordinator clamps what it sends (an ensemble spec could ask for more), and a worker clamps
/// what it receives (a peer could send anything).
pub const MAX_RPC_DEADLINE: Duration = Duration::from_secs(3600);

/// How long an idle connection waits before the kernel starts probing the peer.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);

/// A bincode transport over `stream`, for either end of the connection.
pub fn framed<Item, SinkItem>(
    stream: TcpStream,
    max_frame_bytes: usize,
) -> io::Result<Transport<TcpStream, Item, SinkItem, Bincode<Item, SinkItem>>>
where
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
{
    tune(&stream)?;
    Ok(framed_over(stream, max_frame_bytes))
}

/// Sets TCP_NODELAY and keepalive on a connection, before anything (a TLS handshake) runs on it.
pub fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(Duration::from_secs(1));
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// A bincode transport over any byte stream (a TLS stream over a [`tune`]d connection).
pub fn framed_over<S, Item, SinkItem>(
    stream: S,
    max_frame_bytes: usize,
) -> Transport<S, Item, SinkItem, Bincode<Item, SinkItem>>
where
    S: AsyncRead + AsyncWrite,
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
{
    let framed = LengthDelimitedCodec::builder()
        .max_frame_length(max_frame_bytes)
        .new_framed(stream);
    serde_transport::new(framed, Bincode::default())
}

/// An incoming request with its deadline at most [`MAX_RPC_DEADLINE`] from now, for a server to
/// apply to every frame before tarpc sees it.
pub fn clamp_request_deadline<T>(mut message: ClientMessage<T>) -> ClientMessage<T> {
    if let ClientMessage::Request(request) = &mut message {
        let latest = Instant::now() + MAX_RPC_DEADLINE;
        if request.context.deadline > latest {
            request.context.deadline = latest;
        }
    }
    message
}

/// Connects to a worker's RPC address and spawns the client's dispatch task.
pub async fn connect_worker(
    addr: SocketAddr,
    max_frame_bytes: usize,
    connect_timeout: Duration,
) -> io::Result<WorkerServiceClient> {
    let stream = within(connect_timeout, addr, TcpStream::connect(addr)).await?;
    let transport = framed(stream, max_frame_bytes)?;
    Ok(WorkerServiceClient::new(tarpc::client::Config::default(), transport).spawn())
}

/// Connects to a worker's Unix socket (see [`crate::local_link`]) and spawns the client's
/// dispatch task: the same frames as over TCP, without the TCP/IP stack.
pub async fn connect_worker_unix(
    path: &Path,
    max_frame_bytes: usize,
    connect_timeout: Duration,
) -> io::Result<WorkerServiceClient> {
    let stream = within(connect_timeout, path.display(), UnixStream::connect(path)).await?;
    let transport = framed_over(stream, max_frame_bytes);
    Ok(WorkerServiceClient::new(tarpc::client::Config::default(), transport).spawn())
}

/// [`connect_worker`] over mutual TLS: the worker's certificate must name `server_name` (see
/// [`crate::rpc_tls`]). The TCP connect and the handshake together take at most
/// `connect_timeout`, so a worker that accepts and never answers counts as a failed connect.
pub async fn connect_worker_tls(
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: &TlsConnector,
    max_frame_bytes: usize,
    connect_timeout: Duration,
) -> io::Result<WorkerServiceClient> {
    let handshake = async {
        let stream = TcpStream::connect(addr).await?;
        tune(&stream)?;
        connector.connect(server_name, stream).await
    };
    let stream = within(connect_timeout, addr, handshake).await?;
    let transport = framed_over(stream, max_frame_bytes);
    Ok(WorkerServiceClient::new(tarpc::client::Config::default(), transport).spawn())
}

async fn within<T>(
    limit: Duration,
    addr: impl std::fmt::Display,
    step: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, step).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {addr} timed out"),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarpc::{Request, context};

    fn request_due_in(after: Duration) -> ClientMessage<()> {
        let mut context = context::current();
        context.deadline = Instant::now() + after;
        ClientMessage::Request(Request {
            context,
            id: 7,
            message: (),
        })
    }

    fn deadline_of(message: &ClientMessage<()>) -> Instant {
        match message {
            ClientMessage::Request(request) => request.context.deadline,
            _ => unreachable!("a request was built"),
        }
    }

    #[test]
    fn deadlines_years_away_are_clamped_and_ordinary_ones_kept() {
        let far = clamp_request_deadline(request_due_in(Duration::from_secs(50 * 365 * 86_400)));
        assert!(deadline_of(&far) <= Instant::now() + MAX_RPC_DEADLINE);
        assert!(deadline_of(&far) > Instant::now() + MAX_RPC_DEADLINE - Duration::from_secs(60));

        let near = request_due_in(Duration::from_millis(250));
        let kept = deadline_of(&near);
        assert_eq!(deadline_of(&clamp_request_deadline(near)), kept);
    }
}
