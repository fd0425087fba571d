//! EC2 `Filter.N.Name` / `Filter.N.Value.M` parameters and their matching
//! rules: filters AND together, the values of one filter OR together, and
//! values may use `*` and `?` wildcards.

use crate::api::error::Ec2Error;
use crate::api::query::Params;

/// One filter from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    /// The request's `Filter.N` members, each checked against the names the
    /// action supports (`InvalidParameterValue` otherwise, as on EC2) and
    /// within EC2's limits (`FilterLimitExceeded`).
    pub fn parse_all(params: &Params, supported: &[&str]) -> Result<Vec<Filter>, Ec2Error> {
        super::common::filters(params)?
            .into_iter()
            .map(|f| {
                if !supported.contains(&f.name.as_str()) {
                    return Err(Ec2Error::invalid_parameter_value(format!(
                        "The filter '{}' is invalid",
                        f.name
                    )));
                }
                Ok(Filter {
                    name: f.name,
                    values: f.values,
                })
            })
            .collect()
    }

    /// Whether any of this filter's values matches `value`.
    pub fn matches(&self, value: &str) -> bool {
        self.values
            .iter()
            .any(|pattern| wildcard_match(pattern, value))
    }
}

/// True when every filter has a value matching what `field` yields for its
/// name. `field` returns the resource's values for a filter name (several
/// for list-valued attributes such as architectures).
pub fn all_match<'v>(filters: &[Filter], field: impl Fn(&str) -> Vec<String> + 'v) -> bool {
    filters
        .iter()
        .all(|f| field(&f.name).iter().any(|v| f.matches(v)))
}

pub use crate::model::filter::wildcard_match;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_follow_ec2_rules() {
        assert!(wildcard_match("t2.*", "t2.micro"));
        assert!(!wildcard_match("t2.*", "t3.micro"));
        assert!(wildcard_match("t?.micro", "t3.micro"));
        assert!(!wildcard_match("t?.micro", "t.micro"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*a*b*", "xxaxxbxx"));
        assert!(!wildcard_match("*a*b", "xxaxxbxxc"));
        assert!(wildcard_match("a\\*", "a*"));
        assert!(!wildcard_match("a\\*", "ab"));
        assert!(wildcard_match("us-east-1", "us-east-1"));
        assert!(!wildcard_match("US-EAST-1", "us-east-1"));
        assert!(!wildcard_match("", "x"));
    }

    #[test]
    fn pathological_patterns_finish() {
        let value = "a".repeat(10_000);
        assert!(!wildcard_match(&"*a".repeat(200), &(value.clone() + "b")));
        assert!(wildcard_match("*a*a*a*a*a*a*", &value));
    }

    #[test]
    fn unsupported_filter_names_are_invalid() {
        let p = Params::from_pairs([("Filter.1.Name", "nope"), ("Filter.1.Value.1", "x")]);
        let err = Filter::parse_all(&p, &["region-name"]).expect_err("unknown filter");
        assert_eq!(err.code(), "InvalidParameterValue");
        let p = Params::from_pairs([("Filter.1.Value.1", "x")]);
        let err = Filter::parse_all(&p, &["region-name"]).expect_err("no name");
        assert_eq!(err.code(), "MissingParameter");
    }
}
