//! EC2 Query parameters: the form-encoded body (and URL query) of a request
//! as an ordered multimap, with the typed accessors handlers use.
//!
//! EC2 flattens lists and structures into dotted names: a list is
//! `InstanceId.1`, `InstanceId.2`…; a list of structures is `Filter.1.Name`,
//! `Filter.1.Value.1`…, nested as deep as the model goes
//! (`TagSpecification.1.Tag.2.Key`). [`Params::list`] and
//! [`Params::structs`] undo that; [`Params::structs`] returns sub-views whose
//! names are relative, so the same accessors work at every depth.
//!
//! Every accessor that can fail returns the EC2 error a client would get from
//! AWS for the same input, so handlers just use `?`.

use std::collections::BTreeMap;
use std::fmt;

use super::error::Ec2Error;

/// Parameters that every action accepts besides its own.
const COMMON_PARAMETERS: &[&str] = &["Action", "Version"];

/// A presigned URL's SigV4 parameters: authentication, not the action's, so
/// they never reach a handler (which would call them unknown).
const PRESIGN_PARAMETERS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// At most this many members in one list parameter (`InstanceId.N`,
/// `ResourceId.N`, `Filter.N`, `Tag.N`…): EC2's largest documented list
/// limit (1,000 resource ids per call), so no request makes a handler loop
/// over more, whatever the body size allows.
pub const MAX_LIST_MEMBERS: usize = 1000;

/// The parameters of one request, or of one member of a list of structures.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// Names relative to `path`, in request order. A name given twice keeps
    /// both pairs; accessors read the first, as AWS does.
    pairs: Vec<(String, String)>,
    /// Where this view sits in the request (`""` at the top,
    /// `"Filter.2"` below), for error messages that name the full parameter.
    path: String,
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Params")
            .field("path", &self.path)
            .field("pairs", &self.pairs)
            .finish()
    }
}

