//! The gRPC benchmark client: `ModelInfer` calls over HTTP/2 connections that several clients
//! share, their calls multiplexed as streams, as Triton's clients share one channel per server
//! (`--grpc-connections`, default 1). Each call is a plain HTTP/2 exchange on the `h2` crate
//! (hyper's HTTP/2 client would spawn a task per call to send its body): the request message is
//! encoded and framed once before the run and sent whole (HEADERS and one DATA frame that ends
//! the stream, as grpcio and Triton's C++ client send it), and the answer is read to its
//! trailers, its message decoded only when it is checked. So the load generator costs the cores
//! it shares with the cluster about what the HTTP/1.1 client does. A client whose connection
//! breaks opens one of its own.

use super::client::Answer;
use super::stats::Failure;
use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use chorus_coordinator::grpc::proto::ModelInferResponse;
use h2::client::SendRequest;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, TE};
use hyper::{Method, Request, Uri};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::Code;

/// Pause after a failed connect, so that a dead target is not hammered in a hot loop.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// The method every benchmark call invokes.
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// A message in gRPC's length-prefixed framing (uncompressed), ready to send as a body.
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// One HTTP/2 connection; cloning it shares the connection (and multiplexes the calls).
#[derive(Clone)]
pub struct H2Connection {
    sender: SendRequest<Bytes>,
    uri: Uri,
}

impl H2Connection {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<H2Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to gRPC at {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = h2::client::handshake(stream)
            .await
            .context("HTTP/2 handshake failed")?;
        // The connection task ends when every sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(H2Connection {
            sender,
            uri: format!("http://{addr}{MODEL_INFER}")
                .parse()
                .context("an address makes a valid URI")?,
        })
    }

    /// One call: the framed request out, the status and (if asked) the answer's message back.
    async fn call(
        &mut self,
        framed: &Bytes,
        keep_message: bool,
    ) -> Result<Option<Bytes>, CallFailure> {
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let mut sender = self
            .sender
            .clone()
            .ready()
            .await
            .map_err(|_| CallFailure::Transport)?;
        let (response, mut body) = sender
            .send_request(request, false)
            .map_err(|_| CallFailure::Transport)?;
        // Buffered by h2 until the stream has send capacity; it ends the request stream.
        body.send_data(framed.clone(), true)
            .map_err(|_| CallFailure::Transport)?;
        let response = response.await.map_err(|_| CallFailure::Transport)?;
        // A trailers-only answer (an error before any message) has the status in its headers.
        if let Some(code) = grpc_status(response.headers())
            && code != Code::Ok
        {
            return Err(CallFailure::Status(code));
        }
        let mut answer = response.into_body();
        let mut message = BytesMut::new();
        while let Some(chunk) = answer.data().await {
            let chunk = chunk.map_err(|_| CallFailure::Transport)?;
            let _ = answer.flow_control().release_capacity(chunk.len());
            if keep_message {
                message.extend_from_slice(&chunk);
            }
        }
        let trailers = answer
            .trailers()
            .await
            .map_err(|_| CallFailure::Transport)?;
        let code = trailers
            .as_ref()
            .and_then(grpc_status)
            .unwrap_or(Code::Unknown);
        if code != Code::Ok {
            return Err(CallFailure::Status(code));
        }
        // The answer's message follows its 5-byte gRPC prefix (an empty answer has none).
        let prefix = message.len().min(5);
        Ok(keep_message.then(|| message.freeze().slice(prefix..)))
    }
}

enum CallFailure {
    Transport,
    Status(Code),
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(code))
}

pub struct GrpcClient {
    addr: SocketAddr,
    connection: Option<H2Connection>,
}

impl GrpcClient {
    /// A client on a connection of its own, opened on [`GrpcClient::connect`].
    pub fn new(addr: SocketAddr) -> GrpcClient {
        GrpcClient {
            addr,
            connection: None,
        }
    }

    /// A client on a connection shared with others.
    pub fn on(addr: SocketAddr, connection: H2Connection) -> GrpcClient {
        GrpcClient {
            addr,
            connection: Some(connection),
        }
    }

    /// Opens a connection of its own unless it already has one.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        if self.connection.is_none() {
            self.connection = Some(H2Connection::open(self.addr).await?);
        }
        Ok(())
    }

    /// Sends one `ModelInferRequest`, already encoded and framed ([`frame`]).
    pub async fn send(&mut self, framed: &Bytes, timeout: Duration, check: bool) -> Answer {
        if self.connection.is_none() && self.connect().await.is_err() {
            tokio::time::sleep(RECONNECT_BACKOFF).await;
            return Answer::Failed(Failure::Transport);
        }
        let connection = self.connection.as_mut().expect("connected above");
        match tokio::time::timeout(timeout, connection.call(framed, check)).await {
            Err(_) => {
                self.connection = None;
                Answer::Failed(Failure::Timeout)
            }
            Ok(Err(CallFailure::Transport)) => {
                self.connection = None;
                Answer::Failed(Failure::Transport)
            }
            Ok(Err(CallFailure::Status(code))) => {
                Answer::Failed(Failure::Status(http_status(code)))
            }
            Ok(Ok(message)) => Answer::Ok {
                checked: message.map(|m| {
                    prost::Message::decode(m)
                        .ok()
                        .and_then(|r: ModelInferResponse| labels(&r))
                        .unwrap_or_default()
                }),
            },
        }
    }
}

/// gRPC failures are counted under the HTTP status of the same kind (docs/protocol.md), so that
/// both protocols' error columns read the same.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::NotFound => 404,
        Code::ResourceExhausted => 429,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        _ => 500,
    }
}

/// The `label` output of a gRPC answer (raw contents), or `None`.
pub fn labels(response: &ModelInferResponse) -> Option<Vec<i64>> {
    let index = response.outputs.iter().position(|o| o.name == "label")?;
    let bytes = response.raw_output_contents.get(index)?;
    if bytes.len() % 8 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_coordinator::grpc::proto::model_infer_response::InferOutputTensor;

    #[test]
    fn labels_come_from_the_raw_label_output() {
        let output = |name: &str| InferOutputTensor {
            name: name.into(),
            ..Default::default()
        };
        let label_bytes: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut response = ModelInferResponse {
            outputs: vec![output("probabilities"), output("label")],
            raw_output_contents: vec![vec![0u8; 4].into(), label_bytes.into()],
            ..Default::default()
        };
        assert_eq!(labels(&response), Some(vec![7, -1]));
        response.raw_output_contents[1] = vec![0u8; 3].into();
        assert_eq!(labels(&response), None);
        response.outputs.pop();
        assert_eq!(labels(&response), None);
    }

    #[test]
    fn frames_carry_a_flag_byte_and_a_big_endian_length() {
        let framed = frame(b"abc");
        assert_eq!(&framed[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&headers), Some(Code::Unavailable));
    }

    #[test]
    fn grpc_codes_read_as_http_statuses() {
        assert_eq!(http_status(Code::Unavailable), 503);
        assert_eq!(http_status(Code::ResourceExhausted), 429);
        assert_eq!(http_status(Code::InvalidArgument), 400);
        assert_eq!(http_status(Code::Internal), 500);
    }
}
