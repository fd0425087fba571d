//! Security groups that users make and change: CreateSecurityGroup,
//! DeleteSecurityGroup, Authorize/Revoke of ingress and egress rules, and
//! DescribeSecurityGroupRules.
//!
//! Each change is one immediate transaction that reads the group's rules,
//! asks `model::security_group` whether the change is allowed (duplicates,
//! the 60-rule limit, revoking only what exists) and writes: a refusal
//! leaves the group exactly as it was, and two clients racing cannot both
//! add the 60th rule.

use rusqlite::{OptionalExtension, Transaction};

use super::network::{
    describe, group_from_row, insert_group, insert_rules, rules_of, NetworkQuery,
};
use super::tags::insert_tags;
use super::{not_found, query_first, Db, DbError};
use crate::model::filter::Page;
use crate::model::ids::{self, IdKind};
use crate::model::security_group::{self as rules, GroupRef, RuleRequest, SecurityGroupError};
use crate::model::vpc::{self, RuleDirection, RulePeer, RuleRecord, SecurityGroup};
use crate::model::Tags;

/// What CreateSecurityGroup asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewSecurityGroup {
    pub name: String,
    pub description: String,
    /// The default VPC when `None`, as in EC2.
    pub vpc_id: Option<String>,
    pub tags: Tags,
}

/// Which rules Revoke removes: rules as permissions name them, or by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokeRequest {
    pub permissions: Vec<RuleRequest>,
    pub rule_ids: Vec<String>,
}

impl Db {
    /// CreateSecurityGroup: the group with EC2's standard rules (all
    /// outbound, no inbound) and its tags.
    pub fn create_security_group(&self, new: &NewSecurityGroup) -> Result<SecurityGroup, DbError> {
        rules::validate_text("GroupName", &new.name)?;
        rules::validate_text("GroupDescription", &new.description)?;
        if new
            .name
            .eq_ignore_ascii_case(vpc::DEFAULT_SECURITY_GROUP_NAME)
        {
            return Err(SecurityGroupError::ReservedName(new.name.clone()).into());
        }
        self.write(|tx| {
            let vpc_id = match &new.vpc_id {
                Some(id) => {
                    let exists = tx
                        .prepare_cached("SELECT 1 FROM vpcs WHERE id = ?1")?
                        .exists([id])?;
                    if !exists {
                        return Err(not_found(IdKind::Vpc, id));
                    }
                    id.clone()
                }
                None => default_vpc_id(tx)?,
            };
            let taken = tx
                .prepare_cached("SELECT 1 FROM security_groups WHERE vpc_id = ?1 AND name = ?2")?
                .exists([&vpc_id, &new.name])?;
            if taken {
                return Err(SecurityGroupError::DuplicateGroup {
                    name: new.name.clone(),
                    vpc_id,
                }
                .into());
            }
            let id = insert_group(tx, &vpc_id, &new.name, &new.description)?;
            insert_tags(tx, &id, &new.tags)?;
            get_group(tx, &id)
        })
    }

    /// DeleteSecurityGroup: refused for a VPC's default group and for a
    /// group an interface is in or another group's rule names. Returns the
    /// deleted group's id.
    pub fn delete_security_group(&self, group: &GroupRef) -> Result<String, DbError> {
        self.write(|tx| {
            let g = resolve(tx, group)?;
            if g.is_default() {
                return Err(SecurityGroupError::CannotDeleteDefault { id: g.id }.into());
            }
            let used_by_interface = tx
                .prepare_cached("SELECT 1 FROM network_interface_groups WHERE group_id = ?1")?
                .exists([&g.id])?;
            let referenced = tx
                .prepare_cached(
                    "SELECT 1 FROM security_group_rules
                     WHERE referenced_group_id = ?1 AND group_id <> ?1",
                )?
                .exists([&g.id])?;
            if used_by_interface || referenced {
                return Err(SecurityGroupError::InUse { id: g.id }.into());
            }
            // Its own rules (including ones naming itself) go with it.
            tx.execute(
                "DELETE FROM security_group_rules WHERE group_id = ?1",
                [&g.id],
            )?;
            tx.execute("DELETE FROM security_groups WHERE id = ?1", [&g.id])?;
            tx.execute("DELETE FROM tags WHERE resource_id = ?1", [&g.id])?;
            Ok(g.id)
        })
    }

    /// AuthorizeSecurityGroupIngress/Egress: adds every rule or none, and
    /// returns the new rules with their ids.
    pub fn authorize_security_group_rules(
        &self,
        group: &GroupRef,
        direction: RuleDirection,
        requests: &[RuleRequest],
    ) -> Result<Vec<RuleRecord>, DbError> {
        self.write(|tx| {
            let g = resolve(tx, group)?;
            let new = requests
                .iter()
                .map(|r| normalise_in_vpc(tx, &g, direction, r))
                .collect::<Result<Vec<_>, DbError>>()?;
            rules::check_authorize(g.rules.iter().map(|r| &r.rule), &new)?;
            insert_rules(tx, &g.id, &new)
        })
    }

