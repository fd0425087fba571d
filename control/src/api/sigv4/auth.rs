//! Where the signature travels: the `Authorization` header (what botocore
//! sends with every EC2 POST) or presigned `X-Amz-*` query parameters.
//!
//! Parsing only; nothing here decides whether the signature is right.

use super::amz_date::AmzDate;
use super::canonical::header_values;
use super::SigV4Error;

/// The only algorithm SigV4 defines (SigV4a's ECDSA variant is not served).
pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The presigned form's signature parameter, excluded from its own
/// canonical query.
pub(crate) const PRESIGNED_SIGNATURE_KEY: &[u8] = b"X-Amz-Signature";

/// AWS's ceiling for `X-Amz-Expires`: seven days.
const MAX_PRESIGNED_EXPIRES: i64 = 7 * 24 * 3600;

/// `Credential=AKID/date/region/service/aws4_request`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CredentialScope {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

impl CredentialScope {
    fn parse(credential: &str) -> Result<Self, SigV4Error> {
        let malformed = || SigV4Error::MalformedCredential(credential.to_owned());
        let mut parts = credential.split('/');
        let mut next = || {
            parts
                .next()
                .filter(|part| !part.is_empty())
                .ok_or_else(malformed)
        };
        let scope = Self {
            access_key_id: next()?.to_owned(),
            date: next()?.to_owned(),
            region: next()?.to_owned(),
            service: next()?.to_owned(),
        };
        if next()? != "aws4_request" || parts.next().is_some() {
            return Err(malformed());
        }
        Ok(scope)
    }

    /// `date/region/service/aws4_request`, the string-to-sign's scope line.
    pub(crate) fn scope_line(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// Everything a request claims about its own signature.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub scope: CredentialScope,
    /// Lower-case, sorted, deduplicated; always contains `host`.
    pub signed_headers: Vec<String>,
    /// As sent (hex); compared in constant time after decoding.
    pub signature: String,
    pub date: AmzDate,
    /// Seconds a presigned URL stays valid; `None` for the header form.
    pub expires: Option<i64>,
}

/// Finds and parses the request's signature, whichever form it uses.
pub(crate) fn claimed(
    headers: &[(String, String)],
    query: &[(Vec<u8>, Vec<u8>)],
) -> Result<Claimed, SigV4Error> {
    let mut authorization = header_values(headers, "authorization");
    let presigned = query_value(query, "X-Amz-Algorithm")?.is_some()
        || query_value(query, "X-Amz-Signature")?.is_some();
    match (authorization.next(), presigned) {
        (Some(_), true) => Err(SigV4Error::TwoAuthForms),
        (Some(value), false) => {
            if authorization.next().is_some() {
                return Err(SigV4Error::RepeatedAuthorization);
            }
            from_header(value, headers)
        }
        (None, true) => from_query(query),
        (None, false) => Err(SigV4Error::MissingAuthentication),
    }
}

/// `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`,
/// components in any order, as AWS accepts.
fn from_header(value: &str, headers: &[(String, String)]) -> Result<Claimed, SigV4Error> {
    let value = value.trim();
    let (algorithm, components) = value.split_once(' ').unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(SigV4Error::UnsupportedAlgorithm(algorithm.to_owned()));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for component in components.split(',').map(str::trim) {
        let (name, value) = component
            .split_once('=')
            .ok_or_else(|| SigV4Error::MalformedAuthorization(component.to_owned()))?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(SigV4Error::MalformedAuthorization(component.to_owned())),
        };
        if slot.replace(value).is_some() {
            return Err(SigV4Error::MalformedAuthorization(format!(
                "{name} given twice"
            )));
        }
    }
    let missing = |what| SigV4Error::MissingAuthComponent(what);
    let date = match header_values(headers, "x-amz-date").next() {
        Some(text) => {
            AmzDate::parse(text.trim()).ok_or_else(|| SigV4Error::MalformedDate(text.to_owned()))?
        }
        None => {
            let text = header_values(headers, "date")
                .next()
                .ok_or(SigV4Error::MissingDate)?;
            AmzDate::parse_http_date(text.trim())
                .ok_or_else(|| SigV4Error::MalformedDate(text.to_owned()))?
        }
    };
    Ok(Claimed {
        scope: CredentialScope::parse(credential.ok_or(missing("Credential"))?)?,
        signed_headers: parse_signed_headers(signed_headers.ok_or(missing("SignedHeaders"))?)?,
        signature: signature.ok_or(missing("Signature"))?.to_owned(),
        date,
        expires: None,
    })
}

