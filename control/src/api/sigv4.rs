//! AWS Signature Version 4 verification of incoming requests.
//!
//! `ec2lab serve` speaks the EC2 Query API so the real `aws` CLI and boto3
//! work against it unchanged; they sign every request, so the server checks
//! those signatures the way EC2 does, with EC2's error codes. The check is
//! framework-agnostic: the HTTP layer hands over the raw request.
//!
//! Both places a signature can travel are accepted: the `Authorization`
//! header (what botocore sends with every EC2 POST) and presigned
//! `X-Amz-*` query parameters.
//!
//! ```
//! use std::time::SystemTime;
//! use ec2lab_control::api::sigv4::{verify, Credentials, Request};
//!
//! let lookup = |akid: &str| {
//!     (akid == "AKIDEXAMPLE").then(|| Credentials {
//!         access_key_id: akid.to_owned(),
//!         secret_access_key: "secret".to_owned(),
//!     })
//! };
//! let request = Request { method: "POST", path: "/", query: "", headers: &[], body: b"" };
//! let error = verify(&request, &lookup, SystemTime::now(), "us-east-1", "ec2").unwrap_err();
//! assert_eq!(error.code(), "AuthFailure");
//! ```

mod amz_date;
mod auth;
mod canonical;
mod signing;

use std::time::SystemTime;

use amz_date::AmzDate;
use canonical::{canonical_request, decode_query, header_values, sha256_hex, CanonicalInput};

/// How far a signed timestamp may be from the server's clock, either way
/// (AWS's rule: it bounds how long a captured request can be replayed).
const MAX_CLOCK_SKEW_SECONDS: i64 = 15 * 60;

/// An access key pair, as the credential store returns it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Keeps the secret out of logs and panic messages.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The request exactly as received: the signature covers the raw bytes, so
/// nothing here may be decoded or normalised by the caller first.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, … as on the request line.
    pub method: &'a str,
    /// The path as on the request line, still percent-encoded.
    pub path: &'a str,
    /// The raw query string without the `?`, still percent-encoded.
    pub query: &'a str,
    /// Every header as received, names in any case, repeats kept in order.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Who signed a request that verified, and for which region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    pub region: String,
}

/// Why a request's signature was not accepted. [`SigV4Error::code`] is the
/// EC2 error code to put in the error XML; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    #[error(
        "AWS was not able to validate the provided access credentials: the request has no \
         Authorization header and no X-Amz-Signature query parameter (sign it with SigV4)"
    )]
    MissingAuthentication,
    #[error("Only one auth mechanism allowed; both an Authorization header and X-Amz-* query parameters were given")]
    TwoAuthForms,
    #[error("The request carries more than one Authorization header")]
    RepeatedAuthorization,
    #[error("Query parameter '{0}' appears more than once")]
    RepeatedQueryParameter(&'static str),
    #[error("Unsupported AWS 'algorithm': '{0}' (only AWS4-HMAC-SHA256 is accepted)")]
    UnsupportedAlgorithm(String),
    #[error("Authorization header is malformed at '{0}'; expected 'AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...'")]
    MalformedAuthorization(String),
    #[error("Authorization requires the '{0}' parameter")]
    MissingAuthComponent(&'static str),
    #[error("Credential '{0}' is malformed; expected '<access key id>/<YYYYMMDD>/<region>/<service>/aws4_request'")]
    MalformedCredential(String),
    #[error("SignedHeaders '{0}' is malformed; expected lower-case names separated by ';'")]
    MalformedSignedHeaders(String),
    #[error("'Host' must be a 'SignedHeader' in the AWS Authorization")]
    HostNotSigned,
    #[error("Authorization requires existence of either a 'X-Amz-Date' or a 'Date' header")]
    MissingDate,
    #[error("Date '{0}' is malformed; expected ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'")]
    MalformedDate(String),
    #[error("X-Amz-Expires '{0}' must be a whole number of seconds from 1 to 604800")]
    MalformedExpires(String),
    #[error("Signature expired: {signed} is now earlier than {earliest} ({now} - 15 min.)")]
    Expired {
        signed: String,
        earliest: String,
        now: String,
    },
    #[error("Signature not yet current: {signed} is still later than {latest} ({now} + 15 min.)")]
    NotYetCurrent {
        signed: String,
        latest: String,
        now: String,
    },
    #[error("Request has expired: presigned at {signed} for {expires} seconds, it expired at {expired} (now {now})")]
    PresignedExpired {
        signed: String,
        expires: i64,
        expired: String,
        now: String,
    },
    #[error("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{scope}' != '{date}'")]
    ScopeDateMismatch { scope: String, date: String },
    #[error("Credential should be scoped to a valid region, not '{found}'; this endpoint serves '{expected}'")]
    WrongRegion { found: String, expected: String },
    #[error("Credential should be scoped to correct service: '{expected}', not '{found}'")]
    WrongService { found: String, expected: String },
    #[error("AWS was not able to validate the provided access credentials: access key id '{0}' is unknown here")]
    UnknownAccessKey(String),
    #[error("The request signs header '{0}' but does not carry it (was it dropped by a proxy?)")]
    SignedHeaderAbsent(String),
    #[error(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method."
    )]
    SignatureMismatch,
    #[error(
        "The provided 'x-amz-content-sha256' header does not match what was computed: \
         this endpoint acts on the body, so the header must be the SHA-256 of the body \
         sent (UNSIGNED-PAYLOAD is not accepted)"
    )]
    ContentHashMismatch,
}

