//! Security group changes that reach running instances: each one is
//! stored, then every VPC with a namespace gets its ruleset re-rendered
//! and applied ([`crate::network::Network::refresh_rules`]), so an
//! authorize or revoke is live before its answer leaves the API.

use crate::db::{DbError, InterfaceChange, RevokeRequest};
use crate::lifecycle::Lab;
use crate::model::security_group::{GroupRef, RuleRequest};
use crate::model::vpc::{NetworkInterface, RuleDirection, RuleRecord};
use crate::network::NetworkError;

/// Why a group change failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// Refused or failed in the store: nothing changed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Stored, but the new rules could not be put in place; the previous
    /// ruleset still filters, and the next change (or a daemon restart)
    /// applies the stored rules again.
    #[error("the change is stored but not yet enforced: {0}")]
    NotApplied(#[from] Box<NetworkError>),
}

impl Lab {
    /// AuthorizeSecurityGroupIngress/Egress, live on return.
    pub fn authorize_security_group_rules(
        &self,
        group: &GroupRef,
        direction: RuleDirection,
        requests: &[RuleRequest],
    ) -> Result<Vec<RuleRecord>, GroupError> {
        let added = self
            .db
            .authorize_security_group_rules(group, direction, requests)?;
        self.enforce_security_groups()?;
        Ok(added)
    }

    /// RevokeSecurityGroupIngress/Egress, live on return.
    pub fn revoke_security_group_rules(
        &self,
        group: &GroupRef,
        direction: RuleDirection,
        request: &RevokeRequest,
    ) -> Result<Vec<RuleRecord>, GroupError> {
        let revoked = self
            .db
            .revoke_security_group_rules(group, direction, request)?;
        self.enforce_security_groups()?;
        Ok(revoked)
    }

    /// ModifyNetworkInterfaceAttribute: a new set of groups, the source/
    /// destination check or the description of interface `id`; groups
    /// and the check are live on return.
    pub fn modify_network_interface(
        &self,
        id: &str,
        change: &InterfaceChange,
    ) -> Result<NetworkInterface, GroupError> {
        let eni = self.db.modify_network_interface(id, change)?;
        if !matches!(change, InterfaceChange::Description(_)) {
            self.enforce_security_groups()?;
        }
        Ok(eni)
    }

    /// Makes every VPC's live rules match the store (nothing without a
    /// fabric).
    pub(crate) fn enforce_security_groups(&self) -> Result<(), GroupError> {
        match self.network() {
            Some(network) => network
                .refresh_rules(&self.db)
                .map_err(|e| GroupError::NotApplied(Box::new(e))),
            None => Ok(()),
        }
    }
}
