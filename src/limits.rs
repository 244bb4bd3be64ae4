//! The edge of the gateway: how long and how much a client may make it wait for or
//! hold, before any handler runs. Every request passes [`guard`]: headers past
//! `server.max_header_bytes` are refused (431); its body, whoever reads it (intake's
//! reader or actix's extractors), must arrive within `server.body_timeout_ms` and at no
//! less than `server.body_min_bytes_per_second` (otherwise 408 and the connection is
//! closed); and any error answer that is not already FHIR (actix's own, in plain text)
//! becomes an OperationOutcome. The deadlines on the connection itself (request head,
//! keep-alive, shutdown, TLS handshake) and the cap on connections are actix's, set in
//! [`crate::startup`]; a request whose handler has not answered within
//! `server.handler_timeout_ms` is answered 503.

use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use actix_web::{
    ResponseError as _,
    body::{BodySize, BoxBody, MessageBody},
    dev::{Payload, ServiceRequest, ServiceResponse},
    error::PayloadError,
    http::{StatusCode, header},
    middleware::Next,
    web::{self, Bytes},
};
use futures_util::Stream;
use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

/// What every request is held to, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest a body may take, from its first read.
    pub body_timeout: Duration,
    /// The slowest average rate a body may arrive at after [`RATE_GRACE`]; 0: any.
    pub body_min_bytes_per_second: u64,
    /// The largest total of header names and values.
    pub max_header_bytes: usize,
    /// The longest a request is worked on, body included.
    pub handler_timeout: Duration,
}

impl Limits {
    pub fn from_settings(server: &crate::config::ServerSettings) -> Self {
        Self {
            body_timeout: Duration::from_millis(server.body_timeout_ms),
            body_min_bytes_per_second: server.body_min_bytes_per_second,
            max_header_bytes: server.max_header_bytes,
            handler_timeout: Duration::from_millis(server.handler_timeout_ms),
        }
    }
}

/// The minimum rate is not held against a body in its first second: a connection
/// that has just opened may take a moment to speed up.
pub const RATE_GRACE: Duration = Duration::from_secs(1);

/// Refuses oversized headers, puts the body on its deadline, and makes every error
/// answer an OperationOutcome. The development sandbox, which stands in for a
/// provider's system and its OAuth token endpoint, keeps its own error bodies.
pub async fn guard(
    limits: web::Data<Limits>,
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<Holding>, actix_web::Error> {
    let (_, payload) = req.parts_mut();
    let request_body = Rc::new(RefCell::new(std::mem::replace(payload, Payload::None)));
    let hold = |res: ServiceResponse<BoxBody>| {
        res.map_body(|_, body| Holding {
            body,
            _request_body: request_body.clone(),
        })
    };
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        tracing::warn!(
            header_bytes,
            limit = limits.max_header_bytes,
            "request headers too large; answering 431"
        );
        let rejection = Rejection::one(Issue::new(
            RecCode::HeadersTooLarge,
            IssueType::TooLong,
            format!(
                "the request headers are larger than the {} bytes the gateway accepts",
                limits.max_header_bytes
            ),
        ));
        return Ok(hold(req.error_response(rejection)));
    }
    let expired = Rc::new(Cell::new(false));
    req.set_payload(Payload::Stream {
        payload: Box::pin(Deadlined::new(
            request_body.clone(),
            **limits,
            expired.clone(),
        )),
    });
    // (Handlers' and extractors' errors arrive as responses; an `Err` here would come
    // from a middleware inside this one, of which there is none.)
    // (No clone of the request may be held here: routing needs it to itself. The
    // request's span, around this, names the route.)
    let res = match tokio::time::timeout(limits.handler_timeout, next.call(req)).await {
        Ok(res) => res?.map_into_boxed_body(),
        Err(_) => {
            // Dropping the handler rolls back whatever transaction it had open, so
            // nothing it did stands and the client may send again. The error is
            // answered by actix as the Rejection's own response.
            tracing::error!(
                limit_ms = limits.handler_timeout.as_millis(),
                "request not answered within server.handler_timeout_ms; answering 503"
            );
            return Err(Rejection::one(Issue::new(
                RecCode::ServiceUnavailable,
                IssueType::Transient,
                "the gateway could not finish this request in time; send it again after the \
                 Retry-After interval, with the same X-Request-Id",
            ))
            .into());
        }
    };
    let status = res.status();
    let failed = status.is_client_error() || status.is_server_error();
    if expired.get() && failed && status != StatusCode::REQUEST_TIMEOUT {
        // The body was cut off: whatever the reader made of that (actix's extractors
        // call it a 400), the client is told it was too slow.
        let (http_req, _) = res.into_parts();
        return Ok(hold(ServiceResponse::new(
            http_req,
            too_slow().error_response(),
        )));
    }
    // The sandbox stands in for others' systems; the console answers people in HTML.
    let path = res.request().path();
    let own_format = path.starts_with("/sandbox/") || path.starts_with("/console");
    let is_fhir = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/fhir+json"));
    if !failed || is_fhir || own_format {
        return Ok(hold(res));
    }
    let (http_req, res) = res.into_parts();
    Ok(hold(ServiceResponse::new(http_req, as_outcome(res))))
}