impl SigV4Error {
    /// The EC2 error code: `AuthFailure` for anything about who signed,
    /// `RequestExpired` for the clock, `IncompleteSignature` when the
    /// signature cannot even be read.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Expired { .. } | Self::NotYetCurrent { .. } | Self::PresignedExpired { .. } => {
                "RequestExpired"
            }
            Self::TwoAuthForms
            | Self::RepeatedAuthorization
            | Self::RepeatedQueryParameter(_)
            | Self::UnsupportedAlgorithm(_)
            | Self::MalformedAuthorization(_)
            | Self::MissingAuthComponent(_)
            | Self::MalformedCredential(_)
            | Self::MalformedSignedHeaders(_)
            | Self::HostNotSigned
            | Self::MissingDate
            | Self::MalformedDate(_)
            | Self::MalformedExpires(_) => "IncompleteSignature",
            Self::MissingAuthentication
            | Self::ScopeDateMismatch { .. }
            | Self::WrongRegion { .. }
            | Self::WrongService { .. }
            | Self::UnknownAccessKey(_)
            | Self::SignedHeaderAbsent(_)
            | Self::SignatureMismatch => "AuthFailure",
            Self::ContentHashMismatch => "XAmzContentSHA256Mismatch",
        }
    }

    /// The HTTP status EC2 answers with for [`Self::code`]: 401 for
    /// `AuthFailure`, 400 for the others.
    pub fn http_status(&self) -> u16 {
        match self.code() {
            "AuthFailure" => 401,
            _ => 400,
        }
    }
}

