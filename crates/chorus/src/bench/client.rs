//! One keep-alive HTTP/1.1 connection per benchmark client (hyper's connection-level API: no pool,
//! no per-request allocation beyond the request head), sending pre-encoded bodies and reading
//! only the status unless the answer is to be checked.

use super::payload::{Payload, answer_labels};
use super::stats::Failure;
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// Pause after a failed connect, so that a dead target is not hammered in a hot loop.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// Where requests go: the coordinator's address and the infer path of the model.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    host: HeaderValue,
    uri: Uri,
}

impl Endpoint {
    /// `target` is `http://host:port` (a trailing `/` is allowed); `model` the model or ensemble.
    pub async fn resolve(target: &str, model: &str) -> anyhow::Result<Endpoint> {
        let (host, port) = parse_target(target)?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} resolves to no address"))?;
        Ok(Endpoint::new(addr, model))
    }

    pub fn new(addr: SocketAddr, model: &str) -> Endpoint {
        Endpoint {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header"),
            uri: format!("/v2/models/{model}/infer")
                .parse()
                .expect("a model name makes a valid path"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.uri)
    }
}

/// `http://host:port[/]` → (host, port); port 80 when absent.
pub fn parse_target(target: &str) -> anyhow::Result<(String, u16)> {
    let uri: Uri = target
        .parse()
        .with_context(|| format!("--target {target:?} is not a URL like http://127.0.0.1:8000"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--target {target:?}: only http:// is supported");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("--target {target:?}: give the server's root, without a path");
    }
    let host = uri
        .host()
        .with_context(|| format!("--target {target:?} has no host"))?;
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

/// A client's connection, re-established after a transport failure or a timeout.
pub struct Client {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
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
            // The body must be read to the end for the connection to take the next request.
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, header_length, body))
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
            Ok(Ok((_, header_length, body))) => Answer::Ok {
                checked: check.then(|| answer_labels(&body, header_length).unwrap_or_default()),
            },
        }
    }

    fn request(&self, payload: &Payload) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(payload.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.endpoint.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.endpoint.host.clone());
        match payload.header_length {
            Some(length) => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(HEADER_LENGTH, HeaderValue::from(length));
            }
            None => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
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
            parse_target("http://127.0.0.1:8000").unwrap(),
            ("127.0.0.1".into(), 8000)
        );
        assert_eq!(
            parse_target("http://localhost/").unwrap(),
            ("localhost".into(), 80)
        );
        assert_eq!(
            parse_target("http://[::1]:9000").unwrap(),
            ("::1".into(), 9000)
        );
        for bad in [
            "https://x:1",
            "127.0.0.1:8000",
            "http://x:1/v2",
            "not a url",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_path_and_host() {
        let e = Endpoint::new("127.0.0.1:1234".parse().unwrap(), "digits_soft");
        assert_eq!(e.url(), "http://127.0.0.1:1234/v2/models/digits_soft/infer");
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
