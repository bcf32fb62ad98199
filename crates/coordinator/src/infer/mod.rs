//! The inference core: one transport-neutral path for every request, whichever front door it
//! came through. A front end decodes its protocol into an [`InferRequest`], asks the core to
//! [`Infer::resolve`] the model and [`Infer::infer`] it, inside [`Infer::observed`] (metrics and
//! the request span), and encodes the [`InferAnswer`] or [`InferError`] back.
//!
//! ```text
//! http/ (axum)  ─┐                                           ┌─ ensemble::run ─► router ─► pool
//!                ├─► resolve ─► validate ─► deadline, id ─► ─┤
//! grpc/ (tonic) ─┘                                           └─ router (one model)
//! ```
//!
//! Nothing below this module knows about HTTP or gRPC: no header maps, responses or statuses.

pub mod classification;
pub mod decode;
mod error;
mod ids;
pub mod model_config;
mod repository;
mod request;

pub use error::{ErrorKind, InferError};
pub use ids::RequestIds;
pub use repository::{EnsembleFacts, IndexEntry, ModelMetadata, SERVER_EXTENSIONS, SERVER_NAME};
pub use request::{InferAnswer, InferRequest, ParameterValue, Protocol, RequestedOutput};

use crate::access::{Access, Caller, Credentials};
use crate::admission::Admission;
use crate::catalog::{Catalog, Signature, Versions};
use crate::ensemble;
use crate::metrics::Metrics;
use crate::prediction_log::{self, PredictionLog};
use crate::router::Router;
use crate::spec::EnsembleSpec;
use crate::stats::{self, InferenceStats};
use chorus_common::ModelInfo;
use chorus_common::Tensor;
use chorus_common::rpc::InferCall;
use chorus_common::validate::{validate_inputs, validate_requested_outputs};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{Instrument, debug, field};

/// The tracing target of the per-request span (see [`Infer::observed`]).
pub const REQUEST_SPAN_TARGET: &str = chorus_common::trace::REQUEST_TARGET;

/// Request limits and defaults, from the coordinator's config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request a front end accepts (an HTTP body, a gRPC message), in bytes.
    pub max_request_bytes: usize,
    /// Largest total of input bytes one worker call may carry (the RPC frame limit, less room
    /// for the call's other fields).
    pub max_call_bytes: usize,
    /// Deadline of single-model requests (ensembles carry their own).
    pub model_deadline: Duration,
}

impl Limits {
    /// Room left in an RPC frame for everything but the tensors' bytes.
    const FRAME_OVERHEAD: usize = 64 * 1024;

    pub fn new(max_request_bytes: usize, max_frame_bytes: usize, model_deadline: Duration) -> Self {
        Limits {
            max_request_bytes,
            max_call_bytes: max_frame_bytes.saturating_sub(Self::FRAME_OVERHEAD),
            model_deadline,
        }
    }
}

