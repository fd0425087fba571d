//! Tags, key pairs and images in a real SQLite file.

mod db_support;

use std::path::PathBuf;

use db_support::{at, reservation, temp_db};
use ec2lab_control::db::{Db, DbError, ImageQuery, TagSelector};
use ec2lab_control::model::filter::{Filter, PageRequest};
use ec2lab_control::model::ids::{self, IdKind};
use ec2lab_control::model::{
    Image, ImageKind, ImageState, KeyPair, KeyType, Tag, Tags, DEFAULT_OWNER_ID,
};

fn key_pair(name: &str, key_type: KeyType) -> KeyPair {
    KeyPair {
        id: ids::generate(IdKind::KeyPair),
        name: name.to_string(),
        key_type,
        fingerprint: "SHA256:abc".to_string(),
        public_key: format!("ssh-ed25519 AAAA {name}"),
        created: at(0),
        tags: Tags::new(),
    }
}

fn image(name: &str, kind: ImageKind) -> Image {
    let digest = format!("sha256:{name}");
    Image {
        id: ids::content_id(kind.id_kind(), name, &digest),
        name: name.to_string(),
        kind,
        dir: PathBuf::from(format!("/var/lib/ec2lab/images/{name}")),
        description: Some(format!("{name} image")),
        architecture: "x86_64".to_string(),
        kernel_id: None,
        boot_mode: Some("direct".to_string()),
        default_user: Some("ec2-user".to_string()),
        root_size_gib: Some(1),
        digest,
        owner_id: DEFAULT_OWNER_ID.to_string(),
        state: ImageState::Available,
        created: at(0),
        deregistered: None,
        tags: Tags::from([("os".to_string(), "lab".to_string())]),
    }
}

fn tags(db: &Db, filters: Vec<Filter>) -> Vec<(String, String, String)> {
    db.describe_tags(&filters, &PageRequest::default())
        .expect("describe tags")
        .items
        .into_iter()
        .map(|t| (t.resource_id, t.key, t.value))
        .collect()
}