/// Checks a request's SigV4 signature against the secret `credentials`
/// returns for its access key id, at time `now`, for this endpoint's
/// `region` and `service` (`"ec2"`).
///
/// The payload hash is always the SHA-256 of the `body` received: every
/// action acts on its body, so the signature must cover it. An
/// `X-Amz-Content-SHA256` header, signed or not, must equal that hash;
/// `UNSIGNED-PAYLOAD` or any other value is refused
/// ([`SigV4Error::ContentHashMismatch`]) before the signature is checked, so
/// a captured signature cannot be replayed with another body.
pub fn verify(
    request: &Request<'_>,
    credentials: &dyn Fn(&str) -> Option<Credentials>,
    now: SystemTime,
    region: &str,
    service: &str,
) -> Result<Verified, SigV4Error> {
    let query = decode_query(request.query);
    let claimed = auth::claimed(request.headers, &query)?;
    check_clock(
        claimed.date,
        claimed.expires,
        AmzDate::from_system_time(now),
    )?;

    let scope = &claimed.scope;
    if scope.date != claimed.date.date_stamp() {
        return Err(SigV4Error::ScopeDateMismatch {
            scope: scope.date.clone(),
            date: claimed.date.date_stamp(),
        });
    }
    if scope.region != region {
        return Err(SigV4Error::WrongRegion {
            found: scope.region.clone(),
            expected: region.to_owned(),
        });
    }
    if scope.service != service {
        return Err(SigV4Error::WrongService {
            found: scope.service.clone(),
            expected: service.to_owned(),
        });
    }
    let secret = credentials(&scope.access_key_id)
        .ok_or_else(|| SigV4Error::UnknownAccessKey(scope.access_key_id.clone()))?
        .secret_access_key;

    let payload_hash = sha256_hex(request.body);
    if header_values(request.headers, "x-amz-content-sha256")
        .any(|declared| !declared.trim().eq_ignore_ascii_case(&payload_hash))
    {
        return Err(SigV4Error::ContentHashMismatch);
    }
    let canonical = canonical_request(&CanonicalInput {
        method: request.method,
        path: request.path,
        query: &query,
        excluded_query_key: claimed.expires.map(|_| auth::PRESIGNED_SIGNATURE_KEY),
        headers: request.headers,
        signed_headers: &claimed.signed_headers,
        payload_hash: &payload_hash,
    })
    .map_err(|absent| SigV4Error::SignedHeaderAbsent(absent.0))?;
    let string_to_sign = signing::string_to_sign(&claimed.date.to_string(), scope, &canonical);
    if !signing::signature_matches(&secret, scope, &string_to_sign, &claimed.signature) {
        // The canonical request is what a client author needs to find the
        // difference, but it never goes back to the (unauthenticated) caller.
        log::debug!(
            "SigV4 mismatch for {}: canonical request:\n{canonical}\nstring to sign:\n{string_to_sign}",
            scope.access_key_id
        );
        return Err(SigV4Error::SignatureMismatch);
    }
    Ok(Verified {
        access_key_id: scope.access_key_id.clone(),
        region: scope.region.clone(),
    })
}

