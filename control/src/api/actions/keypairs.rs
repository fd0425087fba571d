//! Key pairs: CreateKeyPair, ImportKeyPair, DescribeKeyPairs,
//! DeleteKeyPair. The cryptography is in `crate::keypairs`.

use axum::http::StatusCode;
use base64::Engine;

use super::common::{check_ids, filters, system_time_secs, tag_set, tag_specifications};
use super::Ctx;
use crate::api::error::Ec2Error;
use crate::api::query::Params;
use crate::api::xml::XmlNode;
use crate::db::DbError;
use crate::keypairs::{self, KeyError, KeyFormat, KeyType};
use crate::model::ids::{self, IdKind};
use crate::model::{self, KeyPair};

fn key_error(e: KeyError) -> Ec2Error {
    let message = match &e {
        KeyError::Format { .. } => "Key is not in valid OpenSSH public key format".to_string(),
        other => other.to_string(),
    };
    Ec2Error::new(StatusCode::BAD_REQUEST, e.code(), message)
}

fn model_key_type(t: KeyType) -> model::KeyType {
    match t {
        KeyType::Rsa => model::KeyType::Rsa,
        KeyType::Ed25519 => model::KeyType::Ed25519,
    }
}

fn store(
    ctx: &Ctx<'_>,
    name: &str,
    key_type: KeyType,
    fingerprint: &str,
    public_key: &str,
    tags: Vec<(String, String)>,
) -> Result<KeyPair, Ec2Error> {
    let lab = ctx.lab()?;
    let key = KeyPair {
        id: ids::generate(IdKind::KeyPair),
        name: name.to_string(),
        key_type: model_key_type(key_type),
        fingerprint: fingerprint.to_string(),
        public_key: format!("{public_key} {name}"),
        created: time::OffsetDateTime::now_utc(),
        tags: tags.into_iter().collect(),
    };
    lab.db.insert_key_pair(&key).map_err(|e| match e {
        DbError::Duplicate { .. } => Ec2Error::key_pair_duplicate(name),
        e => e.into(),
    })?;
    Ok(key)
}

/// `CreateKeyPair`: the private key is returned once and never stored.
pub fn create_key_pair(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "KeyName",
        "KeyType",
        "KeyFormat",
        "TagSpecification",
        "DryRun",
    ])?;
    let name = params.required("KeyName")?;
    keypairs::validate_name(name).map_err(key_error)?;
    let key_type = match params.optional("KeyType") {
        Some(t) => KeyType::parse(t).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!("Invalid key type '{t}'; use rsa or ed25519"))
        })?,
        None => KeyType::Rsa,
    };
    let format = match params.optional("KeyFormat") {
        Some(f) => KeyFormat::parse(f).ok_or_else(|| {
            Ec2Error::invalid_parameter_value(format!("Invalid key format '{f}'; use pem or ppk"))
        })?,
        None => KeyFormat::Pem,
    };
    let lab = ctx.lab()?;
    if lab.db.get_key_pair_by_name(name).is_ok() {
        return Err(Ec2Error::key_pair_duplicate(name));
    }
    let created = keypairs::create(key_type, format).map_err(key_error)?;
    let tags = tag_specifications(params, "key-pair")?;
    let key = store(
        ctx,
        name,
        key_type,
        &created.fingerprint,
        &created.public_key_openssh,
        tags,
    )?;
    let mut out = vec![
        XmlNode::text("keyName", key.name.as_str()),
        XmlNode::text("keyFingerprint", key.fingerprint.as_str()),
        XmlNode::text("keyMaterial", created.key_material),
        XmlNode::text("keyPairId", key.id.as_str()),
    ];
    if !key.tags.is_empty() {
        out.push(tag_set(&key.tags));
    }
    Ok(out)
}

/// `ImportKeyPair`: `PublicKeyMaterial` is base64 of the public key file.
pub fn import_key_pair(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["KeyName", "PublicKeyMaterial", "TagSpecification", "DryRun"])?;
    let name = params.required("KeyName")?;
    keypairs::validate_name(name).map_err(key_error)?;
    let material = params.required("PublicKeyMaterial")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(material.trim())
        .map_err(|_| {
            key_error(KeyError::Format {
                reason: "not base64".to_string(),
            })
        })?;
    let imported = keypairs::import(&raw).map_err(key_error)?;
    let tags = tag_specifications(params, "key-pair")?;
    let key = store(
        ctx,
        name,
        imported.key_type,
        &imported.fingerprint,
        &imported.public_key_openssh,
        tags,
    )?;
    Ok(vec![
        XmlNode::text("keyFingerprint", key.fingerprint.as_str()),
        XmlNode::text("keyName", key.name.as_str()),
        XmlNode::text("keyPairId", key.id.as_str()),
    ])
}

/// `DescribeKeyPairs`.
pub fn describe_key_pairs(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&[
        "KeyName",
        "KeyPairId",
        "Filter",
        "IncludePublicKey",
        "DryRun",
    ])?;
    let names: Vec<String> = params
        .list("KeyName")?
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ids = check_ids(IdKind::KeyPair, &params.list("KeyPairId")?)?;
    let include_public = params.bool("IncludePublicKey")?.unwrap_or(false);
    let lab = ctx.lab()?;
    let keys = lab
        .db
        .list_key_pairs(&names, &ids, &filters(params)?)
        .map_err(|e| match e {
            DbError::NotFound { ids, .. } => Ec2Error::key_pair_not_found(&ids.join(", ")),
            e => e.into(),
        })?;
    let items = keys.iter().map(|k| {
        let mut n = vec![
            XmlNode::text("keyPairId", k.id.as_str()),
            XmlNode::text("keyName", k.name.as_str()),
            XmlNode::text("keyFingerprint", k.fingerprint.as_str()),
            XmlNode::text("keyType", k.key_type.name()),
        ];
        if !k.tags.is_empty() {
            n.push(tag_set(&k.tags));
        }
        if include_public {
            n.push(XmlNode::text("publicKey", k.public_key.as_str()));
        }
        n.push(XmlNode::timestamp(
            "createTime",
            system_time_secs(k.created),
        ));
        n
    });
    Ok(vec![XmlNode::list("keySet", items)])
}

/// `DeleteKeyPair`: succeeds for a name that does not exist, as on EC2.
pub fn delete_key_pair(ctx: &Ctx<'_>, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    params.reject_unknown(&["KeyName", "KeyPairId", "DryRun"])?;
    let lab = ctx.lab()?;
    let deleted = match (params.optional("KeyName"), params.optional("KeyPairId")) {
        (Some(name), _) => lab.db.delete_key_pair_by_name(name),
        (None, Some(id)) => {
            check_ids(IdKind::KeyPair, &[id])?;
            lab.db.delete_key_pair(id)
        }
        (None, None) => return Err(Ec2Error::missing_parameter("KeyName")),
    }?;
    let mut out = vec![XmlNode::bool("return", true)];
    if let Some(k) = deleted {
        out.push(XmlNode::text("keyPairId", k.id));
    }
    Ok(out)
}
