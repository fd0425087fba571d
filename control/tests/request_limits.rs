//! EC2's request limits (issue 16, finding 7): one request must not be
//! able to hold the database or the matcher for seconds. Tags per
//! resource, tag key and value lengths, ids per call, filters and filter
//! values each answer EC2's error code before any work is done, and a
//! resource named many times is tagged once.

mod common;

use ec2lab_control::api::actions::{dispatch, AppState, Ctx};
use ec2lab_control::api::query::Params;

/// A lab with two stored instances (no VMM, no images); returns their ids.
fn lab_with_instances(runtime: &tokio::runtime::Runtime) -> (AppState, Vec<String>) {
    let lab = common::guestless_lab(runtime.handle());
    let ids = lab
        .db
        .bulk_insert_for_bench(2, time::OffsetDateTime::now_utc())
        .expect("instances");
    (AppState::new("us-east-1", lab), ids)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// The EC2 error code `action` answers, or "ok".
fn code(state: &AppState, action: &str, pairs: Vec<(String, String)>) -> String {
    let ctx = Ctx {
        region: &state.region,
        request_id: "r",
        state,
        dry_run: false,
    };
    match dispatch(&ctx, action, &Params::from_pairs(pairs)) {
        Ok(_) => "ok".to_string(),
        Err(e) => e.code().to_string(),
    }
}

fn tags(from: usize, to: usize, value: &str) -> Vec<(String, String)> {
    (from..=to)
        .flat_map(|n| {
            [
                (format!("Tag.{}.Key", n - from + 1), format!("key-{n}")),
                (format!("Tag.{}.Value", n - from + 1), value.to_string()),
            ]
        })
        .collect()
}

fn on(id: &str, mut rest: Vec<(String, String)>) -> Vec<(String, String)> {
    rest.insert(0, ("ResourceId.1".to_string(), id.to_string()));
    rest
}

fn pair(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// The tags of `id` as DescribeTags lists them.
fn tag_rows(state: &AppState, id: &str) -> usize {
    state.lab.db.tags_of(id).expect("tags").len()
}

#[test]
fn more_than_fifty_tags_in_one_request_answer_tag_limit_exceeded() {
    let rt = runtime();
    let (state, ids) = lab_with_instances(&rt);
    assert_eq!(
        code(&state, "CreateTags", on(&ids[0], tags(1, 51, "v"))),
        "TagLimitExceeded"
    );
    // bench instances carry two tags already (Name, parity).
    assert_eq!(
        code(&state, "CreateTags", on(&ids[0], tags(1, 48, "v"))),
        "ok"
    );
    let run = vec![
        pair("ImageId", "ami-00000000000000000"),
        pair("MinCount", "1"),
        pair("MaxCount", "1"),
        pair("TagSpecification.1.ResourceType", "instance"),
    ];
    let spec: Vec<_> = tags(1, 51, "v")
        .into_iter()
        .map(|(k, v)| (format!("TagSpecification.1.{k}"), v))
        .collect();
    assert_eq!(
        code(&state, "RunInstances", [run, spec].concat()),
        "TagLimitExceeded"
    );
}

#[test]
fn tags_that_would_make_a_resource_exceed_fifty_answer_tag_limit_exceeded() {
    let rt = runtime();
    let (state, ids) = lab_with_instances(&rt);
    // bench instances carry two tags already (Name, parity).
    assert_eq!(
        code(&state, "CreateTags", on(&ids[0], tags(1, 40, "v"))),
        "ok"
    );
    let before = tag_rows(&state, &ids[0]);
    assert_eq!(
        code(&state, "CreateTags", on(&ids[0], tags(41, 49, "v"))),
        "TagLimitExceeded"
    );
    assert_eq!(tag_rows(&state, &ids[0]), before, "all or nothing");
    // Overwriting existing keys adds nothing, so it stays allowed.
    assert_eq!(
        code(&state, "CreateTags", on(&ids[0], tags(1, 40, "w"))),
        "ok"
    );
    assert_eq!(
        code(&state, "CreateTags", on(&ids[0], tags(41, 48, "v"))),
        "ok"
    );
    assert_eq!(tag_rows(&state, &ids[0]), 50);
}

#[test]
fn tag_keys_over_128_and_values_over_256_characters_are_invalid() {
    let rt = runtime();
    let (state, ids) = lab_with_instances(&rt);
    let key = |k: String| {
        on(
            &ids[0],
            vec![pair("Tag.1.Key", &k), pair("Tag.1.Value", "v")],
        )
    };
    assert_eq!(code(&state, "CreateTags", key("k".repeat(128))), "ok");
    assert_eq!(
        code(&state, "CreateTags", key("k".repeat(129))),
        "InvalidParameterValue"
    );
    let value = |v: String| {
        on(
            &ids[0],
            vec![pair("Tag.1.Key", "k"), pair("Tag.1.Value", &v)],
        )
    };
    assert_eq!(code(&state, "CreateTags", value("v".repeat(256))), "ok");
    assert_eq!(
        code(&state, "CreateTags", value("v".repeat(257))),
        "InvalidParameterValue"
    );
}

#[test]
fn more_than_a_thousand_ids_in_one_call_are_invalid() {
    let rt = runtime();
    let (state, ids) = lab_with_instances(&rt);
    let many = |name: &str, n: usize| -> Vec<(String, String)> {
        (1..=n)
            .map(|i| (format!("{name}.{i}"), ids[i % 2].clone()))
            .collect()
    };
    let create = |n| [many("ResourceId", n), tags(1, 1, "v")].concat();
    assert_eq!(code(&state, "CreateTags", create(1000)), "ok");
    assert_eq!(
        code(&state, "CreateTags", create(1001)),
        "InvalidParameterValue"
    );
    let delete = [many("ResourceId", 1001), vec![pair("Tag.1.Key", "key-1")]].concat();
    assert_eq!(code(&state, "DeleteTags", delete), "InvalidParameterValue");
    assert_eq!(
        code(&state, "DescribeInstances", many("InstanceId", 1000)),
        "ok"
    );
    assert_eq!(
        code(&state, "DescribeInstances", many("InstanceId", 1001)),
        "InvalidParameterValue"
    );
}

#[test]
fn a_resource_named_many_times_is_tagged_once() {
    let rt = runtime();
    let (state, ids) = lab_with_instances(&rt);
    let repeated: Vec<_> = (1..=1000)
        .map(|i| (format!("ResourceId.{i}"), ids[0].clone()))
        .collect();
    let request = [
        repeated.clone(),
        vec![
            pair("Tag.1.Key", "team"),
            pair("Tag.1.Value", "a"),
            pair("Tag.2.Key", "team"),
            pair("Tag.2.Value", "b"),
        ],
    ]
    .concat();
    assert_eq!(code(&state, "CreateTags", request), "ok");
    let found = state.lab.db.tags_of(&ids[0]).expect("tags");
    assert_eq!(
        found.iter().filter(|(k, _)| *k == "team").count(),
        1,
        "{found:?}"
    );
    assert_eq!(
        found.get("team").map(String::as_str),
        Some("b"),
        "last wins"
    );
    // 48 new keys on a resource with 3 is 51, however often it is named.
    assert_eq!(
        code(
            &state,
            "CreateTags",
            [repeated.clone(), tags(1, 48, "v")].concat()
        ),
        "TagLimitExceeded"
    );
    let delete = [repeated, vec![pair("Tag.1.Key", "team")]].concat();
    assert_eq!(code(&state, "DeleteTags", delete), "ok");
    assert!(!state
        .lab
        .db
        .tags_of(&ids[0])
        .expect("tags")
        .contains_key("team"));
}

#[test]
fn more_than_fifty_filters_or_two_hundred_values_answer_filter_limit_exceeded() {
    let rt = runtime();
    let (state, _) = lab_with_instances(&rt);
    let filters = |filters: usize, values: usize| -> Vec<(String, String)> {
        (1..=filters)
            .flat_map(|f| {
                std::iter::once((format!("Filter.{f}.Name"), "tag:Name".to_string())).chain(
                    (1..=values).map(move |v| (format!("Filter.{f}.Value.{v}"), format!("*{v}*"))),
                )
            })
            .collect()
    };
    for action in ["DescribeInstances", "DescribeTags"] {
        let name = |p: Vec<(String, String)>| {
            if action == "DescribeTags" {
                // DescribeTags filters by `key`, not `tag:Name`.
                p.into_iter()
                    .map(|(k, v)| {
                        if v == "tag:Name" {
                            (k, "key".into())
                        } else {
                            (k, v)
                        }
                    })
                    .collect()
            } else {
                p
            }
        };
        assert_eq!(
            code(&state, action, name(filters(50, 200))),
            "ok",
            "{action}"
        );
        assert_eq!(
            code(&state, action, name(filters(51, 1))),
            "FilterLimitExceeded",
            "{action}"
        );
        assert_eq!(
            code(&state, action, name(filters(1, 201))),
            "FilterLimitExceeded",
            "{action}"
        );
        // Far beyond every limit: still the filter limit's code.
        assert_eq!(
            code(&state, action, name(filters(1, 24_660))),
            "FilterLimitExceeded",
            "{action}"
        );
    }
    let regions = |values: usize| -> Vec<(String, String)> {
        std::iter::once(pair("Filter.1.Name", "region-name"))
            .chain((1..=values).map(|v| (format!("Filter.1.Value.{v}"), format!("r{v}"))))
            .collect()
    };
    assert_eq!(code(&state, "DescribeRegions", regions(200)), "ok");
    assert_eq!(
        code(&state, "DescribeRegions", regions(201)),
        "FilterLimitExceeded"
    );
}