#[test]
fn tags_on_instances_images_and_key_pairs() {
    let (_dir, db) = temp_db();
    let r = reservation(1, None, at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let i = r.instances[0].id.clone();
    let img = image("lab-minimal", ImageKind::Machine);
    db.register_image(&img).expect("image");
    let key = key_pair("laptop", KeyType::Ed25519);
    db.insert_key_pair(&key).expect("key");

    let everyone = vec![i.clone(), img.id.clone(), key.id.clone()];
    db.create_tags(&everyone, &[("team".into(), "blue".into())])
        .expect("tag all");
    db.create_tags(std::slice::from_ref(&i), &[("team".into(), "red".into())])
        .expect("overwrite");

    assert_eq!(db.tags_of(&i).expect("tags")["team"], "red");
    assert_eq!(
        tags(&db, vec![Filter::new("resource-type", &["instance"])]),
        vec![(i.clone(), "team".into(), "red".into())]
    );
    assert_eq!(
        tags(&db, vec![Filter::new("resource-type", &["image"])]).len(),
        2,
        "the image's own os tag and team"
    );
    assert_eq!(
        tags(
            &db,
            vec![
                Filter::new("key", &["te*"]),
                Filter::new("value", &["blue"])
            ]
        )
        .len(),
        2
    );
    assert_eq!(
        tags(&db, vec![Filter::new("resource-id", &[key.id.as_str()])]),
        vec![(key.id.clone(), "team".into(), "blue".into())]
    );
    assert_eq!(db.get_key_pair(&key.id).expect("key").tags["team"], "blue");
    let t = Tag {
        resource_id: key.id.clone(),
        key: "k".into(),
        value: "v".into(),
    };
    assert_eq!(t.resource_type(), "key-pair");
}

#[test]
fn tagging_unknown_resources_fails_and_changes_nothing() {
    let (_dir, db) = temp_db();
    let r = reservation(1, None, at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let i = r.instances[0].id.clone();
    let res = db.create_tags(
        &[i.clone(), "i-0000000000000000a".into()],
        &[("k".into(), "v".into())],
    );
    match res {
        Err(DbError::NotFound { kind, ids }) => {
            assert_eq!(kind, IdKind::Instance);
            assert_eq!(ids, vec!["i-0000000000000000a".to_string()]);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(db.tags_of(&i).expect("tags").is_empty(), "all or nothing");
    // NAT gateways are not a resource ec2lab has yet.
    assert!(matches!(
        db.create_tags(&["nat-123".into()], &[("k".into(), "v".into())]),
        Err(DbError::InvalidId(_))
    ));
    assert!(matches!(
        db.create_tags(
            &["sg-0000000000000000a".into()],
            &[("k".into(), "v".into())]
        ),
        Err(DbError::NotFound {
            kind: IdKind::SecurityGroup,
            ..
        })
    ));
    assert!(matches!(
        db.describe_tags(&[Filter::new("tag:x", &["y"])], &PageRequest::default()),
        Err(DbError::InvalidQuery(_))
    ));
}

#[test]
fn delete_tags_follows_ec2_value_rules() {
    let (_dir, db) = temp_db();
    let r = reservation(1, None, at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let i = r.instances[0].id.clone();
    let set = [
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "".to_string()),
        ("c".to_string(), "3".to_string()),
        ("d".to_string(), "4".to_string()),
    ];
    db.create_tags(std::slice::from_ref(&i), &set).expect("tag");
    let sel = |key: &str, value: Option<&str>| TagSelector {
        key: key.to_string(),
        value: value.map(str::to_string),
    };
    db.delete_tags(
        std::slice::from_ref(&i),
        &[
            sel("a", Some("wrong")),
            sel("b", Some("")),
            sel("c", None),
            sel("missing", None),
        ],
    )
    .expect("delete");
    let left: Vec<String> = db.tags_of(&i).expect("tags").into_keys().collect();
    assert_eq!(left, vec!["a".to_string(), "d".to_string()]);
    db.delete_tags(std::slice::from_ref(&i), &[])
        .expect("delete all");
    assert!(db.tags_of(&i).expect("tags").is_empty());
}

#[test]
fn describe_tags_pages_in_order() {
    let (_dir, db) = temp_db();
    let ids = db.bulk_insert_for_bench(20, at(0)).expect("bulk");
    let mut page = PageRequest {
        max_results: Some(7),
        next_token: None,
    };
    let mut seen = Vec::new();
    loop {
        let p = db.describe_tags(&[], &page).expect("page");
        seen.extend(p.items);
        match p.next_token {
            Some(t) => page.next_token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen.len(), 40, "Name and parity on each");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| (&a.resource_id, &a.key).cmp(&(&b.resource_id, &b.key)));
    assert_eq!(seen, sorted);
    assert!(ids
        .iter()
        .all(|id| seen.iter().any(|t| &t.resource_id == id)));
}

#[test]
fn key_pairs_have_unique_names() {
    let (_dir, db) = temp_db();
    let a = key_pair("laptop", KeyType::Ed25519);
    db.insert_key_pair(&a).expect("insert");
    db.insert_key_pair(&key_pair("ci", KeyType::Rsa))
        .expect("insert");
    match db.insert_key_pair(&key_pair("laptop", KeyType::Rsa)) {
        Err(DbError::Duplicate { kind, name }) => {
            assert_eq!(kind, IdKind::KeyPair);
            assert_eq!(name, "laptop");
        }
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(db.get_key_pair_by_name("laptop").expect("get"), a);
    assert_eq!(db.get_key_pair(&a.id).expect("get"), a);

    let all = db.list_key_pairs(&[], &[], &[]).expect("list");
    assert_eq!(
        all.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["ci", "laptop"]
    );
    let rsa = db
        .list_key_pairs(&[], &[], &[Filter::new("key-type", &["rsa"])])
        .expect("filter");
    assert_eq!(rsa.len(), 1);
    assert_eq!(rsa[0].name, "ci");
    let named = db
        .list_key_pairs(&["laptop".into()], &[], &[])
        .expect("by name");
    assert_eq!(named, vec![a.clone()]);
    match db.list_key_pairs(&["nope".into()], &[], &[]) {
        Err(DbError::NotFound { kind, ids }) => {
            assert_eq!(kind.not_found_code(), "InvalidKeyPair.NotFound");
            assert_eq!(ids, vec!["nope".to_string()]);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }

    assert_eq!(
        db.delete_key_pair_by_name("laptop").expect("delete"),
        Some(a.clone())
    );
    assert_eq!(db.delete_key_pair_by_name("laptop").expect("again"), None);
    assert!(matches!(
        db.get_key_pair_by_name("laptop"),
        Err(DbError::NotFound { .. })
    ));
    // The name is free again.
    db.insert_key_pair(&key_pair("laptop", KeyType::Rsa))
        .expect("reuse name");
}

#[test]
fn images_register_describe_and_deregister() {
    let (_dir, db) = temp_db();
    let minimal = image("lab-minimal", ImageKind::Machine);
    let kernel = image("lab-kernel", ImageKind::Kernel);
    let debian = image("debian-12", ImageKind::Machine);
    for i in [&minimal, &kernel, &debian] {
        db.register_image(i).expect("register");
    }
    assert_eq!(db.get_image(&minimal.id).expect("get"), minimal);
    assert!(kernel.id.starts_with("aki-"));

    // Same content: same id, a duplicate.
    assert!(matches!(
        db.register_image(&minimal),
        Err(DbError::Duplicate { .. })
    ));
    // Same name, other content: still a duplicate name.
    let mut renamed = image("other", ImageKind::Machine);
    renamed.name = "lab-minimal".into();
    assert!(matches!(
        db.register_image(&renamed),
        Err(DbError::Duplicate { .. })
    ));

    let list = |filters: Vec<Filter>| -> Vec<String> {
        db.list_images(&ImageQuery {
            filters,
            ..ImageQuery::default()
        })
        .expect("list")
        .items
        .into_iter()
        .map(|i| i.name)
        .collect()
    };
    assert_eq!(list(vec![Filter::new("name", &["lab-*"])]).len(), 2);
    assert_eq!(
        list(vec![Filter::new("image-type", &["kernel"])]),
        vec!["lab-kernel".to_string()]
    );
    assert_eq!(list(vec![Filter::new("tag:os", &["lab"])]).len(), 3);
    match db.list_images(&ImageQuery {
        image_ids: vec!["ami-0000000000000000a".into()],
        ..ImageQuery::default()
    }) {
        Err(DbError::NotFound { kind, .. }) => {
            assert_eq!(kind.not_found_code(), "InvalidAMIID.NotFound")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }

    let gone = db
        .deregister_image(&debian.id, at(100))
        .expect("deregister");
    assert_eq!(gone.state, ImageState::Deregistered);
    assert_eq!(gone.deregistered, Some(at(100)));
    assert!(matches!(
        db.deregister_image(&debian.id, at(101)),
        Err(DbError::Conflict { .. })
    ));
    assert_eq!(
        list(vec![Filter::new("state", &["available"])]).len(),
        2,
        "deregistered images stay visible but not available"
    );
    // Importing the same content again brings it back under the same id.
    db.register_image(&debian).expect("re-register");
    assert_eq!(db.get_image(&debian.id).expect("get"), debian);
}