    /// RevokeSecurityGroupIngress/Egress: removes every named rule or none
    /// (InvalidPermission.NotFound), and returns what it removed.
    pub fn revoke_security_group_rules(
        &self,
        group: &GroupRef,
        direction: RuleDirection,
        request: &RevokeRequest,
    ) -> Result<Vec<RuleRecord>, DbError> {
        self.write(|tx| {
            let g = resolve(tx, group)?;
            let mine: Vec<&RuleRecord> = g
                .rules
                .iter()
                .filter(|r| r.rule.direction == direction)
                .collect();
            let mut doomed: Vec<&RuleRecord> = Vec::new();
            if !request.permissions.is_empty() {
                let wanted = request
                    .permissions
                    .iter()
                    .map(|r| normalise_in_vpc(tx, &g, direction, r))
                    .collect::<Result<Vec<_>, DbError>>()?;
                let rules: Vec<_> = mine.iter().map(|r| &r.rule).collect();
                for at in rules::match_revoke(&rules, &wanted)? {
                    doomed.push(mine[at]);
                }
            }
            for id in &request.rule_ids {
                let found = mine
                    .iter()
                    .find(|r| &r.id == id)
                    .ok_or_else(|| DbError::NotFound {
                        kind: IdKind::SecurityGroupRule,
                        ids: vec![id.clone()],
                    })?;
                if !doomed.iter().any(|r| r.id == found.id) {
                    doomed.push(found);
                }
            }
            if doomed.is_empty() {
                return Err(SecurityGroupError::NoPermissions.into());
            }
            let mut delete =
                tx.prepare_cached("DELETE FROM security_group_rules WHERE rule_id = ?1")?;
            for rule in &doomed {
                delete.execute([&rule.id])?;
            }
            Ok(doomed.into_iter().cloned().collect())
        })
    }

    /// DescribeSecurityGroupRules, ordered by rule id; explicit ids must
    /// all exist.
    pub fn list_security_group_rules(
        &self,
        query: &NetworkQuery,
    ) -> Result<Page<RuleRecord>, DbError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT id FROM security_groups ORDER BY id")?;
        let group_ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut all = Vec::new();
        for id in &group_ids {
            all.extend(rules_of(&conn, id)?);
        }
        let missing: Vec<String> = query
            .ids
            .iter()
            .filter(|id| !all.iter().any(|r| &r.id == *id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(DbError::NotFound {
                kind: IdKind::SecurityGroupRule,
                ids: missing,
            });
        }
        all.retain(|r| query.ids.is_empty() || query.ids.contains(&r.id));
        describe(all, query, |r| r.id.clone())
    }
}

fn default_vpc_id(tx: &Transaction<'_>) -> Result<String, DbError> {
    Ok(tx.query_row("SELECT id FROM vpcs WHERE is_default = 1", [], |r| r.get(0))?)
}

fn get_group(tx: &Transaction<'_>, id: &str) -> Result<SecurityGroup, DbError> {
    query_first(
        tx,
        "SELECT * FROM security_groups WHERE id = ?1",
        id,
        group_from_row,
    )?
    .ok_or_else(|| not_found(IdKind::SecurityGroup, id))
}

/// The group a request names: by id anywhere, by name in the default VPC.
fn resolve(tx: &Transaction<'_>, group: &GroupRef) -> Result<SecurityGroup, DbError> {
    let id = match group {
        GroupRef::Id(id) => id.clone(),
        GroupRef::Name(name) => tx
            .query_row(
                "SELECT g.id FROM security_groups g JOIN vpcs v ON v.id = g.vpc_id
                 WHERE v.is_default = 1 AND g.name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| not_found(IdKind::SecurityGroup, name))?,
    };
    get_group(tx, &id)
}

/// `request` normalised, with a peer group given by name resolved to its
/// id in `group`'s VPC, and a peer group by id checked to be there.
fn normalise_in_vpc(
    tx: &Transaction<'_>,
    group: &SecurityGroup,
    direction: RuleDirection,
    request: &RuleRequest,
) -> Result<vpc::SecurityGroupRule, DbError> {
    let mut request = request.clone();
    if let RulePeer::Group(key) = &request.peer {
        let found: Option<(String, String)> = if ids::is_valid(IdKind::SecurityGroup, key) {
            tx.query_row(
                "SELECT id, vpc_id FROM security_groups WHERE id = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        } else {
            tx.query_row(
                "SELECT id, vpc_id FROM security_groups WHERE name = ?1 AND vpc_id = ?2",
                [key, &group.vpc_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        }
        .optional()?;
        match found {
            None => return Err(not_found(IdKind::SecurityGroup, key)),
            Some((_, vpc_id)) if vpc_id != group.vpc_id => {
                return Err(SecurityGroupError::PeerInAnotherVpc.into())
            }
            Some((id, _)) => request.peer = RulePeer::Group(id),
        }
    }
    Ok(rules::normalise(direction, &request)?)
}
