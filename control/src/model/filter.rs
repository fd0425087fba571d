//! EC2 `Filter.N.Name` / `Filter.N.Value.M` and `MaxResults` / `NextToken`.
//!
//! Semantics are EC2's: values within one filter are OR'ed, filters are
//! AND'ed, matching is case-sensitive, `*` matches any run of characters and
//! `?` exactly one, and `\` escapes either (`\*` is a literal star). A
//! resource answers a filter name with the values it has for it (a tag
//! filter on a resource without that tag answers none, so it never matches);
//! a name the resource type does not know is an error, because EC2 refuses
//! it rather than silently matching nothing.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// At most this many `Filter.N` in one request (EC2's limit).
pub const MAX_FILTERS: usize = 50;
/// At most this many `Filter.N.Value.M` in one filter (EC2's limit). With
/// [`MAX_FILTERS`] it bounds a Describe call's matching work to
/// 10,000 patterns per resource, whatever the request.
pub const MAX_FILTER_VALUES: usize = 200;

/// One `Filter.N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    pub fn new(name: &str, values: &[&str]) -> Filter {
        Filter {
            name: name.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }
}

/// A resource that filters can be applied to.
pub trait Filterable {
    /// The values this resource has for filter `name`; `None` if the
    /// resource type has no such filter. Must answer `Some` for every name
    /// [`Filterable::knows_filter`] accepts, and vice versa.
    fn filter_values(&self, name: &str) -> Option<Vec<String>>;

    /// Whether filter `name` exists for this resource type. Checked before
    /// any resource is looked at, so that an unknown filter is an error
    /// even when there is nothing to describe.
    fn knows_filter(name: &str) -> bool;
}

/// Why filters or pagination parameters are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// EC2: InvalidParameterValue.
    #[error("The filter '{0}' is invalid")]
    UnknownFilter(String),
    /// EC2: InvalidParameterValue for a filter given no values.
    #[error("The filter '{0}' must have at least one value")]
    NoValues(String),
    /// EC2: InvalidParameterValue.
    #[error("Value ( {value} ) for parameter maxResults is invalid. Expecting a value between {min} and {max}.")]
    MaxResultsOutOfRange { value: i64, min: u32, max: u32 },
    /// EC2: InvalidPaginationToken.
    #[error("The token '{0}' is invalid")]
    InvalidToken(String),
    /// EC2: FilterLimitExceeded.
    #[error("The request uses {0} filters; at most {MAX_FILTERS} are allowed")]
    TooManyFilters(usize),
    /// EC2: FilterLimitExceeded.
    #[error("The filter '{name}' has {count} values; at most {MAX_FILTER_VALUES} are allowed")]
    TooManyValues { name: String, count: usize },
}

impl FilterError {
    /// The EC2 error code.
    pub fn code(&self) -> &'static str {
        match self {
            FilterError::InvalidToken(_) => "InvalidPaginationToken",
            FilterError::TooManyFilters(_) | FilterError::TooManyValues { .. } => {
                "FilterLimitExceeded"
            }
            _ => "InvalidParameterValue",
        }
    }
}

/// Refuses more filters, or more values in one filter, than EC2 allows:
/// matching costs filters x values x resources, so the request must not
/// choose it. `counts` is each filter's name and number of values.
pub fn check_limits<'a>(
    counts: impl ExactSizeIterator<Item = (&'a str, usize)>,
) -> Result<(), FilterError> {
    if counts.len() > MAX_FILTERS {
        return Err(FilterError::TooManyFilters(counts.len()));
    }
    for (name, count) in counts {
        if count > MAX_FILTER_VALUES {
            return Err(FilterError::TooManyValues {
                name: name.to_string(),
                count,
            });
        }
    }
    Ok(())
}

