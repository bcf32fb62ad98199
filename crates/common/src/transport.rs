//! TCP transport for the worker RPC: length-delimited bincode frames with an explicit size limit,
//! TCP_NODELAY (tarpc's own helpers leave Nagle on, which doubles small-call latency) and keepalive.

use crate::rpc::WorkerServiceClient;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tarpc::serde_transport::{self, Transport};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::net::TcpStream;

/// Default largest RPC frame: big enough for a few hundred thousand floats per call.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

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
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(Duration::from_secs(1));
    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    let framed = LengthDelimitedCodec::builder()
        .max_frame_length(max_frame_bytes)
        .new_framed(stream);
    Ok(serde_transport::new(framed, Bincode::default()))
}

/// Connects to a worker's RPC address and spawns the client's dispatch task.
pub async fn connect_worker(
    addr: SocketAddr,
    max_frame_bytes: usize,
    connect_timeout: Duration,
) -> io::Result<WorkerServiceClient> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )
        })??;
    let transport = framed(stream, max_frame_bytes)?;
    Ok(WorkerServiceClient::new(tarpc::client::Config::default(), transport).spawn())
}
