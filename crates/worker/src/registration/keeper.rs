//! The lease keeper: registers the worker, renews its lease every TTL/3, re-registers after a
//! loss and gives up after too long, on an OS thread with a single-threaded runtime of its own.
//!
//! An unreachable etcd is not a lost lease. While renewals fail because etcd cannot be reached,
//! the worker keeps serving and keeps retrying with jittered backoff; it warns once when the
//! renewal is overdue (past the local expiry) and says so when a renewal succeeds again. Why:
//! etcd cannot expire a lease while it is down (on restart it renews every lease for a full
//! TTL), coordinators keep their last view while etcd is down, and a worker cut off from a
//! healthy etcd is dropped by the coordinators anyway when its key expires. Refusing work would
//! add no safety and turn an etcd outage into a full outage. The lease is lost only when etcd
//! says so (lease not found, TTL 0, or the key under another lease); only then does the worker
//! refuse work, re-register, and, if it cannot for `--etcd-give-up-ttls` TTLs, give up.
//!
//! Why a thread: a renewal that comes late drops a healthy worker out of membership. The
//! server's runtime may be saturated by request handling (or blocked by a careless call); this
//! runtime has nothing else to do, and it also owns the etcd client's connection tasks, so no
//! etcd I/O ever waits for the server's runtime.

use super::etcd::{Created, Etcd, EtcdError, KeepAlive};
use super::schedule::{LeaseSchedule, Phase};
use super::{Membership, RegistrationConfig, RegistrationError};
use chorus_common::membership::encode_record;
use chorus_common::{ModelInfo, WorkerInfo, WorkerState};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// How long the keeper sleeps when it has nothing to do but wait for a command.
const IDLE: Duration = Duration::from_secs(3600);

type Reply = oneshot::Sender<Result<(), RegistrationError>>;

/// What the handle asks of the keeper.
#[derive(Debug)]
pub enum Command {
    /// Shutting down: mark the record `draining` and never re-register.
    SetDraining(Reply),
    /// An operator's drain: mark the record `draining` and keep it so, re-registration included.
    Drain(Reply),
    /// A reload changed what the worker serves: publish the new models and capacity in the
    /// record (and in any record a later re-registration creates).
    Describe {
        models: Vec<ModelInfo>,
        capacity: u32,
        reply: Reply,
    },
    Revoke(Reply),
}

/// The keeper's ends of the channels to its handle.
pub(super) struct Channels {
    pub membership: watch::Sender<Membership>,
    pub commands: mpsc::Receiver<Command>,
    /// Answered once: registered, or why not.
    pub ready: oneshot::Sender<Result<(), RegistrationError>>,
    /// Sent the error when the keeper gives up.
    pub failure: oneshot::Sender<RegistrationError>,
}

/// Starts the keeper's thread; it reports on `channels.ready` whether it registered.
pub(super) fn spawn(
    config: RegistrationConfig,
    info: WorkerInfo,
    channels: Channels,
) -> std::io::Result<()> {
    // The thread logs to whatever subscriber the caller logs to (a test's own, too).
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    std::thread::Builder::new()
        .name("chorus-etcd-lease".into())
        .spawn(move || {
            tracing::dispatcher::with_default(&dispatch, move || {
                let Channels {
                    membership,
                    commands,
                    ready,
                    failure,
                } = channels;
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(RegistrationError::Keeper(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut keeper =
                        match Keeper::register(config, info, membership, commands).await {
                            Ok(keeper) => keeper,
                            Err(e) => {
                                let _ = ready.send(Err(e));
                                return;
                            }
                        };
                    if ready.send(Ok(())).is_err() {
                        // Nobody waits for this registration any more: undo it.
                        let _ = keeper.revoke_all().await;
                        return;
                    }
                    if let Err(e) = keeper.run().await {
                        let _ = failure.send(e);
                    }
                });
            })
        })?;
    Ok(())
}

/// What a successful exchange with etcd found out about the lease.
enum Renewal {
    /// Renewed: etcd keeps it for this long from when the request was sent.
    Renewed(Duration),
    /// The lease may be alive, but the worker's key is gone (`None`) or attached to another
    /// lease: as lost as a lease etcd no longer knows.
    KeyTaken(Option<i64>),
}

/// A uniform draw from [0, 1) for backoff jitter.
fn jitter() -> f64 {
    rand::random::<f64>()
}

