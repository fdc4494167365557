//! Errors as HTTP answers: `application/problem+json` (RFC 9457), the
//! status taken from the library error's [`ErrorKind`].

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, OptionalFromRequest, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;
use vmimg_store::ErrorKind;

/// What went wrong, as RFC 9457 describes it, with the vmimg error kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:vmimg:problem:<kind>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// The kind in words.
    pub title: String,
    pub status: u16,
    /// What was wrong and what to do.
    pub detail: String,
    pub kind: ErrorKind,
}

impl Problem {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Problem {
        Problem::with_status(status_of(kind), kind, detail)
    }

    pub fn with_status(status: StatusCode, kind: ErrorKind, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: format!("urn:vmimg:problem:{}", kind.as_str()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            kind,
        }
    }

    /// A request the daemon refuses before asking the store: 400.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(ErrorKind::InvalidInput, detail)
    }

    pub fn not_found(what: &str, name: &str) -> Problem {
        Problem::new(ErrorKind::NotFound, format!("no {what} named {name:?}"))
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// The HTTP status of an error of `kind`.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::InUse => StatusCode::CONFLICT,
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Refused => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unavailable => StatusCode::BAD_GATEWAY,
        ErrorKind::Denied => StatusCode::FORBIDDEN,
        ErrorKind::OutOfSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<vmimg_store::Error> for Problem {
    fn from(error: vmimg_store::Error) -> Problem {
        Problem::new(error.kind(), error.to_string())
    }
}

impl From<vmimg_oci::Error> for Problem {
    fn from(error: vmimg_oci::Error) -> Problem {
        let kind = ErrorKind::of(&error).unwrap_or(ErrorKind::Internal);
        Problem::new(kind, error.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

/// A JSON request body; a body that is refused is a problem, and one that
/// did not arrive within the body timeout is 408.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;
    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        match <Json<T> as FromRequest<S>>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(refused_body(rejection)),
        }
    }
}

/// An absent body (no content type) is None.
impl<S: Send + Sync, T: DeserializeOwned> OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = Problem;
    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, Problem> {
        match <Json<T> as OptionalFromRequest<S>>::from_request(request, state).await {
            Ok(value) => Ok(value.map(|Json(value)| JsonBody(value))),
            Err(rejection) => Err(refused_body(rejection)),
        }
    }
}

fn refused_body(rejection: JsonRejection) -> Problem {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            let detail = "the request's body did not arrive in time: send it whole, at once";
            return Problem::with_status(StatusCode::REQUEST_TIMEOUT, ErrorKind::Unavailable, detail);
        }
        cause = error.source();
    }
    Problem::with_status(rejection.status(), ErrorKind::InvalidInput, rejection.body_text())
}

/// What a handler returns: its answer, or a problem.
pub type Answer<T> = Result<T, Problem>;

/// Makes every error answer a problem: the handlers' are already, and this
/// turns the framework's own into problems of the same status (a body
/// refused: 400, 413, 415, 422; a method not routed: 405; time-outs: 408,
/// 503), their text as the detail. A 416 stays as the range code made it.
pub async fn problems_only(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/problem+json");
    if !(status.is_client_error() || status.is_server_error())
        || is_problem
        || status == StatusCode::RANGE_NOT_SATISFIABLE
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let detail = match (text.is_empty(), parts.headers.get(header::ALLOW)) {
        (false, _) => text,
        (true, Some(allow)) => format!("this endpoint takes {}", allow.to_str().unwrap_or("other methods")),
        (true, None) => status.canonical_reason().unwrap_or("failed").to_owned(),
    };
    let kind = match status {
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            ErrorKind::Unavailable
        }
        status if status.is_client_error() => ErrorKind::InvalidInput,
        _ => ErrorKind::Internal,
    };
    let mut answer = Problem::with_status(status, kind, detail).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}