/// What a request's model name resolved to, with the signature its inputs are checked against.
// One per request, on the stack for the request's life: boxing the larger variant would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Target {
    Ensemble {
        /// The version that answers: pinned by the client, or drawn by the name's split.
        spec: Arc<EnsembleSpec>,
        signature: Arc<Signature>,
        /// The name's shadow version, which gets a copy of split (unpinned) requests.
        shadow: Option<Arc<EnsembleSpec>>,
    },
    Model {
        info: ModelInfo,
        /// The version the client pinned; `None` runs the newest a replica serves.
        pinned: Option<String>,
        signature: Signature,
    },
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Ensemble { spec, .. } => &spec.name,
            Target::Model { info, .. } => &info.name,
        }
    }

    pub fn signature(&self) -> &Signature {
        match self {
            Target::Ensemble { signature, .. } => signature,
            Target::Model { signature, .. } => signature,
        }
    }

    /// The version metadata reports: the ensemble version resolved, or the model version.
    pub fn version(&self) -> &str {
        match self {
            Target::Ensemble { spec, .. } => &spec.version,
            Target::Model { info, .. } => &info.version,
        }
    }

    /// The model's single input, which raw (header-less) request bodies need.
    pub fn single_input(&self) -> Option<&chorus_common::TensorSpec> {
        match self.signature().inputs.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

/// Longest request `id` accepted. The id is echoed in the answer, logged with every member call
/// and sent to the workers: a client must not make each of those carry megabytes. 256 bytes
/// hold any UUID, trace id or composite key a client would use.
pub const MAX_REQUEST_ID_BYTES: usize = 256;

/// The core: catalog, router, limits, request ids and statistics, shared by both front ends.
pub struct Infer {
    catalog: Catalog,
    access: Access,
    admission: Admission,
    router: Arc<Router>,
    limits: Limits,
    ids: RequestIds,
    metrics: Arc<Metrics>,
    stats: Arc<InferenceStats>,
    /// `--prediction-log`: where sampled ensemble answers are queued; `None` when off.
    prediction_log: Option<PredictionLog>,
    /// Feedback and online member weights (docs/data.md).
    feedback: crate::feedback::Feedback,
    /// Copies of split traffic to shadow versions (shadow.rs).
    shadows: crate::shadow::Shadows,
    /// `--strict-readiness`: server readiness needs every ensemble ready, not just one.
    strict_readiness: bool,
}

tokio::task_local! {
    /// The front door and caller of the request being served, for the prediction log. Set by
    /// [`Infer::observed`] only while the log is on, so that [`Infer::infer`] (called by both
    /// front ends, the benchmark and tests) need not carry them in its signature.
    static REQUEST_CONTEXT: (Protocol, Caller);
}

impl Infer {
    pub fn new(
        catalog: Catalog,
        router: Arc<Router>,
        limits: Limits,
        access: Access,
        admission: crate::admission::AdmissionSettings,
    ) -> Self {
        let metrics = Arc::clone(router.metrics());
        let shadows =
            crate::shadow::Shadows::new(Arc::clone(&router), crate::shadow::DEFAULT_MAX_INFLIGHT);
        Infer {
            admission: Admission::new(admission, metrics.admission().clone()),
            feedback: crate::feedback::Feedback::unsaved(Arc::clone(&metrics)),
            metrics,
            stats: Arc::clone(router.inference_stats()),
            catalog,
            access,
            router,
            limits,
            ids: RequestIds::new(),
            prediction_log: None,
            shadows,
            strict_readiness: true,
        }
    }

    /// This core with `--strict-readiness` set to `strict` (on by default).
    pub fn with_strict_readiness(self, strict: bool) -> Self {
        Infer {
            strict_readiness: strict,
            ..self
        }
    }

    /// This core with at most `max_inflight` shadow calls at once (shadow.rs).
    pub fn with_shadow_max_inflight(self, max_inflight: usize) -> Self {
        let shadows = crate::shadow::Shadows::new(Arc::clone(&self.router), max_inflight);
        Infer { shadows, ..self }
    }

    /// Whether server readiness needs every ensemble ready (`--strict-readiness`).
    pub fn strict_readiness(&self) -> bool {
        self.strict_readiness
    }

    /// This core with `feedback` (online weights kept in etcd or a file) instead of weights
    /// that live in memory only.
    pub fn with_feedback(self, feedback: crate::feedback::Feedback) -> Self {
        Infer { feedback, ..self }
    }

    /// Feedback and online member weights.
    pub fn feedback(&self) -> &crate::feedback::Feedback {
        &self.feedback
    }

    /// Logs sampled ensemble answers to `log` (docs/data.md).
    pub fn with_prediction_log(mut self, log: PredictionLog) -> Self {
        self.prediction_log = Some(log);
        self
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Grows `reserved` to cover `bytes` of request data (a body about to be read, a decoded
    /// message), within `--max-inflight-body-bytes`.
    pub async fn reserve_bytes(
        &self,
        reserved: &mut crate::admission::Reserved,
        bytes: usize,
    ) -> Result<(), InferError> {
        self.admission.reserve_bytes(reserved, bytes).await
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The caller `credentials` identify, for requests other than inference (metadata,
    /// statistics, the index), which are not counted as infer requests.
    pub fn authenticate(&self, credentials: Credentials<'_>) -> Result<Caller, InferError> {
        self.access.authenticate(credentials)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn request_ids(&self) -> &RequestIds {
        &self.ids
    }

    /// Runs `work` (decoding, inference, encoding: whatever the front end does for one infer
    /// request) for the caller `credentials` identify, inside the request's span, counting it in
    /// flight and recording its protocol, outcome and latency, rejected requests (401, 403)
    /// included. Names the catalog does not know share one metrics label.
    ///
    /// The span is at debug level under its own target, [`REQUEST_SPAN_TARGET`]: an enabled span
    /// costs about 1.3 µs of formatting per request, so it is off by default, and
    /// `RUST_LOG=info,chorus_request=debug` turns on just the span, so every warning logged while
    /// serving a request names it. Member-call logs carry `request_id` as a field either way.
    /// With `--otlp-endpoint` it is exported as the request's root span (or as the child of the
    /// client's span, from `trace`'s `traceparent`), whatever `RUST_LOG` says.
    pub async fn observed<T, Work>(
        &self,
        protocol: Protocol,
        model: &str,
        credentials: Credentials<'_>,
        trace: chorus_common::trace::Incoming<'_>,
        work: impl FnOnce(Caller) -> Work,
    ) -> Result<T, InferError>
    where
        Work: Future<Output = Result<T, InferError>>,
    {
        let label = self
            .metrics
            .model_label(model, || self.catalog.knows(model));
        let timer = self.metrics.request_started(label, protocol);
        let span = tracing::debug_span!(target: REQUEST_SPAN_TARGET, "infer", model = %model, protocol = %protocol.as_str(), key = field::Empty, request_id = field::Empty, otel.kind = "server");
        // With traces exported, a client's `traceparent` makes this span its child.
        trace.adopt(&span);
        let caller = self.access.authenticate(credentials);
        // For the per-key count after the work: an `Arc` clone, not a copy of the id.
        let counted = caller.as_ref().ok().cloned();
        let result = async {
            let caller = caller?;
            if caller.key().is_some() {
                tracing::Span::current().record("key", field::display(caller.id()));
            }
            caller.authorize(model)?;
            if self.prediction_log.is_some() {
                let context = (protocol, caller.clone());
                REQUEST_CONTEXT.scope(context, work(caller)).await
            } else {
                work(caller).await
            }
        }
        .instrument(span)
        .await;
        let error = result.as_ref().err().map(InferError::kind);
        if !self.access.is_open() {
            // Only with a key file: the label is a key id from that file (or empty for a
            // request that presented none), so the series stay bounded.
            let key = counted.as_ref().map_or("", Caller::id);
            self.metrics.admission().key_request(key, error);
        }
        timer.finish(error);
        result
    }

    /// What `model` (at `version`, if pinned) names, for one infer request: an ensemble
    /// version (an unpinned one drawn by the name's traffic split, with its shadow) or a model
    /// some worker serves.
    pub fn resolve(&self, model: &str, version: Option<&str>) -> Result<Target, InferError> {
        self.resolve_by(model, version, |versions| {
            let spec = versions.pick();
            (Arc::clone(spec), versions.shadow_of(spec).cloned())
        })
    }

    /// What `model` (at `version`) names, to describe it (metadata, configuration): an unpinned
    /// ensemble is the version most of its traffic goes to, without a draw or a shadow.
    pub fn resolve_described(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Target, InferError> {
        self.resolve_by(model, version, |versions| {
            (Arc::clone(versions.main()), None)
        })
    }

    /// [`resolve`](Self::resolve), with `unpinned` choosing an ensemble version and its shadow
    /// when the request pins none.
    fn resolve_by(
        &self,
        model: &str,
        version: Option<&str>,
        unpinned: impl FnOnce(&Versions) -> (Arc<EnsembleSpec>, Option<Arc<EnsembleSpec>>),
    ) -> Result<Target, InferError> {
        let catalog = &self.catalog;
        if let Some(versions) = catalog.ensemble_versions(model) {
            let (spec, shadow) = match version {
                Some(v) => match versions.get(v) {
                    Some(spec) => (Arc::clone(spec), None),
                    None => return Err(InferError::model_not_found(model, version)),
                },
                None => unpinned(&versions),
            };
            let signature = catalog
                .ensemble_signature(&spec)
                .map_err(InferError::Unavailable)?;
            return Ok(Target::Ensemble {
                spec,
                signature,
                shadow,
            });
        }
        let info = catalog
            .model(model, version)
            .ok_or_else(|| InferError::model_not_found(model, version))?;
        Ok(Target::Model {
            signature: Catalog::model_signature(&info),
            pinned: version.map(str::to_string),
            info,
        })
    }

    /// What `model` names, for an infer request from `caller`: resolved as [`resolve`] does,
    /// and within the caller's and the ensemble's rate limits. Front ends call it before they
    /// read or decode the request, so that a refusal costs little; [`infer`](Self::infer) then
    /// admits the request under the concurrency limits.
    ///
    /// [`resolve`]: Self::resolve
    pub fn resolve_admissible(
        &self,
        caller: &Caller,
        model: &str,
        version: Option<&str>,
    ) -> Result<Target, InferError> {
        let target = self.resolve(model, version)?;
        let limits = match &target {
            Target::Ensemble { spec, .. } => Some(&spec.limits),
            Target::Model { .. } => None,
        };
        self.admission.check_rates(caller, target.name(), limits)?;
        Ok(target)
    }

    /// Checks `request` against `target` and answers it: fans an ensemble out to its members
    /// and combines them, or calls the one model, under the request's deadline.
    pub async fn infer(
        &self,
        target: &Target,
        request: InferRequest,
    ) -> Result<InferAnswer, InferError> {
        self.validate(target, &request)?;
        let (server_deadline, limits) = match target {
            Target::Ensemble { spec, .. } => (spec.deadline, Some(&spec.limits)),
            Target::Model { .. } => (self.limits.model_deadline, None),
        };
        let time_left = request
            .timeout
            .map_or(server_deadline, |c| c.min(server_deadline));
        // Held until the answer is encoded and this function returns.
        let _admitted = self
            .admission
            .admit(target.name(), limits, request.priority, time_left)
            .await?;
        let id = request.id.unwrap_or_else(|| self.ids.next());
        tracing::Span::current().record("request_id", field::display(&id));
        match target {
            Target::Ensemble { spec, shadow, .. } => {
                debug!(ensemble = %spec.name, version = %spec.version, request_id = %id, "ensemble request");
                let deadline = deadline(spec.deadline, request.timeout);
                let rows = stats::rows_of(&request.inputs);
                // The log's sampling decision comes first: an unsampled request pays nothing
                // more, a sampled one clones handles, never tensor data (prediction_log/mod.rs).
                let log = self.prediction_log.as_ref().filter(|_| spec.log.sample());
                // Taken kept or not (`log_inputs`): the writer thread hashes them for the
                // record's `input_hash`, off the request path.
                let logged_inputs = log.map(|_| request.inputs.clone());
                let started = Instant::now();
                // Boxed: the fan-out's state is several KiB, and every future that holds it
                // inline (the front end's handler, the span, the metrics wrapper) would be
                // copied whole each time it moves, several times per request.
                // Online ensembles run with their current weights.
                let weighted = self.feedback.weighted(spec);
                // The shadow copy starts before the primary is awaited, on its own task.
                let shadow = shadow.as_ref().and_then(|shadow| {
                    self.shadows
                        .start(shadow, &request.inputs, request.timeout, &id)
                });
                let fan_out = ensemble::run(&self.router, &weighted, request.inputs, deadline, &id);
                let result = Box::pin(fan_out).await;
                if let (Some(shadow), Ok(answer)) = (shadow, &result) {
                    shadow.answered(&answer.outputs);
                }
                match &result {
                    Ok(_) => {
                        let elapsed = started.elapsed();
                        self.metrics.versions().answered(&spec.name, &spec.version);
                        self.stats.record_success(
                            &spec.name,
                            &spec.version,
                            rows,
                            elapsed,
                            started + elapsed,
                        )
                    }
                    Err(_) => {
                        self.stats
                            .record_failure(&spec.name, &spec.version, started.elapsed())
                    }
                }
                let answer = result?;
                self.feedback.record(spec, &id, &answer);
                let logged = log.map(|log| {
                    let entry = log_entry(spec, &id, logged_inputs, &answer, started.elapsed());
                    (log, entry)
                });
                let outputs = shape_outputs(answer.outputs, &request.outputs, target)?;
                // Only answers that reach the client are logged.
                if let Some((log, entry)) = logged {
                    log.offer(entry);
                }
                Ok(InferAnswer {
                    model_name: spec.name.clone(),
                    model_version: spec.version.clone(),
                    parameters: InferAnswer::member_parameters(&answer.report),
                    outputs,
                    members: Some(answer.report),
                    id,
                })
            }
            Target::Model { info, pinned, .. } => {
                let call = InferCall {
                    model: info.name.clone(),
                    version: pinned.clone(),
                    inputs: request.inputs,
                    outputs: request.outputs.iter().map(|o| o.name.clone()).collect(),
                    request_id: id.clone(),
                    trace_context: None,
                };
                let deadline = deadline(self.limits.model_deadline, request.timeout);
                // Boxed for the same reason as the fan-out above.
                let reply = Box::pin(self.router.call(call, deadline)).await.result?;
                Ok(InferAnswer {
                    model_name: info.name.clone(),
                    model_version: reply.version,
                    parameters: Vec::new(),
                    outputs: shape_outputs(reply.outputs, &request.outputs, target)?,
                    members: None,
                    id,
                })
            }
        }
    }

    /// Inputs against the signature, requested outputs (and their classification) against the
    /// outputs, and the inputs' size against what one worker call may carry.
    fn validate(&self, target: &Target, request: &InferRequest) -> Result<(), InferError> {
        if let Some(id) = &request.id
            && id.len() > MAX_REQUEST_ID_BYTES
        {
            return Err(InferError::bad_request(format!(
                "the request id is {} bytes long; send at most {MAX_REQUEST_ID_BYTES}",
                id.len()
            )));
        }
        let (name, signature) = (target.name(), target.signature());
        validate_inputs(name, &signature.inputs, &request.inputs, &signature.policy)?;
        let names: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
        validate_requested_outputs(name, &signature.outputs, &names)?;
        for output in &request.outputs {
            if let Some(k) = output.classification {
                let spec = signature
                    .outputs
                    .iter()
                    .find(|s| s.name == output.name)
                    .expect("requested outputs were checked against the signature");
                classification::check(name, spec, k)?;
            }
        }
        let input_bytes: usize = request.inputs.iter().map(|t| t.data.len()).sum();
        if input_bytes > self.limits.max_call_bytes {
            return Err(InferError::CallTooLarge {
                bytes: input_bytes,
                limit: self.limits.max_call_bytes,
            });
        }
        Ok(())
    }
}

/// The request's deadline: the server's, shortened by the client's limit if that is sooner
/// (so an absurd client value can never lengthen it).
pub fn deadline(server: Duration, client: Option<Duration>) -> Instant {
    Instant::now() + client.map_or(server, |c| c.min(server))
}

/// A prediction log entry for `answer`: clones of handles (tensor data is refcounted), the
/// request's front door and caller from [`REQUEST_CONTEXT`].
fn log_entry(
    spec: &Arc<EnsembleSpec>,
    id: &str,
    inputs: Option<Vec<Tensor>>,
    answer: &ensemble::EnsembleAnswer,
    latency: Duration,
) -> prediction_log::Entry {
    let (protocol, caller) = REQUEST_CONTEXT
        .try_with(|(protocol, caller)| (Some(*protocol), Some(caller.clone())))
        .unwrap_or_default();
    prediction_log::Entry {
        id: id.to_string(),
        time: std::time::SystemTime::now(),
        spec: Arc::clone(spec),
        protocol,
        caller,
        inputs,
        keep_inputs: spec.log.inputs,
        members: answer.members.clone(),
        outputs: answer.outputs.clone(),
        report: answer.report.clone(),
        latency,
    }
}

/// Picks and orders outputs (the requested ones in request order, or all of them), and turns
/// those asked for as classifications into their top classes.
fn shape_outputs(
    all: Vec<Tensor>,
    requested: &[RequestedOutput],
    target: &Target,
) -> Result<Vec<Tensor>, InferError> {
    let names: Vec<String> = requested.iter().map(|o| o.name.clone()).collect();
    let mut outputs = chorus_common::tensor::select_by_name(all, &names).map_err(|name| {
        InferError::Internal(format!(
            "the model did not produce requested output '{name}'"
        ))
    })?;
    for (output, asked) in outputs.iter_mut().zip(requested) {
        if let Some(k) = asked.classification {
            *output = classification::classify(output, k, &target.signature().labels)?;
        }
    }
    Ok(outputs)
}

#[cfg(test)]
mod ejection_tests;
#[cfg(test)]
mod shadow_tests;
#[cfg(test)]
mod tests;
