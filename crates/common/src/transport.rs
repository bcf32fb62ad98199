//! TCP transport for the worker RPC: length-delimited bincode frames with an explicit size limit,
//! TCP_NODELAY (tarpc's own helpers leave Nagle on, which doubles small-call latency) and keepalive.

use crate::rpc::WorkerServiceClient;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tarpc::ClientMessage;
use tarpc::serde_transport::{self, Transport};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::net::TcpStream;

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