impl Params {
    /// Parameters from a URL query string and a form-encoded body. The query
    /// comes first: the SDKs put everything in the body, and a hand-written
    /// `GET /?Action=…` has no body, so the order only matters for names
    /// given in both, where the URL wins.
    ///
    /// The URL query is percent-decoded with `+` kept a literal plus, as the
    /// SigV4 verifier decodes it ([`super::sigv4`]): were `+` a space here,
    /// `a+b` and `a%2Bb` would sign alike and mean different things. The
    /// presigned-URL authentication parameters are left out.
    pub fn from_request(query: Option<&str>, body: &[u8]) -> Self {
        let from_query = query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let decode = |text: &str| {
                    percent_encoding::percent_decode_str(text)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                (decode(key), decode(value))
            })
            .filter(|(key, _)| !PRESIGN_PARAMETERS.contains(&key.as_str()));
        let from_body = form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned()));
        let pairs = from_query.chain(from_body).collect();
        Self {
            pairs,
            path: String::new(),
        }
    }

    /// Parameters from name/value pairs, mainly for tests and for handlers
    /// that synthesise requests.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            path: String::new(),
        }
    }

    /// All pairs in request order, names relative to this view.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// True when no parameter is present in this view.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The full name of a parameter of this view, as the client sent it.
    pub fn full_name(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The `Action` parameter. A missing one is `MissingAction`; whether the
    /// name is a real action is the dispatcher's business.
    pub fn action(&self) -> Result<&str, Ec2Error> {
        match self.optional("Action") {
            Some(action) if !action.is_empty() => Ok(action),
            _ => Err(Ec2Error::missing_action()),
        }
    }

    /// The `Version` parameter. Any value is accepted: ec2lab speaks one
    /// version, and the SDKs always send 2016-11-15.
    pub fn version(&self) -> Result<&str, Ec2Error> {
        self.required("Version")
    }

    /// A parameter's value if present (the first, if given twice).
    pub fn optional(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter that must be present and non-empty.
    pub fn required(&self, name: &str) -> Result<&str, Ec2Error> {
        match self.optional(name) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(Ec2Error::missing_parameter(&self.full_name(name))),
        }
    }

    /// A boolean parameter: `true`/`false` in any case, as EC2 accepts.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, Ec2Error> {
        let Some(value) = self.optional(name) else {
            return Ok(None);
        };
        if value.eq_ignore_ascii_case("true") {
            Ok(Some(true))
        } else if value.eq_ignore_ascii_case("false") {
            Ok(Some(false))
        } else {
            Err(self.invalid_value(name, value, "expected true or false"))
        }
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Result<Option<i64>, Ec2Error> {
        let Some(value) = self.optional(name) else {
            return Ok(None);
        };
        value
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| self.invalid_value(name, value, "expected an integer"))
    }

    /// An integer parameter that must lie in `min..=max` (e.g. `MaxResults`).
    pub fn int_in(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, Ec2Error> {
        match self.int(name)? {
            Some(n) if n < min || n > max => Err(self.invalid_value(
                name,
                &n.to_string(),
                &format!("must be between {min} and {max}"),
            )),
            other => Ok(other),
        }
    }

    /// `DryRun`, false when absent.
    pub fn dry_run(&self) -> Result<bool, Ec2Error> {
        Ok(self.bool("DryRun")?.unwrap_or(false))
    }

    /// The values of a flattened list `name.1`, `name.2`…, in index order.
    /// Gaps are tolerated (AWS does not insist on contiguous indices); an
    /// index that is not a positive integer, or one given twice, is an
    /// `InvalidParameterValue`. Deeper names (`name.1.Key`) belong to
    /// [`Params::structs`] and are not values of this list.
    pub fn list(&self, name: &str) -> Result<Vec<&str>, Ec2Error> {
        let mut by_index: BTreeMap<u32, &str> = BTreeMap::new();
        for (key, value) in &self.pairs {
            let Some(rest) = strip_member_prefix(key, name) else {
                continue;
            };
            if rest.contains('.') {
                continue;
            }
            let index = self.parse_index(name, rest)?;
            if by_index.insert(index, value.as_str()).is_some() {
                return Err(Ec2Error::invalid_parameter_value(format!(
                    "The parameter {} is given more than once",
                    self.full_name(&format!("{name}.{index}"))
                )));
            }
            self.check_members(name, by_index.len())?;
        }
        Ok(by_index.into_values().collect())
    }

    /// How many members `name.N` (values or structures) the request gives,
    /// without parsing them: for limits with their own error code (EC2's
    /// `FilterLimitExceeded`) that must be checked before
    /// [`MAX_LIST_MEMBERS`] is.
    pub fn member_count(&self, name: &str) -> usize {
        let mut indices = std::collections::HashSet::new();
        for (key, _) in &self.pairs {
            if let Some(rest) = strip_member_prefix(key, name) {
                indices.insert(rest.split('.').next().unwrap_or(rest));
            }
        }
        indices.len()
    }

    fn check_members(&self, name: &str, count: usize) -> Result<(), Ec2Error> {
        if count > MAX_LIST_MEMBERS {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "The parameter {} has more than {MAX_LIST_MEMBERS} members",
                self.full_name(name)
            )));
        }
        Ok(())
    }

    /// The members of a flattened list of structures (`Filter.1.Name`,
    /// `Filter.1.Value.1`, `Filter.2.Name`…) as views named relative to
    /// their member (`Name`, `Value.1`), in index order.
    pub fn structs(&self, name: &str) -> Result<Vec<Params>, Ec2Error> {
        let mut by_index: BTreeMap<u32, Params> = BTreeMap::new();
        for (key, value) in &self.pairs {
            let Some(rest) = strip_member_prefix(key, name) else {
                continue;
            };
            let Some((index, field)) = rest.split_once('.') else {
                return Err(Ec2Error::invalid_parameter_value(format!(
                    "The parameter {} must name a member field, as in {}.1.Name",
                    self.full_name(key),
                    self.full_name(name)
                )));
            };
            let index = self.parse_index(name, index)?;
            by_index
                .entry(index)
                .or_insert_with(|| Params {
                    pairs: Vec::new(),
                    path: self.full_name(&format!("{name}.{index}")),
                })
                .pairs
                .push((field.to_owned(), value.clone()));
            self.check_members(name, by_index.len())?;
        }
        Ok(by_index.into_values().collect())
    }

    /// `UnknownParameter` for the first parameter whose top-level name is
    /// not in `known` (or `Action`/`Version` at the top). Handlers call it
    /// with their model's member names so typos fail loudly, as on EC2.
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), Ec2Error> {
        for (key, _) in &self.pairs {
            let head = key.split('.').next().unwrap_or(key);
            let is_common = self.path.is_empty() && COMMON_PARAMETERS.contains(&head);
            if !is_common && !known.contains(&head) {
                return Err(Ec2Error::unknown_parameter(&self.full_name(key)));
            }
        }
        Ok(())
    }

    fn parse_index(&self, name: &str, index: &str) -> Result<u32, Ec2Error> {
        match index.parse::<u32>() {
            Ok(n) if n >= 1 && !index.starts_with('+') => Ok(n),
            _ => Err(Ec2Error::invalid_parameter_value(format!(
                "The parameter {} has an invalid list index '{index}'; indices start at 1",
                self.full_name(name)
            ))),
        }
    }

    fn invalid_value(&self, name: &str, value: &str, why: &str) -> Ec2Error {
        Ec2Error::invalid_parameter_value(format!(
            "Value ({value}) for parameter {} is invalid: {why}",
            self.full_name(name)
        ))
    }
}

