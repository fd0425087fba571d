//! Elastic IPs as the lab does them: stored ([`crate::db`]), then the
//! fabric is brought in line, so an association or a move is live at the
//! VPC router before the answer leaves the API, with no restart.

use crate::db::{AddressRef, AssociationTarget, DbError, NetworkQuery};
use crate::lifecycle::Lab;
use crate::model::address::ElasticIp;
use crate::model::state::InstanceState;
use crate::model::vpc::Cidr;
use crate::model::Tags;
use crate::network::uplink::DEFAULT_POOL;
use crate::network::NetworkError;

/// Why an Elastic IP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AddressOpError {
    /// Refused or failed in the store: nothing changed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Stored, but the fabric could not follow yet.
    #[error("the change is stored but not yet in effect: {0}")]
    NotApplied(#[from] Box<NetworkError>),
}

impl Lab {
    /// The block public addresses come from: the uplink's pool, or in a
    /// lab without a fabric (the API's tests) the default one, so the
    /// API's answers are EC2's either way.
    pub fn public_pool(&self) -> Cidr {
        self.network()
            .and_then(|n| n.uplink())
            .map_or(DEFAULT_POOL, |u| u.pool)
    }

    /// AllocateAddress (domain vpc), from the pool.
    pub fn allocate_address(&self, tags: &Tags) -> Result<ElasticIp, AddressOpError> {
        Ok(self.db.allocate_address(self.public_pool(), tags)?)
    }

    /// AssociateAddress; returns the association id. An interface the
    /// address left gets a pool address again if it asks for one and its
    /// instance runs, as in EC2.
    pub fn associate_address(
        &self,
        address: &AddressRef,
        target: &AssociationTarget,
        allow_reassociation: bool,
    ) -> Result<String, AddressOpError> {
        let association = self
            .db
            .associate_address(address, target, allow_reassociation)?;
        if let Some(eni) = &association.moved_from {
            self.give_back_public_address(eni)?;
        }
        self.refresh_fabric()?;
        Ok(association.association_id)
    }

    /// DisassociateAddress.
    pub fn disassociate_address(&self, association: &AddressRef) -> Result<(), AddressOpError> {
        let eni = self.db.disassociate_address(association)?;
        self.give_back_public_address(&eni)?;
        self.refresh_fabric()
    }

    /// ReleaseAddress (only when not associated: nothing to change live).
    pub fn release_address(&self, address: &AddressRef) -> Result<(), AddressOpError> {
        Ok(self.db.release_address(address)?)
    }

    /// A pool address for interface `eni_id` when it asks for one and its
    /// instance may run.
    fn give_back_public_address(&self, eni_id: &str) -> Result<(), AddressOpError> {
        let query = NetworkQuery {
            ids: vec![eni_id.to_string()],
            ..NetworkQuery::default()
        };
        let Some(eni) = self.db.list_network_interfaces(&query)?.items.pop() else {
            return Ok(());
        };
        let Some(attachment) = eni.attachment else {
            return Ok(());
        };
        let state = self.db.get_instance(&attachment.instance_id)?.state;
        if matches!(state, InstanceState::Pending | InstanceState::Running) {
            self.db
                .assign_public_ips(&attachment.instance_id, self.public_pool())?;
        }
        Ok(())
    }

    fn refresh_fabric(&self) -> Result<(), AddressOpError> {
        match self.network() {
            Some(network) => network
                .refresh_rules(&self.db)
                .map_err(|e| AddressOpError::NotApplied(Box::new(e))),
            None => Ok(()),
        }
    }
}
