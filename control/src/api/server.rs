//! The HTTP side of the EC2 Query API: one route, `/`, taking a
//! form-encoded POST (or a GET with the same parameters in the URL), and
//! answering EC2 XML with a fresh request id.
//!
//! The pipeline is: read the body (bounded) → parse parameters →
//! authenticate (a pluggable [`Authenticator`], SigV4 in the daemon) →
//! `Action`/`Version` → dispatch on a blocking thread → render.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::{HeaderMap, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::actions::{self, AppState, Ctx};
use super::error::Ec2Error;
use super::instance_connect::{self, JsonError};
use super::query::Params;
use super::xml;

/// The largest request body accepted. Launch requests are the largest the
/// SDKs send: user data is at most 16 KiB before base64, plus tags and block
/// device mappings; 1 MiB leaves room without letting a client park memory.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The header the SDKs read the request id from (besides the XML).
pub const REQUEST_ID_HEADER: &str = "x-amzn-requestid";

/// What EC2 sends as `Content-Type`.
pub const XML_CONTENT_TYPE: &str = "text/xml;charset=UTF-8";

/// The parts of a request a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub params: &'a Params,
    /// The SigV4 service the request must be signed for: `ec2`, or
    /// `ec2-instance-connect` for the Instance Connect API.
    pub service: &'a str,
}

/// Decides whether a request may proceed. The daemon plugs in SigV4; a
/// trait (not a closure) so the verifier can keep its key store.
pub trait Authenticator: Send + Sync {
    /// `Ok` to go on; `AuthFailure`, `RequestExpired`… to refuse.
    fn authenticate(&self, request: &SignedRequest<'_>) -> Result<(), Ec2Error>;
}

/// Accepts every request without looking at its signature: for tests and
/// for nothing that listens beyond loopback.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAnySignature;

impl Authenticator for AcceptAnySignature {
    fn authenticate(&self, _request: &SignedRequest<'_>) -> Result<(), Ec2Error> {
        Ok(())
    }
}

/// What the router shares across requests.
#[derive(Clone)]
pub struct ApiState {
    pub app: Arc<AppState>,
    pub auth: Arc<dyn Authenticator>,
    /// How long a client has to send a request's body once its headers are
    /// in ([`super::listener::Limits::body_timeout`]).
    pub body_timeout: Duration,
}

impl ApiState {
    /// State with an explicit authenticator, so that "no signature check" is
    /// always a visible choice at the call site.
    pub fn new(app: AppState, auth: impl Authenticator + 'static) -> Self {
        Self {
            app: Arc::new(app),
            auth: Arc::new(auth),
            body_timeout: super::listener::Limits::default().body_timeout,
        }
    }

    /// The same state with another body deadline.
    pub fn with_body_timeout(self, body_timeout: Duration) -> Self {
        Self {
            body_timeout,
            ..self
        }
    }
}

/// The EC2 endpoint as an axum router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(handle).post(handle))
        .with_state(state)
}

/// Serves the API on `listener` with the default
/// [`super::listener::Limits`], for good.
pub async fn serve(listener: TcpListener, state: ApiState) {
    super::listener::serve(
        listener,
        state,
        super::listener::Limits::default(),
        std::future::pending(),
    )
    .await;
}

