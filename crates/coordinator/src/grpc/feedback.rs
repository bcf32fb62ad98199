//! `chorus.v1.Feedback/SubmitFeedback` (proto/feedback.proto): the gRPC twin of REST feedback,
//! on the same port as `inference.GRPCInferenceService`, authorized like `ModelInfer` and
//! answered by the same core ([`crate::feedback::submit`]), so both doors count alike.
//!
//! The two services share the port through [`Dispatch`], a path-prefix switch: the gRPC server
//! is hyper's HTTP/2 connection serving one tower service (see `serve` in mod.rs), not tonic's
//! router.

use super::feedback_proto::feedback_server::{self, FeedbackServer};
use super::feedback_proto::{SubmitFeedbackRequest, SubmitFeedbackResponse};
use super::service::authorized;
use crate::feedback::Item;
use crate::infer::{Infer, InferError};
use futures::future::Either;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codec::CompressionEncoding;
use tonic::codegen::http;
use tonic::{Request, Response, Status};

/// Every method of the feedback service is under this path.
const FEEDBACK_PATH: &str = "/chorus.v1.Feedback/";

/// The feedback service: a handle on the inference core.
#[derive(Clone)]
pub struct Service {
    app: Arc<Infer>,
}

/// The service as tonic serves it, with the same message limit and compression as inference.
pub fn server(app: Arc<Infer>, limit: usize) -> FeedbackServer<Service> {
    FeedbackServer::new(Service { app })
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .accept_compressed(CompressionEncoding::Zstd)
}

/// The items of a request, or what is wrong with the first bad one (the REST messages).
fn items(request: SubmitFeedbackRequest) -> Result<Vec<Item>, InferError> {
    let bad = |i: usize, m: &str| InferError::BadRequest(format!("feedback item {i}: {m}"));
    request
        .items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if item.id.is_empty() {
                return Err(bad(
                    i,
                    "`id` must be the request id answered (a non-empty string)",
                ));
            }
            if item.labels.is_empty() {
                return Err(bad(i, "`labels` must hold the true class of each row"));
            }
            if item.labels.iter().any(|label| *label < 0) {
                return Err(bad(i, "`labels` must be class indices (integers ≥ 0)"));
            }
            Ok(Item {
                id: item.id,
                labels: item.labels,
            })
        })
        .collect()
}

#[tonic::async_trait]
impl feedback_server::Feedback for Service {
    async fn submit_feedback(
        &self,
        request: Request<SubmitFeedbackRequest>,
    ) -> Result<Response<SubmitFeedbackResponse>, Status> {
        authorized(&self.app, &request, Some(&request.get_ref().model_name))?;
        let request = request.into_inner();
        let name = request.model_name.clone();
        let counts = crate::feedback::submit(&self.app, &name, items(request)).await?;
        Ok(Response::new(SubmitFeedbackResponse {
            accepted: counts.accepted,
            unknown: counts.unknown,
            duplicate: counts.duplicate,
            invalid: counts.invalid,
            frozen: counts.frozen,
            relayed: counts.relayed,
            relay_failed: counts.relay_failed,
        }))
    }
}

/// Sends feedback calls to `feedback` and every other call to `inference`.
#[derive(Clone)]
pub struct Dispatch<A, B> {
    inference: A,
    feedback: B,
}

impl<A, B> Dispatch<A, B> {
    pub fn new(inference: A, feedback: B) -> Self {
        Dispatch {
            inference,
            feedback,
        }
    }
}

impl<A, B, Body> tower::Service<http::Request<Body>> for Dispatch<A, B>
where
    A: tower::Service<http::Request<Body>>,
    B: tower::Service<http::Request<Body>, Response = A::Response, Error = A::Error>,
{
    type Response = A::Response;
    type Error = A::Error;
    type Future = Either<A::Future, B::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // tonic's generated servers are always ready; ask both anyway, as tower requires.
        match self.inference.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.feedback.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path().starts_with(FEEDBACK_PATH) {
            Either::Right(self.feedback.call(request))
        } else {
            Either::Left(self.inference.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::feedback_proto::FeedbackItem;

    fn request(items: Vec<(&str, Vec<i64>)>) -> SubmitFeedbackRequest {
        SubmitFeedbackRequest {
            model_name: "e".into(),
            items: items
                .into_iter()
                .map(|(id, labels)| FeedbackItem {
                    id: id.into(),
                    labels,
                })
                .collect(),
        }
    }

    #[test]
    fn items_are_checked_like_rest_bodies() {
        let ok = items(request(vec![("a", vec![1, 2])])).unwrap();
        assert_eq!(
            ok,
            vec![Item {
                id: "a".into(),
                labels: vec![1, 2]
            }]
        );
        let message = |r| items(r).unwrap_err().to_string();
        assert!(message(request(vec![("", vec![1])])).contains("`id`"));
        assert!(message(request(vec![("a", vec![1]), ("b", vec![])])).contains("item 1"));
        assert!(message(request(vec![("a", vec![-1])])).contains("class indices"));
    }
}
