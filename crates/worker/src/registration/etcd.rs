//! The few etcd operations registration needs, each bounded by a timeout.
//!
//! etcd-client connects lazily and a request to an endpoint that is down, or frozen, may wait
//! for a long time; every call here gives up after `request_timeout` so that the keeper's loop
//! always gets to check its deadlines.

use chorus_common::etcd_connect::{
    EtcdConnectArgs, EtcdConnectError, is_refused_credentials, refusal_message,
};
use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use std::future::Future;
use std::time::Duration;

/// etcd's default `--grpc-keepalive-min-time`: the shortest HTTP/2 ping interval it tolerates.
const ETCD_MIN_PING_INTERVAL: Duration = Duration::from_secs(5);

/// Why an etcd request failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// etcd says the lease does not exist (expired or revoked).
    #[error("lease not found")]
    LeaseNotFound,
    #[error(transparent)]
    Client(#[from] etcd_client::Error),
    /// The TLS files or the password cannot be used, or etcd turned the user down.
    #[error(transparent)]
    Connect(#[from] EtcdConnectError),
}

impl EtcdError {
    /// The error as a refusal naming `user`, when etcd turned down the credentials or what
    /// they may do (no retry helps: someone must fix the user, password or role).
    pub fn refusal(&self, endpoints: &[String], user: Option<&str>) -> Option<EtcdConnectError> {
        match self {
            EtcdError::Client(e) if is_refused_credentials(e) => Some(EtcdConnectError::Refused {
                endpoints: endpoints.to_vec(),
                user: user.unwrap_or("(none: no --etcd-user)").to_string(),
                message: refusal_message(e),
            }),
            _ => None,
        }
    }
}

/// etcd's answer to a keep-alive for a lease that has expired or was revoked.
fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        // "etcdserver: requested lease not found" as a gRPC status (revoke, put, keep-alive).
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        // etcd-client's own wording when the first keep-alive answer has TTL 0.
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

/// What creating the worker's key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The key now holds the record under this lease (possibly from an earlier attempt whose
    /// answer was lost).
    Ours,
    /// Another lease holds the key (0 when the key has no lease).
    Taken { lease_id: i64 },
}

/// An etcd client for one worker key.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    key: String,
    request_timeout: Duration,
}