async fn handle(State(state): State<ApiState>, request: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Some(operation) = instance_connect::operation(request.headers()) {
        let operation = loggable_action(operation);
        return handle_json(&state, request, &request_id, operation).await;
    }
    let (action, result) = process(&state, request, &request_id).await;
    let (status, body) = match result {
        Ok(members) => (
            StatusCode::OK,
            xml::render_response(&action, &request_id, &members),
        ),
        Err(err) => {
            // An internal error's detail is logged here, with the request
            // id, and nowhere else.
            if err.detail().is_some() {
                log::error!("{request_id} {action}: {err}");
            } else if err.status().is_server_error() {
                log::warn!("{request_id} {action}: {err}");
            }
            (err.status(), err.to_xml(&request_id))
        }
    };
    log::info!("{request_id} {action} {}", status.as_u16());
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(XML_CONTENT_TYPE));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// An Instance Connect request (AWS JSON 1.1): the same body limits and
/// authentication as EC2's, signed for `ec2-instance-connect`.
async fn handle_json(
    state: &ApiState,
    request: Request,
    request_id: &str,
    operation: String,
) -> Response {
    let (parts, body) = request.into_parts();
    let result = match read_body(body, state.body_timeout).await {
        Err(err) => Err(err),
        Ok(body) => {
            let params = Params::default();
            let signed = SignedRequest {
                method: &parts.method,
                uri: &parts.uri,
                headers: &parts.headers,
                body: &body,
                params: &params,
                service: instance_connect::SIGNING_NAME,
            };
            state.auth.authenticate(&signed).map(|()| body)
        }
    };
    let result = match result {
        Err(err) => Err(JsonError::new(err.status(), err.code(), err.message())),
        Ok(_) if parts.method != Method::POST => Err(JsonError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "InvalidRequest",
            "Instance Connect operations are POST requests",
        )),
        Ok(body) => {
            let app = Arc::clone(&state.app);
            let id = request_id.to_owned();
            let op = operation.clone();
            tokio::task::spawn_blocking(move || instance_connect::dispatch(&app, &op, &body, &id))
                .await
                .unwrap_or_else(|join_error| {
                    log::error!("handler for {operation} panicked: {join_error}");
                    Err(JsonError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "ServiceException",
                        "An internal error occurred",
                    ))
                })
        }
    };
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(err) => (err.status, err.body()),
    };
    log::info!("{request_id} {operation} {}", status.as_u16());
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(instance_connect::JSON_CONTENT_TYPE),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Everything between the raw request and the response members; returns
/// the action name (or `-` when there is none) for logging and rendering.
async fn process(
    state: &ApiState,
    request: Request,
    request_id: &str,
) -> (String, Result<Vec<xml::XmlNode>, Ec2Error>) {
    let (parts, body) = request.into_parts();
    let body = match read_body(body, state.body_timeout).await {
        Ok(body) => body,
        Err(err) => return ("-".to_owned(), Err(err)),
    };
    let params = Params::from_request(parts.uri.query(), &body);
    let action = loggable_action(params.optional("Action").unwrap_or("-"));
    let signed = SignedRequest {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        body: &body,
        params: &params,
        service: "ec2",
    };
    if let Err(err) = state.auth.authenticate(&signed) {
        return (action, Err(err));
    }
    if let Err(err) = params.action().and_then(|_| params.version()) {
        return (action, Err(err));
    }
    let app = Arc::clone(&state.app);
    let request_id = request_id.to_owned();
    let name = action.clone();
    let result = tokio::task::spawn_blocking(move || {
        let ctx = Ctx {
            region: &app.region,
            request_id: &request_id,
            state: &app,
            dry_run: false,
        };
        actions::dispatch(&ctx, &name, &params)
    })
    .await
    .unwrap_or_else(|join_error| {
        log::error!("handler for {action} panicked: {join_error}");
        Err(Ec2Error::internal_error())
    });
    (action, result)
}

/// The `Action` parameter as it may appear in the log and in the
/// (unauthenticated) path up to the handler: action names are short
/// alphanumeric words, so anything else (newlines that would forge log
/// lines, a megabyte of text) is cut to 64 characters and escaped. A name
/// changed here matches no action and is answered `InvalidAction`.
fn loggable_action(action: &str) -> String {
    const MAX: usize = 64;
    if action.len() <= MAX
        && action
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return action.to_owned();
    }
    let head: String = action.chars().take(MAX).collect();
    format!("{:?}", head)
}

/// Reads the whole body within `timeout`, refusing more than
/// [`MAX_BODY_BYTES`] whether or not the client declared a length.
async fn read_body(body: Body, timeout: Duration) -> Result<axum::body::Bytes, Ec2Error> {
    let Ok(read) = tokio::time::timeout(timeout, to_bytes(body, MAX_BODY_BYTES)).await else {
        return Err(Ec2Error::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            format!("The request body did not arrive within {timeout:?}"),
        ));
    };
    read.map_err(|err| {
        let inner = err.into_inner();
        let too_large =
            std::iter::successors(Some(&*inner as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if too_large {
            Ec2Error::request_too_large(MAX_BODY_BYTES)
        } else {
            Ec2Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                format!("The request body could not be read: {inner}"),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_action_cannot_forge_log_lines_or_flood_the_log() {
        assert_eq!(
            super::loggable_action("DescribeInstances"),
            "DescribeInstances"
        );
        let forged = super::loggable_action("X\n0000 DescribeRegions 200");
        assert!(!forged.contains('\n'), "{forged}");
        assert!(super::loggable_action(&"A".repeat(1 << 20)).len() < 80);
    }
}
