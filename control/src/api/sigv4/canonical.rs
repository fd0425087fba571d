//! The canonical request: the exact bytes both sides hash, rebuilt here from
//! the request as received.
//!
//! Where the AWS documentation leaves room, this follows what botocore (the
//! `aws` CLI and boto3) does, since those are the clients ec2lab serves.

use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// RFC 3986 unreserved characters stay; everything else is `%XX` (upper
/// case), which is SigV4's `UriEncode`.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `UriEncode` with `/` kept, for the path.
const PATH: &AsciiSet = &QUERY_COMPONENT.remove(b'/');

/// The inputs of a canonical request, borrowed from the incoming request.
pub(crate) struct CanonicalInput<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Decoded query parameters, in received order.
    pub query: &'a [(Vec<u8>, Vec<u8>)],
    /// Query keys left out (the presigned form's own `X-Amz-Signature`).
    pub excluded_query_key: Option<&'a [u8]>,
    pub headers: &'a [(String, String)],
    /// Lower-case, sorted, deduplicated names from `SignedHeaders`.
    pub signed_headers: &'a [String],
    pub payload_hash: &'a str,
}

/// A signed header the request does not carry; the verifier reports it
/// rather than signing an empty value that can only mismatch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AbsentSignedHeader(pub String);

/// Builds the canonical request: method, URI, query, headers, signed
/// header list and payload hash, newline-separated.
pub(crate) fn canonical_request(input: &CanonicalInput<'_>) -> Result<String, AbsentSignedHeader> {
    let mut headers = String::new();
    for name in input.signed_headers {
        let values: Vec<String> = header_values(input.headers, name).map(trim_all).collect();
        if values.is_empty() {
            return Err(AbsentSignedHeader(name.clone()));
        }
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    Ok([
        input.method,
        &canonical_uri(input.path),
        &canonical_query(input.query, input.excluded_query_key),
        &headers,
        &input.signed_headers.join(";"),
        input.payload_hash,
    ]
    .join("\n"))
}

/// Values of every header named `name` (any case), in received order.
pub(crate) fn header_values<'h>(
    headers: &'h [(String, String)],
    name: &'h str,
) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .iter()
        .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Splits a raw query string into percent-decoded pairs.
///
/// `+` stays a literal plus: SigV4 clients encode spaces as `%20`, and
/// treating `+` as a space would make `a+b` and `a%2Bb` sign alike.
pub(crate) fn decode_query(raw: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode_str(key).collect(),
                percent_decode_str(value).collect(),
            )
        })
        .collect()
}

/// Hex SHA-256, the digest SigV4 uses for the payload and the request.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The path with dot segments and empty segments removed (as botocore
/// normalises it before signing), then encoded once more: the wire form is
/// already encoded, so `%20` signs as `%2520` — AWS's "encode twice" rule
/// for services other than S3.
fn canonical_uri(raw_path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw_path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut normalized = String::from("/");
    normalized.push_str(&segments.join("/"));
    if raw_path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    percent_encode(normalized.as_bytes(), PATH).to_string()
}

/// Parameters re-encoded with `UriEncode`, sorted by key then value.
fn canonical_query(query: &[(Vec<u8>, Vec<u8>)], excluded: Option<&[u8]>) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .filter(|(key, _)| Some(key.as_slice()) != excluded)
        .map(|(key, value)| {
            (
                percent_encode(key, QUERY_COMPONENT).to_string(),
                percent_encode(value, QUERY_COMPONENT).to_string(),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// SigV4's `Trimall`: strip the ends and collapse inner whitespace runs to
/// one space (botocore uses Python's `' '.join(value.split())`).
fn trim_all(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_drops_dot_and_empty_segments_and_encodes_again() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("//a/./b/../c/"), "/a/c/");
        assert_eq!(canonical_uri("/../.."), "/");
        assert_eq!(canonical_uri("/a%20b/~x"), "/a%2520b/~x");
    }

    #[test]
    fn query_is_sorted_by_key_then_value_and_re_encoded() {
        let query = decode_query("b=2&a=z&a=y&c=%2fx+y&d&&e=%7E");
        assert_eq!(
            canonical_query(&query, None),
            "a=y&a=z&b=2&c=%2Fx%2By&d=&e=~"
        );
    }

    #[test]
    fn excluded_query_key_is_left_out() {
        let query = decode_query("X-Amz-Signature=abc&Action=X");
        assert_eq!(
            canonical_query(&query, Some(b"X-Amz-Signature")),
            "Action=X"
        );
    }

    #[test]
    fn header_values_are_trimmed_collapsed_and_joined_in_order() {
        let headers = vec![
            ("X-Multi".to_owned(), "  a   b ".to_owned()),
            ("Host".to_owned(), "h".to_owned()),
            ("x-multi".to_owned(), "c\t d".to_owned()),
        ];
        let signed = vec!["host".to_owned(), "x-multi".to_owned()];
        let request = canonical_request(&CanonicalInput {
            method: "GET",
            path: "/",
            query: &[],
            excluded_query_key: None,
            headers: &headers,
            signed_headers: &signed,
            payload_hash: "UNSIGNED-PAYLOAD",
        });
        assert_eq!(
            request,
            Ok("GET\n/\n\nhost:h\nx-multi:a b,c d\n\nhost;x-multi\nUNSIGNED-PAYLOAD".to_owned())
        );
    }

    #[test]
    fn absent_signed_header_is_reported_by_name() {
        let signed = vec!["host".to_owned()];
        let request = canonical_request(&CanonicalInput {
            method: "GET",
            path: "/",
            query: &[],
            excluded_query_key: None,
            headers: &[],
            signed_headers: &signed,
            payload_hash: "",
        });
        assert_eq!(request, Err(AbsentSignedHeader("host".to_owned())));
    }
}
