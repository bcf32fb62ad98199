//! `inference.GRPCInferenceService` on the inference core: each method decodes, asks the core,
//! and encodes; failures go through the one gRPC status table (`status.rs`).

use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::{self, ModelInferRequest, ModelInferResponse};
use super::{decode, encode, status, stream};
use crate::infer::{Infer, InferError, Protocol, SERVER_EXTENSIONS, SERVER_NAME};
use std::sync::Arc;
use std::time::Duration;
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
    message: ModelInferRequest,
    deadline: Result<Option<Duration>, InferError>,
) -> Result<crate::infer::InferAnswer, InferError> {
    let model = message.model_name.clone();
    let work = async {
        let deadline = deadline?;
        let target = app.resolve(&model, optional(&message.model_version))?;
        let request = decode::request(message, deadline)?;
        app.infer(&target, request).await
    };
    app.observed(Protocol::Grpc, &model, work).await
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
        _: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
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
        let r = request.into_inner();
        let metadata = self.app.model_metadata(&r.name, optional(&r.version))?;
        Ok(Response::new(encode::metadata(metadata)))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = deadline_of(&request);
        let answer = infer(&self.app, request.into_inner(), deadline).await?;
        Ok(Response::new(encode::answer(answer)))
    }

    type ModelStreamInferStream = stream::AnswerStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let deadline = deadline_of(&request)?;
        let limit = self.app.limits().max_request_bytes;
        Ok(Response::new(stream::serve(
            Arc::clone(&self.app),
            request.into_inner(),
            deadline,
            limit,
        )))
    }

    async fn model_config(
        &self,
        request: Request<proto::ModelConfigRequest>,
    ) -> Result<Response<proto::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let config = self.app.model_config(&r.name, optional(&r.version))?;
        Ok(Response::new(encode::config(config)))
    }

    async fn model_statistics(
        &self,
        request: Request<proto::ModelStatisticsRequest>,
    ) -> Result<Response<proto::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let stats = self
            .app
            .statistics(optional(&r.name), optional(&r.version))?;
        Ok(Response::new(encode::statistics(stats)))
    }

    async fn repository_index(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> Result<Response<proto::RepositoryIndexResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(encode::index(
            self.app.repository_index(r.ready),
        )))
    }
}
