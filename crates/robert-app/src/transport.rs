//! How the App reaches the server: the [`Transport`] trait covers the endpoints of DESIGN §4 with
//! the [`robert_proto::api`] bodies, so the App logic never sees HTTP. Two implementations:
//! [`HttpTransport`] (reqwest over rustls) and, behind the `in-process` feature,
//! [`InProcessTransport`](crate::InProcessTransport), which calls a `robert_server` service
//! directly (the simulator, tests).
//!
//! The error kinds matter for safe retries (see [`TransportError`]): a request that certainly never
//! reached the server can be sent again as it is; one whose answer was lost may have been applied.

use core::future::Future;
use robert_proto::api::{
    AuthRequestBody, ChallengeResponse, ClockResponse, RegisterRequest, RegisterResponse, ReportRequest,
    ReportResponse, ResetRequestBody, ServerKeyResponse, StatusResponse,
};
use std::time::Duration;

/// Why a call through a [`Transport`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// `403 {"error":"rejected"}`: a protocol check failed (DESIGN §4). Nothing was applied.
    #[error("rejected by the server")]
    Rejected,
    /// Another `4xx`: the server refused the request as malformed; nothing was applied.
    #[error("refused by the server ({status}): {detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The problem document's detail, or the field name (never a secret: the server sends none).
        detail: String,
    },
    /// The request certainly did not reach the server (connection refused, DNS): safe to resend.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The request may have reached the server but no answer came (timeout, connection reset,
    /// `5xx`): it may or may not have been applied.
    #[error("no answer from the server: {0}")]
    NoAnswer(String),
    /// The server answered something that is not the documented body.
    #[error("unexpected answer from the server: {0}")]
    BadResponse(String),
}

/// The server endpoints the App uses (DESIGN §4). Every method is one request.
pub trait Transport {
    /// `GET /api/v1/clock`.
    fn clock(&self) -> impl Future<Output = Result<ClockResponse, TransportError>> + Send;
    /// `GET /api/v1/server-key`.
    fn server_key(&self) -> impl Future<Output = Result<ServerKeyResponse, TransportError>> + Send;
    /// `POST /api/v1/register/challenge`.
    fn challenge(&self) -> impl Future<Output = Result<ChallengeResponse, TransportError>> + Send;
    /// `POST /api/v1/register`.
    fn register(
        &self,
        req: &RegisterRequest,
    ) -> impl Future<Output = Result<RegisterResponse, TransportError>> + Send;
    /// `POST /api/v1/status` (code 2).
    fn status(
        &self,
        req: &AuthRequestBody,
    ) -> impl Future<Output = Result<StatusResponse, TransportError>> + Send;
    /// `POST /api/v1/status/ack` (code 5).
    fn acknowledge(&self, req: &AuthRequestBody) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// `POST /api/v1/unregister` (code 3).
    fn unregister(&self, req: &AuthRequestBody) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// `POST /api/v1/delete-history` (code 4).
    fn delete_history(
        &self,
        req: &AuthRequestBody,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// `POST /api/v1/status/reset` (code 6 and a `reset` token).
    fn reset_status(&self, req: &ResetRequestBody)
    -> impl Future<Output = Result<(), TransportError>> + Send;
    /// `POST /api/v1/report` with `Authorization: Bearer <token>`.
    fn report(
        &self,
        token: &str,
        req: &ReportRequest,
    ) -> impl Future<Output = Result<ReportResponse, TransportError>> + Send;
}

/// The HTTP client transport: JSON over HTTPS (rustls; no system OpenSSL), one base URL.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    base: String,
    client: reqwest::Client,
}

impl HttpTransport {
    /// A transport to `base_url` (e.g. `https://robert.example`), with a 30 s timeout per request.
    pub fn new(base_url: &str) -> Result<Self, TransportError> {
        Self::with_timeout(base_url, Duration::from_secs(30))
    }

