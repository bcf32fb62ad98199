//! One connection per benchmark client, sending pre-encoded requests and reading only the outcome
//! unless the answer is to be checked. REST: a keep-alive HTTP/1.1 connection (hyper's
//! connection-level API: no pool, no per-request allocation beyond the request head). gRPC: one
//! HTTP/2 connection per client ([`super::grpc_client`]), so both protocols get the same number
//! of connections.

use super::args::{Compression, Protocol};
use super::grpc_client::{GrpcClient, H2Connection};
use super::payload::{Payload, Wire, answer_labels};
use super::stats::Failure;
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderName, HeaderValue,
};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// Pause after a failed connect, so that a dead target is not hammered in a hot loop.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// Where requests go: the coordinator's REST and gRPC addresses, the infer path of the model.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub grpc: SocketAddr,
    host: HeaderValue,
    uri: Uri,
}

async fn resolve(target: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    let (host, port) = parse_target(target, flag)?;
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))
}

impl Endpoint {
    /// `target` and `grpc_target` are `http://host:port` (a trailing `/` is allowed); `model`
    /// the model or ensemble.
    pub async fn resolve(target: &str, grpc_target: &str, model: &str) -> anyhow::Result<Endpoint> {
        let addr = resolve(target, "--target").await?;
        let grpc = resolve(grpc_target, "--grpc-target").await?;
        Ok(Endpoint::new(addr, grpc, model))
    }

    pub fn new(addr: SocketAddr, grpc: SocketAddr, model: &str) -> Endpoint {
        Endpoint {
            addr,
            grpc,
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header"),
            uri: format!("/v2/models/{model}/infer")
                .parse()
                .expect("a model name makes a valid path"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.uri)
    }

    /// Where `protocol` requests go, for reports.
    pub fn url_of(&self, protocol: Protocol) -> String {
        match protocol {
            Protocol::Http => self.url(),
            Protocol::Grpc => format!("grpc://{}", self.grpc),
        }
    }
}

/// `http://host:port[/]` → (host, port); port 80 when absent. `flag` names the flag in errors.
pub fn parse_target(target: &str, flag: &str) -> anyhow::Result<(String, u16)> {
    let uri: Uri = target
        .parse()
        .with_context(|| format!("{flag} {target:?} is not a URL like http://127.0.0.1:8000"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{flag} {target:?}: only http:// is supported");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("{flag} {target:?}: give the server's root, without a path");
    }
    let host = uri
        .host()
        .with_context(|| format!("{flag} {target:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), uri.port_u16().unwrap_or(80)))
}

/// What one request came to.
#[derive(Debug)]
pub enum Answer {
    /// 2xx; the labels are present when the answer was checked and readable.
    Ok {
        checked: Option<Vec<i64>>,
    },
    Failed(Failure),
}

/// A benchmark client of either protocol.
pub enum Client {
    Http(HttpClient),
    Grpc(GrpcClient),
}

/// Opens `count` connected clients: over HTTP/1.1 a connection each; over gRPC,
/// `grpc_connections` HTTP/2 connections that the clients share round-robin.
pub async fn open_clients(
    endpoint: &Endpoint,
    protocol: Protocol,
    count: usize,
    grpc_connections: usize,
) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count);
    match protocol {
        Protocol::Http => {
            for _ in 0..count {
                let mut client = HttpClient::new(endpoint.clone());
                client
                    .connect()
                    .await
                    .with_context(|| format!("cannot reach {}", endpoint.url()))?;
                clients.push(Client::Http(client));
            }
        }
        Protocol::Grpc => {
            let mut connections = Vec::new();
            for _ in 0..grpc_connections.clamp(1, count.max(1)) {
                connections.push(H2Connection::open(endpoint.grpc).await?);
            }
            for index in 0..count {
                let connection = connections[index % connections.len()].clone();
                clients.push(Client::Grpc(GrpcClient::on(endpoint.grpc, connection)));
            }
        }
    }
    Ok(clients)
}

impl Client {
    /// Sends `payload`, waits up to `timeout` for the whole answer, and reads its labels if
    /// `check` is set.
    pub async fn send(&mut self, payload: &Payload, timeout: Duration, check: bool) -> Answer {
        match (self, &payload.wire) {
            (Client::Http(c), Wire::Http { .. }) => c.send(payload, timeout, check).await,
            (Client::Grpc(c), Wire::Grpc(request)) => c.send(request, timeout, check).await,
            _ => unreachable!("payloads are encoded for their run's protocol"),
        }
    }
}

/// A client's HTTP/1.1 connection, re-established after a transport failure or a timeout.
pub struct HttpClient {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpClient {
    pub fn new(endpoint: Endpoint) -> HttpClient {
        HttpClient {
            endpoint,
            sender: None,
        }
    }

    /// Opens the connection now (so that the first measured request does not pay for it).
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        let stream = TcpStream::connect(self.endpoint.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.endpoint.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake failed")?;
        // The connection task ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends `payload`, waits up to `timeout` for the whole answer, and reads its labels if
    /// `check` is set.
    pub async fn send(&mut self, payload: &Payload, timeout: Duration, check: bool) -> Answer {
        if self.sender.is_none() && self.connect().await.is_err() {
            tokio::time::sleep(RECONNECT_BACKOFF).await;
            return Answer::Failed(Failure::Transport);
        }
        let request = self.request(payload);
        let sender = self.sender.as_mut().expect("connected above");
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let header_length = response
                .headers()
                .get(HEADER_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            let coding = response
                .headers()
                .get(CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            // The body must be read to the end for the connection to take the next request.
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, (header_length, coding), body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                // The answer may still arrive on this connection: start afresh.
                self.sender = None;
                Answer::Failed(Failure::Timeout)
            }
            Ok(Err(_)) => {
                self.sender = None;
                Answer::Failed(Failure::Transport)
            }
            Ok(Ok((status, _, _))) if !status.is_success() => {
                Answer::Failed(Failure::Status(status.as_u16()))
            }
            Ok(Ok((_, (header_length, coding), body))) => Answer::Ok {
                checked: check.then(|| {
                    // A compressed answer is decoded only to be checked.
                    let plain = match coding.as_deref() {
                        None | Some("identity") => Some(body.to_vec()),
                        Some(coding) => Compression::decompress(coding, &body),
                    };
                    plain
                        .and_then(|b| answer_labels(&b, header_length))
                        .unwrap_or_default()
                }),
            },
        }
    }

    fn request(&self, payload: &Payload) -> Request<Full<Bytes>> {
        let Wire::Http {
            body,
            header_length,
            coding,
        } = &payload.wire
        else {
            unreachable!("an HTTP client sends HTTP payloads");
        };
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.endpoint.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.endpoint.host.clone());
        match header_length {
            Some(length) => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(HEADER_LENGTH, HeaderValue::from(*length));
            }
            None => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
        }
        if let Some(coding) = coding {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding));
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static(coding));
        }
        request
    }
}

