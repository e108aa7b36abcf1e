//! The HTTP API v1 (DESIGN §4) over axum: routing, body limits, the mapping of every error to a
//! response (in one place: [`ServiceError`]'s `IntoResponse`), metrics, graceful shutdown.
//!
//! Nothing here logs or returns an identifier, a key, a token or a client address: rejections are
//! the uniform `403 {"error":"rejected"}`, malformed input a problem document naming the field.

use crate::federation::{BatchBody, ReceiveError};
use crate::metrics::{ENDPOINTS, Gauges};
use crate::service::{Service, ServiceError};
use crate::storage::Storage;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use robert_proto::api::{
    AuthRequestBody, RegisterRequest, RejectedBody, ReportRequest, ReportResponse, ResetRequestBody,
    ServerKeyResponse, b64_encode,
};
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The OpenAPI document served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// A problem document (RFC 9457) for malformed requests.
#[derive(Debug, Serialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

fn problem(status: StatusCode, title: &'static str, detail: String, field: Option<String>) -> Response {
    let body = Problem { kind: "about:blank", title, status: status.as_u16(), detail, field };
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        match self {
            ServiceError::Rejected => (StatusCode::FORBIDDEN, Json(RejectedBody::default())).into_response(),
            ServiceError::BadRequest { field, reason } => {
                problem(StatusCode::BAD_REQUEST, "Bad Request", reason, Some(field.to_owned()))
            }
            ServiceError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                    "internal error".into(),
                    None,
                )
            }
        }
    }
}

/// A JSON body whose rejections are problem documents that never echo a value. The body is read
/// whole (within `server.max_body_bytes`) and parsed once with `serde_json`; only a body that
/// fails is parsed again, tracking the path, to name the field (axum's `Json` tracks the path on
/// every request).
struct ApiJson<T>(T);

impl<T, St> FromRequest<St> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    St: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
                "expected Content-Type: application/json".into(),
                None,
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                problem(rejection.status(), "Payload Too Large", "request body too large".into(), None)
            } else {
                problem(
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    "could not read the request body".into(),
                    None,
                )
            }
        })?;
        serde_json::from_slice(&bytes).map(Self).map_err(|_| json_problem::<T>(&bytes))
    }
}

/// `application/json`, or `application/<anything>+json`, as axum's `Json` accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else { return false };
    // A header value that converts to `str` is visible ASCII: byte offsets are char boundaries.
    let suffix = sub.len().checked_sub(5).filter(|&n| n > 0).map(|n| &sub[n..]);
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || suffix.is_some_and(|t| t.eq_ignore_ascii_case("+json")))
}

/// The problem document of a body that is not valid JSON for `T`: it names the field where
/// parsing failed (its path, as `contacts[2].hello`), never a value (serde's own messages can
/// quote one, so they are not passed on).
fn json_problem<T: serde::de::DeserializeOwned>(body: &[u8]) -> Response {
    let mut de = serde_json::Deserializer::from_slice(body);
    let error = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => e,
        // A value followed by more than whitespace.
        Ok(_) => {
            let detail = "body is not valid JSON for this endpoint".into();
            return problem(StatusCode::BAD_REQUEST, "Bad Request", detail, None);
        }
    };
    let message = error.inner().to_string();
    let path = error.path().to_string();
    let at = |name: &str| if path == "." { name.to_owned() } else { format!("{path}.{name}") };
    let quoted = |prefix: &str| {
        let start = message.find(prefix)? + prefix.len();
        let end = message[start..].find('`')? + start;
        Some(message[start..end].to_owned())
    };
    let (field, detail) = if let Some(name) = quoted("missing field `").map(|n| at(&n)) {
        (Some(name.clone()), format!("missing field {name}"))
    } else if let Some(name) = quoted("unknown field `").map(|n| at(&n)) {
        (Some(name.clone()), format!("unknown field {name}"))
    } else if error.inner().is_data() && path != "." {
        (Some(path.clone()), format!("invalid value for field {path}"))
    } else {
        (None, "body is not valid JSON for this endpoint".into())
    };
    problem(StatusCode::BAD_REQUEST, "Bad Request", detail, field)
}

