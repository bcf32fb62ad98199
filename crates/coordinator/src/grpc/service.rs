//! `inference.GRPCInferenceService` on the inference core: each method decodes, asks the core,
//! and encodes; failures go through the one gRPC status table (`status.rs`).

use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::{self, ModelInferRequest, ModelInferResponse};
use super::{decode, encode, status, stream};
use crate::access::{Caller, PresentedCredentials};
use crate::infer::{Infer, InferError, Protocol, SERVER_EXTENSIONS, SERVER_NAME};
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// The service: a handle on the core, and the message limit to name in errors.
#[derive(Clone)]
pub struct Service {
    app: Arc<Infer>,
}

impl Service {
    pub fn new(app: Arc<Infer>) -> Self {
        Service { app }
    }
}

/// `""` means "not given" in proto3 strings.
fn optional(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Serves one infer request inside the core's observation; `deadline` is what the gRPC
/// deadline leaves the core (for a stream: what is left of the stream's), or why the deadline
/// header was refused (the refusal is counted like any other).
pub async fn infer(
    app: &Infer,
    credentials: &PresentedCredentials,
    trace: chorus_common::trace::Incoming<'_>,
    message: ModelInferRequest,
    deadline: Result<Option<Duration>, InferError>,
) -> Result<crate::infer::InferAnswer, InferError> {
    let model = message.model_name.clone();
    let name = model.as_str();
    let work = |caller| async move {
        let deadline = deadline?;
        // The decoded message counts against the in-flight byte budget until answered.
        let mut reserved = crate::admission::Reserved::default();
        app.reserve_bytes(&mut reserved, prost::Message::encoded_len(&message))
            .await?;
        let target = app.resolve_admissible(&caller, name, optional(&message.model_version))?;
        let request = decode::request(message, deadline)?;
        app.infer(&target, request).await
    };
    app.observed(Protocol::Grpc, &model, credentials.borrowed(), trace, work)
        .await
}

/// The API key a call presented, in the same metadata names REST uses as headers
/// (`authorization: Bearer <key>`, `x-api-key`).
pub fn credentials(metadata: &MetadataMap) -> PresentedCredentials {
    let text = |name: &str| {
        metadata
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    PresentedCredentials {
        authorization: text("authorization"),
        api_key: text("x-api-key"),
    }
}

/// The client's W3C trace context, in the metadata names REST uses as headers; looked up only
/// when traces are exported.
fn trace_context(metadata: &MetadataMap) -> chorus_common::trace::Incoming<'_> {
    use chorus_common::trace::{self, Incoming};
    if !trace::enabled() {
        return Incoming::default();
    }
    let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    Incoming {
        traceparent: text(trace::TRACEPARENT),
        tracestate: text(trace::TRACESTATE),
    }
}

/// The caller of a call other than inference, which may see `model` (when it names one).
pub(super) fn authorized<T>(
    app: &Infer,
    request: &Request<T>,
    model: Option<&str>,
) -> Result<Caller, Status> {
    let caller = app.authenticate(credentials(request.metadata()).borrowed())?;
    if let Some(model) = model {
        caller.authorize(model)?;
    }
    Ok(caller)
}

/// The core's time for a request: what the `grpc-timeout` header allows, less the reserve.
fn deadline_of<T>(request: &Request<T>) -> Result<Option<Duration>, InferError> {
    Ok(status::grpc_timeout(request.metadata())?.map(status::core_timeout))
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        Ok(Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        Ok(Response::new(proto::ServerReadyResponse {
            ready: self.app.server_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.app.model_ready(&r.name, optional(&r.version))?;
        Ok(Response::new(proto::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        authorized(&self.app, &request, None)?;
        Ok(Response::new(proto::ServerMetadataResponse {
            name: SERVER_NAME.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: SERVER_EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        authorized(&self.app, &request, Some(&request.get_ref().name))?;
        let r = request.into_inner();
        let metadata = self.app.model_metadata(&r.name, optional(&r.version))?;
        Ok(Response::new(encode::metadata(metadata)))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = deadline_of(&request);
        let credentials = credentials(request.metadata());
        let (metadata, _, message) = request.into_parts();
        let trace = trace_context(&metadata);
        let answer = infer(&self.app, &credentials, trace, message, deadline).await?;
        Ok(Response::new(encode::answer(answer)))
    }

    type ModelStreamInferStream = stream::AnswerStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let deadline = deadline_of(&request)?;
        // A stream without a valid key is refused as it opens; each request on it is still
        // checked against its model (and counted) as a unary call is.
        authorized(&self.app, &request, None)?;
        let credentials = credentials(request.metadata());
        // The stream's `traceparent`, the parent of each message's trace (stream.rs).
        let trace = trace_context(request.metadata()).to_owned();
        let limit = self.app.limits().max_request_bytes;
        Ok(Response::new(stream::serve(
            Arc::clone(&self.app),
            credentials,
            trace,
            request.into_inner(),
            deadline,
            limit,
        )))
    }

    async fn model_config(
        &self,
        request: Request<proto::ModelConfigRequest>,
    ) -> Result<Response<proto::ModelConfigResponse>, Status> {
        authorized(&self.app, &request, Some(&request.get_ref().name))?;
        let r = request.into_inner();
        let config = self.app.model_config(&r.name, optional(&r.version))?;
        Ok(Response::new(encode::config(config)))
    }

    async fn model_statistics(
        &self,
        request: Request<proto::ModelStatisticsRequest>,
    ) -> Result<Response<proto::ModelStatisticsResponse>, Status> {
        let name = optional(&request.get_ref().name).map(str::to_string);
        let caller = authorized(&self.app, &request, name.as_deref())?;
        let r = request.into_inner();
        let mut stats = self
            .app
            .statistics(optional(&r.name), optional(&r.version))?;
        stats.retain(|s| caller.may_use(&s.name));
        Ok(Response::new(encode::statistics(stats)))
    }

    async fn repository_index(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> Result<Response<proto::RepositoryIndexResponse>, Status> {
        let caller = authorized(&self.app, &request, None)?;
        let r = request.into_inner();
        let mut index = self.app.repository_index(r.ready);
        index.retain(|entry| caller.may_use(&entry.name));
        Ok(Response::new(encode::index(index)))
    }
}
