//! Hibernation: StopInstances `Hibernate=true` saves the instance's VM
//! (memory, vCPUs, devices) into its hibernation directory beside the root
//! volume and ends the VMM; StartInstances resumes it in a new VMM
//! (`ec2lab-vmm --restore-from`), so the guest's processes go on where they
//! were, with the same instance id, private address and volume, as on EC2.
//!
//! - The saved files are forgotten as soon as a resumed VMM answers (it
//!   has mapped the memory file), and on terminate; a start therefore never
//!   resumes a hibernation twice, nor one older than the volume.
//! - A resume the VMM refuses (a corrupt or incompatible snapshot, another
//!   host CPU) boots the instance from its volume instead, and its
//!   `StateTransitionReason` says why.
//! - The guest's clock stood still while it was on disk: once resumed, the
//!   daemon sets it through the agent's session service (`date -s`), as
//!   EC2's hibernation agent has the guest re-read its clock on resume.
//! - IMDSv2 tokens die with the VMM that issued them (its key is in its
//!   memory only), so the resumed guest must fetch new ones, as on EC2.
//! - A daemon killed at any point converges on its next start: a VMM
//!   still in `stopping` with the hibernate reason is saved again, and a
//!   resuming VMM found running has its resume finished (files forgotten,
//!   clock set, or a cold boot if it fails).

use std::sync::Arc;
use std::time::Duration;

use crate::connect;
use crate::lifecycle::Lab;
use crate::model::state::{InstanceState, StateReason};
use crate::model::Instance;

/// How long a resuming VMM has to answer on its API.
const RESTORE_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest's agent has to run `date` after a resume (a slow
/// guest on a host that emulates guest kernel mode needs seconds).
const CLOCK_STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries at stepping the clock; the agent's session service may need a
/// moment after the resume (its vsock connections were reset).
const CLOCK_STEP_TRIES: u32 = 5;

impl Lab {
    /// Whether starting `instance` resumes a hibernation.
    pub(crate) fn hibernated(&self, instance: &Instance) -> bool {
        let saved = self
            .supervisor
            .files(&instance.id)
            .hibernation_state()
            .exists();
        if saved && !instance.hibernation_configured {
            // Cannot happen through the API; never resume what was not asked for.
            self.supervisor.discard_hibernation(&instance.id);
            return false;
        }
        saved
    }

    /// Whether `instance` is stopping because of a hibernate request.
    pub(crate) fn hibernating(instance: &Instance) -> bool {
        instance.state == InstanceState::Stopping
            && instance
                .state_reason
                .as_ref()
                .is_some_and(|r| *r == StateReason::user_initiated_hibernate())
    }

    /// StopInstances Hibernate's side effect (the state machine agreed):
    /// the VM is saved and its VMM ended. If saving fails, the instance is
    /// stopped the ordinary way and the failure logged: it ends `stopped`
    /// either way, as EC2 does when hibernation fails.
    pub fn spawn_hibernate(self: &Arc<Self>, id: &str) {
        let Ok(instance) = self.db.get_instance(id) else {
            return;
        };
        let Some(process) = self.live_process(&instance) else {
            self.spawn_stop(id, false);
            return;
        };
        self.watch(id.to_string(), process);
        let lab = self.clone();
        let id = id.to_string();
        self.runtime.spawn(async move {
            match lab.supervisor.save_and_stop(&id, process).await {
                Ok(info) => log::info!("{id}: hibernated ({})", info.reason),
                Err(e) => {
                    log::warn!("{id}: hibernation failed: {e}; stopping it instead");
                    lab.supervisor.discard_hibernation(&id);
                    lab.supervisor.stop(&id, process, lab.stop_timeout).await;
                }
            }
        });
    }

    /// After a resuming VMM started: once it answers, the saved files are
    /// forgotten and the guest's clock is set.
    pub(crate) async fn finish_restore(
        self: Arc<Self>,
        id: String,
        process: crate::supervisor::VmProcess,
    ) {
        if !self
            .supervisor
            .wait_api(&id, process, RESTORE_ANSWER_TIMEOUT)
            .await
        {
            // It ended: the exit handler boots the instance cold.
            return;
        }
        crate::lock(&self.restoring).remove(&id);
        self.supervisor.discard_hibernation(&id);
        log::info!("{id}: resumed from hibernation");
        let vsock = self.supervisor.files(&id).vsock();
        let lab = self.clone();
        let outcome = match tokio::task::spawn_blocking(move || {
            let mut last = None;
            for attempt in 0..CLOCK_STEP_TRIES {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_secs(2));
                }
                if lab.live_process_of(&id).is_none() {
                    return Err("the instance stopped".to_string());
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let command = ["date", "-u", "-s"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([format!("@{now}")])
                    .collect::<Vec<_>>();
                match connect::exec_quietly(&vsock, &command, CLOCK_STEP_TIMEOUT) {
                    Ok(0) => return Ok(now),
                    Ok(status) => last = Some(format!("date exited {status}")),
                    Err(e) => last = Some(e.to_string()),
                }
            }
            Err(last.unwrap_or_default())
        })
        .await
        {
            Ok(outcome) => outcome,
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(now) => log::info!("guest clock set to {now} after the resume"),
            Err(e) => log::warn!("cannot set the guest's clock after the resume: {e}"),
        }
    }

    /// The VMM refused to resume (or died before answering): forget the
    /// hibernation, say why, and boot the instance from its volume.
    pub(crate) fn restore_failed(self: &Arc<Self>, id: &str, reason: &str) {
        log::warn!(
            "{id}: resuming the hibernation failed ({reason}); booting from the root volume"
        );
        self.supervisor.discard_hibernation(id);
        let note = format!(
            "Resume from hibernation failed ({reason}); booted from the root volume ({})",
            crate::model::format_gmt(Self::now())
        );
        if let Err(e) = self.db.set_state_transition_reason(id, &note) {
            log::error!("{id}: {e}");
        }
        if let Err(e) = self.relaunch(id) {
            log::error!("{id}: cannot boot it after the failed resume: {e}");
        }
    }

    /// A daemon restarted while a resuming VMM runs (it was killed during
    /// StartInstances): the resume is finished as if it had never died.
    /// The VMM's end before it answers boots the instance cold, and once it
    /// answers, the saved files are forgotten (a later start must boot from
    /// the volume, not resume this hibernation a second time) and the
    /// guest's clock is set.
    ///
    /// A pending or running instance whose saved files are still there can
    /// only be running a resume: a start resumes whenever they exist, and a
    /// hibernation saves them only while the instance is `stopping`. Called
    /// before the VMM is watched, so that its end is seen as a failed resume.
    pub(crate) fn adopt_resume(self: &Arc<Self>, id: &str, process: crate::supervisor::VmProcess) {
        if !self.supervisor.files(id).hibernation_state().exists() {
            return;
        }
        log::info!(
            "{id}: adopting the resume of its hibernation by VMM pid {}",
            process.pid
        );
        crate::lock(&self.restoring).insert(id.to_string());
        self.runtime
            .spawn(self.clone().finish_restore(id.to_string(), process));
    }

    fn live_process_of(&self, id: &str) -> Option<crate::supervisor::VmProcess> {
        let instance = self.db.get_instance(id).ok()?;
        self.live_process(&instance)
    }
}