    /// A transport with the given per-request timeout.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| TransportError::Unreachable(format!("HTTP client: {e}")))?;
        Ok(Self { base: base_url.trim_end_matches('/').to_owned(), client })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, TransportError> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_builder() {
                TransportError::Unreachable(e.to_string())
            } else {
                TransportError::NoAnswer(e.to_string())
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status.as_u16() == 403 {
            return Err(TransportError::Rejected);
        }
        if status.is_server_error() {
            return Err(TransportError::NoAnswer(format!("HTTP {status}")));
        }
        let detail = match resp.json::<serde_json::Value>().await {
            Ok(v) => v.get("detail").and_then(|d| d.as_str()).map_or_else(|| v.to_string(), str::to_owned),
            Err(_) => String::new(),
        };
        Err(TransportError::Refused { status: status.as_u16(), detail })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, TransportError> {
        self.send(req).await?.json().await.map_err(|e| TransportError::BadResponse(e.to_string()))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Transport for HttpTransport {
    async fn clock(&self) -> Result<ClockResponse, TransportError> {
        self.json(self.client.get(self.url("/api/v1/clock"))).await
    }

    async fn server_key(&self) -> Result<ServerKeyResponse, TransportError> {
        self.json(self.client.get(self.url("/api/v1/server-key"))).await
    }

    async fn challenge(&self) -> Result<ChallengeResponse, TransportError> {
        self.json(self.client.post(self.url("/api/v1/register/challenge"))).await
    }

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, TransportError> {
        self.json(self.client.post(self.url("/api/v1/register")).json(req)).await
    }

    async fn status(&self, req: &AuthRequestBody) -> Result<StatusResponse, TransportError> {
        self.json(self.client.post(self.url("/api/v1/status")).json(req)).await
    }

    async fn acknowledge(&self, req: &AuthRequestBody) -> Result<(), TransportError> {
        self.send(self.client.post(self.url("/api/v1/status/ack")).json(req)).await.map(drop)
    }

    async fn unregister(&self, req: &AuthRequestBody) -> Result<(), TransportError> {
        self.send(self.client.post(self.url("/api/v1/unregister")).json(req)).await.map(drop)
    }

    async fn delete_history(&self, req: &AuthRequestBody) -> Result<(), TransportError> {
        self.send(self.client.post(self.url("/api/v1/delete-history")).json(req)).await.map(drop)
    }

    async fn reset_status(&self, req: &ResetRequestBody) -> Result<(), TransportError> {
        self.send(self.client.post(self.url("/api/v1/status/reset")).json(req)).await.map(drop)
    }

    async fn report(&self, token: &str, req: &ReportRequest) -> Result<ReportResponse, TransportError> {
        self.json(self.client.post(self.url("/api/v1/report")).bearer_auth(token).json(req)).await
    }
}

/// The in-process transport: calls a [`robert_server::service::Service`] directly, with the same
/// error mapping as the HTTP layer (`Rejected` → [`TransportError::Rejected`], malformed →
/// [`TransportError::Refused`] with status 400, internal → [`TransportError::NoAnswer`]).
#[cfg(feature = "in-process")]
pub mod in_process {
    use super::{Transport, TransportError};
    use robert_proto::api::{
        AuthRequestBody, ChallengeResponse, ClockResponse, RegisterRequest, RegisterResponse, ReportRequest,
        ReportResponse, ResetRequestBody, ServerKeyResponse, StatusResponse, b64_encode,
    };
    use robert_server::service::{Service, ServiceError};
    use robert_server::storage::Storage;
    use std::sync::Arc;

    /// A [`Transport`] over a shared in-process [`Service`].
    pub struct InProcessTransport<S> {
        service: Arc<Service<S>>,
    }

    impl<S> Clone for InProcessTransport<S> {
        fn clone(&self) -> Self {
            Self { service: self.service.clone() }
        }
    }

    impl<S> core::fmt::Debug for InProcessTransport<S> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("InProcessTransport")
        }
    }

    impl<S: Storage> InProcessTransport<S> {
        /// A transport calling `service`.
        pub fn new(service: Arc<Service<S>>) -> Self {
            Self { service }
        }
    }

    fn map(e: ServiceError) -> TransportError {
        match e {
            ServiceError::Rejected => TransportError::Rejected,
            ServiceError::BadRequest { field, reason } => {
                TransportError::Refused { status: 400, detail: format!("{field}: {reason}") }
            }
            ServiceError::Internal(_) => TransportError::NoAnswer("internal server error".into()),
        }
    }

    impl<S: Storage> Transport for InProcessTransport<S> {
        async fn clock(&self) -> Result<ClockResponse, TransportError> {
            self.service.clock().map_err(map)
        }

        async fn server_key(&self) -> Result<ServerKeyResponse, TransportError> {
            Ok(ServerKeyResponse { public_key: b64_encode(self.service.server_public_key().as_bytes()) })
        }

        async fn challenge(&self) -> Result<ChallengeResponse, TransportError> {
            Ok(self.service.challenge())
        }

        async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, TransportError> {
            self.service.register(req).await.map_err(map)
        }

        async fn status(&self, req: &AuthRequestBody) -> Result<StatusResponse, TransportError> {
            self.service.status(req).await.map_err(map)
        }

        async fn acknowledge(&self, req: &AuthRequestBody) -> Result<(), TransportError> {
            self.service.acknowledge(req).await.map_err(map)
        }

        async fn unregister(&self, req: &AuthRequestBody) -> Result<(), TransportError> {
            self.service.unregister(req).await.map_err(map)
        }

        async fn delete_history(&self, req: &AuthRequestBody) -> Result<(), TransportError> {
            self.service.delete_history(req).await.map_err(map)
        }

        async fn reset_status(&self, req: &ResetRequestBody) -> Result<(), TransportError> {
            self.service.reset_status(req).await.map_err(map)
        }

        async fn report(&self, token: &str, req: &ReportRequest) -> Result<ReportResponse, TransportError> {
            let accepted = self.service.report(Some(token), req).await.map_err(map)?;
            Ok(ReportResponse { accepted })
        }
    }
}