/// The presigned-URL parameters.
fn from_query(query: &[(Vec<u8>, Vec<u8>)]) -> Result<Claimed, SigV4Error> {
    let required = |name: &'static str| {
        query_value(query, name)?.ok_or(SigV4Error::MissingAuthComponent(name))
    };
    let algorithm = required("X-Amz-Algorithm")?;
    if algorithm != ALGORITHM {
        return Err(SigV4Error::UnsupportedAlgorithm(algorithm));
    }
    let date_text = required("X-Amz-Date")?;
    let date = AmzDate::parse(&date_text).ok_or(SigV4Error::MalformedDate(date_text))?;
    let expires_text = required("X-Amz-Expires")?;
    let expires = expires_text
        .parse::<i64>()
        .ok()
        .filter(|seconds| (1..=MAX_PRESIGNED_EXPIRES).contains(seconds))
        .ok_or(SigV4Error::MalformedExpires(expires_text))?;
    Ok(Claimed {
        scope: CredentialScope::parse(&required("X-Amz-Credential")?)?,
        signed_headers: parse_signed_headers(&required("X-Amz-SignedHeaders")?)?,
        signature: required("X-Amz-Signature")?,
        date,
        expires: Some(expires),
    })
}

/// The single value of a presigned parameter; a repeated one is rejected
/// because which copy was signed would be ambiguous.
fn query_value(
    query: &[(Vec<u8>, Vec<u8>)],
    name: &'static str,
) -> Result<Option<String>, SigV4Error> {
    let mut values = query
        .iter()
        .filter(|(key, _)| key.as_slice() == name.as_bytes())
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
    let first = values.next();
    if values.next().is_some() {
        return Err(SigV4Error::RepeatedQueryParameter(name));
    }
    Ok(first)
}

/// `host;x-amz-date` → sorted names; `host` is required because signing it
/// is what binds the signature to this endpoint.
fn parse_signed_headers(list: &str) -> Result<Vec<String>, SigV4Error> {
    let mut names: Vec<String> = list
        .split(';')
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    if names.iter().any(String::is_empty) {
        return Err(SigV4Error::MalformedSignedHeaders(list.to_owned()));
    }
    names.sort();
    names.dedup();
    if !names.iter().any(|name| name == "host") {
        return Err(SigV4Error::HostNotSigned);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const VALID: &str = "AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/ec2/aws4_request, \
                         SignedHeaders=host;x-amz-date, Signature=abcd";

    #[test]
    fn header_form_components_parse_in_any_order() {
        let reordered = "AWS4-HMAC-SHA256 Signature=abcd,SignedHeaders=x-amz-date;Host, \
                         Credential=AKID/20261125/us-east-1/ec2/aws4_request";
        for value in [VALID, reordered] {
            let request = headers(&[("Authorization", value), ("X-Amz-Date", "20261125T120000Z")]);
            let claimed = claimed(&request, &[]).expect(value);
            assert_eq!(claimed.scope.access_key_id, "AKID");
            assert_eq!(
                claimed.scope.scope_line(),
                "20261125/us-east-1/ec2/aws4_request"
            );
            assert_eq!(claimed.signed_headers, ["host", "x-amz-date"]);
            assert_eq!(claimed.signature, "abcd");
            assert_eq!(claimed.expires, None);
        }
    }

    #[test]
    fn date_header_is_the_fallback_for_x_amz_date() {
        let request = headers(&[
            ("authorization", VALID),
            ("Date", "Wed, 25 Nov 2026 12:00:00 GMT"),
        ]);
        let claimed = claimed(&request, &[]).expect("Date header");
        assert_eq!(claimed.date.to_string(), "20261125T120000Z");
    }

    #[test]
    fn malformed_header_forms_are_rejected_with_the_reason() {
        let cases = [
            ("AWS AKID:c2ln", "IncompleteSignature"),
            ("AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/ec2/aws4_request, Signature=ab", "IncompleteSignature"),
            ("AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/ec2, SignedHeaders=host, Signature=ab", "IncompleteSignature"),
            ("AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/ec2/aws4_request, SignedHeaders=x-amz-date, Signature=ab", "IncompleteSignature"),
            ("AWS4-HMAC-SHA256 garbage", "IncompleteSignature"),
            ("", "IncompleteSignature"),
        ];
        for (value, code) in cases {
            let request = headers(&[("Authorization", value), ("X-Amz-Date", "20261125T120000Z")]);
            let error = claimed(&request, &[]).expect_err(value);
            assert_eq!(error.code(), code, "{value}: {error}");
        }
    }

    #[test]
    fn missing_date_is_rejected() {
        let request = headers(&[("Authorization", VALID)]);
        assert!(matches!(
            claimed(&request, &[]),
            Err(SigV4Error::MissingDate)
        ));
    }

    #[test]
    fn no_signature_anywhere_is_missing_authentication() {
        assert!(matches!(
            claimed(&headers(&[("Host", "h")]), &[]),
            Err(SigV4Error::MissingAuthentication)
        ));
    }

    #[test]
    fn presigned_expires_must_be_within_seven_days() {
        let query = super::super::canonical::decode_query(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261125%2Fus-east-1%2Fec2%2Faws4_request\
             &X-Amz-Date=20261125T120000Z&X-Amz-Expires=604801&X-Amz-SignedHeaders=host&X-Amz-Signature=ab",
        );
        assert!(matches!(
            claimed(&[], &query),
            Err(SigV4Error::MalformedExpires(_))
        ));
    }
}