/// The header form must be within 15 minutes of `now` either way; a
/// presigned URL must not be used after `signed + expires`, nor signed more
/// than 15 minutes in the future.
fn check_clock(signed: AmzDate, expires: Option<i64>, now: AmzDate) -> Result<(), SigV4Error> {
    let latest = now.offset(MAX_CLOCK_SKEW_SECONDS);
    if signed > latest {
        return Err(SigV4Error::NotYetCurrent {
            signed: signed.to_string(),
            latest: latest.to_string(),
            now: now.to_string(),
        });
    }
    match expires {
        Some(expires) => {
            let expired = signed.offset(expires);
            if now > expired {
                return Err(SigV4Error::PresignedExpired {
                    signed: signed.to_string(),
                    expires,
                    expired: expired.to_string(),
                    now: now.to_string(),
                });
            }
        }
        None => {
            let earliest = now.offset(-MAX_CLOCK_SKEW_SECONDS);
            if signed < earliest {
                return Err(SigV4Error::Expired {
                    signed: signed.to_string(),
                    earliest: earliest.to_string(),
                    now: now.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2015-08-30T12:36:00Z, the AWS SigV4 test suite's clock.
    fn suite_now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_credentials(akid: &str) -> Option<Credentials> {
        (akid == "AKIDEXAMPLE").then(|| Credentials {
            access_key_id: akid.to_owned(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
        })
    }

    const GET_VANILLA_SIGNATURE: &str =
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

    fn get_vanilla_headers(signature: &str) -> Vec<(String, String)> {
        vec![
            ("Host".to_owned(), "example.amazonaws.com".to_owned()),
            ("X-Amz-Date".to_owned(), "20150830T123600Z".to_owned()),
            (
                "Authorization".to_owned(),
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, Signature={signature}"
                ),
            ),
        ]
    }

    /// The AWS SigV4 test suite's `get-vanilla` case, computed from scratch.
    #[test]
    fn signer_reproduces_aws_test_suite_get_vanilla() {
        let headers = get_vanilla_headers("");
        let canonical = canonical_request(&CanonicalInput {
            method: "GET",
            path: "/",
            query: &[],
            excluded_query_key: None,
            headers: &headers,
            signed_headers: &["host".to_owned(), "x-amz-date".to_owned()],
            payload_hash: &sha256_hex(b""),
        })
        .expect("headers present");
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let scope = auth::CredentialScope {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            date: "20150830".to_owned(),
            region: "us-east-1".to_owned(),
            service: "service".to_owned(),
        };
        let string_to_sign = signing::string_to_sign("20150830T123600Z", &scope, &canonical);
        assert_eq!(
            string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        let signature = signing::sign(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            &scope,
            &string_to_sign,
        );
        assert_eq!(signature, GET_VANILLA_SIGNATURE);
    }

    #[test]
    fn verify_accepts_aws_test_suite_get_vanilla() {
        let headers = get_vanilla_headers(GET_VANILLA_SIGNATURE);
        let request = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let verified = verify(
            &request,
            &suite_credentials,
            suite_now(),
            "us-east-1",
            "service",
        );
        assert_eq!(
            verified.expect("get-vanilla verifies"),
            Verified {
                access_key_id: "AKIDEXAMPLE".to_owned(),
                region: "us-east-1".to_owned(),
            }
        );
    }

    #[test]
    fn verify_rejects_get_vanilla_with_one_signature_digit_changed() {
        let mut wrong = GET_VANILLA_SIGNATURE.to_owned();
        wrong.replace_range(0..1, "6");
        let headers = get_vanilla_headers(&wrong);
        let request = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let error = verify(
            &request,
            &suite_credentials,
            suite_now(),
            "us-east-1",
            "service",
        )
        .expect_err("wrong signature");
        assert!(matches!(error, SigV4Error::SignatureMismatch), "{error}");
        assert_eq!((error.code(), error.http_status()), ("AuthFailure", 401));
    }

    #[test]
    fn clock_skew_is_allowed_up_to_fifteen_minutes_either_way() {
        let signed = AmzDate::parse("20261125T120000Z").expect("valid");
        for skew in [-900, 0, 900] {
            assert!(
                check_clock(signed, None, signed.offset(skew)).is_ok(),
                "{skew}"
            );
        }
        let late = check_clock(signed, None, signed.offset(901)).expect_err("expired");
        assert_eq!(
            late.to_string(),
            "Signature expired: 20261125T120000Z is now earlier than 20261125T120001Z \
             (20261125T121501Z - 15 min.)"
        );
        let early = check_clock(signed, None, signed.offset(-901)).expect_err("future");
        assert!(matches!(early, SigV4Error::NotYetCurrent { .. }));
        assert_eq!(early.code(), "RequestExpired");
    }

    #[test]
    fn presigned_urls_live_for_their_expiry_not_fifteen_minutes() {
        let signed = AmzDate::parse("20261125T120000Z").expect("valid");
        assert!(check_clock(signed, Some(3600), signed.offset(3600)).is_ok());
        let error = check_clock(signed, Some(3600), signed.offset(3601)).expect_err("expired");
        assert!(matches!(error, SigV4Error::PresignedExpired { .. }));
        assert_eq!(error.code(), "RequestExpired");
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let credentials = suite_credentials("AKIDEXAMPLE").expect("known");
        assert!(!format!("{credentials:?}").contains("EXAMPLEKEY"));
    }
}

/// Signs a request as botocore does (Authorization header form), for the
/// `ec2lab` command-line client: returns the headers to add (`host`,
/// `x-amz-date`, `authorization`). The request's own headers (e.g.
/// content-type) are signed too; its query must be empty (the Query
/// protocol sends everything in the body).
pub fn sign_request(
    request: &Request<'_>,
    host: &str,
    credentials: &Credentials,
    (region, service): (&str, &str),
    now: SystemTime,
) -> Vec<(String, String)> {
    let Request {
        method,
        path,
        headers,
        body,
        ..
    } = *request;
    let date = amz_date::AmzDate::from_system_time(now);
    let timestamp = date.to_string();
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    all.push(("host".to_string(), host.to_string()));
    all.push(("x-amz-date".to_string(), timestamp.clone()));
    let mut signed: Vec<String> = all.iter().map(|(k, _)| k.clone()).collect();
    signed.sort();
    signed.dedup();
    let payload_hash = canonical::sha256_hex(body);
    let input = canonical::CanonicalInput {
        method,
        path,
        query: &[],
        excluded_query_key: None,
        headers: &all,
        signed_headers: &signed,
        payload_hash: &payload_hash,
    };
    // Every signed header is present by construction.
    let canonical = canonical::canonical_request(&input).unwrap_or_default();
    let scope = auth::CredentialScope {
        access_key_id: credentials.access_key_id.clone(),
        date: date.date_stamp(),
        region: region.to_string(),
        service: service.to_string(),
    };
    let to_sign = signing::string_to_sign(&timestamp, &scope, &canonical);
    let signature = signing::sign(&credentials.secret_access_key, &scope, &to_sign);
    vec![
        ("host".to_string(), host.to_string()),
        ("x-amz-date".to_string(), timestamp),
        (
            "authorization".to_string(),
            format!(
                "{} Credential={}/{}, SignedHeaders={}, Signature={signature}",
                auth::ALGORITHM,
                credentials.access_key_id,
                scope.scope_line(),
                signed.join(";")
            ),
        ),
    ]
}

#[cfg(test)]
mod sign_tests {
    use super::*;

    #[test]
    fn our_own_signatures_verify_and_tampering_does_not() {
        let creds = Credentials {
            access_key_id: "AKIDEC2LAB".to_string(),
            secret_access_key: "secret".to_string(),
        };
        let body = b"Action=DescribeRegions&Version=2016-11-15";
        let content_type = (
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        );
        let now = SystemTime::now();
        let unsigned = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: std::slice::from_ref(&content_type),
            body,
        };
        let mut headers = sign_request(
            &unsigned,
            "127.0.0.1:8787",
            &creds,
            ("us-east-1", "ec2"),
            now,
        );
        headers.push(content_type);
        let lookup = |id: &str| (id == "AKIDEC2LAB").then(|| creds.clone());
        let request = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        verify(&request, &lookup, now, "us-east-1", "ec2").expect("verifies");
        let tampered = Request {
            body: b"Action=DescribeRegions&Version=2016-11-16",
            ..request
        };
        assert!(verify(&tampered, &lookup, now, "us-east-1", "ec2").is_err());
    }

    /// A signature made over one body, replayed with another body whose
    /// hash (or UNSIGNED-PAYLOAD) rides in an unsigned or signed
    /// X-Amz-Content-SHA256 header, is refused: the hash is always the
    /// body's own.
    #[test]
    fn a_signature_cannot_be_replayed_with_another_body_and_its_hash_header() {
        let creds = Credentials {
            access_key_id: "AKIDEC2LAB".to_string(),
            secret_access_key: "secret".to_string(),
        };
        let lookup = |id: &str| (id == "AKIDEC2LAB").then(|| creds.clone());
        let now = SystemTime::now();
        let signed_body = b"Action=DescribeRegions&Version=2016-11-15";
        let evil_body = b"Action=CreateTags&ResourceId.1=i-0&Tag.1.Key=k&Tag.1.Value=v";
        let sign = |extra: &[(String, String)], body: &[u8]| {
            let unsigned = Request {
                method: "POST",
                path: "/",
                query: "",
                headers: extra,
                body,
            };
            let mut headers = sign_request(
                &unsigned,
                "127.0.0.1:8787",
                &creds,
                ("us-east-1", "ec2"),
                now,
            );
            headers.extend_from_slice(extra);
            headers
        };
        let hash_header = |value: &str| ("X-Amz-Content-SHA256".to_string(), value.to_string());
        let verify_with = |headers: &[(String, String)], body: &[u8]| {
            verify(
                &Request {
                    method: "POST",
                    path: "/",
                    query: "",
                    headers,
                    body,
                },
                &lookup,
                now,
                "us-east-1",
                "ec2",
            )
        };

        // Unsigned header carrying the signed body's hash, evil body.
        let mut headers = sign(&[], signed_body);
        headers.push(hash_header(&sha256_hex(signed_body)));
        assert!(matches!(
            verify_with(&headers, evil_body),
            Err(SigV4Error::ContentHashMismatch)
        ));
        // Signed UNSIGNED-PAYLOAD: refused whatever the body.
        let headers = sign(&[hash_header("UNSIGNED-PAYLOAD")], signed_body);
        let refused = verify_with(&headers, signed_body).expect_err("UNSIGNED-PAYLOAD");
        assert_eq!(refused.code(), "XAmzContentSHA256Mismatch");
        assert_eq!(refused.http_status(), 400);
        // A signed header with the body's true hash still verifies.
        let headers = sign(&[hash_header(&sha256_hex(signed_body))], signed_body);
        verify_with(&headers, signed_body).expect("a true content hash verifies");
        assert!(verify_with(&headers, evil_body).is_err());
    }
}
