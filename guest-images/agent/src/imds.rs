//! The instance metadata service client: IMDSv2 session tokens, IMDSv1
//! fallback rules, bounded retries.
//!
//! Like Amazon's own tools it asks for a token first. It uses IMDSv1 (no
//! token) only when the token endpoint does not exist (HTTP 404/405: an
//! IMDS that predates v2) or when the operator passed `--allow-imdsv1`. A
//! 401 on a GET is never answered by dropping the token.

use std::thread;
use std::time::Duration;

use crate::http::{self, Endpoint, HttpError, Response};

/// The path that hands out IMDSv2 session tokens.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// Header carrying the requested token lifetime on the token PUT.
pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// Header carrying the token on every later request.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// Token lifetime asked for: six hours, the maximum, as the AWS CLI does.
pub const TOKEN_TTL_SECONDS: u32 = 21600;

/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// First pause between attempts; doubles each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How to reach the metadata service.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// Base URL, `http://host[:port]`.
    pub url: String,
    /// Tries per request on connection errors and 5xx answers (at least 1).
    pub attempts: u32,
    /// Deadline for one try: connect, send and read the whole answer.
    pub timeout: Duration,
    /// Fall back to IMDSv1 when the token PUT is refused (not only when it
    /// does not exist).
    pub allow_v1: bool,
}

/// Why a metadata request failed.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The `--imds` URL is unusable.
    #[error("{0}")]
    BadUrl(#[source] HttpError),
    /// No HTTP answer after every attempt. Once this happens the client
    /// gives the same answer at once for later requests.
    #[error(
        "metadata unreachable at {url} after {attempts} attempt{s} ({reason})",
        s = if *.attempts == 1 { "" } else { "s" }
    )]
    Unreachable {
        /// The base URL tried.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last transport error.
        reason: String,
    },
    /// The token PUT was refused and IMDSv1 is not allowed.
    #[error(
        "IMDS refused a session token (HTTP {0}); not falling back to IMDSv1 \
         (pass --allow-imdsv1 to allow it)"
    )]
    TokenRefused(u16),
    /// A GET answered 401: the service wants a (valid) token.
    #[error(
        "IMDS answered HTTP 401 for {0}: a session token is required; not falling back to IMDSv1"
    )]
    Unauthorized(String),
    /// Any other unexpected status.
    #[error("IMDS answered HTTP {status} for {path}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The request path.
        path: String,
    },
}

/// How the session was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// IMDSv2: every request carries a token.
    V2,
    /// IMDSv1 because the token endpoint answered 404/405.
    V1NoTokenEndpoint(u16),
    /// IMDSv1 because the token was refused and `--allow-imdsv1` was given.
    V1Allowed(u16),
}

/// A metadata service session.
#[derive(Debug)]
pub struct Imds {
    config: ImdsConfig,
    endpoint: Endpoint,
    token: Option<String>,
    /// Set after a request found the service unreachable.
    unreachable: Option<String>,
}

impl Imds {
    /// Opens a session: asks for a token and decides between v2 and v1.
    pub fn connect(mut config: ImdsConfig) -> Result<(Self, Session), ImdsError> {
        config.attempts = config.attempts.max(1);
        config.url = config.url.trim_end_matches('/').to_string();
        let endpoint = Endpoint::parse(&config.url).map_err(ImdsError::BadUrl)?;
        let mut imds = Imds {
            config,
            endpoint,
            token: None,
            unreachable: None,
        };
        let session = imds.fetch_token()?;
        Ok((imds, session))
    }

    /// `PUT /latest/api/token`, keeping the token on success.
    fn fetch_token(&mut self) -> Result<Session, ImdsError> {
        let ttl = TOKEN_TTL_SECONDS.to_string();
        let response = self.send("PUT", TOKEN_PATH, &[(TOKEN_TTL_HEADER, &ttl)])?;
        match response.status {
            200 => {
                let token = String::from_utf8(response.body)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or(ImdsError::Status {
                        status: 200,
                        path: format!("{TOKEN_PATH} (the token is empty or not printable)"),
                    })?;
                self.token = Some(token);
                Ok(Session::V2)
            }
            404 | 405 => Ok(Session::V1NoTokenEndpoint(response.status)),
            status if self.config.allow_v1 => Ok(Session::V1Allowed(status)),
            status => Err(ImdsError::TokenRefused(status)),
        }
    }

    /// True once a request found the service unreachable; later requests
    /// fail at once.
    pub fn is_unreachable(&self) -> bool {
        self.unreachable.is_some()
    }

    /// `GET` a path such as `/latest/meta-data/instance-id`. `Ok(None)`
    /// means 404: the item does not exist for this instance.
    pub fn get(&mut self, path: &str) -> Result<Option<Vec<u8>>, ImdsError> {
        let mut response = self.get_once(path)?;
        if response.status == 401 && self.token.is_some() {
            // The token may have expired (a long-running script); get a new
            // one once. Never retry without a token.
            self.token = None;
            self.fetch_token()?;
            response = self.get_once(path)?;
        }
        match response.status {
            200 => Ok(Some(response.body)),
            404 => Ok(None),
            401 => Err(ImdsError::Unauthorized(path.to_string())),
            status => Err(ImdsError::Status {
                status,
                path: path.to_string(),
            }),
        }
    }

    fn get_once(&mut self, path: &str) -> Result<Response, ImdsError> {
        let token = self.token.clone();
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| (TOKEN_HEADER, t))
            .into_iter()
            .collect();
        self.send("GET", path, &headers)
    }

    /// One request with bounded retries on transport errors and 5xx.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, ImdsError> {
        if let Some(reason) = &self.unreachable {
            return Err(self.unreachable_error(reason.clone()));
        }
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = None;
        for attempt in 1..=self.config.attempts {
            if attempt > 1 {
                thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            match http::request(&self.endpoint, method, path, headers, self.config.timeout) {
                Ok(r) if r.status >= 500 && attempt < self.config.attempts => {}
                Ok(r) => return Ok(r),
                Err(e) => last_error = Some(e),
            }
        }
        let reason = last_error.map_or_else(|| "no answer".to_string(), |e| e.to_string());
        self.unreachable = Some(reason.clone());
        Err(self.unreachable_error(reason))
    }

    fn unreachable_error(&self, reason: String) -> ImdsError {
        ImdsError::Unreachable {
            url: self.config.url.clone(),
            attempts: self.config.attempts,
            reason,
        }
    }
}