/// Turns an answer into a recorded outcome: a checked answer must carry the expected labels.
pub fn judge(answer: Answer, expected: Option<&[i64]>) -> Result<(), Failure> {
    match answer {
        Answer::Failed(failure) => Err(failure),
        Answer::Ok {
            checked: Some(labels),
        } if expected.is_some_and(|e| e != labels.as_slice()) => Err(Failure::WrongAnswer),
        Answer::Ok { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("http://127.0.0.1:8000", "--target").unwrap(),
            ("127.0.0.1".into(), 8000)
        );
        assert_eq!(
            parse_target("http://localhost/", "--target").unwrap(),
            ("localhost".into(), 80)
        );
        assert_eq!(
            parse_target("http://[::1]:9000", "--grpc-target").unwrap(),
            ("::1".into(), 9000)
        );
        for bad in [
            "https://x:1",
            "127.0.0.1:8000",
            "http://x:1/v2",
            "not a url",
        ] {
            let error = parse_target(bad, "--grpc-target").unwrap_err().to_string();
            assert!(error.contains("--grpc-target"), "{bad}: {error}");
        }
    }

    #[test]
    fn endpoint_path_and_host() {
        let e = Endpoint::new(
            "127.0.0.1:1234".parse().unwrap(),
            "127.0.0.1:1235".parse().unwrap(),
            "digits_soft",
        );
        assert_eq!(e.url(), "http://127.0.0.1:1234/v2/models/digits_soft/infer");
        assert_eq!(e.url_of(Protocol::Grpc), "grpc://127.0.0.1:1235");
        assert_eq!(e.host, "127.0.0.1:1234");
    }

    #[test]
    fn judging() {
        let ok = |labels: Option<Vec<i64>>| Answer::Ok { checked: labels };
        assert_eq!(judge(ok(None), Some(&[1])), Ok(()));
        assert_eq!(judge(ok(Some(vec![1])), Some(&[1])), Ok(()));
        assert_eq!(
            judge(ok(Some(vec![2])), Some(&[1])),
            Err(Failure::WrongAnswer)
        );
        // An unreadable answer reads as no labels, which is wrong when labels were expected.
        assert_eq!(
            judge(ok(Some(vec![])), Some(&[1])),
            Err(Failure::WrongAnswer)
        );
        assert_eq!(judge(ok(Some(vec![2])), None), Ok(()));
        assert_eq!(
            judge(Answer::Failed(Failure::Timeout), None),
            Err(Failure::Timeout)
        );
    }
}
