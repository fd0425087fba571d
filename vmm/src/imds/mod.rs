//! The instance metadata service (IMDS) an instance reaches at
//! 169.254.169.254, answered inside its own VMM as on a Nitro card: no
//! host socket, nothing shared between instances.
//!
//! This module is the HTTP service: bytes of a request in, bytes of an
//! answer out, with EC2's semantics — IMDSv1 GETs, IMDSv2 session tokens
//! (PUT /latest/api/token, TTL 1–21600 s, 401 when tokens are required
//! and missing or bad, 403 for a proxied token request, the hop limit as
//! the IP TTL of token answers), HttpEndpoint disabled answering nothing,
//! and EC2's category tree ([`tree`]). The TCP/IP side (diverting the
//! guest's frames for 169.254.169.254 from virtio-net) hands it the bytes
//! of each connection.
//!
//! ```
//! use std::time::Instant;
//! use ec2lab_vmm::imds::{Imds, Served};
//! use ec2lab_vmm_api::metadata::InstanceMetadata;
//!
//! let doc = InstanceMetadata { instance_id: "i-0123456789abcdef0".into(), ..Default::default() };
//! let imds = Imds::new(doc, Instant::now()).expect("randomness");
//! let request = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
//! let Served::Reply { response, .. } = imds.serve(request, Instant::now()) else { panic!() };
//! assert_eq!(response.body, b"i-0123456789abcdef0");
//! ```

pub mod http;
pub mod stack;
pub mod token;
pub mod tree;

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use ec2lab_vmm_api::metadata::{HttpTokens, InstanceMetadata};

use self::http::{Method, Request, Response};
use self::token::{TokenError, TokenKey};
use self::tree::{Node, VERSIONS};

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// No key for session tokens.
    #[error("metadata tokens: {0}")]
    Token(#[from] TokenError),
}

/// What the service makes of the bytes a connection has sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// No complete request yet.
    Incomplete,
    /// HttpEndpoint is disabled: nothing answers, as on EC2.
    Silent,
    /// An answer to the request in the first `consumed` bytes.
    Reply {
        /// The answer.
        response: Response,
        /// How many bytes of the input the request took.
        consumed: usize,
        /// The request was HEAD: send the head only.
        head_only: bool,
    },
}

/// The service's clocks tied together: requests carry a monotonic
/// `Instant`, Instance Connect keys expire at a wall-clock second.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    /// Time since the Unix epoch at `at`.
    since_epoch: Duration,
    /// The monotonic time it was read.
    at: Instant,
}

impl WallClock {
    fn new(at: Instant) -> Self {
        WallClock {
            since_epoch: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
            at,
        }
    }

    /// Seconds since the Unix epoch at `now`.
    fn unix(&self, now: Instant) -> u64 {
        (self.since_epoch + now.saturating_duration_since(self.at)).as_secs()
    }
}

/// One instance's metadata service.
#[derive(Debug)]
pub struct Imds {
    doc: InstanceMetadata,
    /// The tree as built at the last update.
    tree: Node,
    /// When (Unix seconds) `tree` still serves a key that has expired;
    /// from then on each lookup builds the tree afresh until the next
    /// update drops the key.
    stale_at: Option<u64>,
    clock: WallClock,
    tokens: TokenKey,
}

impl Imds {
    /// A service for `doc`, its token clock starting at `now`.
    pub fn new(doc: InstanceMetadata, now: Instant) -> Result<Self, ImdsError> {
        let clock = WallClock::new(now);
        let unix = clock.unix(now);
        Ok(Imds {
            tree: tree::build(&doc, unix),
            stale_at: tree::next_expiry(&doc, unix),
            doc,
            clock,
            tokens: TokenKey::new(now)?,
        })
    }

    /// Replaces the document (a new public address, groups, tags, keys,
    /// options); outstanding tokens stay valid, as on EC2.
    pub fn update(&mut self, doc: InstanceMetadata) {
        let unix = self.clock.unix(Instant::now());
        self.tree = tree::build(&doc, unix);
        self.stale_at = tree::next_expiry(&doc, unix);
        self.doc = doc;
    }

