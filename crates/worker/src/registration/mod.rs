//! Worker registration in etcd: the membership path's worker side.
//!
//! Once its models are warm and its listener is bound, a worker creates
//! `/chorus/v1/workers/{worker_id}` under a lease, only if no other process holds that key, and
//! keeps the lease alive every TTL/3 from a thread of its own.
//!
//! An unreachable etcd does not stop the worker: while renewals cannot reach etcd it keeps
//! serving under its lease and keeps retrying (see `keeper` for why that is safe). The lease is
//! lost only when etcd says so (lease not found, TTL 0, or the key under another lease); then
//! the worker refuses new work until it has re-registered under a new lease, and if it cannot
//! for `--etcd-give-up-ttls` TTLs it gives up, so that its supervisor restarts it. On shutdown
//! it publishes `draining`, and revokes the lease once in-flight work is done.
//!
//! [`Registration::start`] returns a [`RegistrationHandle`]: the server reads [`Membership`]
//! from it, awaits [`RegistrationHandle::failed`], and calls `set_draining` and `revoke`; the
//! service publishes an operator's drain through a [`DrainPublisher`], and a reload its new model
//! list through a [`ModelsPublisher`].

mod etcd;
mod keeper;
pub mod schedule;

use chorus_common::etcd_connect::EtcdConnectArgs;
use chorus_common::membership::worker_key;
use chorus_common::{ModelInfo, WorkerInfo};
use keeper::Command;
use std::future::pending;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Where and how to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// etcd endpoints (`http://host:port` or `host:port`); at least one.
    pub endpoints: Vec<String>,
    /// The lease's time to live (whole seconds; etcd grants at least 2 s).
    pub lease_ttl: Duration,
    /// TTLs to go on trying to register, at start-up or after etcd said the lease is gone,
    /// before giving up. An unreachable etcd while registered never counts.
    pub give_up_ttls: u32,
    /// TLS and authentication towards etcd (plain, no user by default).
    pub connect: EtcdConnectArgs,
}

impl RegistrationConfig {
    /// How long one etcd request may take: a renewal must fit between two renewals.
    pub fn request_timeout(&self) -> Duration {
        schedule::LeaseSchedule::renew_interval(self.lease_ttl)
    }
}

/// Whether the worker is in etcd's membership right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The record is in etcd under this lease, which is being kept alive (or, while etcd
    /// cannot be reached, retried: an overdue renewal keeps the worker serving).
    Registered { lease_id: i64 },
    /// Not registered: etcd said the lease is gone. Take no new work until re-registered.
    Lost,
}

/// Why registration failed or stopped. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("invalid --etcd endpoints {endpoints:?}: {message}")]
    InvalidEndpoints {
        endpoints: Vec<String>,
        message: String,
    },

    /// etcd turned down the TLS files or the user and password: retrying cannot help.
    #[error("cannot register in etcd: {0}")]
    Connect(#[from] chorus_common::etcd_connect::EtcdConnectError),

    #[error(
        "worker id '{worker_id}' is already registered in etcd (key {key}); choose another --worker-id or stop the other worker"
    )]
    AlreadyRegistered { worker_id: String, key: String },

    #[error(
        "etcd at {endpoints:?} could not be reached in {attempts} attempts over {:.1} s (the limit is --etcd-give-up-ttls × --lease-ttl-secs); check the --etcd endpoints and that etcd is up. last error: {last_error}",
        waited.as_secs_f64()
    )]
    Unreachable {
        endpoints: Vec<String>,
        attempts: u32,
        waited: Duration,
        last_error: String,
    },

    #[error(
        "worker '{worker_id}' lost its etcd lease (etcd said it is gone) and could not re-register for {:.1} s (--etcd-give-up-ttls × --lease-ttl-secs); exiting so that a supervisor restarts it. last error: {last_error}",
        waited.as_secs_f64()
    )]
    GaveUp {
        worker_id: String,
        waited: Duration,
        last_error: String,
    },

    #[error("cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),

    #[error("cannot start the etcd lease keeper: {0}")]
    Keeper(#[source] std::io::Error),

    #[error("etcd request failed: {0}")]
    Etcd(String),

    #[error("the etcd lease keeper did not answer within {0:?}")]
    Timeout(Duration),

    #[error("the etcd lease keeper has stopped")]
    Stopped,
}

/// Starts registrations.
pub struct Registration;

impl Registration {
    /// Registers `info` under `/chorus/v1/workers/{info.worker_id}` and starts keeping the lease
    /// alive on a thread of its own. Returns once registered; retries an unreachable etcd (with
    /// a warning per attempt) for up to `give_up_ttls` TTLs. Fails at once if another process
    /// holds the worker id.
    pub async fn start(
        config: RegistrationConfig,
        info: WorkerInfo,
    ) -> Result<RegistrationHandle, RegistrationError> {
        let key = worker_key(&info.worker_id);
        let reply_timeout = config.lease_ttl;
        let (membership_tx, membership) = watch::channel(Membership::Lost);
        // Room for the commands a handle sends, and a few operator drains asked at once.
        let (commands, commands_rx) = mpsc::channel(8);
        let (ready_tx, ready) = oneshot::channel();
        let (failure_tx, failure) = oneshot::channel();
        keeper::spawn(
            config,
            info,
            keeper::Channels {
                membership: membership_tx,
                commands: commands_rx,
                ready: ready_tx,
                failure: failure_tx,
            },
        )
        .map_err(RegistrationError::Keeper)?;
        ready.await.map_err(|_| RegistrationError::Stopped)??;
        Ok(RegistrationHandle {
            key,
            membership,
            commands,
            failure: Some(failure),
            reply_timeout,
        })
    }
}