struct Keeper {
    etcd: Etcd,
    info: WorkerInfo,
    endpoints: Vec<String>,
    schedule: LeaseSchedule,
    /// The open keep-alive stream of the live lease; reopened after any error.
    keep_alive: Option<KeepAlive>,
    /// The TTL etcd granted the live lease (what a reopened keep-alive stream renews it to).
    granted_ttl: Duration,
    /// Leases this process made and no longer uses (lost, or granted by an attempt that failed
    /// half-way); revoked before the next registration attempt, so that a key one of them may
    /// still hold disappears instead of blocking the attempt until etcd expires it.
    stale: Vec<i64>,
    /// When to renew or retry next.
    next_attempt: Instant,
    /// Shutting down: publish nothing new, never re-register. (An operator's drain only sets
    /// `info.state`: that worker keeps running, so it re-registers, as draining, after a loss.)
    draining: bool,
    /// Consecutive failed attempts.
    attempts: u32,
    /// The overdue renewal has been reported (once per overdue spell).
    overdue_reported: bool,
    last_error: String,
    membership: watch::Sender<Membership>,
    commands: mpsc::Receiver<Command>,
}

impl Keeper {
    /// Connects and creates the worker's key, retrying an unreachable etcd until the give-up
    /// bound; fails at once if another lease holds the key.
    async fn register(
        config: RegistrationConfig,
        info: WorkerInfo,
        membership: watch::Sender<Membership>,
        commands: mpsc::Receiver<Command>,
    ) -> Result<Keeper, RegistrationError> {
        let start = Instant::now();
        let key = chorus_common::membership::worker_key(&info.worker_id);
        let mut schedule = LeaseSchedule::new(config.lease_ttl, config.give_up_ttls, start);
        let user = config.connect.etcd_user.clone();
        let mut failed_connects = 0;
        let etcd = loop {
            let error = match Etcd::connect(
                &config.endpoints,
                &config.connect,
                key.clone(),
                config.request_timeout(),
            )
            .await
            {
                Ok(etcd) => break etcd,
                Err(e) => e,
            };
            failed_connects += 1;
            if let Some(refused) = error.refusal(&config.endpoints, user.as_deref()) {
                return Err(refused.into());
            }
            // With a user, connecting asks etcd for a token: an etcd that does not answer (yet)
            // is retried like a failed registration. Anything else is a setting to fix.
            let unanswered = matches!(
                &error,
                EtcdError::Timeout(_) | EtcdError::Client(etcd_client::Error::GRpcStatus(_))
            );
            if !unanswered {
                return Err(match error {
                    EtcdError::Connect(e) => e.into(),
                    other => RegistrationError::InvalidEndpoints {
                        endpoints: config.endpoints.clone(),
                        message: other.to_string(),
                    },
                });
            }
            let now = Instant::now();
            if schedule.should_give_up(now) {
                return Err(RegistrationError::Unreachable {
                    endpoints: config.endpoints.clone(),
                    attempts: failed_connects,
                    waited: now.duration_since(start),
                    last_error: error.to_string(),
                });
            }
            let delay = schedule.retry_delay(now, jitter());
            warn!(endpoints = ?config.endpoints, attempt = failed_connects, error = %error, retry_in_ms = delay.as_millis() as u64, "etcd unreachable, retrying");
            tokio::time::sleep(delay).await;
        };
        let mut keeper = Keeper {
            etcd,
            info,
            endpoints: config.endpoints,
            schedule,
            keep_alive: None,
            granted_ttl: config.lease_ttl,
            stale: Vec::new(),
            next_attempt: start,
            draining: false,
            attempts: failed_connects,
            overdue_reported: false,
            last_error: String::new(),
            membership,
            commands,
        };
        loop {
            keeper.attempts += 1;
            match keeper.create().await {
                Ok(Created::Ours) => {
                    info!(
                        worker_id = %keeper.info.worker_id,
                        key = %keeper.etcd.key(),
                        lease = %format_args!("{:x}", keeper.schedule.lease_id().unwrap_or(0)),
                        ttl_s = keeper.granted_ttl.as_secs(),
                        rpc_addr = %keeper.info.rpc_addr,
                        "worker registered in etcd"
                    );
                    return Ok(keeper);
                }
                Ok(Created::Taken { .. }) => {
                    // Best effort: the unused lease holds no key and would expire anyway.
                    let _ = keeper.revoke_stale().await;
                    return Err(RegistrationError::AlreadyRegistered {
                        worker_id: keeper.info.worker_id.clone(),
                        key: keeper.etcd.key().to_string(),
                    });
                }
                Err(e) => {
                    // A user without write access to its key will not get it by waiting.
                    if let Some(refused) = e.refusal(&keeper.endpoints, user.as_deref()) {
                        return Err(refused.into());
                    }
                    let now = Instant::now();
                    if keeper.schedule.should_give_up(now) {
                        return Err(RegistrationError::Unreachable {
                            endpoints: keeper.endpoints.clone(),
                            attempts: keeper.attempts,
                            waited: now.duration_since(start),
                            last_error: e.to_string(),
                        });
                    }
                    let delay = keeper.schedule.retry_delay(now, jitter());
                    warn!(
                        endpoints = ?keeper.endpoints,
                        attempt = keeper.attempts,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "etcd unreachable, retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Keeps the lease alive and answers commands until revoked (`Ok`) or until it gives up
    /// (only after etcd said the lease is gone and re-registering failed for too long).
    async fn run(&mut self) -> Result<(), RegistrationError> {
        loop {
            let now = Instant::now();
            self.report_overdue(now);
            let wake = match self.schedule.phase() {
                Phase::Lost if self.draining => now + IDLE,
                Phase::Lost if self.schedule.should_give_up(now) => {
                    return Err(RegistrationError::GaveUp {
                        worker_id: self.info.worker_id.clone(),
                        waited: now.saturating_duration_since(self.schedule.lost_since()),
                        last_error: self.last_error.clone(),
                    });
                }
                // Never a moment already past (an overdue expiry), or the loop would spin.
                _ => self.schedule.wake_at(now, self.next_attempt),
            };
            let command = tokio::select! {
                command = self.commands.recv() => Some(command),
                () = tokio::time::sleep_until(wake.into()) => None,
            };
            match command {
                Some(Some(Command::SetDraining(reply))) => {
                    let _ = reply.send(self.set_draining().await);
                    continue;
                }
                Some(Some(Command::Drain(reply))) => {
                    let _ = reply.send(self.mark_draining().await);
                    continue;
                }
                Some(Some(Command::Describe {
                    models,
                    capacity,
                    reply,
                })) => {
                    let _ = reply.send(self.describe(models, capacity).await);
                    continue;
                }
                Some(Some(Command::Revoke(reply))) => {
                    let _ = reply.send(self.revoke_all().await);
                    return Ok(());
                }
                Some(None) => {
                    // The handle is gone without revoking (the server was dropped): the worker
                    // serves nothing any more, so take it out of membership now.
                    if let Err(e) = self.revoke_all().await {
                        warn!(error = %e, "cannot revoke the etcd lease of a dropped worker");
                    }
                    return Ok(());
                }
                None => {}
            }
            if Instant::now() < self.next_attempt {
                continue;
            }
            match self.schedule.phase() {
                Phase::Registered { .. } => self.renew().await,
                Phase::Lost if !self.draining => self.reregister().await,
                Phase::Lost => {}
            }
        }
    }

    /// Revokes leaves over from earlier attempts, grants a lease and creates the key under it
    /// if the key does not exist. On success the worker is registered.
    async fn create(&mut self) -> Result<Created, EtcdError> {
        self.revoke_stale().await?;
        let sent = Instant::now();
        let (lease_id, granted) = self.etcd.grant(self.schedule.ttl()).await?;
        let granted = if granted.is_zero() {
            self.schedule.ttl()
        } else {
            granted
        };
        match self.etcd.create(lease_id, encode_record(&self.info)).await {
            Ok(Created::Ours) => {
                self.schedule.registered(lease_id, sent, granted);
                self.granted_ttl = granted;
                self.keep_alive = None;
                self.next_attempt = self.schedule.next_renewal();
                self.attempts = 0;
                self.membership
                    .send_replace(Membership::Registered { lease_id });
                Ok(Created::Ours)
            }
            // Not registered under this lease (the key is taken, or the answer was lost and the
            // key may hold it): revoke it before the next attempt.
            other => {
                self.stale.push(lease_id);
                other
            }
        }
    }

    /// Sends one renewal, (re)opening the keep-alive stream first if it is not open.
    ///
    /// Only etcd's own answer loses the lease: "lease not found" (or TTL 0), or the key found
    /// under another lease. Any other failure (timeout, connection refused or reset, etcd
    /// unavailable) leaves the worker registered and serving, and is retried with backoff.
    async fn renew(&mut self) {
        let Some(lease_id) = self.schedule.lease_id() else {
            return;
        };
        let sent = Instant::now();
        let result = match self.keep_alive.as_mut() {
            Some(keep_alive) => keep_alive.renew().await.map(Renewal::Renewed),
            None => self.reopen(lease_id).await,
        };
        match result {
            Ok(Renewal::Renewed(ttl)) => {
                let now = Instant::now();
                if self.attempts > 0 {
                    info!(
                        worker_id = %self.info.worker_id,
                        lease = %format_args!("{lease_id:x}"),
                        failed_attempts = self.attempts,
                        unrenewed_ms = now.saturating_duration_since(self.schedule.last_renewal()).as_millis() as u64,
                        was_overdue = self.overdue_reported,
                        "etcd lease renewed again"
                    );
                }
                self.attempts = 0;
                self.overdue_reported = false;
                self.schedule.renewed(sent, ttl);
                self.next_attempt = self.schedule.next_renewal();
                debug!(lease = %format_args!("{lease_id:x}"), ttl_s = ttl.as_secs(), "etcd lease renewed");
            }
            Ok(Renewal::KeyTaken(holder)) => self.lose(match holder {
                None => "the worker's key no longer exists in etcd".to_string(),
                Some(0) => "the worker's key is in etcd without a lease".to_string(),
                Some(holder) => {
                    format!("the worker's key is held by another lease ({holder:x}) in etcd")
                }
            }),
            Err(EtcdError::LeaseNotFound) => {
                self.lose("etcd says the lease no longer exists".to_string())
            }
            Err(e) => {
                // The stream may be broken (etcd restarted, connection reset): reopen it.
                self.keep_alive = None;
                self.attempts += 1;
                self.last_error = e.to_string();
                let now = Instant::now();
                let delay = self.schedule.retry_delay(now, jitter());
                self.next_attempt = now + delay;
                if self.schedule.overdue(now) {
                    // Reported once (`report_overdue`); every attempt would flood the log
                    // during a long etcd outage.
                    debug!(
                        worker_id = %self.info.worker_id,
                        lease = %format_args!("{lease_id:x}"),
                        attempt = self.attempts,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "etcd lease renewal failed, still serving, retrying"
                    );
                    self.report_overdue(now);
                } else {
                    warn!(
                        worker_id = %self.info.worker_id,
                        lease = %format_args!("{lease_id:x}"),
                        attempt = self.attempts,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "etcd lease renewal failed, retrying"
                    );
                }
            }
        }
    }

    /// Opens the keep-alive stream of `lease_id` (which renews it to its full TTL), after making
    /// sure the key is still attached to it: the stream is opened after registering and after
    /// any renewal failure, such as an etcd outage, during which the key may have changed.
    async fn reopen(&mut self, lease_id: i64) -> Result<Renewal, EtcdError> {
        let holder = self.etcd.holder().await?;
        if holder != Some(lease_id) {
            return Ok(Renewal::KeyTaken(holder));
        }
        self.keep_alive = Some(self.etcd.keep_alive(lease_id).await?);
        Ok(Renewal::Renewed(self.granted_ttl))
    }

    /// Warns once per overdue spell that the renewal is past the local expiry.
    fn report_overdue(&mut self, now: Instant) {
        if self.overdue_reported || !self.schedule.overdue(now) {
            return;
        }
        self.overdue_reported = true;
        let lease = self.schedule.lease_id().unwrap_or(0);
        warn!(
            worker_id = %self.info.worker_id,
            lease = %format_args!("{lease:x}"),
            unrenewed_ms = now.saturating_duration_since(self.schedule.last_renewal()).as_millis() as u64,
            failed_attempts = self.attempts,
            last_error = %self.last_error,
            "etcd lease renewal overdue: etcd unreachable, still serving"
        );
    }

    /// One attempt to register again after a loss.
    async fn reregister(&mut self) {
        self.attempts += 1;
        let attempts = self.attempts;
        let outcome = self.create().await;
        let failure = match outcome {
            Ok(Created::Ours) => {
                info!(
                    worker_id = %self.info.worker_id,
                    lease = %format_args!("{:x}", self.schedule.lease_id().unwrap_or(0)),
                    attempts,
                    "worker re-registered in etcd, taking work again"
                );
                return;
            }
            Ok(Created::Taken { lease_id: holder }) => format!(
                "key {} is held by another lease ({holder:x}); it disappears when that lease expires, unless another process has taken this worker id",
                self.etcd.key()
            ),
            Err(e) => e.to_string(),
        };
        let now = Instant::now();
        let delay = self.schedule.retry_delay(now, jitter());
        self.next_attempt = now + delay;
        warn!(
            worker_id = %self.info.worker_id,
            endpoints = ?self.endpoints,
            attempt = attempts,
            error = %failure,
            retry_in_ms = delay.as_millis() as u64,
            "cannot re-register in etcd, retrying"
        );
        self.last_error = failure;
    }

    /// etcd says the lease is gone: refuse work (via `Lost`) and re-register at once. The
    /// give-up clock starts now.
    fn lose(&mut self, reason: String) {
        let now = Instant::now();
        if let Some(lease_id) = self.schedule.lose(now) {
            self.stale.push(lease_id);
            self.keep_alive = None;
            self.next_attempt = now;
            self.attempts = 0;
            self.overdue_reported = false;
            self.membership.send_replace(Membership::Lost);
            warn!(
                worker_id = %self.info.worker_id,
                lease = %format_args!("{lease_id:x}"),
                reason = %reason,
                give_up_in_s = self.schedule.give_up_after().as_secs_f64(),
                "etcd lease lost, refusing new work until registered again"
            );
            self.last_error = reason;
        }
    }

    /// Marks the record `draining` under the live lease; no re-registration from now on.
    async fn set_draining(&mut self) -> Result<(), RegistrationError> {
        self.draining = true;
        self.mark_draining().await
    }

    /// Marks the record `draining` under the live lease. The state stays in `info`, so a record
    /// created by a later re-registration says `draining` too: a drained worker never comes back
    /// into rotation by losing its lease.
    async fn mark_draining(&mut self) -> Result<(), RegistrationError> {
        self.info.state = WorkerState::Draining;
        // Not in etcd right now (so nobody routes here): nothing to mark.
        if let Some(lease_id) = self.rewrite_record().await? {
            info!(
                worker_id = %self.info.worker_id,
                lease = %format_args!("{lease_id:x}"),
                "worker marked draining in etcd"
            );
        }
        Ok(())
    }

    /// Publishes a reloaded model list under the live lease. Kept in `info` either way, so a
    /// record created by a later re-registration lists it too.
    async fn describe(
        &mut self,
        models: Vec<ModelInfo>,
        capacity: u32,
    ) -> Result<(), RegistrationError> {
        self.info.models = models;
        self.info.capacity = capacity;
        // Not in etcd right now: the next registration publishes it.
        if let Some(lease_id) = self.rewrite_record().await? {
            info!(
                worker_id = %self.info.worker_id,
                lease = %format_args!("{lease_id:x}"),
                models = self.info.models.len(),
                capacity,
                "worker record updated in etcd with its reloaded models"
            );
        }
        Ok(())
    }

    /// Rewrites the record from `info` under the live lease; `None` when there is none (the next
    /// registration writes `info` anyway), the lease when it was rewritten.
    async fn rewrite_record(&mut self) -> Result<Option<i64>, RegistrationError> {
        let Some(lease_id) = self.schedule.lease_id() else {
            return Ok(None);
        };
        match self.etcd.update(lease_id, encode_record(&self.info)).await {
            Ok(true) => Ok(Some(lease_id)),
            Ok(false) => Err(RegistrationError::Etcd(format!(
                "key {} is no longer held by lease {lease_id:x}",
                self.etcd.key()
            ))),
            Err(e) => Err(RegistrationError::Etcd(e.to_string())),
        }
    }

    /// Revokes every lease this process holds, deleting the record at once.
    async fn revoke_all(&mut self) -> Result<(), RegistrationError> {
        if let Some(lease_id) = self.schedule.lose(Instant::now()) {
            self.stale.push(lease_id);
        }
        self.keep_alive = None;
        self.membership.send_replace(Membership::Lost);
        self.revoke_stale()
            .await
            .map_err(|e| RegistrationError::Etcd(e.to_string()))?;
        info!(
            worker_id = %self.info.worker_id,
            key = %self.etcd.key(),
            "etcd lease revoked, worker deregistered"
        );
        Ok(())
    }

    async fn revoke_stale(&mut self) -> Result<(), EtcdError> {
        while let Some(&lease_id) = self.stale.last() {
            self.etcd.revoke(lease_id).await?;
            self.stale.pop();
        }
        Ok(())
    }
}