fn endpoint_index(path: &str) -> Option<usize> {
    let name = match path {
        "/api/v1/clock" => "clock",
        "/api/v1/server-key" => "server_key",
        "/api/v1/register/challenge" => "challenge",
        "/api/v1/register" => "register",
        "/api/v1/status" => "status",
        "/api/v1/status/ack" => "status_ack",
        "/api/v1/status/reset" => "status_reset",
        "/api/v1/report" => "report",
        "/api/v1/unregister" => "unregister",
        "/api/v1/delete-history" => "delete_history",
        "/metrics" => "metrics",
        "/healthz" => "healthz",
        "/openapi.json" => "openapi",
        crate::federation::BATCH_PATH => "federation_batch",
        _ => return None,
    };
    ENDPOINTS.iter().position(|e| *e == name)
}

async fn observe<S: Storage>(State(svc): State<Arc<Service<S>>>, req: Request, next: Next) -> Response {
    let idx = endpoint_index(req.uri().path());
    let start = Instant::now();
    let resp = next.run(req).await;
    if let Some(i) = idx {
        svc.metrics().observe(i, resp.status().as_u16(), start.elapsed());
    }
    resp
}

/// The router of the API, over a service.
pub fn router<S: Storage>(service: Arc<Service<S>>) -> Router {
    let limit = service.config().server.max_body_bytes;
    Router::new()
        .route("/api/v1/clock", get(clock::<S>))
        .route("/api/v1/server-key", get(server_key::<S>))
        .route("/api/v1/register/challenge", post(challenge::<S>))
        .route("/api/v1/register", post(register::<S>))
        .route("/api/v1/status", post(status::<S>))
        .route("/api/v1/status/ack", post(status_ack::<S>))
        .route("/api/v1/status/reset", post(status_reset::<S>))
        .route("/api/v1/report", post(report::<S>))
        .route("/api/v1/unregister", post(unregister::<S>))
        .route("/api/v1/delete-history", post(delete_history::<S>))
        .route(crate::federation::BATCH_PATH, post(federation_batch::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .layer(middleware::from_fn_with_state(service.clone(), observe::<S>))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(service)
}

type Svc<S> = State<Arc<Service<S>>>;

async fn clock<S: Storage>(State(svc): Svc<S>) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(svc.clock()?))
}

async fn server_key<S: Storage>(State(svc): Svc<S>) -> impl IntoResponse {
    Json(ServerKeyResponse { public_key: b64_encode(svc.server_public_key().as_bytes()) })
}

/// `429` with a problem document and `Retry-After: 1`: a registration flood limit (`[limits]`:
/// in-flight cap or rate) is reached. Answered before any work, so a flood costs little.
fn too_many_requests() -> Response {
    let mut resp = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        "registration rate limit reached; retry later".into(),
        None,
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

async fn challenge<S: Storage>(State(svc): Svc<S>) -> Response {
    if !svc.admit_challenge() {
        return too_many_requests();
    }
    Json(svc.challenge()).into_response()
}

async fn register<S: Storage>(State(svc): Svc<S>, body: ApiJson<RegisterRequest>) -> Response {
    let Some(_in_flight) = svc.admit_registration() else {
        return too_many_requests();
    };
    match svc.register(&body.0).await {
        // The sealed list is most of the body: sized for it up front, the body is written once
        // instead of grown (and copied) from axum's 128-byte start.
        Ok(r) => json_with_capacity(StatusCode::CREATED, &r, r.ebids.len() + 256),
        Err(e) => e.into_response(),
    }
}

/// `status` with `value` as a JSON body written into a buffer of `capacity` bytes.
fn json_with_capacity<T: Serialize>(status: StatusCode, value: &T, capacity: usize) -> Response {
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
            .into_response(),
        Err(e) => ServiceError::Internal(format!("serialising a response: {e}")).into_response(),
    }
}

