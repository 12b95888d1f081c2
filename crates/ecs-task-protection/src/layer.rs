//! A [tower] layer for HTTP services (axum, tonic, hyper): the task stays protected while any
//! request is in flight.
//!
//! [`ProtectionLayer`] takes a [`ProtectionGuard`] when a request arrives and keeps it until the
//! response has been sent: through the handler, and then through the whole response body, so a
//! streaming response (server-sent events, a gRPC stream, a large download) keeps the task
//! protected until its last frame is out or the client goes away. The manager coalesces the
//! guards: the first request of a busy period makes one protect call, later ones make none, and
//! protection is released (after the manager's hold-over) once no request is in flight.
//!
//! ```
//! use std::sync::Arc;
//! use ecs_task_protection::layer::ProtectionLayer;
//! use ecs_task_protection::protection::{local::LocalBackend, ProtectionManager, Settings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = ProtectionManager::start(Arc::new(LocalBackend::new()), Settings::default())?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/work", axum::routing::post(|| async { "done" }))
//!     .layer(ProtectionLayer::new(manager.clone()));
//! // axum::serve(listener, app).await?;
//! # drop(app);
//! # Ok(())
//! # }
//! ```
//!
//! [tower]: https://docs.rs/tower

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::protection::{ProtectionGuard, ProtectionManager};

/// Holds task protection for each in-flight request and its response body. See the
/// [module](self) docs.
#[derive(Debug, Clone)]
pub struct ProtectionLayer {
    manager: ProtectionManager,
}

impl ProtectionLayer {
    /// A layer whose requests hold protection through `manager`.
    pub fn new(manager: ProtectionManager) -> Self {
        Self { manager }
    }
}

impl<S> Layer<S> for ProtectionLayer {
    type Service = Protected<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Protected {
            inner,
            manager: self.manager.clone(),
        }
    }
}

/// The service [`ProtectionLayer`] wraps around yours.
#[derive(Debug, Clone)]
pub struct Protected<S> {
    inner: S,
    manager: ProtectionManager,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Protected<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<GuardedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // Taken before the inner service runs: the work the request starts is protected.
        let guard = self.manager.guard();
        ResponseFuture {
            inner: self.inner.call(request),
            guard: Some(guard),
        }
    }
}

pin_project! {
    /// The response future of [`Protected`]: holds the request's guard until the response is
    /// ready, then hands it to the response body.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<ProtectionGuard>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<GuardedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|body| GuardedBody { inner: body, guard })))
    }
}

pin_project! {
    /// A response body that keeps its request's protection until its last frame has been read
    /// (or it is dropped: the client went away).
    #[derive(Debug)]
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        guard: Option<ProtectionGuard>,
    }
}

impl<B: Body> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            // The body is complete: the request no longer needs protection.
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
