//! HTTP/1.1 as the metadata service needs it: one request head parsed with
//! `httparse` (bounded in size and header count), and answers written
//! the way EC2's service writes them (`Server: EC2ws`, HTML bodies on
//! errors).
//!
//! Everything here reads guest bytes: a malformed or oversized request is
//! an [`HttpError`] the service answers with 400 and a closed connection,
//! never a panic.

/// The most a request head may take. EC2's own requests are a few hundred
/// bytes; curl with a token is ~250.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most a request body may take (IMDS requests have none; some
/// clients send an empty or tiny one with PUT).
pub const MAX_BODY: usize = 1024;
/// The most headers a request may carry.
const MAX_HEADERS: usize = 32;

/// Why a request cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head or the body is larger than the service accepts.
    #[error("request too large")]
    TooLarge,
    /// A body framing the service does not take (chunked uploads).
    #[error("unsupported body framing")]
    Framing,
}

/// The request methods the service distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: a GET without the body.
    Head,
    /// PUT (token requests).
    Put,
    /// Anything else (answered 405).
    Other,
}

/// The parts of a request the service acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without its query string.
    pub path: String,
    /// `X-aws-ec2-metadata-token`.
    pub token: Option<String>,
    /// `X-aws-ec2-metadata-token-ttl-seconds`, unparsed.
    pub token_ttl: Option<String>,
    /// Whether `X-Forwarded-For` was present (a proxied token request).
    pub forwarded: bool,
    /// Whether the client wants the connection closed after the answer
    /// (HTTP/1.0 without keep-alive, or `Connection: close`).
    pub close: bool,
}

/// Parses one request from the front of `buf`: `Ok(None)` while more bytes
/// are needed, else the request and how many bytes it took (head and
/// body).
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HttpError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::TooLarge);
    }
    let method = match head.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("PUT") => Method::Put,
        _ => Method::Other,
    };
    let target = head.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    if !path.starts_with('/') {
        return Err(HttpError::Malformed("request target is not a path".into()));
    }
    let mut request = Request {
        method,
        path,
        token: None,
        token_ttl: None,
        forwarded: false,
        close: head.version == Some(0),
    };
    let mut body_len = 0usize;
    for header in head.headers.iter() {
        let value = || String::from_utf8_lossy(header.value).trim().to_string();
        let name = header.name;
        if name.eq_ignore_ascii_case("x-aws-ec2-metadata-token") {
            request.token = Some(value());
        } else if name.eq_ignore_ascii_case("x-aws-ec2-metadata-token-ttl-seconds") {
            request.token_ttl = Some(value());
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            request.forwarded = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value().to_ascii_lowercase();
            if v.contains("close") {
                request.close = true;
            } else if v.contains("keep-alive") {
                request.close = false;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            body_len = value()
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length".into()))?;
            if body_len > MAX_BODY {
                return Err(HttpError::TooLarge);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Framing);
        }
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((request, total)))
}

/// An answer, before it becomes bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body (left out on HEAD).
    pub body: Vec<u8>,
    /// Extra headers, as EC2 sends them.
    pub headers: Vec<(&'static str, String)>,
    /// The IP TTL the answer must leave with (token answers: the hop
    /// limit); `None` for the stack's default.
    pub ip_ttl: Option<u8>,
    /// Close the connection after this answer.
    pub close: bool,
}

impl Response {
    /// 200 with a text body.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Response {
            status: 200,
            body: body.into(),
            headers: Vec::new(),
            ip_ttl: None,
            close: false,
        }
    }

    /// An error status with EC2's HTML body for it.
    pub fn error(status: u16) -> Self {
        let title = format!("{status} - {}", reason(status));
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
             <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
             \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
             <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
             <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
        );
        let mut response = Response::ok(body);
        response.status = status;
        response.headers.push(("Content-Type", "text/html".into()));
        response
    }

    /// The answer as bytes on the wire; `head_only` for HEAD.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if !self.headers.iter().any(|(n, _)| *n == "Content-Type") {
            out.push_str("Content-Type: text/plain\r\n");
        }
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        out.push_str(if self.close {
            "Connection: close\r\n"
        } else {
            "Connection: keep-alive\r\n"
        });
        out.push_str("Server: EC2ws\r\n\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_request_is_read_with_its_headers_in_any_case() {
        let raw = b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
                    x-AWS-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
        let (request, used) = parse(raw).expect("test input").expect("test input");
        assert_eq!(used, raw.len());
        assert_eq!(request.method, Method::Put);
        assert_eq!(request.path, "/latest/api/token");
        assert_eq!(request.token_ttl.as_deref(), Some("21600"));
        assert!(!request.forwarded && !request.close);
    }

    #[test]
    fn a_split_request_waits_for_the_rest_and_pipelined_ones_are_taken_one_at_a_time() {
        let raw = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.0\r\n\r\n";
        assert_eq!(parse(&raw[..20]).expect("test input"), None);
        let (first, used) = parse(raw).expect("test input").expect("test input");
        assert_eq!(first.path, "/latest/meta-data/");
        let (second, rest) = parse(&raw[used..])
            .expect("test input")
            .expect("test input");
        assert_eq!(second.path, "/");
        assert!(second.close, "HTTP/1.0 closes by default");
        assert_eq!(used + rest, raw.len());
    }

    #[test]
    fn a_body_is_consumed_and_a_query_string_ignored() {
        let raw = b"PUT /latest/api/token?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(parse(&raw[..raw.len() - 1]).expect("test input"), None);
        let (request, used) = parse(raw).expect("test input").expect("test input");
        assert_eq!(
            (request.path.as_str(), used),
            ("/latest/api/token", raw.len())
        );
    }

    #[test]
    fn hostile_requests_are_errors_not_panics() {
        assert!(matches!(
            parse(b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(parse(&[b'A'; MAX_HEAD + 1]).is_err());
        let long = [b"GET /".as_slice(), &[b'a'; MAX_HEAD + 10]].concat();
        assert_eq!(parse(&long), Err(HttpError::TooLarge));
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(raw.as_bytes()), Err(HttpError::TooLarge));
        let big = b"PUT / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n";
        assert_eq!(parse(big), Err(HttpError::TooLarge));
        let bad = b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(parse(bad), Err(HttpError::Malformed(_))));
        let chunked = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(chunked), Err(HttpError::Framing));
        assert!(parse(b"GET * HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn answers_are_written_as_ec2_writes_them() {
        let text = String::from_utf8(Response::ok("i-1").to_bytes(false)).expect("test input");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n") && text.contains("Server: EC2ws\r\n"));
        assert!(text.ends_with("\r\n\r\ni-1"));
        let head = Response::ok("i-1").to_bytes(true);
        assert!(head.ends_with(b"\r\n\r\n"));
        let missing = String::from_utf8(Response::error(404).to_bytes(false)).expect("test input");
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(missing.contains("Content-Type: text/html\r\n"));
        assert!(missing.contains("<title>404 - Not Found</title>"));
    }
}
