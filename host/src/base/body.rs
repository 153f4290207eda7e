//! The response body type the server sends: a complete buffer or a relayed stream.
//!
//! An enum rather than one boxed trait object: the common case (a complete JSON answer) costs
//! no allocation beyond its bytes; only a relayed stream is boxed (the relay is built by the
//! request path's respond phase, which this leaf knows nothing of).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

/// A body relayed as it arrives (a streamed answer).
pub type StreamingBody = Box<dyn Body<Data = Bytes, Error = Infallible> + Send + Unpin>;

/// Any body the gateway answers with.
pub enum GatewayBody {
    Full(Full<Bytes>),
    Stream(StreamingBody),
}

impl From<Bytes> for GatewayBody {
    fn from(b: Bytes) -> Self {
        GatewayBody::Full(Full::new(b))
    }
}

impl From<String> for GatewayBody {
    fn from(s: String) -> Self {
        GatewayBody::Full(Full::new(Bytes::from(s)))
    }
}

impl From<&'static str> for GatewayBody {
    fn from(s: &'static str) -> Self {
        GatewayBody::Full(Full::new(Bytes::from_static(s.as_bytes())))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            GatewayBody::Full(b) => Pin::new(b).poll_frame(cx),
            GatewayBody::Stream(s) => Pin::new(&mut **s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(b) => b.is_end_stream(),
            GatewayBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(b) => b.size_hint(),
            GatewayBody::Stream(s) => s.size_hint(),
        }
    }
}
