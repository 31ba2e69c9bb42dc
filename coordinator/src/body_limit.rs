//! Request size caps per method. tonic has one decoding limit per service, sized for the
//! largest legitimate message (a project upload); this middleware gives every other method
//! the cap its messages need, and stops reading a body the moment it passes its cap, so a
//! heartbeat cannot make the coordinator buffer hundreds of megabytes. The refusal is a
//! `RESOURCE_EXHAUSTED` status naming the method and the cap.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body, Frame, SizeHint};

/// The caps, in bytes of request body (gRPC framing included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// `SubmitProject` and `ExtendProject`: the whole project, or the units added to it
    /// (`CoordinatorConfig::max_message_bytes`).
    pub upload: usize,
    /// `SubmitCertificate` and `SubmitCertificates`: an output of up to 64 MiB plus its
    /// claims.
    pub certificate: usize,
    /// Everything else: keys, claims, unit ids (`ReturnUnits` and heartbeats list at most
    /// a few thousand units).
    pub other: usize,
}

/// Room beside a certificate's output for its claims (at most 64 of ~250 bytes) and
/// framing.
const CERTIFICATE_CLAIMS_ROOM: usize = 1 << 20;

impl Caps {
    /// The caps for a coordinator accepting messages of up to `max_message_bytes`.
    pub(crate) fn new(max_message_bytes: usize) -> Caps {
        Caps {
            upload: max_message_bytes,
            certificate: (protocol::limits::MAX_OUTPUT_RANGE.1 as usize + CERTIFICATE_CLAIMS_ROOM)
                .min(max_message_bytes),
            other: (4 << 20).min(max_message_bytes),
        }
    }

    /// The cap for a request to `path` (`/fallow.v1.Coordinator/Method`).
    pub(crate) fn for_path(&self, path: &str) -> usize {
        match path.rsplit('/').next() {
            Some("SubmitProject" | "ExtendProject") => self.upload,
            // One data file streamed in chunks, with room for the framing of small chunks;
            // the handler holds the file to the size its first message announces.
            Some("PutData") => {
                (protocol::data::MAX_FILE_BYTES + protocol::data::MAX_FILE_BYTES / 8) as usize
            }
            // A batch: the worker packs outputs of at most 1 MiB together, and sends a
            // larger one alone.
            Some("SubmitCertificate" | "SubmitCertificates") => self.certificate,
            _ => self.other,
        }
    }
}

/// The axum middleware: wraps the request body in a [`Capped`] body for its method.
pub(crate) async fn cap_body(
    State(caps): State<Arc<Caps>>,
    request: Request,
    next: Next,
) -> Response {
    let limit = caps.for_path(request.uri().path());
    let method = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let request = request.map(|inner| {
        axum::body::Body::new(Capped {
            inner,
            read: 0,
            limit,
            method,
        })
    });
    next.run(request).await
}

/// A body that fails with `RESOURCE_EXHAUSTED` once more than `limit` bytes came in.
struct Capped {
    inner: axum::body::Body,
    read: usize,
    limit: usize,
    method: String,
}

impl Body for Capped {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read = this.read.saturating_add(data.len());
                    if this.read > this.limit {
                        return Poll::Ready(Some(Err(Box::new(crate::service::to_status(
                            crate::Error::TooLarge {
                                method: if this.method.is_empty() {
                                    "gRPC".to_string()
                                } else {
                                    this.method.clone()
                                },
                                limit: this.limit,
                            },
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_gets_its_cap() {
        let caps = Caps::new(256 << 20);
        assert_eq!(
            caps.for_path("/fallow.v1.Coordinator/SubmitProject"),
            256 << 20
        );
        assert_eq!(
            caps.for_path("/fallow.v1.Coordinator/SubmitCertificate"),
            (64 << 20) + (1 << 20)
        );
        assert_eq!(
            caps.for_path("/fallow.v1.Coordinator/SubmitCertificates"),
            caps.for_path("/fallow.v1.Coordinator/SubmitCertificate")
        );
        assert_eq!(
            caps.for_path("/fallow.v1.Coordinator/ExtendProject"),
            caps.for_path("/fallow.v1.Coordinator/SubmitProject")
        );
        assert_eq!(caps.for_path("/fallow.v1.Coordinator/Heartbeat"), 4 << 20);
        assert_eq!(caps.for_path("/"), 4 << 20);
        // Never above the service-wide limit.
        let small = Caps::new(2 << 20);
        assert_eq!(
            small.for_path("/fallow.v1.Coordinator/SubmitCertificate"),
            2 << 20
        );
        assert_eq!(small.for_path("/fallow.v1.Coordinator/Heartbeat"), 2 << 20);
    }
}