impl Etcd {
    /// Builds a client. etcd-client connects lazily, so without a user this fails only for
    /// malformed endpoints or unusable TLS files, and an unreachable etcd shows up on the first
    /// request; with a user it authenticates at once, so etcd must answer.
    pub async fn connect(
        endpoints: &[String],
        connect: &EtcdConnectArgs,
        key: String,
        request_timeout: Duration,
    ) -> Result<Etcd, EtcdError> {
        // HTTP/2 pings notice a dead or frozen etcd behind an open connection, so that the
        // balancer reconnects. etcd answers clients that ping more often than its
        // --grpc-keepalive-min-time (5 s by default), or ping with no stream open, with
        // GOAWAY "too_many_pings": never more often than that, and only while the lease's
        // keep-alive stream is open. Each request is also bounded by `request_timeout`.
        let options = connect
            .connect_options(endpoints)?
            .with_connect_timeout(request_timeout)
            .with_keep_alive(request_timeout.max(ETCD_MIN_PING_INTERVAL), request_timeout)
            .with_keep_alive_while_idle(false);
        let client = bounded(request_timeout, async {
            Ok(Client::connect(endpoints, Some(options)).await?)
        })
        .await?;
        Ok(Etcd {
            client,
            key,
            request_timeout,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1); returns its id and the granted TTL.
    pub async fn grant(&mut self, ttl: Duration) -> Result<(i64, Duration), EtcdError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let client = &mut self.client;
        let granted = bounded(self.request_timeout, async {
            Ok(client.lease_grant(secs, None).await?)
        })
        .await?;
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0));
        Ok((granted.id(), ttl))
    }

    /// Revokes `lease_id`, deleting the keys attached to it; a lease already gone is fine.
    pub async fn revoke(&mut self, lease_id: i64) -> Result<(), EtcdError> {
        let client = &mut self.client;
        match bounded(self.request_timeout, async {
            Ok(client.lease_revoke(lease_id).await?)
        })
        .await
        {
            Ok(_) | Err(EtcdError::LeaseNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Puts `value` under the key with `lease_id` only if the key does not exist
    /// (create_revision = 0), so that two processes never hold the same worker id.
    pub async fn create(&mut self, lease_id: i64, value: Vec<u8>) -> Result<Created, EtcdError> {
        let key = self.key.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let client = &mut self.client;
        let answer = bounded(self.request_timeout, async { Ok(client.txn(txn).await?) }).await?;
        if answer.succeeded() {
            return Ok(Created::Ours);
        }
        let holder = answer
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.lease()),
                _ => None,
            })
            // Deleted between the compare and the get cannot happen inside one txn; treat an
            // empty answer as held by nobody in particular and let the caller retry.
            .unwrap_or(0);
        if holder == lease_id {
            Ok(Created::Ours)
        } else {
            Ok(Created::Taken { lease_id: holder })
        }
    }

    /// Replaces the value only while the key is still attached to `lease_id`; returns whether it
    /// was. Used to publish `draining` without ever overwriting another process's record.
    pub async fn update(&mut self, lease_id: i64, value: Vec<u8>) -> Result<bool, EtcdError> {
        let key = self.key.clone();
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease_id)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let client = &mut self.client;
        let answer = bounded(self.request_timeout, async { Ok(client.txn(txn).await?) }).await?;
        Ok(answer.succeeded())
    }

    /// The lease the worker's key is attached to: `None` if the key does not exist, `Some(0)`
    /// if it has no lease.
    pub async fn holder(&mut self) -> Result<Option<i64>, EtcdError> {
        let key = self.key.clone();
        let client = &mut self.client;
        let answer = bounded(self.request_timeout, async {
            Ok(client.get(key, None).await?)
        })
        .await?;
        Ok(answer.kvs().first().map(|kv| kv.lease()))
    }

    /// Opens a keep-alive stream for `lease_id` (its first renewal included).
    pub async fn keep_alive(&mut self, lease_id: i64) -> Result<KeepAlive, EtcdError> {
        let client = &mut self.client;
        let (keeper, stream) = bounded(self.request_timeout, async {
            Ok(client.lease_keep_alive(lease_id).await?)
        })
        .await?;
        Ok(KeepAlive {
            keeper,
            stream,
            request_timeout: self.request_timeout,
        })
    }
}

/// An open keep-alive stream for one lease. etcd-client only sends one request per
/// `keep_alive()` call, so the keeper loops it.
pub struct KeepAlive {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    request_timeout: Duration,
}

impl KeepAlive {
    /// Renews the lease once; returns the TTL etcd granted from now.
    pub async fn renew(&mut self) -> Result<Duration, EtcdError> {
        let KeepAlive {
            keeper,
            stream,
            request_timeout,
        } = self;
        bounded(*request_timeout, async {
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(answer) if answer.ttl() > 0 => Ok(Duration::from_secs(
                    u64::try_from(answer.ttl()).unwrap_or(0),
                )),
                // TTL 0 (or less) is etcd's way of saying the lease is gone.
                Some(_) => Err(EtcdError::LeaseNotFound),
                None => Err(EtcdError::Client(etcd_client::Error::LeaseKeepAliveError(
                    "keep-alive stream ended".into(),
                ))),
            }
        })
        .await
    }
}

/// Runs `request` for at most `timeout`, mapping "lease not found" to its own variant.
async fn bounded<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, EtcdError>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(timeout, request).await {
        Err(_elapsed) => Err(EtcdError::Timeout(timeout)),
        Ok(Err(EtcdError::Client(e))) if is_lease_not_found(&e) => Err(EtcdError::LeaseNotFound),
        Ok(result) => result,
    }
}