/// Checks every filter name against `T`, that each filter has values, and
/// EC2's limits on their numbers.
pub fn validate<T: Filterable>(filters: &[Filter]) -> Result<(), FilterError> {
    check_limits(filters.iter().map(|f| (f.name.as_str(), f.values.len())))?;
    for f in filters {
        if !T::knows_filter(&f.name) {
            return Err(FilterError::UnknownFilter(f.name.clone()));
        }
        if f.values.is_empty() {
            return Err(FilterError::NoValues(f.name.clone()));
        }
    }
    Ok(())
}

/// Filters checked and compiled once per request: literal values in a
/// hash set, wildcard values tokenized. Matching a resource then costs a
/// hash lookup per literal and one pass per pattern, instead of parsing
/// every pattern again for every resource (24,660 patterns over 1,000
/// instances took seconds that way).
#[derive(Debug)]
pub struct Matcher {
    filters: Vec<CompiledFilter>,
}

#[derive(Debug)]
struct CompiledFilter {
    name: String,
    literals: HashSet<String>,
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Validates `filters` for `T` ([`validate`]) and compiles them.
    pub fn new<T: Filterable>(filters: &[Filter]) -> Result<Self, FilterError> {
        validate::<T>(filters)?;
        let filters = filters
            .iter()
            .map(|f| {
                let (literals, patterns): (Vec<&String>, Vec<&String>) =
                    f.values.iter().partition(|v| is_literal(v));
                CompiledFilter {
                    name: f.name.clone(),
                    literals: literals.into_iter().cloned().collect(),
                    patterns: patterns.into_iter().map(|p| Pattern::new(p)).collect(),
                }
            })
            .collect();
        Ok(Self { filters })
    }

    /// Whether `item` passes every filter (AND), each by any value (OR).
    pub fn matches<T: Filterable>(&self, item: &T) -> Result<bool, FilterError> {
        for f in &self.filters {
            let have = item
                .filter_values(&f.name)
                .ok_or_else(|| FilterError::UnknownFilter(f.name.clone()))?;
            // Exact values (the common case) need no wildcard matching,
            // and so no per-value char buffer.
            let any = have.iter().any(|v| {
                f.literals.contains(v)
                    || (!f.patterns.is_empty() && {
                        let chars: Vec<char> = v.chars().collect();
                        f.patterns.iter().any(|p| p.matches_chars(&chars))
                    })
            });
            if !any {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether `item` passes every filter (AND), each by any value (OR).
/// For many items, compile once with [`Matcher::new`].
pub fn matches_all<T: Filterable>(item: &T, filters: &[Filter]) -> Result<bool, FilterError> {
    Matcher::new::<T>(filters)?.matches(item)
}

/// Keeps the items that pass `filters`, after validating them.
pub fn apply<T: Filterable>(items: Vec<T>, filters: &[Filter]) -> Result<Vec<T>, FilterError> {
    let matcher = Matcher::new::<T>(filters)?;
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if matcher.matches(&item)? {
            kept.push(item);
        }
    }
    Ok(kept)
}

/// Whether a pattern has no wildcard, so it can be compared for equality
/// (or pushed down to SQL as `=`).
pub fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '\\'])
}

/// EC2 wildcard matching: `*` any run (also empty), `?` one character, `\`
/// escapes the next character. Case-sensitive.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let value: Vec<char> = value.chars().collect();
    Pattern::new(pattern).matches_chars(&value)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Lit(char),
    One,
    Any,
}

/// A wildcard pattern, tokenized once.
#[derive(Debug, Clone)]
pub struct Pattern {
    toks: Vec<Tok>,
}