/// `"Filter.1.Name"` with prefix `"Filter"` → `Some("1.Name")`.
fn strip_member_prefix<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    key.strip_prefix(prefix)?.strip_prefix('.')
}

#[cfg(test)]
mod tests {
    /// In the URL, `+` is a plus (as signed) and `%20` a space; presigned
    /// authentication parameters are not the action's; the body keeps form
    /// rules (its bytes are signed whole).
    #[test]
    fn the_url_query_decodes_as_it_is_signed_and_drops_presign_parameters() {
        let params = super::Params::from_request(
            Some("Action=CreateTags&Tag.1.Value=a+b%2Bc%20d&X-Amz-Signature=00&X-Amz-Date=1"),
            b"Tag.1.Key=x+y",
        );
        assert_eq!(params.optional("Tag.1.Value"), Some("a+b+c d"));
        assert_eq!(params.optional("Tag.1.Key"), Some("x y"));
        assert_eq!(params.optional("X-Amz-Signature"), None);
        params
            .reject_unknown(&["Tag"])
            .expect("presign parameters are not unknown");
    }

    use super::*;

    fn params(body: &str) -> Params {
        Params::from_request(None, body.as_bytes())
    }

    #[test]
    fn form_body_is_decoded_in_order() {
        let p = params("Action=DescribeRegions&Version=2016-11-15&Name=a%20b+c%26d");
        assert_eq!(p.action(), Ok("DescribeRegions"));
        assert_eq!(p.version(), Ok("2016-11-15"));
        assert_eq!(p.optional("Name"), Some("a b c&d"));
        let names: Vec<_> = p.pairs().map(|(k, _)| k).collect();
        assert_eq!(names, ["Action", "Version", "Name"]);
    }

    #[test]
    fn url_query_and_body_are_both_read_and_url_wins() {
        let p = Params::from_request(Some("Action=A&X=url"), b"X=body&Version=v");
        assert_eq!(p.action(), Ok("A"));
        assert_eq!(p.optional("X"), Some("url"));
        assert_eq!(p.version(), Ok("v"));
    }

    #[test]
    fn missing_action_and_version_use_aws_codes() {
        let p = params("Version=2016-11-15");
        assert_eq!(
            p.action().map_err(|e| e.code().to_owned()),
            Err("MissingAction".into())
        );
        let p = params("Action=&Version=");
        assert_eq!(
            p.action().map_err(|e| e.code().to_owned()),
            Err("MissingAction".into())
        );
        assert_eq!(
            p.version().map_err(|e| e.code().to_owned()),
            Err("MissingParameter".into())
        );
    }

    #[test]
    fn list_is_sorted_by_index_and_tolerates_gaps() {
        let p = params("InstanceId.10=j&InstanceId.2=b&InstanceId.1=a&InstanceIdX.1=no&Other=1");
        assert_eq!(p.list("InstanceId"), Ok(vec!["a", "b", "j"]));
        assert_eq!(p.list("Absent"), Ok(vec![]));
    }