async fn status<S: Storage>(
    State(svc): Svc<S>,
    ApiJson(body): ApiJson<AuthRequestBody>,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(svc.status(&body).await?))
}

async fn status_ack<S: Storage>(
    State(svc): Svc<S>,
    ApiJson(body): ApiJson<AuthRequestBody>,
) -> Result<StatusCode, ServiceError> {
    svc.acknowledge(&body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn status_reset<S: Storage>(
    State(svc): Svc<S>,
    ApiJson(body): ApiJson<ResetRequestBody>,
) -> Result<StatusCode, ServiceError> {
    svc.reset_status(&body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unregister<S: Storage>(
    State(svc): Svc<S>,
    ApiJson(body): ApiJson<AuthRequestBody>,
) -> Result<StatusCode, ServiceError> {
    svc.unregister(&body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_history<S: Storage>(
    State(svc): Svc<S>,
    ApiJson(body): ApiJson<AuthRequestBody>,
) -> Result<StatusCode, ServiceError> {
    svc.delete_history(&body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn report<S: Storage>(
    State(svc): Svc<S>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ReportRequest>,
) -> Result<impl IntoResponse, ServiceError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let accepted = svc.report(bearer, &body).await?;
    Ok((StatusCode::ACCEPTED, Json(ReportResponse { accepted })))
}

async fn metrics<S: Storage>(State(svc): Svc<S>) -> Result<impl IntoResponse, ServiceError> {
    let s = svc.storage().stats().await?;
    let text = svc.metrics().render(Gauges {
        users: s.users,
        pool_depth: s.pool_depth,
        outbox_depth: s.outbox_depth,
    });
    let depths: Vec<(u8, u64)> =
        svc.storage().federation_depths().await?.into_iter().map(|(cc, n)| (cc.value(), n)).collect();
    let peers: Vec<u8> = svc.federation().peers().iter().map(|cc| cc.value()).collect();
    let text = text + &svc.metrics().render_federation(&peers, &depths);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

impl IntoResponse for ReceiveError {
    fn into_response(self) -> Response {
        match self {
            ReceiveError::Malformed { field, reason } => {
                problem(StatusCode::BAD_REQUEST, "Bad Request", reason, Some(field.to_owned()))
            }
            ReceiveError::Rejected => ServiceError::Rejected.into_response(),
            ReceiveError::Expired => {
                problem(StatusCode::GONE, "Gone", "batch older than the replay window; drop it".into(), None)
            }
            ReceiveError::Internal(detail) => ServiceError::Internal(detail).into_response(),
        }
    }
}

/// `POST /api/v1/federation/batch` (§8, `docs/federation.md`).
async fn federation_batch<S: Storage>(
    State(svc): Svc<S>,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<impl IntoResponse, ReceiveError> {
    Ok(Json(crate::federation::receive(&svc, &body).await?))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Serves the API on `listener` with the background jobs (mixer, expiry, day keys) until
/// `shutdown` resolves; then stops accepting, finishes in-flight requests and stops the jobs.
pub async fn run<S: Storage>(
    listener: tokio::net::TcpListener,
    service: Arc<Service<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let jobs = crate::jobs::spawn(service.clone(), stop_rx);
    let app = router(service);
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = stop_tx.send(true);
    for job in jobs {
        let _ = tokio::time::timeout(Duration::from_secs(10), job).await;
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).expect("header value"));
        h
    }

    #[test]
    fn json_media_types_as_axum_accepts_them() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            " application/json ",
        ] {
            assert!(json_content_type(&with_type(ok)), "{ok}");
        }
        for bad in ["text/plain", "application/jsonx", "application/+json", "json", "application/xml", ""] {
            assert!(!json_content_type(&with_type(bad)), "{bad}");
        }
        assert!(!json_content_type(&HeaderMap::new()), "no content type");
    }
}
