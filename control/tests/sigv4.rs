//! The SigV4 verifier against requests signed by real botocore (the library
//! under the `aws` CLI and boto3), from `fixtures/sigv4_vectors.json`.
//!
//! Failure cases are derived from those valid requests by changing one
//! thing each, so every rejection is attributable to that one change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ec2lab_control::api::sigv4::{verify, Credentials, Request, SigV4Error, Verified};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Vectors {
    timestamp: String,
    access_key_id: String,
    secret_access_key: String,
    cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Case {
    name: String,
    region: String,
    service: String,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Case {
    fn request(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: self.body.as_bytes(),
        }
    }

    fn set_header(&mut self, name: &str, value: &str) {
        for (key, old) in &mut self.headers {
            if key.eq_ignore_ascii_case(name) {
                *old = value.to_owned();
            }
        }
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn parse_vectors(json: &str) -> Vectors {
    serde_json::from_str(json).expect("sigv4_vectors.json has the documented shape")
}

fn vectors() -> Vectors {
    let json = std::fs::read_to_string(fixtures_dir().join("sigv4_vectors.json"))
        .expect("fixture sigv4_vectors.json is committed");
    parse_vectors(&json)
}

fn case(name: &str) -> Case {
    vectors()
        .cases
        .into_iter()
        .find(|case| case.name == name)
        .unwrap_or_else(|| panic!("fixture has no case {name}"))
}

/// The instant botocore's clock was frozen at (`20261125T120000Z`).
fn signing_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_608_000)
}

fn lookup_in(vectors: &Vectors) -> impl Fn(&str) -> Option<Credentials> + '_ {
    |akid| {
        (akid == vectors.access_key_id).then(|| Credentials {
            access_key_id: akid.to_owned(),
            secret_access_key: vectors.secret_access_key.clone(),
        })
    }
}

/// Verifies `case` against the fixture's credentials as a us-east-1 EC2
/// endpoint whose clock reads `now`.
fn check_at(case: &Case, now: SystemTime) -> Result<Verified, SigV4Error> {
    let vectors = vectors();
    let lookup = lookup_in(&vectors);
    verify(&case.request(), &lookup, now, "us-east-1", "ec2")
}

fn check(case: &Case) -> Result<Verified, SigV4Error> {
    check_at(case, signing_time() + Duration::from_secs(5))
}

fn assert_rejected(result: Result<Verified, SigV4Error>, code: &str) -> SigV4Error {
    let error = result.expect_err("request must be rejected");
    assert_eq!(error.code(), code, "{error}");
    error
}

#[test]
fn fixture_clock_matches_its_timestamp() {
    assert_eq!(vectors().timestamp, "20261125T120000Z");
    let since_epoch = signing_time()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    // 2026-11-25 is day 20782 of the Unix epoch.
    assert_eq!(since_epoch.as_secs(), 20_782 * 86_400 + 12 * 3600);
}

#[test]
fn every_botocore_signed_request_verifies_in_its_own_region() {
    let vectors = vectors();
    for case in &vectors.cases {
        let verified = verify(
            &case.request(),
            &lookup_in(&vectors),
            signing_time() + Duration::from_secs(5),
            &case.region,
            &case.service,
        );
        assert_eq!(
            verified.unwrap_or_else(|error| panic!("{}: {error}", case.name)),
            Verified {
                access_key_id: vectors.access_key_id.clone(),
                region: case.region.clone(),
            },
            "{}",
            case.name
        );
    }
}

#[test]
fn header_names_are_matched_in_any_case() {
    let mut case = case("describe_instances");
    for (name, _) in &mut case.headers {
        *name = name.to_ascii_lowercase();
    }
    check(&case).expect("lower-case header names verify");
}

#[test]
fn query_parameter_order_on_the_wire_does_not_matter() {
    let mut case = case("get_repeated_query_keys");
    let mut pairs: Vec<&str> = case.query.split('&').collect();
    pairs.reverse();
    case.query = pairs.join("&");
    check(&case).expect("canonical query is sorted");
}

#[test]
fn request_signed_twenty_minutes_ago_is_request_expired() {
    let error = assert_rejected(
        check_at(
            &case("describe_instances"),
            signing_time() + Duration::from_secs(20 * 60),
        ),
        "RequestExpired",
    );
    assert_eq!(
        error.to_string(),
        "Signature expired: 20261125T120000Z is now earlier than 20261125T120500Z \
         (20261125T122000Z - 15 min.)"
    );
}

#[test]
fn request_signed_twenty_minutes_ahead_is_request_expired() {
    let error = assert_rejected(
        check_at(
            &case("describe_instances"),
            signing_time() - Duration::from_secs(20 * 60),
        ),
        "RequestExpired",
    );
    assert!(matches!(error, SigV4Error::NotYetCurrent { .. }), "{error}");
}

#[test]
fn wrong_secret_key_is_auth_failure() {
    let case = case("describe_instances");
    let lookup = |akid: &str| {
        Some(Credentials {
            access_key_id: akid.to_owned(),
            secret_access_key: "not-the-secret".to_owned(),
        })
    };
    let error = assert_rejected(
        verify(&case.request(), &lookup, signing_time(), "us-east-1", "ec2"),
        "AuthFailure",
    );
    assert!(matches!(error, SigV4Error::SignatureMismatch), "{error}");
    assert_eq!(
        error.to_string(),
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method."
    );
}