    #[test]
    fn list_rejects_bad_and_duplicate_indices() {
        for body in [
            "InstanceId.0=a",
            "InstanceId.x=a",
            "InstanceId.-1=a",
            "InstanceId.+1=a",
            "InstanceId.=a",
        ] {
            let err = params(body).list("InstanceId").expect_err(body);
            assert_eq!(err.code(), "InvalidParameterValue", "{body}");
        }
        let err = params("InstanceId.1=a&InstanceId.1=b")
            .list("InstanceId")
            .expect_err("duplicate");
        assert_eq!(err.code(), "InvalidParameterValue");
    }

    #[test]
    fn filters_with_value_lists_are_views() {
        let p = params(
            "Filter.2.Name=instance-type&Filter.2.Value.1=t2.*\
             &Filter.1.Name=region-name&Filter.1.Value.2=eu-west-1&Filter.1.Value.1=us-east-1",
        );
        let filters = p.structs("Filter").expect("filters");
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[0].required("Name"), Ok("region-name"));
        assert_eq!(filters[0].list("Value"), Ok(vec!["us-east-1", "eu-west-1"]));
        assert_eq!(filters[1].required("Name"), Ok("instance-type"));
        assert_eq!(filters[1].list("Value"), Ok(vec!["t2.*"]));
    }

    #[test]
    fn nested_structs_name_full_paths_in_errors() {
        let p = params(
            "TagSpecification.1.ResourceType=instance\
             &TagSpecification.1.Tag.2.Key=env&TagSpecification.1.Tag.2.Value=lab\
             &TagSpecification.1.Tag.1.Key=Name",
        );
        let specs = p.structs("TagSpecification").expect("specs");
        assert_eq!(specs[0].optional("ResourceType"), Some("instance"));
        let tags = specs[0].structs("Tag").expect("tags");
        assert_eq!(tags[0].optional("Key"), Some("Name"));
        assert_eq!(tags[1].optional("Key"), Some("env"));
        assert_eq!(tags[1].optional("Value"), Some("lab"));
        let err = tags[0].required("Value").expect_err("missing");
        assert_eq!(err.code(), "MissingParameter");
        assert!(
            err.message().contains("TagSpecification.1.Tag.1.Value"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn struct_member_without_field_is_invalid() {
        let err = params("Filter.1=x")
            .structs("Filter")
            .expect_err("no field");
        assert_eq!(err.code(), "InvalidParameterValue");
    }

    #[test]
    fn bools_and_ints_parse_or_fail_with_invalid_parameter_value() {
        let p = params("DryRun=TRUE&A=false&B=yes&MaxResults=5&Bad=5x&Big=99999999999999999999");
        assert_eq!(p.dry_run(), Ok(true));
        assert_eq!(p.bool("A"), Ok(Some(false)));
        assert_eq!(p.bool("Absent"), Ok(None));
        assert_eq!(
            p.bool("B").map_err(|e| e.code().to_owned()),
            Err("InvalidParameterValue".into())
        );
        assert_eq!(p.int("MaxResults"), Ok(Some(5)));
        assert_eq!(
            p.int("Bad").map_err(|e| e.code().to_owned()),
            Err("InvalidParameterValue".into())
        );
        assert_eq!(
            p.int("Big").map_err(|e| e.code().to_owned()),
            Err("InvalidParameterValue".into())
        );
        assert_eq!(
            p.int_in("MaxResults", 10, 100)
                .map_err(|e| e.code().to_owned()),
            Err("InvalidParameterValue".into())
        );
        assert_eq!(params("").dry_run(), Ok(false));
    }

    #[test]
    fn unknown_parameters_are_reported_with_their_full_name() {
        let p = params("Action=A&Version=v&Filter.1.Name=x&DryRun=false");
        assert_eq!(p.reject_unknown(&["Filter", "DryRun"]), Ok(()));
        let err = p.reject_unknown(&["DryRun"]).expect_err("Filter unknown");
        assert_eq!(err.code(), "UnknownParameter");
        assert!(err.message().contains("Filter.1.Name"));
        let filters = p.structs("Filter").expect("filters");
        let err = filters[0]
            .reject_unknown(&["Value"])
            .expect_err("Name unknown");
        assert!(err.message().contains("Filter.1.Name"));
    }
}