impl Pattern {
    /// Tokenizes `pattern`; a run of `*` is one `*` (same language, and the
    /// matcher never walks a long run again on every backtrack).
    pub fn new(pattern: &str) -> Self {
        let mut toks = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let tok = match c {
                '*' => Tok::Any,
                '?' => Tok::One,
                // A trailing backslash stands for itself.
                '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
                c => Tok::Lit(c),
            };
            if !(tok == Tok::Any && toks.last() == Some(&Tok::Any)) {
                toks.push(tok);
            }
        }
        Self { toks }
    }

    /// Whether the pattern matches `value` (as characters).
    pub fn matches_chars(&self, value: &[char]) -> bool {
        let toks = &self.toks;
        // Greedy match with one backtrack point at the last `*`: linear in
        // practice, never exponential.
        let (mut p, mut v) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while v < value.len() {
            match toks.get(p) {
                Some(Tok::Any) => {
                    star = Some((p, v));
                    p += 1;
                }
                Some(Tok::One) => {
                    p += 1;
                    v += 1;
                }
                Some(Tok::Lit(c)) if *c == value[v] => {
                    p += 1;
                    v += 1;
                }
                _ => match star {
                    Some((sp, sv)) => {
                        p = sp + 1;
                        v = sv + 1;
                        star = Some((sp, sv + 1));
                    }
                    None => return false,
                },
            }
        }
        toks[p..].iter().all(|t| *t == Tok::Any)
    }
}

/// Bounds on `MaxResults` for one Describe action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    pub min: u32,
    pub max: u32,
}

/// DescribeInstances, DescribeTags, DescribeImages: 5 to 1000.
pub const DESCRIBE_LIMITS: PageLimits = PageLimits { min: 5, max: 1000 };

/// A page request as the API received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// `MaxResults`, unchecked; `None` returns everything.
    pub max_results: Option<i64>,
    /// `NextToken` from a previous page.
    pub next_token: Option<String>,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when more items follow.
    pub next_token: Option<String>,
}

impl PageRequest {
    /// The page size, checked against `limits`.
    pub fn page_size(&self, limits: PageLimits) -> Result<Option<usize>, FilterError> {
        match self.max_results {
            None => Ok(None),
            Some(n) if n >= i64::from(limits.min) && n <= i64::from(limits.max) => {
                Ok(usize::try_from(n).ok())
            }
            Some(value) => Err(FilterError::MaxResultsOutOfRange {
                value,
                min: limits.min,
                max: limits.max,
            }),
        }
    }

    /// The sort key the previous page ended at, decoded.
    pub fn after(&self) -> Result<Option<String>, FilterError> {
        self.next_token.as_deref().map(decode_token).transpose()
    }
}

/// Encodes a sort key as an opaque `NextToken`. The key is that of the last
/// item returned; the next page starts after it, so deleting that item
/// between pages does not break the walk.
pub fn encode_token(sort_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{sort_key}"))
}

/// The sort key inside a `NextToken`.
pub fn decode_token(token: &str) -> Result<String, FilterError> {
    let invalid = || FilterError::InvalidToken(token.to_string());
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    text.strip_prefix("v1:")
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .ok_or_else(invalid)
}

