//! [`Phase`]: the machine's state as one name, the states of `core/TRANSITIONS.md`.
//!
//! Inside, the machine keeps its state in a few orthogonal parts (registration, link,
//! slot, pause, stop), so each decision reads the part it depends on. [`Worker::phase`]
//! names the combination. Combinations the table does not list take the name of the part
//! that decides the most: stopping outranks everything, then registration, then the link;
//! on a live session the slot (an update being installed, an upload, a running job)
//! outranks pause.

use super::registration::Registration;
use super::state::Link;
use super::state::Stop;
use super::state::{JobStage, Slot};
use super::Worker;

/// Defines [`Phase`], [`Phase::ALL`] and [`Phase::meaning`] from one list.
macro_rules! phases {
    ($($name:ident => $meaning:literal,)*) => {
        /// Where the machine stands (see the module docs and `core/TRANSITIONS.md`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Phase {
            $(#[doc = $meaning] $name,)*
        }

        impl Phase {
            /// Every phase, in the order of the transition table.
            pub const ALL: &'static [Phase] = &[$(Phase::$name,)*];

            /// What the phase means, in a few words.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Phase::$name => $meaning,)*
                }
            }
        }
    };
}

phases! {
    NotStarted => "built; `Start` not yet handled",
    Minting => "no credentials; waiting for the shell's CSPRNG",
    Requesting => "register-request in flight",
    Polling => "registration poll in flight",
    Connecting => "Connect issued, upgrade pending",
    AwaitWelcome => "hello sent, waiting for welcome",
    LiveIdle => "welcomed, no job",
    LiveBusy => "welcomed, job dispatched",
    Uploading => "binary result upload in flight",
    Updating => "welcomed, installing an update",
    Paused => "welcomed, paused or disabled by operator",
    Backoff => "waiting to reconnect",
    Draining => "shutdown asked, job still running",
    Exited => "Exit emitted",
}

impl Worker {
    /// The machine's state as one name (see [`Phase`]).
    pub fn phase(&self) -> Phase {
        match self.stop {
            Stop::Exited => return Phase::Exited,
            Stop::Draining => return Phase::Draining,
            Stop::Running if !self.started => return Phase::NotStarted,
            Stop::Running => {}
        }
        match self.registration {
            Registration::Minting => return Phase::Minting,
            Registration::Requesting { .. } => return Phase::Requesting,
            Registration::Polling { .. } => return Phase::Polling,
            Registration::Done => {}
        }
        match self.link {
            Link::Connecting { .. } => Phase::Connecting,
            Link::AwaitWelcome { .. } => Phase::AwaitWelcome,
            // `Down` while running and registered lasts only inside `handle`.
            Link::Backoff | Link::Down => Phase::Backoff,
            Link::Live { .. } => match &self.slot {
                Slot::Updating { .. } => Phase::Updating,
                Slot::Job(job) if job.stage == JobStage::Running => Phase::LiveBusy,
                Slot::Job(_) => Phase::Uploading,
                Slot::Free if !self.auto_enabled() => Phase::Paused,
                Slot::Free => Phase::LiveIdle,
            },
        }
    }
}