/// A response body that keeps the request's body alive until the response is sent. An
/// HTTP/1 connection whose request body was not read to its end is then closed after
/// the answer (actix's rule for an unread body still held), rather than kept open to
/// drain a chunked body that may never end.
pub struct Holding {
    body: BoxBody,
    _request_body: Rc<RefCell<Payload>>,
}

impl MessageBody for Holding {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// An error answer as an OperationOutcome of its status ([`crate::outcome::for_status`]),
/// keeping the headers it set but its body's.
fn as_outcome<B>(res: actix_web::HttpResponse<B>) -> actix_web::HttpResponse {
    let mut out = crate::outcome::for_status(res.status()).error_response();
    for (name, value) in res.headers() {
        if name != header::CONTENT_TYPE
            && name != header::CONTENT_LENGTH
            && !out.headers().contains_key(name)
        {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

/// The answer to a body that missed its deadline, whoever was reading it.
pub fn too_slow() -> Rejection {
    Rejection::one(Issue::new(
        RecCode::Timeout,
        IssueType::Timeout,
        "the request body did not arrive within the time the gateway waits for it \
         (server.body_timeout_ms, server.body_min_bytes_per_second)",
    ))
}

/// A request body on its deadline: from the first read, it must end within
/// `body_timeout`, and after [`RATE_GRACE`] have arrived at `body_min_bytes_per_second`
/// on average. A body that falls behind ends in an error (`TimedOut`), and `expired`
/// is set for [`guard`]. Time the handler spends not reading is not held against it:
/// the deadline only bites while the reader waits on the client.
struct Deadlined {
    body: Rc<RefCell<Payload>>,
    limits: Limits,
    started: Option<Instant>,
    received: u64,
    timer: Pin<Box<Sleep>>,
    expired: Rc<Cell<bool>>,
}

impl Deadlined {
    fn new(body: Rc<RefCell<Payload>>, limits: Limits, expired: Rc<Cell<bool>>) -> Self {
        Self {
            body,
            limits,
            started: None,
            received: 0,
            timer: Box::pin(tokio::time::sleep(limits.body_timeout)),
            expired,
        }
    }

    /// When the body, `received` bytes in, is late.
    fn deadline(&self, started: Instant) -> Instant {
        let total = started + self.limits.body_timeout;
        match self.limits.body_min_bytes_per_second {
            0 => total,
            rate => {
                let earned = Duration::from_secs_f64(self.received as f64 / rate as f64);
                total.min(started + earned.max(RATE_GRACE))
            }
        }
    }
}

/// What a reader of an expired body sees.
pub fn body_timed_out() -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the request body did not arrive in time",
    ))
}

/// Whether a body read failed because the body missed its deadline.
pub fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

impl Stream for Deadlined {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.expired.get() {
            return Poll::Ready(Some(Err(body_timed_out())));
        }
        let started = match this.started {
            Some(started) => started,
            None => {
                let now = Instant::now();
                this.started = Some(now);
                let deadline = this.deadline(now);
                this.timer.as_mut().reset(deadline);
                now
            }
        };
        let polled = Pin::new(&mut *this.body.borrow_mut()).poll_next(cx);
        match polled {
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                let deadline = this.deadline(started);
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    tracing::warn!(
                        received = this.received,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "request body too slow; answering 408 and closing the connection"
                    );
                    this.expired.set(true);
                    Poll::Ready(Some(Err(body_timed_out())))
                } else {
                    Poll::Pending
                }
            }
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u64) -> Limits {
        Limits {
            handler_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            body_min_bytes_per_second: rate,
            max_header_bytes: 1024,
        }
    }

    #[tokio::test]
    async fn the_deadline_follows_the_rate_after_the_grace_and_never_passes_the_total() {
        let mut body = Deadlined::new(
            Rc::new(RefCell::new(Payload::None)),
            limits(1000),
            Rc::default(),
        );
        let start = Instant::now();
        // Nothing yet: the grace.
        assert_eq!(body.deadline(start), start + RATE_GRACE);
        // 3000 bytes buy 3 s at 1000 B/s.
        body.received = 3000;
        assert_eq!(body.deadline(start), start + Duration::from_secs(3));
        // But never more than the total.
        body.received = 1_000_000;
        assert_eq!(body.deadline(start), start + Duration::from_secs(10));
        // No minimum rate: only the total.
        let body = Deadlined::new(
            Rc::new(RefCell::new(Payload::None)),
            limits(0),
            Rc::default(),
        );
        assert_eq!(body.deadline(start), start + Duration::from_secs(10));
    }
}
