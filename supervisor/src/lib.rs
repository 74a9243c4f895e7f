//! keel's supervisor: the lifecycle of onboot, service and onshutdown containers
//! ([`lifecycle`]), finding their bundles ([`bundles`]), their output ([`output`]), and the
//! control socket that `keelctl` talks to ([`protocol`], [`server`], [`client`]) with its
//! access rules ([`access`]); `keelctl update`'s HTTP download ([`download`]). PID 1 (`keel-init`) drives it from its poll loop; nothing here
//! blocks or spawns processes.

pub mod access;
pub mod bundles;
pub mod cli;
pub mod client;
pub mod control;
pub mod download;
pub mod exec;
pub mod lifecycle;
pub mod output;
pub mod procs;
pub mod prompt;
pub mod protocol;
pub mod readiness;
pub mod restart;
pub mod server;
pub mod time;

pub use access::ContainerAccess;
pub use bundles::{Bundle, Kind, discover};
pub use lifecycle::{Action, ControlError, Now, Record, Settings, Status, Supervisor};
pub use protocol::{ContainerInfo, Request, Response, TimelineStep};
pub use server::ControlServer;