    /// The document served now.
    pub fn document(&self) -> &InstanceMetadata {
        &self.doc
    }

    /// Invalidates every token issued so far (resume from hibernation).
    pub fn revoke_tokens(&mut self) -> Result<(), ImdsError> {
        Ok(self.tokens.rotate()?)
    }

    /// Serves the request at the front of `buf`, the bytes one connection
    /// has sent and the service has not yet consumed.
    pub fn serve(&self, buf: &[u8], now: Instant) -> Served {
        if !self.doc.options.http_endpoint {
            return Served::Silent;
        }
        match http::parse(buf) {
            Ok(None) => Served::Incomplete,
            Ok(Some((request, consumed))) => {
                let mut response = self.answer(&request, now);
                response.close |= request.close;
                Served::Reply {
                    response,
                    consumed,
                    head_only: request.method == Method::Head,
                }
            }
            Err(e) => {
                log::debug!("imds: {e}");
                let mut response = Response::error(400);
                response.close = true;
                Served::Reply {
                    response,
                    consumed: buf.len(),
                    head_only: false,
                }
            }
        }
    }

    fn answer(&self, request: &Request, now: Instant) -> Response {
        let segments: Vec<&str> = request.path.split('/').filter(|s| !s.is_empty()).collect();
        let is_token_path = segments == ["latest", "api", "token"];
        match request.method {
            Method::Put if is_token_path => self.issue_token(request, now),
            Method::Put | Method::Other => {
                let mut response = Response::error(405);
                let allow = if is_token_path { "PUT" } else { "GET, HEAD" };
                response.headers.push(("Allow", allow.into()));
                response
            }
            Method::Get | Method::Head if is_token_path => {
                let mut response = Response::error(405);
                response.headers.push(("Allow", "PUT".into()));
                response
            }
            Method::Get | Method::Head => {
                if let Err(status) = self.authorize(request, now) {
                    return Response::error(status);
                }
                self.lookup(&segments, now)
            }
        }
    }

    fn issue_token(&self, request: &Request, now: Instant) -> Response {
        // A token request that went through a proxy could hand the token to
        // whoever is behind it: EC2 refuses those.
        if request.forwarded {
            return Response::error(403);
        }
        match self
            .tokens
            .issue(&self.doc.instance_id, request.token_ttl.as_deref(), now)
        {
            Ok((token, seconds)) => {
                let mut response = Response::ok(token);
                response
                    .headers
                    .push(("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", seconds.to_string()));
                response.ip_ttl = Some(self.doc.options.hop_limit);
                response
            }
            Err(_) => Response::error(400),
        }
    }

    /// IMDSv2: a token, when given, must be valid whatever the options
    /// say; without one, v1 is answered only while tokens are optional.
    fn authorize(&self, request: &Request, now: Instant) -> Result<(), u16> {
        match &request.token {
            Some(token) => self
                .tokens
                .verify(&self.doc.instance_id, token, now)
                .map_err(|_| 401),
            None if self.doc.options.http_tokens == HttpTokens::Required => Err(401),
            None => Ok(()),
        }
    }

    fn lookup(&self, segments: &[&str], now: Instant) -> Response {
        let Some((version, rest)) = segments.split_first() else {
            return Response::ok(VERSIONS.join("\n"));
        };
        if !VERSIONS.contains(version) {
            return Response::error(404);
        }
        let unix = self.clock.unix(now);
        let tree = match self.stale_at {
            Some(stale) if unix >= stale => Cow::Owned(tree::build(&self.doc, unix)),
            _ => Cow::Borrowed(&self.tree),
        };
        match tree.find(rest.iter().copied()) {
            Some(node) => Response::ok(node.body()),
            None => Response::error(404),
        }
    }
}

#[cfg(test)]
mod stack_tests;
#[cfg(test)]
mod tests;
