//! `ModelStreamInfer`, as Triton serves it: many requests on one bidirectional stream, each
//! answered on its own, in the order they finish, with its id (errors too). One task per stream
//! reads requests and runs up to [`MAX_IN_FLIGHT`] of them at once; when that many are running
//! it stops reading, so HTTP/2 flow control pushes back on the client. A client that cancels the
//! stream drops the task, and with it every member call still running.
//!
//! Traces: a stream opened with a `traceparent` (and `tracestate`) in its metadata is one trace,
//! each message's request span a child of that parent; without one, each message starts a trace
//! of its own, as a unary call does.

use super::proto::{ModelInferRequest, ModelStreamInferResponse};
use super::{encode, service, status};
use crate::access::PresentedCredentials;
use crate::infer::Infer;
use chorus_common::trace::TraceContext;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Requests of one stream running at once. It bounds what one stream may hold in memory (each
/// request at most the message limit) while keeping a single-stream benchmark busy.
pub const MAX_IN_FLIGHT: usize = 128;

/// Answers waiting to be written to the client.
const ANSWER_BUFFER: usize = 64;

/// The stream of answers tonic writes to the client.
pub type AnswerStream =
    Pin<Box<dyn futures::Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

/// Starts serving `requests`; `trace` is the stream's trace context (`None` without one, or with
/// traces off); `deadline` is what the stream's gRPC deadline leaves the core, shared by every
/// request on it; `limit` is the message limit, named in size errors.
pub fn serve(
    app: Arc<Infer>,
    credentials: PresentedCredentials,
    trace: Option<TraceContext>,
    requests: Streaming<ModelInferRequest>,
    deadline: Option<Duration>,
    limit: usize,
) -> AnswerStream {
    let (answers, outbound) = mpsc::channel(ANSWER_BUFFER);
    let ends = deadline.map(|d| Instant::now() + d);
    tokio::spawn(drive(
        app,
        Arc::new(credentials),
        trace.map(Arc::new),
        requests,
        answers,
        ends,
        limit,
    ));
    Box::pin(ReceiverStream::new(outbound))
}

async fn drive(
    app: Arc<Infer>,
    credentials: Arc<PresentedCredentials>,
    trace: Option<Arc<TraceContext>>,
    mut requests: Streaming<ModelInferRequest>,
    answers: mpsc::Sender<Result<ModelStreamInferResponse, Status>>,
    ends: Option<Instant>,
    limit: usize,
) {
    let mut running = FuturesUnordered::new();
    let mut reading = true;
    // A broken request frame ends the stream, once the requests already running have answered.
    let mut broken: Option<Status> = None;
    loop {
        if !reading && running.is_empty() {
            if let Some(status) = broken {
                let _ = answers.send(Err(status)).await;
            }
            return;
        }
        tokio::select! {
            // The client cancelled or went away: dropping `running` cancels every call.
            _ = answers.closed() => return,
            Some(answer) = running.next(), if !running.is_empty() => {
                if answers.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
            next = requests.message(), if reading && running.len() < MAX_IN_FLIGHT => match next {
                Ok(Some(message)) => {
                    let left = ends.map(|ends| ends.saturating_duration_since(Instant::now()));
                    running.push(answer_one(Arc::clone(&app), Arc::clone(&credentials), trace.clone(), message, left));
                }
                Ok(None) => reading = false,
                Err(error) => {
                    reading = false;
                    broken = Some(status::remap_decode_error(error, limit));
                }
            },
        }
    }
}

async fn answer_one(
    app: Arc<Infer>,
    credentials: Arc<PresentedCredentials>,
    trace: Option<Arc<TraceContext>>,
    message: ModelInferRequest,
    deadline: Option<Duration>,
) -> ModelStreamInferResponse {
    let (model, version, id) = (
        message.model_name.clone(),
        message.model_version.clone(),
        message.id.clone(),
    );
    let result = service::infer(
        &app,
        &credentials,
        trace
            .as_deref()
            .map(TraceContext::incoming)
            .unwrap_or_default(),
        message,
        Ok(deadline),
    )
    .await;
    encode::stream_answer(result, model, version, id)
}