/// Cuts one page out of `items`, which must be sorted by `sort_key`
/// ascending with unique keys.
pub fn paginate<T>(
    items: Vec<T>,
    sort_key: impl Fn(&T) -> String,
    request: &PageRequest,
    limits: PageLimits,
) -> Result<Page<T>, FilterError> {
    let size = request.page_size(limits)?;
    let after = request.after()?;
    let mut rest: Vec<T> = match &after {
        Some(after) => items
            .into_iter()
            .filter(|item| sort_key(item).as_str() > after.as_str())
            .collect(),
        None => items,
    };
    let next_token = match size {
        Some(size) if rest.len() > size => {
            rest.truncate(size);
            rest.last().map(|last| encode_token(&sort_key(last)))
        }
        _ => None,
    };
    Ok(Page {
        items: rest,
        next_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Thing {
        id: &'static str,
        tags: Vec<(&'static str, &'static str)>,
    }

    impl Filterable for Thing {
        fn filter_values(&self, name: &str) -> Option<Vec<String>> {
            if let Some(key) = name.strip_prefix("tag:") {
                return Some(
                    self.tags
                        .iter()
                        .filter(|(k, _)| *k == key)
                        .map(|(_, v)| v.to_string())
                        .collect(),
                );
            }
            match name {
                "id" => Some(vec![self.id.to_string()]),
                _ => None,
            }
        }

        fn knows_filter(name: &str) -> bool {
            name == "id" || name.starts_with("tag:")
        }
    }

    #[test]
    fn wildcards_follow_ec2() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "ABC", false),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("*b*", "abc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("?", "", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*aab", "aaaab", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("a\\?", "a?", true),
            ("a\\\\", "a\\", true),
            ("web-*-prod", "web-01-prod", true),
            ("2026-11-*", "2026-11-25T23:00:00.000Z", true),
            ("ünï*", "ünïcode", true),
            ("?", "ü", true),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                wildcard_match(pattern, value),
                want,
                "{pattern:?} vs {value:?}"
            );
        }
    }

    #[test]
    fn values_or_filters_and() {
        let t = Thing {
            id: "i-1",
            tags: vec![("Name", "web"), ("env", "prod")],
        };
        let ok = |fs: &[Filter]| matches_all(&t, fs).expect("known filters");
        assert!(ok(&[]));
        assert!(ok(&[Filter::new("id", &["i-2", "i-1"])]));
        assert!(!ok(&[Filter::new("id", &["i-2"])]));
        assert!(ok(&[
            Filter::new("id", &["i-*"]),
            Filter::new("tag:env", &["prod"])
        ]));
        assert!(!ok(&[
            Filter::new("id", &["i-*"]),
            Filter::new("tag:env", &["dev"])
        ]));
        // A missing tag has no values and so matches nothing, not even `*`.
        assert!(!ok(&[Filter::new("tag:owner", &["*"])]));
    }

    #[test]
    fn unknown_filters_are_refused_with_ec2_message() {
        let err = validate::<Thing>(&[Filter::new("colour", &["red"])]).expect_err("unknown");
        assert_eq!(err.to_string(), "The filter 'colour' is invalid");
        assert_eq!(err.code(), "InvalidParameterValue");
        assert!(apply(Vec::<Thing>::new(), &[Filter::new("colour", &["x"])]).is_err());
        assert!(matches!(
            validate::<Thing>(&[Filter::new("id", &[])]),
            Err(FilterError::NoValues(_))
        ));
    }

    #[test]
    fn max_results_bounds() {
        let req = |n| PageRequest {
            max_results: Some(n),
            next_token: None,
        };
        assert_eq!(req(5).page_size(DESCRIBE_LIMITS), Ok(Some(5)));
        assert_eq!(req(1000).page_size(DESCRIBE_LIMITS), Ok(Some(1000)));
        for bad in [-1, 0, 4, 1001] {
            let err = req(bad)
                .page_size(DESCRIBE_LIMITS)
                .expect_err("out of range");
            assert_eq!(err.code(), "InvalidParameterValue");
        }
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = encode_token("0000001234/r-1/0");
        assert_eq!(decode_token(&t), Ok("0000001234/r-1/0".to_string()));
        for bad in ["", "!!!", "aGVsbG8", &URL_SAFE_NO_PAD.encode("v1:")] {
            let err = decode_token(bad).expect_err(bad);
            assert_eq!(err.code(), "InvalidPaginationToken");
        }
    }

    #[test]
    fn pages_cover_everything_once() {
        let items: Vec<String> = (0..23).map(|i| format!("k{i:03}")).collect();
        let mut seen = Vec::new();
        let mut req = PageRequest {
            max_results: Some(5),
            next_token: None,
        };
        loop {
            let page =
                paginate(items.clone(), |s| s.clone(), &req, DESCRIBE_LIMITS).expect("valid page");
            assert!(page.items.len() <= 5);
            seen.extend(page.items);
            match page.next_token {
                Some(t) => req.next_token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn exact_page_leaves_no_token() {
        let items: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let req = PageRequest {
            max_results: Some(5),
            next_token: None,
        };
        let page = paginate(items, |s| s.clone(), &req, DESCRIBE_LIMITS).expect("page");
        assert_eq!(page.items.len(), 5);
        assert_eq!(page.next_token, None);
    }
}