/// The server's side of a running registration.
#[derive(Debug)]
pub struct RegistrationHandle {
    key: String,
    membership: watch::Receiver<Membership>,
    commands: mpsc::Sender<Command>,
    failure: Option<oneshot::Receiver<RegistrationError>>,
    /// How long `set_draining` and `revoke` wait for the keeper.
    reply_timeout: Duration,
}

impl RegistrationHandle {
    /// The etcd key the worker is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Follows the registration: `Lost` while the worker must refuse new work.
    pub fn membership(&self) -> watch::Receiver<Membership> {
        self.membership.clone()
    }

    /// The live lease, if any.
    pub fn lease_id(&self) -> Option<i64> {
        match *self.membership.borrow() {
            Membership::Registered { lease_id } => Some(lease_id),
            Membership::Lost => None,
        }
    }

    /// Resolves when the keeper gives up (etcd said the lease is gone and the worker could not
    /// re-register for `give_up_ttls` TTLs); never resolves otherwise. Cancel-safe.
    pub async fn failed(&mut self) -> RegistrationError {
        if let Some(failure) = self.failure.as_mut()
            && let Ok(error) = failure.await
        {
            self.failure = None;
            return error;
        }
        // The keeper ended without an error (revoked): nothing will ever fail.
        self.failure = None;
        pending().await
    }

    /// Publishes `state: draining` in the record (under the same lease) so coordinators route
    /// nothing new here, and stops re-registering if the lease is lost from now on.
    pub async fn set_draining(&self) -> Result<(), RegistrationError> {
        self.ask(Command::SetDraining).await
    }

    /// What an operator's drain RPC uses to mark the record, from outside the server loop.
    pub fn drain_publisher(&self) -> DrainPublisher {
        DrainPublisher {
            commands: self.commands.downgrade(),
            reply_timeout: self.reply_timeout,
        }
    }

    /// What a reload uses to publish the worker's new model list in its record.
    pub fn models_publisher(&self) -> ModelsPublisher {
        ModelsPublisher {
            commands: self.commands.downgrade(),
            reply_timeout: self.reply_timeout,
        }
    }

    /// Revokes the lease, deleting the record at once, and stops the keeper.
    pub async fn revoke(self) -> Result<(), RegistrationError> {
        self.ask(Command::Revoke).await
    }

    async fn ask(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), RegistrationError>>) -> Command,
    ) -> Result<(), RegistrationError> {
        ask(&self.commands, self.reply_timeout, command).await
    }
}

/// Publishes an operator's drain in etcd (`chorus drain`): cloned into the service, which
/// answers the drain RPC, while the server loop keeps the [`RegistrationHandle`] itself.
#[derive(Debug, Clone)]
pub struct DrainPublisher {
    /// Weak, so that the keeper still sees the handle go (and revokes the lease) when the
    /// server drops it without revoking.
    commands: mpsc::WeakSender<Command>,
    reply_timeout: Duration,
}

impl DrainPublisher {
    /// Marks the record `draining` under the live lease and keeps it so: unlike the shutdown's
    /// `set_draining`, the worker still re-registers after losing its lease (it keeps running),
    /// and the new record says `draining` too.
    pub async fn publish(&self) -> Result<(), RegistrationError> {
        let commands = self.commands.upgrade().ok_or(RegistrationError::Stopped)?;
        ask(&commands, self.reply_timeout, Command::Drain).await
    }
}

/// Publishes a reloaded model list and capacity in the etcd record: coordinators watching etcd
/// then fetch the worker's signatures again at once (see `chorus_coordinator::pool`).
#[derive(Debug, Clone)]
pub struct ModelsPublisher {
    /// Weak, for the same reason as [`DrainPublisher`]'s.
    commands: mpsc::WeakSender<Command>,
    reply_timeout: Duration,
}

impl ModelsPublisher {
    pub async fn publish(
        &self,
        models: Vec<ModelInfo>,
        capacity: u32,
    ) -> Result<(), RegistrationError> {
        let commands = self.commands.upgrade().ok_or(RegistrationError::Stopped)?;
        ask(&commands, self.reply_timeout, |reply| Command::Describe {
            models,
            capacity,
            reply,
        })
        .await
    }
}

/// Sends `command` to the keeper and waits (up to `reply_timeout`) for its answer.
async fn ask(
    commands: &mpsc::Sender<Command>,
    reply_timeout: Duration,
    command: impl FnOnce(oneshot::Sender<Result<(), RegistrationError>>) -> Command,
) -> Result<(), RegistrationError> {
    let (reply, answer) = oneshot::channel();
    commands
        .send(command(reply))
        .await
        .map_err(|_| RegistrationError::Stopped)?;
    match tokio::time::timeout(reply_timeout, answer).await {
        Err(_elapsed) => Err(RegistrationError::Timeout(reply_timeout)),
        Ok(Err(_dropped)) => Err(RegistrationError::Stopped),
        Ok(Ok(result)) => result,
    }
}