#[test]
fn unknown_access_key_is_auth_failure() {
    let case = case("describe_instances");
    let error = assert_rejected(
        verify(
            &case.request(),
            &|_| None,
            signing_time(),
            "us-east-1",
            "ec2",
        ),
        "AuthFailure",
    );
    assert!(error.to_string().contains("AKIDEC2LABEXAMPLE"), "{error}");
}

#[test]
fn body_with_one_byte_changed_is_auth_failure() {
    let mut case = case("run_instances_user_data");
    assert!(case.body.contains("MinCount=1&"));
    case.body = case.body.replacen("MinCount=1&", "MinCount=2&", 1);
    let error = assert_rejected(check(&case), "AuthFailure");
    assert!(matches!(error, SigV4Error::SignatureMismatch), "{error}");
}

#[test]
fn changed_host_header_is_auth_failure() {
    let mut case = case("describe_instances");
    case.set_header("Host", "127.0.0.1:8788");
    let error = assert_rejected(check(&case), "AuthFailure");
    assert!(matches!(error, SigV4Error::SignatureMismatch), "{error}");
}

#[test]
fn dropped_signed_header_is_auth_failure_naming_it() {
    let mut case = case("describe_instances");
    case.headers
        .retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
    let error = assert_rejected(check(&case), "AuthFailure");
    assert!(error.to_string().contains("'content-type'"), "{error}");
}

#[test]
fn unsigned_header_may_change() {
    let mut case = case("describe_instances");
    case.set_header("User-Agent", "something else entirely");
    check(&case).expect("User-Agent is not signed");
}

#[test]
fn missing_authorization_is_auth_failure() {
    let mut case = case("describe_instances");
    case.headers
        .retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
    let error = assert_rejected(check(&case), "AuthFailure");
    assert!(
        matches!(error, SigV4Error::MissingAuthentication),
        "{error}"
    );
}

#[test]
fn malformed_authorization_is_incomplete_signature() {
    let mut case = case("describe_instances");
    case.set_header(
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDEC2LABEXAMPLE",
    );
    assert_rejected(check(&case), "IncompleteSignature");
    case.set_header("Authorization", "AWS AKIDEC2LABEXAMPLE:c2lnbmF0dXJl");
    assert_rejected(check(&case), "IncompleteSignature");
}

#[test]
fn scope_for_another_region_is_auth_failure_naming_it() {
    let error = assert_rejected(check(&case("describe_instances_us_west_2")), "AuthFailure");
    assert!(matches!(error, SigV4Error::WrongRegion { .. }), "{error}");
    assert!(error.to_string().contains("'us-west-2'"), "{error}");
}

#[test]
fn scope_for_another_service_is_auth_failure_naming_it() {
    let case = case("describe_instances");
    let vectors = vectors();
    let error = assert_rejected(
        verify(
            &case.request(),
            &lookup_in(&vectors),
            signing_time(),
            "us-east-1",
            "s3",
        ),
        "AuthFailure",
    );
    assert!(error.to_string().contains("'ec2'"), "{error}");
}

#[test]
fn presigned_url_is_valid_until_its_expiry() {
    let case = case("presigned_describe_instances");
    check_at(&case, signing_time() + Duration::from_secs(300)).expect("within X-Amz-Expires");
    let error = assert_rejected(
        check_at(&case, signing_time() + Duration::from_secs(301)),
        "RequestExpired",
    );
    assert!(
        matches!(error, SigV4Error::PresignedExpired { .. }),
        "{error}"
    );
}

#[test]
fn presigned_url_with_changed_parameter_is_auth_failure() {
    let mut case = case("presigned_describe_instances");
    case.query = case
        .query
        .replace("i-0123456789abcdef0", "i-0123456789abcdef1");
    let error = assert_rejected(check(&case), "AuthFailure");
    assert!(matches!(error, SigV4Error::SignatureMismatch), "{error}");
}

#[test]
fn presigned_url_with_an_authorization_header_too_is_rejected() {
    let header = case("describe_instances")
        .headers
        .into_iter()
        .find(|(name, _)| name == "Authorization")
        .expect("header form case has Authorization");
    let mut presigned = case("presigned_describe_instances");
    presigned.headers.push(header);
    assert_rejected(check(&presigned), "IncompleteSignature");
}

/// Reruns the generator when the venv from `scripts/python-env` exists, so
/// the committed fixture cannot drift from what the script (and botocore)
/// produce. Skipped, with a note, where the venv is absent.
#[test]
fn fixture_matches_fresh_botocore_output_when_venv_exists() {
    let cache = std::env::var_os("EC2LAB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/ec2lab")));
    let Some(python) = cache
        .map(|cache| cache.join("venv/bin/python"))
        .filter(|python| python.exists())
    else {
        eprintln!("skipped: no ec2lab venv (create it with scripts/python-env)");
        return;
    };
    let output = Command::new(&python)
        .arg(fixtures_dir().join("sigv4_vectors.py"))
        .output()
        .expect("run sigv4_vectors.py");
    assert!(
        output.status.success(),
        "sigv4_vectors.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fresh = parse_vectors(&String::from_utf8_lossy(&output.stdout));
    // User-Agent names the botocore and Python versions and is not signed;
    // everything else, signatures included, must be identical.
    let without_user_agent = |mut vectors: Vectors| {
        for case in &mut vectors.cases {
            case.headers
                .retain(|(name, _)| !name.eq_ignore_ascii_case("user-agent"));
        }
        vectors
    };
    assert_eq!(
        without_user_agent(fresh),
        without_user_agent(vectors()),
        "regenerate: {} control/tests/fixtures/sigv4_vectors.py > control/tests/fixtures/sigv4_vectors.json",
        python.display()
    );
}
