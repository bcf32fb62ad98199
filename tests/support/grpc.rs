//! A blocking client for the coordinator's gRPC service (the generated tonic client on a small
//! runtime of its own), and builders for `ModelInferRequest`s.

use chorus_coordinator::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use chorus_coordinator::grpc::proto::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use chorus_coordinator::grpc::proto::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelStreamInferResponse,
};
use std::net::SocketAddr;
use tonic::transport::Channel;

pub use chorus_coordinator::grpc::proto;
#[allow(unused_imports)]
pub use tonic::{Code, Status};

pub struct Grpc {
    runtime: tokio::runtime::Runtime,
    client: GrpcInferenceServiceClient<Channel>,
}

impl Grpc {
    pub fn connect(addr: SocketAddr) -> Grpc {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime
            .block_on(GrpcInferenceServiceClient::connect(format!(
                "http://{addr}"
            )))
            .expect("gRPC connect")
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        Grpc { runtime, client }
    }

    /// Runs `call` with a clone of the client on this client's runtime.
    pub fn with<T, F>(&self, call: impl FnOnce(GrpcInferenceServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        self.runtime.block_on(call(self.client.clone()))
    }

    pub fn infer(&self, request: ModelInferRequest) -> Result<ModelInferResponse, Status> {
        self.infer_with(tonic::Request::new(request))
    }

    pub fn infer_with(
        &self,
        request: tonic::Request<ModelInferRequest>,
    ) -> Result<ModelInferResponse, Status> {
        self.with(|mut c| async move { c.model_infer(request).await.map(|r| r.into_inner()) })
    }

    /// Sends `requests` on one stream and collects every answer until the server ends it (the
    /// stream's final status, if not OK, comes last as an error).
    pub fn stream(
        &self,
        requests: Vec<ModelInferRequest>,
    ) -> Result<Vec<Result<ModelStreamInferResponse, Status>>, Status> {
        self.with(|mut c| async move {
            let mut answers = c
                .model_stream_infer(futures::stream::iter(requests))
                .await?
                .into_inner();
            let mut all = Vec::new();
            loop {
                match answers.message().await {
                    Ok(Some(answer)) => all.push(Ok(answer)),
                    Ok(None) => return Ok(all),
                    Err(status) => {
                        all.push(Err(status));
                        return Ok(all);
                    }
                }
            }
        })
    }
}

/// A request for `model` with one FP32 input `input` of `rows`, as raw contents.
pub fn raw_request(model: &str, rows: &[Vec<f32>]) -> ModelInferRequest {
    let raw: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let width = rows.first().map_or(0, Vec::len);
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input(
            "input",
            "FP32",
            vec![rows.len() as i64, width as i64],
            None,
        )],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

/// The same request with typed `fp32_contents`.
pub fn typed_request(model: &str, rows: &[Vec<f32>]) -> ModelInferRequest {
    let width = rows.first().map_or(0, Vec::len);
    let contents = InferTensorContents {
        fp32_contents: rows.iter().flatten().copied().collect(),
        ..Default::default()
    };
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input(
            "input",
            "FP32",
            vec![rows.len() as i64, width as i64],
            Some(contents),
        )],
        ..Default::default()
    }
}

pub fn input(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
    contents: Option<InferTensorContents>,
) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        parameters: Default::default(),
        contents,
    }
}

pub fn output(name: &str) -> InferRequestedOutputTensor {
    InferRequestedOutputTensor {
        name: name.into(),
        parameters: Default::default(),
    }
}

/// An output's raw bytes by name.
pub fn raw_output<'a>(response: &'a ModelInferResponse, name: &str) -> &'a [u8] {
    let index = response
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name} in {:?}", response.outputs));
    &response.raw_output_contents[index]
}

/// A response parameter as text (`"true"` for booleans), or `None`.
pub fn parameter(response: &ModelInferResponse, name: &str) -> Option<String> {
    use proto::infer_parameter::ParameterChoice;
    match response.parameters.get(name)?.parameter_choice.as_ref()? {
        ParameterChoice::BoolParam(b) => Some(b.to_string()),
        ParameterChoice::StringParam(s) => Some(s.clone()),
        ParameterChoice::Int64Param(n) => Some(n.to_string()),
        ParameterChoice::Uint64Param(n) => Some(n.to_string()),
        ParameterChoice::DoubleParam(n) => Some(n.to_string()),
    }
}
