//! The container lifecycle state machine: which container runs when, what state each is in,
//! and when to signal whom. It does no I/O: PID 1 feeds it events (a shim was spawned, reported
//! an event, exited; time passed; shutdown was asked for) and carries out the [`Action`]s it
//! returns, so the whole policy is testable without root.
//!
//! Boot: onboot containers one at a time in lexical order, each with a timeout, then every
//! service whose dependencies are ready (all at once when there are none); a service's
//! dependents start when it becomes ready (started, or its readiness probe passed — PID 1 runs
//! the probes the supervisor asks for with [`Action::Probe`]). A service that exits is
//! restarted according to its policy with the backoff of [`crate::restart`]. Shutdown:
//! onshutdown containers one at a time (services still run), then the services in reverse
//! dependency order: SIGTERM to each shim (which forwards it), SIGKILL to the container after
//! the grace period, SIGKILL to the shim if it still lingers.

use crate::access::ContainerAccess;
use crate::bundles::{Bundle, Kind};
use crate::output::LogRing;
use crate::protocol::ContainerInfo;
use crate::restart::Restarter;
use crate::time::after;
use keel_bundle::{Readiness, ShimEvent, Supervision};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// How long to wait for a process after a SIGKILL before escalating or giving up.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Exit status of a shim that failed before the container started.
const SHIM_FAILED: i32 = 127;
/// Time between two readiness probes of a service.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Why a control request on a container was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no container named {0}")]
    Unknown(String),
    #[error("{0} is not a service")]
    NotAService(String),
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("{0} is already running")]
    AlreadyRunning(String),
    #[error("the system is shutting down")]
    ShuttingDown,
}

/// Tunables, mostly from the kernel command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default time an onboot or onshutdown container may run (overridden by `runtime.json`
    /// `keel.timeout`).
    pub onboot_timeout: Duration,
    /// Default time between SIGTERM and SIGKILL (overridden by `keel.stopGracePeriod`).
    pub stop_grace: Duration,
    /// Output lines kept in memory per container.
    pub log_lines: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            onboot_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            log_lines: 200,
        }
    }
}

/// The current time, monotonic for deadlines and wall-clock for display.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn system() -> Self {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Not started yet.
    Pending,
    /// Its shim runs; the container does not exist yet.
    Creating,
    /// The container exists and waits to be started.
    Created,
    Running,
    /// It ran and ended (see the exit status).
    Stopped,
    /// It could not run (bad bundle, shim failure) or was killed after a timeout.
    Failed,
    /// A service waiting for its next restart.
    Backoff,
    /// A service waiting for its next restart after exiting in a loop.
    Crashloop,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
            Status::Backoff => "backoff",
            Status::Crashloop => "crashloop",
        }
    }
}

/// Something PID 1 must do for the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start `keel-shim run <bundle> <id>` for record `index`, then report
    /// [`Supervisor::spawned`] or [`Supervisor::spawn_failed`].
    Spawn { index: usize },
    /// Send `signal` to `pid`.
    Signal { pid: i32, signal: Signal },
    /// A boot timeline step was reached.
    Milestone(String),
    /// Check whether service `index` is ready, then report [`Supervisor::probed`].
    Probe { index: usize, readiness: Readiness },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopStage {
    /// SIGTERM sent to the shim.
    Term,
    /// SIGKILL sent to the container process.
    KillContainer,
    /// SIGKILL sent to the shim itself.
    KillShim,
}

#[derive(Debug, Clone, Copy)]
struct Stop {
    stage: StopStage,
    deadline: Instant,
}

/// One container the supervisor knows.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub kind: Kind,
    pub bundle: PathBuf,
    pub status: Status,
    /// The container's process (from the shim's `created`/`started` events).
    pub pid: Option<i32>,
    pub shim_pid: Option<i32>,
    /// Status of the last run (128+signal when killed).
    pub exit_status: Option<i32>,
    /// Why the last run ended, when the status alone does not say (`oom-killed`).
    pub exit_reason: Option<String>,
    /// When the last run was started.
    pub created: Option<SystemTime>,
    pub restarts: u32,
    pub supervision: Supervision,
    /// Its cgroup, when its `config.json` names one (see [`Bundle::cgroups_path`]).
    pub cgroups_path: Option<String>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The last lines of its output.
    pub logs: LogRing,
    started_at: Option<Instant>,
    started: bool,
    reported_exit: Option<i32>,
    reported_oom: bool,
    timeout_at: Option<Instant>,
    timed_out: bool,
    stop: Option<Stop>,
    /// Escalation ran out and the shim still lives: shutdown no longer waits for it.
    abandoned: bool,
    restarter: Restarter,
    /// Dependents may start (see [`Readiness`]).
    pub ready: bool,
    /// When to start it again after an exit.
    restart_at: Option<Instant>,
    /// When to probe its readiness next.
    probe_at: Option<Instant>,
    /// Stopped by hand: not restarted until started by hand.
    held: bool,
    /// Start again as soon as it exited (`keelctl restart`).
    restart_requested: bool,
}

impl Record {
    /// Its shim runs and shutdown still waits for it.
    fn live(&self) -> bool {
        self.shim_pid.is_some() && !self.abandoned
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before [`Supervisor::boot`].
    Idle,
    /// Running the onboot container with this index.
    Onboot(usize),
    /// Services started.
    Running,
    /// Shutting down: running this onshutdown container (None: waiting for an onboot
    /// container to stop first).
    Onshutdown(Option<usize>),
    /// Shutting down; give up waiting at this instant.
    Stopping(Instant),
    /// Every shim is gone (or given up on): PID 1 may power off.
    Halted,
}

/// The lifecycle of every container (see the module documentation).
#[derive(Debug)]
pub struct Supervisor {
    settings: Settings,
    records: Vec<Record>,
    phase: Phase,
    actions: Vec<Action>,
}

impl Supervisor {
    pub fn new(settings: Settings) -> Self {
        Supervisor {
            settings,
            records: Vec::new(),
            phase: Phase::Idle,
            actions: Vec::new(),
        }
    }

    /// Registers a bundle; one that cannot run is recorded as failed right away.
    pub fn add(&mut self, bundle: Bundle) {
        // A seed per name: jitter differs between services yet is the same on every boot.
        let seed = bundle.id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let (status, supervision, error) = match bundle.runtime {
            Ok(rt) => (Status::Pending, rt.keel, None),
            Err(e) => {
                log::error!("{} {}: {e}", bundle.kind.as_str(), bundle.id);
                (Status::Failed, Supervision::default(), Some(e))
            }
        };
        // Only services restart (see `after_service_exit`).
        let policy = supervision.restart;
        self.records.push(Record {
            id: bundle.id,
            kind: bundle.kind,
            bundle: bundle.dir,
            status,
            pid: None,
            shim_pid: None,
            exit_status: None,
            exit_reason: None,
            created: None,
            restarts: 0,
            supervision,
            cgroups_path: bundle.cgroups_path,
            error,
            logs: LogRing::new(self.settings.log_lines),
            started_at: None,
            started: false,
            reported_exit: None,
            reported_oom: false,
            timeout_at: None,
            timed_out: false,
            stop: None,
            abandoned: false,
            restarter: Restarter::new(policy, seed),
            ready: false,
            restart_at: None,
            probe_at: None,
            held: false,
            restart_requested: false,
        });
    }

    /// The index of the container named `id`.
    pub fn find(&self, id: &str) -> Result<usize, ControlError> {
        self.records
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| ControlError::Unknown(id.to_owned()))
    }

    fn service(&self, id: &str) -> Result<usize, ControlError> {
        let index = self.find(id)?;
        if self.records[index].kind != Kind::Service {
            return Err(ControlError::NotAService(id.to_owned()));
        }
        if self.phase != Phase::Running {
            return Err(ControlError::ShuttingDown);
        }
        Ok(index)
    }

    /// `keelctl start`: starts a service that does not run now, forgetting its backoff.
    pub fn start_service(&mut self, id: &str) -> Result<(), ControlError> {
        let index = self.service(id)?;
        let rec = &mut self.records[index];
        if rec.shim_pid.is_some() {
            return Err(ControlError::AlreadyRunning(id.to_owned()));
        }
        rec.held = false;
        rec.restart_at = None;
        rec.restarter.reset();
        self.start(index);
        Ok(())
    }

    /// `keelctl stop`: stops a service (SIGTERM, then SIGKILL after its grace period) and
    /// keeps it down until it is started by hand.
    pub fn stop_service(&mut self, id: &str, now: Now) -> Result<(), ControlError> {
        let index = self.service(id)?;
        let rec = &mut self.records[index];
        rec.held = true;
        rec.restart_requested = false;
        if rec.restart_at.take().is_some() || rec.status == Status::Pending {
            rec.status = Status::Stopped;
        }
        self.stop(index, now);
        Ok(())
    }

    /// `keelctl restart`: stops a running service and starts it again as soon as it exited;
    /// starts one that does not run.
    pub fn restart_service(&mut self, id: &str, now: Now) -> Result<(), ControlError> {
        let index = self.service(id)?;
        let rec = &mut self.records[index];
        rec.held = false;
        rec.restart_at = None;
        rec.restarter.reset();
        if rec.shim_pid.is_some() {
            rec.restart_requested = true;
            self.stop(index, now);
        } else {
            self.start(index);
        }
        Ok(())
    }

    /// `keelctl kill`: sends `signal` to a running container's process (the restart policy
    /// applies to the exit that may follow).
    pub fn kill(&mut self, id: &str, signal: Signal) -> Result<(), ControlError> {
        let index = self.find(id)?;
        let pid = self.records[index]
            .pid
            .filter(|_| self.records[index].shim_pid.is_some())
            .ok_or_else(|| ControlError::NotRunning(id.to_owned()))?;
        self.actions.push(Action::Signal { pid, signal });
        Ok(())
    }

    /// The readiness probe PID 1 ran for record `index` after an [`Action::Probe`] passed
    /// (`ok`) or not (probed again after [`PROBE_INTERVAL`]).
    pub fn probed(&mut self, index: usize, ok: bool) {
        let Some(rec) = self.records.get_mut(index) else {
            return;
        };
        if !ok || rec.status != Status::Running || rec.ready {
            return;
        }
        log::info!("service {}: ready", rec.id);
        rec.ready = true;
        rec.probe_at = None;
        self.start_waiting_services();
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// What the control socket needs to recognise each container's processes and know their
    /// grant: every container with a known cgroup, granted or not (a container without a
    /// grant must be recognised to be refused). Fixed once the bundles are added.
    pub fn control_access(&self) -> Vec<ContainerAccess> {
        self.records
            .iter()
            .filter_map(|r| {
                Some(ContainerAccess {
                    id: r.id.clone(),
                    cgroup: r.cgroups_path.clone()?,
                    grant: r.supervision.control,
                })
            })
            .collect()
    }

    /// Starts the boot sequence: the first onboot container, or the services if there is none.
    pub fn boot(&mut self) {
        if self.phase == Phase::Idle {
            self.next_onboot(0);
        }
    }

    /// The actions decided since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Whether shutdown finished: nothing is left running.
    pub fn is_halted(&self) -> bool {
        self.phase == Phase::Halted
    }

    /// Whether the onboot sequence is over (services were started, or shutdown began).
    pub fn onboot_done(&self) -> bool {
        !matches!(self.phase, Phase::Idle | Phase::Onboot(_))
    }

    /// The shim for record `index` runs as `shim_pid`.
    pub fn spawned(&mut self, index: usize, shim_pid: i32, now: Now) {
        let default_timeout = self.settings.onboot_timeout;
        let Some(rec) = self.records.get_mut(index) else {
            return;
        };
        rec.shim_pid = Some(shim_pid);
        rec.created = Some(now.wall);
        rec.started_at = Some(now.mono);
        if rec.kind != Kind::Service {
            let timeout = rec.supervision.timeout.unwrap_or(default_timeout);
            rec.timeout_at = Some(after(now.mono, timeout));
        }
        log::debug!("{} {}: shim pid {shim_pid}", rec.kind.as_str(), rec.id);
    }

    /// The shim for record `index` could not be started.
    pub fn spawn_failed(&mut self, index: usize, error: String, now: Now) {
        let Some(rec) = self.records.get_mut(index) else {
            return;
        };
        log::error!(
            "{} {}: cannot start shim: {error}",
            rec.kind.as_str(),
            rec.id
        );
        rec.status = Status::Failed;
        rec.error = Some(error);
        rec.created = Some(now.wall);
        rec.started_at = Some(now.mono);
        rec.exit_status = Some(SHIM_FAILED);
        self.after_end(index, now);
    }

    /// The shim `shim_pid` reported `event`.
    pub fn shim_event(&mut self, shim_pid: i32, event: ShimEvent) {
        let Some(rec) = self
            .records
            .iter_mut()
            .find(|r| r.shim_pid == Some(shim_pid))
        else {
            log::debug!("event from unknown shim {shim_pid}: {event:?}");
            return;
        };
        match event {
            ShimEvent::Created { pid } => {
                rec.status = Status::Created;
                rec.pid = Some(pid);
            }
            ShimEvent::Started { pid } => {
                rec.status = Status::Running;
                rec.pid = Some(pid);
                rec.started = true;
                log::debug!("{} {}: started, pid {pid}", rec.kind.as_str(), rec.id);
                if rec.kind == Kind::Service {
                    if rec.supervision.readiness.is_started() {
                        rec.ready = true;
                        self.start_waiting_services();
                    } else {
                        // Due at once: the next tick probes.
                        rec.probe_at = rec.started_at;
                    }
                }
            }
            ShimEvent::Log { level, message } => {
                // The shim relays libcontainer's chatter at info level: keep only warnings
                // and errors out of debug.
                let level = match level.as_str() {
                    "error" => log::Level::Error,
                    "warn" | "warning" => log::Level::Warn,
                    "trace" => log::Level::Trace,
                    _ => log::Level::Debug,
                };
                log::log!(level, "{} {}: {message}", rec.kind.as_str(), rec.id);
                if level == log::Level::Error {
                    rec.error = Some(message);
                }
            }
            ShimEvent::Exited { status, oom_killed } => {
                rec.reported_exit = Some(status);
                rec.reported_oom = oom_killed;
            }
        }
    }

    /// A child of PID 1 exited with `status` (exit code, or 128+signal). Returns whether it was
    /// one of the shims.
    pub fn child_exited(&mut self, pid: i32, status: i32, now: Now) -> bool {
        let Some(index) = self.records.iter().position(|r| r.shim_pid == Some(pid)) else {
            return false;
        };
        let rec = &mut self.records[index];
        let reported = rec.reported_exit.take();
        if let (None, true, Some(orphan)) = (reported, rec.started, rec.pid) {
            // The shim died without cleaning up: its container was reparented to us.
            log::warn!(
                "{} {}: shim died, killing its container {orphan}",
                rec.kind.as_str(),
                rec.id
            );
            self.actions.push(Action::Signal {
                pid: orphan,
                signal: Signal::SIGKILL,
            });
        }
        let exit = reported.unwrap_or(status);
        rec.exit_status = Some(exit);
        rec.exit_reason = std::mem::take(&mut rec.reported_oom).then(|| "oom-killed".to_owned());
        rec.pid = None;
        rec.shim_pid = None;
        rec.timeout_at = None;
        rec.stop = None;
        rec.abandoned = false;
        rec.ready = false;
        rec.probe_at = None;
        let took = rec
            .started_at
            .map_or(Duration::ZERO, |t| now.mono.saturating_duration_since(t));
        let what = format!("{} {}", rec.kind.as_str(), rec.id);
        if rec.timed_out {
            rec.status = Status::Failed;
            rec.error = Some(format!("timed out, exit status {exit}"));
            log::error!("{what}: killed after timeout, exit status {exit}");
        } else if !rec.started && status == SHIM_FAILED {
            rec.status = Status::Failed;
            let why = rec.error.clone().unwrap_or_else(|| "shim failed".into());
            log::error!("{what}: failed to start: {why}");
        } else {
            rec.status = Status::Stopped;
            if exit == 0 {
                log::info!("{what}: exited with status 0 after {} ms", took.as_millis());
            } else {
                let reason = rec
                    .exit_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                log::warn!(
                    "{what}: exited with status {exit}{reason} after {} ms",
                    took.as_millis()
                );
            }
        }
        if rec.kind != Kind::Service {
            self.actions.push(Action::Milestone(format!(
                "{} {} end (status {exit})",
                rec.kind.as_str(),
                rec.id
            )));
        }
        self.after_end(index, now);
        true
    }

    /// A line of output from record `index`.
    pub fn output(&mut self, index: usize, line: &str) {
        if let Some(rec) = self.records.get_mut(index) {
            rec.logs.push(line);
        }
    }

    /// Begins the orderly shutdown: a running onboot container is stopped (the rest never
    /// start), then the onshutdown containers run in order while services still run, then
    /// everything left is stopped. Idempotent.
    pub fn shutdown(&mut self, now: Now) {
        match self.phase {
            Phase::Onshutdown(_) | Phase::Stopping(_) | Phase::Halted => {}
            Phase::Onboot(index) => {
                self.phase = Phase::Onshutdown(None);
                self.stop(index, now);
            }
            Phase::Idle | Phase::Running => self.next_onshutdown(0, now),
        }
    }

    /// SIGTERM to record `index`'s shim (which forwards it), escalation armed.
    fn stop(&mut self, index: usize, now: Now) {
        let rec = &mut self.records[index];
        let Some(shim) = rec.shim_pid else { return };
        if rec.stop.is_some() {
            return;
        }
        let grace = rec
            .supervision
            .stop_grace_period
            .unwrap_or(self.settings.stop_grace);
        log::info!("stopping {} {}", rec.kind.as_str(), rec.id);
        self.actions.push(Action::Signal {
            pid: shim,
            signal: Signal::SIGTERM,
        });
        rec.stop = Some(Stop {
            stage: StopStage::Term,
            deadline: after(now.mono, grace),
        });
    }

    /// Stops everything still running, dependents before their dependencies, and waits
    /// (bounded) for it.
    fn stop_all(&mut self, now: Now) {
        let mut budget = Duration::ZERO;
        for rec in &mut self.records {
            rec.probe_at = None;
            if rec.restart_at.take().is_some() {
                rec.status = Status::Stopped;
            }
            if rec.shim_pid.is_some() {
                let grace = rec
                    .supervision
                    .stop_grace_period
                    .unwrap_or(self.settings.stop_grace);
                // Stops may run one after the other (a dependency chain).
                budget = budget
                    .saturating_add(grace)
                    .saturating_add(KILL_WAIT.saturating_mul(3));
            }
        }
        self.phase = Phase::Stopping(after(now.mono, budget));
        self.stop_next(now);
        self.check_halted();
    }

    /// SIGTERM to every live container that no live service depends on any more.
    fn stop_next(&mut self, now: Now) {
        for index in 0..self.records.len() {
            let rec = &self.records[index];
            if !rec.live() || rec.stop.is_some() {
                continue;
            }
            let needed = rec.kind == Kind::Service
                && self.records.iter().any(|other| {
                    other.live()
                        && other.kind == Kind::Service
                        && other.id != rec.id
                        && other.supervision.depends_on.contains(&rec.id)
                });
            if !needed {
                self.stop(index, now);
            }
        }
    }

    /// What follows the exit of service `index` while the system runs: a restart by hand, by
    /// policy after a backoff, or none.
    fn after_service_exit(&mut self, index: usize, now: Now) {
        let rec = &mut self.records[index];
        if std::mem::take(&mut rec.restart_requested) {
            self.start(index);
            return;
        }
        if rec.held {
            return;
        }
        let exit = rec.exit_status.unwrap_or(SHIM_FAILED);
        let ran = rec
            .started_at
            .map_or(Duration::ZERO, |t| now.mono.saturating_duration_since(t));
        if let Some(delay) = rec.restarter.on_exit(exit, ran, now.mono) {
            rec.restart_at = Some(after(now.mono, delay));
            rec.status = if rec.restarter.crashloop() {
                Status::Crashloop
            } else {
                Status::Backoff
            };
            log::info!(
                "service {}: restart in {} ms{}",
                rec.id,
                delay.as_millis(),
                if rec.restarter.crashloop() {
                    " (crashloop)"
                } else {
                    ""
                }
            );
        }
    }

    /// Starts every pending service whose dependencies are ready.
    fn start_waiting_services(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        for index in 0..self.records.len() {
            let rec = &self.records[index];
            if rec.kind != Kind::Service || rec.status != Status::Pending || rec.held {
                continue;
            }
            // keel-config rejects unknown names at build time; one that slips through does
            // not block the service.
            let deps_ready = rec.supervision.depends_on.iter().all(|dep| {
                self.records
                    .iter()
                    .find(|r| r.kind == Kind::Service && &r.id == dep)
                    .is_none_or(|r| r.ready)
            });
            if deps_ready {
                self.start(index);
            }
        }
    }

    /// Starts the first pending onshutdown container at or after `from`; stops everything
    /// when none is left.
    fn next_onshutdown(&mut self, from: usize, now: Now) {
        let next = (from..self.records.len()).find(|&i| {
            self.records[i].kind == Kind::Onshutdown && self.records[i].status == Status::Pending
        });
        match next {
            Some(index) => {
                self.phase = Phase::Onshutdown(Some(index));
                self.actions.push(Action::Milestone(format!(
                    "onshutdown {} start",
                    self.records[index].id
                )));
                self.start(index);
            }
            None => self.stop_all(now),
        }
    }

    /// The next instant [`Supervisor::tick`] has something to do, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let running = self.phase == Phase::Running;
        let records = self
            .records
            .iter()
            .flat_map(|r| {
                [
                    r.timeout_at,
                    r.stop.map(|s| s.deadline),
                    r.restart_at.filter(|_| running),
                    r.probe_at.filter(|_| running),
                ]
            })
            .flatten();
        let phase = match self.phase {
            Phase::Stopping(t) => Some(t),
            _ => None,
        };
        records.chain(phase).min()
    }

    /// Acts on every deadline that passed: restarts, readiness probes, onboot timeouts, stop
    /// escalation.
    pub fn tick(&mut self, now: Now) {
        if self.phase == Phase::Running {
            for index in 0..self.records.len() {
                let rec = &mut self.records[index];
                if rec.restart_at.is_some_and(|t| now.mono >= t) {
                    rec.restart_at = None;
                    self.start(index);
                } else if let Some(t) = rec.probe_at
                    && now.mono >= t
                {
                    rec.probe_at = Some(after(now.mono, PROBE_INTERVAL));
                    self.actions.push(Action::Probe {
                        index,
                        readiness: rec.supervision.readiness.clone(),
                    });
                }
            }
        }
        for rec in &mut self.records {
            let Some(shim) = rec.shim_pid else { continue };
            if let Some(stop) = rec.stop {
                if now.mono < stop.deadline {
                    continue;
                }
                let next = match (stop.stage, rec.pid) {
                    (StopStage::Term, Some(pid)) => {
                        log::warn!("{} {}: still running, SIGKILL", rec.kind.as_str(), rec.id);
                        Some((pid, StopStage::KillContainer))
                    }
                    (StopStage::Term, None) | (StopStage::KillContainer, _) => {
                        log::warn!("{} {}: killing shim {shim}", rec.kind.as_str(), rec.id);
                        Some((shim, StopStage::KillShim))
                    }
                    (StopStage::KillShim, _) => {
                        log::error!(
                            "{} {}: shim {shim} does not exit",
                            rec.kind.as_str(),
                            rec.id
                        );
                        rec.abandoned = true;
                        None
                    }
                };
                rec.stop = next.map(|(pid, stage)| {
                    self.actions.push(Action::Signal {
                        pid,
                        signal: Signal::SIGKILL,
                    });
                    Stop {
                        stage,
                        deadline: after(now.mono, KILL_WAIT),
                    }
                });
            } else if rec.timeout_at.is_some_and(|t| now.mono >= t) {
                log::warn!("{} {}: timed out, SIGTERM", rec.kind.as_str(), rec.id);
                rec.timeout_at = None;
                rec.timed_out = true;
                let grace = rec
                    .supervision
                    .stop_grace_period
                    .unwrap_or(self.settings.stop_grace);
                self.actions.push(Action::Signal {
                    pid: shim,
                    signal: Signal::SIGTERM,
                });
                rec.stop = Some(Stop {
                    stage: StopStage::Term,
                    deadline: after(now.mono, grace),
                });
            }
        }
        if let Phase::Stopping(limit) = self.phase {
            if now.mono >= limit {
                log::error!("giving up waiting for containers to stop");
                self.phase = Phase::Halted;
            } else {
                self.stop_next(now);
                self.check_halted();
            }
        }
    }

    /// Rows for `keelctl list`.
    pub fn list(&self) -> Vec<ContainerInfo> {
        self.records
            .iter()
            .map(|r| ContainerInfo {
                id: r.id.clone(),
                pid: r.pid.unwrap_or(0),
                status: r.status.as_str().into(),
                bundle: r.bundle.display().to_string(),
                created: r.created.map(crate::time::rfc3339).unwrap_or_default(),
                owner: "root".into(),
                restarts: r.restarts,
                kind: r.kind.as_str().into(),
                exit_status: r.exit_status,
                exit_reason: r.exit_reason.clone(),
                ready: r.ready,
            })
            .collect()
    }

    /// What follows the end of record `index` (exited or never started).
    fn after_end(&mut self, index: usize, now: Now) {
        match self.phase {
            Phase::Onboot(current) if current == index => self.next_onboot(index + 1),
            Phase::Onshutdown(Some(current)) if current == index => {
                self.next_onshutdown(index + 1, now);
            }
            Phase::Onshutdown(None) if self.records[index].kind == Kind::Onboot => {
                self.next_onshutdown(0, now);
            }
            Phase::Stopping(_) => {
                self.stop_next(now);
                self.check_halted();
            }
            Phase::Running if self.records[index].kind == Kind::Service => {
                self.after_service_exit(index, now);
            }
            _ => {}
        }
    }

    /// Starts the first pending onboot container at or after `from`; the services when none is
    /// left.
    fn next_onboot(&mut self, from: usize) {
        let next = (from..self.records.len()).find(|&i| {
            self.records[i].kind == Kind::Onboot && self.records[i].status == Status::Pending
        });
        match next {
            Some(index) => {
                self.phase = Phase::Onboot(index);
                self.actions.push(Action::Milestone(format!(
                    "onboot {} start",
                    self.records[index].id
                )));
                self.start(index);
            }
            None => {
                self.actions.push(Action::Milestone("onboot done".into()));
                self.phase = Phase::Running;
                self.start_waiting_services();
                self.actions
                    .push(Action::Milestone("services started".into()));
            }
        }
    }

    fn start(&mut self, index: usize) {
        let rec = &mut self.records[index];
        log::info!("starting {} {}", rec.kind.as_str(), rec.id);
        if rec.created.is_some() {
            rec.restarts = rec.restarts.saturating_add(1);
        }
        rec.ready = false;
        rec.probe_at = None;
        rec.status = Status::Creating;
        rec.started = false;
        rec.timed_out = false;
        rec.reported_exit = None;
        rec.error = None;
        self.actions.push(Action::Spawn { index });
    }

    fn check_halted(&mut self) {
        if matches!(self.phase, Phase::Stopping(_)) && self.records.iter().all(|r| !r.live()) {
            self.phase = Phase::Halted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_bundle::{Readiness, RestartPolicy, Runtime};

    fn bundle(kind: Kind, id: &str, runtime: Result<Runtime, String>) -> Bundle {
        Bundle {
            id: id.into(),
            kind,
            dir: PathBuf::from(format!("/containers/{}/{id}", kind.dir_name())),
            runtime,
            cgroups_path: Some(keel_bundle::default_cgroups_path(kind.dir_name(), id)),
        }
    }

    fn at(base: Now, secs: u64) -> Now {
        Now {
            mono: base.mono + Duration::from_secs(secs),
            wall: base.wall + Duration::from_secs(secs),
        }
    }

    fn spawns(actions: &[Action]) -> Vec<usize> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { index } => Some(*index),
                _ => None,
            })
            .collect()
    }

    fn signals(actions: &[Action]) -> Vec<(i32, Signal)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal { pid, signal } => Some((*pid, *signal)),
                _ => None,
            })
            .collect()
    }

    fn policy(restart: RestartPolicy) -> Runtime {
        Runtime {
            keel: Supervision {
                restart,
                ..Supervision::default()
            },
            ..Runtime::default()
        }
    }

    fn system() -> Supervisor {
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(Kind::Onboot, "000-a", Ok(Runtime::default())));
        s.add(bundle(
            Kind::Onboot,
            "001-bad",
            Err("invalid runtime.json".into()),
        ));
        s.add(bundle(Kind::Onboot, "002-c", Ok(Runtime::default())));
        s.add(bundle(Kind::Service, "getty", Ok(Runtime::default())));
        s.add(bundle(Kind::Service, "sshd", Ok(Runtime::default())));
        s
    }

    #[test]
    fn oom_kills_are_reported_with_the_exit_and_cleared_by_the_next() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(Kind::Service, "hog", Ok(Runtime::default())));
        s.boot();
        s.take_actions();
        s.spawned(0, 10, t0);
        s.shim_event(10, ShimEvent::Started { pid: 11 });
        s.shim_event(
            10,
            ShimEvent::Exited {
                status: 137,
                oom_killed: true,
            },
        );
        s.child_exited(10, 137, at(t0, 1));
        let info = &s.list()[0];
        assert_eq!(info.exit_status, Some(137));
        assert_eq!(info.exit_reason.as_deref(), Some("oom-killed"));

        // Restarted after its backoff; an ordinary exit clears the reason.
        s.take_actions();
        s.tick(at(t0, 2));
        assert_eq!(spawns(&s.take_actions()), [0]);
        s.spawned(0, 20, at(t0, 2));
        s.shim_event(20, ShimEvent::Started { pid: 21 });
        s.shim_event(
            20,
            ShimEvent::Exited {
                status: 1,
                oom_killed: false,
            },
        );
        s.child_exited(20, 1, at(t0, 3));
        let info = &s.list()[0];
        assert_eq!(info.exit_status, Some(1));
        assert_eq!(info.exit_reason, None);
    }

    #[test]
    fn onboot_runs_in_order_then_services_together() {
        let t0 = Now::system();
        let mut s = system();
        s.boot();
        assert_eq!(spawns(&s.take_actions()), [0]);
        assert_eq!(s.records()[1].status, Status::Failed);
        s.spawned(0, 100, t0);
        s.shim_event(100, ShimEvent::Created { pid: 101 });
        assert_eq!(s.records()[0].status, Status::Created);
        s.shim_event(100, ShimEvent::Started { pid: 101 });
        assert_eq!(s.records()[0].status, Status::Running);
        assert_eq!(s.list()[0].pid, 101);
        assert!(
            s.take_actions().is_empty(),
            "nothing else starts while onboot runs"
        );
        s.shim_event(
            100,
            ShimEvent::Exited {
                status: 3,
                oom_killed: false,
            },
        );
        assert!(s.child_exited(100, 3, at(t0, 1)));
        assert_eq!(s.records()[0].status, Status::Stopped);
        assert_eq!(s.records()[0].exit_status, Some(3));
        let a = s.take_actions();
        assert!(a.contains(&Action::Milestone("onboot 000-a end (status 3)".into())));
        assert_eq!(spawns(&a), [2], "the failed bundle is skipped");
        s.spawned(2, 200, at(t0, 1));
        assert!(!s.onboot_done());
        assert!(s.child_exited(200, 0, at(t0, 2)));
        let a = s.take_actions();
        assert_eq!(spawns(&a), [3, 4]);
        assert!(a.contains(&Action::Milestone("services started".into())));
        assert!(s.onboot_done());
        assert!(!s.child_exited(999, 0, at(t0, 2)), "orphans are not shims");
    }

    #[test]
    fn shim_failure_before_start_is_failed_with_its_message() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(Kind::Service, "x", Ok(policy(RestartPolicy::Never))));
        s.boot();
        s.take_actions();
        s.spawned(0, 10, t0);
        s.shim_event(
            10,
            ShimEvent::Log {
                level: "error".into(),
                message: "no such file: /bin/nope".into(),
            },
        );
        s.child_exited(10, 127, t0);
        let r = &s.records()[0];
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.error.as_deref(), Some("no such file: /bin/nope"));
        assert_eq!(s.list()[0].exit_status, Some(127));
    }

    #[test]
    fn a_dead_shims_container_is_killed() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(Kind::Service, "x", Ok(Runtime::default())));
        s.add(bundle(Kind::Service, "y", Ok(Runtime::default())));
        s.boot();
        s.take_actions();
        s.spawned(0, 10, t0);
        s.spawned(1, 20, t0);
        s.shim_event(10, ShimEvent::Started { pid: 11 });
        s.shim_event(20, ShimEvent::Started { pid: 21 });
        s.child_exited(10, 139, t0);
        assert_eq!(signals(&s.take_actions()), [(11, Signal::SIGKILL)]);
        s.shim_event(
            20,
            ShimEvent::Exited {
                status: 0,
                oom_killed: false,
            },
        );
        s.child_exited(20, 0, t0);
        assert!(
            signals(&s.take_actions()).is_empty(),
            "a clean exit kills nothing"
        );
    }

    #[test]
    fn spawn_failure_moves_on() {
        let t0 = Now::system();
        let mut s = system();
        s.boot();
        s.take_actions();
        s.spawn_failed(0, "exec: no such file".into(), t0);
        assert_eq!(s.records()[0].status, Status::Failed);
        assert_eq!(spawns(&s.take_actions()), [2]);
    }

    #[test]
    fn onboot_timeout_escalates() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        let rt = Runtime {
            keel: Supervision {
                timeout: Some(Duration::from_secs(10)),
                ..Supervision::default()
            },
            ..Runtime::default()
        };
        s.add(bundle(Kind::Onboot, "000-slow", Ok(rt)));
        s.add(bundle(Kind::Service, "svc", Ok(Runtime::default())));
        s.boot();
        s.take_actions();
        s.spawned(0, 10, t0);
        s.shim_event(10, ShimEvent::Started { pid: 11 });
        assert_eq!(s.next_deadline(), Some(at(t0, 10).mono));
        s.tick(at(t0, 9));
        assert!(s.take_actions().is_empty());
        s.tick(at(t0, 10));
        assert_eq!(signals(&s.take_actions()), [(10, Signal::SIGTERM)]);
        s.tick(at(t0, 19));
        assert!(s.take_actions().is_empty(), "10 s of grace by default");
        s.tick(at(t0, 20));
        assert_eq!(signals(&s.take_actions()), [(11, Signal::SIGKILL)]);
        s.tick(at(t0, 22));
        assert_eq!(signals(&s.take_actions()), [(10, Signal::SIGKILL)]);
        s.child_exited(10, 137, at(t0, 18));
        assert_eq!(s.records()[0].status, Status::Failed);
        assert_eq!(s.records()[0].exit_status, Some(137));
        assert_eq!(spawns(&s.take_actions()), [1], "boot goes on");
        assert_eq!(s.next_deadline(), None, "services have no timeout");
    }

    #[test]
    fn shutdown_terms_then_kills_then_halts() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(Kind::Service, "a", Ok(Runtime::default())));
        s.add(bundle(Kind::Service, "b", Ok(Runtime::default())));
        s.boot();
        s.take_actions();
        s.spawned(0, 10, t0);
        s.spawned(1, 20, t0);
        s.shim_event(10, ShimEvent::Started { pid: 11 });
        s.shim_event(20, ShimEvent::Started { pid: 21 });
        s.shutdown(at(t0, 100));
        s.shutdown(at(t0, 100));
        assert_eq!(
            signals(&s.take_actions()),
            [(10, Signal::SIGTERM), (20, Signal::SIGTERM)]
        );
        s.shim_event(
            10,
            ShimEvent::Exited {
                status: 143,
                oom_killed: false,
            },
        );
        s.child_exited(10, 143, at(t0, 101));
        assert!(!s.is_halted());
        s.tick(at(t0, 110));
        assert_eq!(signals(&s.take_actions()), [(21, Signal::SIGKILL)]);
        s.shim_event(
            20,
            ShimEvent::Exited {
                status: 137,
                oom_killed: false,
            },
        );
        s.child_exited(20, 137, at(t0, 110));
        assert!(s.is_halted());
        assert_eq!(s.records()[1].exit_status, Some(137));
    }

    #[test]
    fn onshutdown_runs_in_order_before_services_stop() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(Kind::Service, "svc", Ok(Runtime::default())));
        s.add(bundle(Kind::Onshutdown, "000-a", Ok(Runtime::default())));
        s.add(bundle(Kind::Onshutdown, "001-b", Ok(Runtime::default())));
        s.boot();
        assert_eq!(
            spawns(&s.take_actions()),
            [0],
            "onshutdown waits for shutdown"
        );
        s.spawned(0, 10, t0);
        s.shim_event(10, ShimEvent::Started { pid: 11 });
        s.shutdown(t0);
        let a = s.take_actions();
        assert_eq!(spawns(&a), [1]);
        assert!(signals(&a).is_empty(), "services keep running meanwhile");
        assert!(a.contains(&Action::Milestone("onshutdown 000-a start".into())));
        s.spawned(1, 20, t0);
        assert_eq!(
            s.next_deadline(),
            Some(at(t0, 60).mono),
            "onshutdown has a timeout"
        );
        s.shutdown(t0);
        assert!(
            s.take_actions().is_empty(),
            "a second request changes nothing"
        );
        s.child_exited(20, 0, at(t0, 1));
        let a = s.take_actions();
        assert!(a.contains(&Action::Milestone("onshutdown 000-a end (status 0)".into())));
        assert_eq!(spawns(&a), [2]);
        s.spawned(2, 30, at(t0, 1));
        s.child_exited(30, 0, at(t0, 2));
        assert_eq!(signals(&s.take_actions()), [(10, Signal::SIGTERM)]);
        s.shim_event(
            10,
            ShimEvent::Exited {
                status: 0,
                oom_killed: false,
            },
        );
        s.child_exited(10, 0, at(t0, 3));
        assert!(s.is_halted());
    }

    #[test]
    fn shutdown_during_onboot_stops_it_and_skips_the_rest() {
        let t0 = Now::system();
        let mut s = system();
        s.add(bundle(Kind::Onshutdown, "000-z", Ok(Runtime::default())));
        s.boot();
        s.take_actions();
        s.spawned(0, 10, t0);
        s.shutdown(t0);
        assert_eq!(signals(&s.take_actions()), [(10, Signal::SIGTERM)]);
        s.child_exited(10, 143, at(t0, 1));
        assert_eq!(
            spawns(&s.take_actions()),
            [5],
            "only the onshutdown container"
        );
        s.spawned(5, 50, at(t0, 1));
        s.child_exited(50, 0, at(t0, 2));
        assert!(s.is_halted());
        assert_eq!(s.records()[2].status, Status::Pending);
        assert_eq!(s.records()[3].status, Status::Pending);
    }

    #[test]
    fn shutdown_gives_up_on_stuck_shims() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(Kind::Service, "a", Ok(Runtime::default())));
        s.boot();
        s.take_actions();
        s.spawned(0, 10, t0);
        s.shutdown(t0);
        let limit = s.next_deadline().unwrap();
        assert!(limit > t0.mono);
        for secs in 0..30 {
            s.tick(at(t0, secs));
        }
        assert!(s.is_halted());
        let sig = signals(&s.take_actions());
        assert_eq!(sig, [(10, Signal::SIGTERM), (10, Signal::SIGKILL)]);
    }

    #[test]
    fn shutdown_with_nothing_running_halts_at_once() {
        let mut s = system();
        s.shutdown(Now::system());
        assert!(s.is_halted());
        assert_eq!(s.records()[0].status, Status::Pending);
    }

    fn ms(base: Now, millis: u64) -> Now {
        Now {
            mono: base.mono + Duration::from_millis(millis),
            wall: base.wall + Duration::from_millis(millis),
        }
    }

    fn with(restart: RestartPolicy, deps: &[&str], readiness: Readiness) -> Runtime {
        Runtime {
            keel: Supervision {
                restart,
                depends_on: deps.iter().map(|d| d.to_string()).collect(),
                readiness,
                ..Supervision::default()
            },
            ..Runtime::default()
        }
    }

    /// Runs record `index` as shim `shim` with container `shim + 1`.
    fn run(s: &mut Supervisor, index: usize, shim: i32, now: Now) {
        s.spawned(index, shim, now);
        s.shim_event(shim, ShimEvent::Started { pid: shim + 1 });
    }

    /// The shim `shim` reports its container's exit, then exits.
    fn exit(s: &mut Supervisor, shim: i32, status: i32, now: Now) {
        s.shim_event(
            shim,
            ShimEvent::Exited {
                status,
                oom_killed: false,
            },
        );
        assert!(s.child_exited(shim, status, now));
    }

    #[test]
    fn a_dead_service_restarts_on_the_backoff_curve_then_crashloops() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(Kind::Service, "flaky", Ok(Runtime::default())));
        s.boot();
        assert_eq!(spawns(&s.take_actions()), [0]);
        let mut now = t0;
        let mut shim = 10;
        let mut delays = Vec::new();
        for _ in 0..5 {
            run(&mut s, 0, shim, now);
            exit(&mut s, shim, 137, now);
            let due = s.next_deadline().expect("a restart is planned");
            let delay = due - now.mono;
            delays.push(delay);
            s.tick(Now {
                mono: due - Duration::from_millis(1),
                wall: now.wall,
            });
            assert!(s.take_actions().is_empty(), "not before its time");
            now = Now {
                mono: due,
                wall: now.wall + delay,
            };
            s.tick(now);
            assert_eq!(spawns(&s.take_actions()), [0]);
            shim += 10;
        }
        for (i, d) in delays[..4].iter().enumerate() {
            let nominal = 100u128 << i;
            assert!(d.as_millis() <= nominal && d.as_millis() * 10 >= nominal * 9);
        }
        assert!(
            delays[4] >= Duration::from_secs(54),
            "the 5th exit: crashloop"
        );
        assert_eq!(s.records()[0].restarts, 5);
        run(&mut s, 0, shim, now);
        exit(&mut s, shim, 1, now);
        assert_eq!(s.records()[0].status, Status::Crashloop);
        assert_eq!(s.list()[0].status, "crashloop");
    }

    #[test]
    fn never_and_on_failure_are_honoured() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(
            Kind::Service,
            "never",
            Ok(with(RestartPolicy::Never, &[], Readiness::Started)),
        ));
        s.add(bundle(
            Kind::Service,
            "onfail",
            Ok(with(RestartPolicy::OnFailure, &[], Readiness::Started)),
        ));
        s.add(bundle(Kind::Onboot, "000-once", Ok(Runtime::default())));
        s.boot();
        assert_eq!(spawns(&s.take_actions()), [2]);
        s.spawned(2, 5, t0);
        exit(&mut s, 5, 1, t0);
        assert_eq!(spawns(&s.take_actions()), [0, 1]);
        assert_eq!(
            s.records()[2].status,
            Status::Stopped,
            "onboot never restarts"
        );
        run(&mut s, 0, 10, t0);
        run(&mut s, 1, 20, t0);
        exit(&mut s, 10, 1, t0);
        exit(&mut s, 20, 0, t0);
        assert_eq!(s.next_deadline(), None, "nothing to restart");
        assert_eq!(s.records()[0].status, Status::Stopped);
        s.start_service("onfail").unwrap();
        assert_eq!(spawns(&s.take_actions()), [1]);
        run(&mut s, 1, 30, t0);
        exit(&mut s, 30, 2, t0);
        assert_eq!(s.records()[1].status, Status::Backoff);
        assert!(s.next_deadline().is_some());
    }

    #[test]
    fn dependents_start_when_their_dependency_is_ready() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(
            Kind::Service,
            "db",
            Ok(with(RestartPolicy::Always, &[], Readiness::Tcp(5432))),
        ));
        s.add(bundle(
            Kind::Service,
            "web",
            Ok(with(RestartPolicy::Always, &["db"], Readiness::Started)),
        ));
        s.add(bundle(
            Kind::Service,
            "proxy",
            Ok(with(RestartPolicy::Always, &["web"], Readiness::Started)),
        ));
        s.add(bundle(Kind::Service, "lone", Ok(Runtime::default())));
        s.boot();
        assert_eq!(
            spawns(&s.take_actions()),
            [0, 3],
            "no-dependency services start together"
        );
        run(&mut s, 0, 10, t0);
        assert!(
            !s.records()[0].ready,
            "started is not ready for a tcp check"
        );
        s.tick(t0);
        let a = s.take_actions();
        assert_eq!(
            a,
            [Action::Probe {
                index: 0,
                readiness: Readiness::Tcp(5432)
            }]
        );
        s.probed(0, false);
        assert_eq!(s.next_deadline(), Some(t0.mono + PROBE_INTERVAL));
        s.tick(ms(t0, 50));
        assert!(s.take_actions().is_empty(), "probes are spaced");
        s.tick(ms(t0, 100));
        assert_eq!(s.take_actions().len(), 1);
        s.probed(0, true);
        assert!(s.records()[0].ready);
        assert_eq!(spawns(&s.take_actions()), [1], "web after db is ready");
        run(&mut s, 1, 20, ms(t0, 100));
        assert_eq!(spawns(&s.take_actions()), [2], "proxy after web started");
    }

    #[test]
    fn shutdown_stops_dependents_first() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(Kind::Service, "db", Ok(Runtime::default())));
        s.add(bundle(
            Kind::Service,
            "web",
            Ok(with(RestartPolicy::Always, &["db"], Readiness::Started)),
        ));
        s.add(bundle(Kind::Service, "other", Ok(Runtime::default())));
        s.boot();
        s.take_actions();
        run(&mut s, 0, 10, t0);
        run(&mut s, 2, 30, t0);
        run(&mut s, 1, 20, t0);
        s.shutdown(t0);
        assert_eq!(
            signals(&s.take_actions()),
            [(20, Signal::SIGTERM), (30, Signal::SIGTERM)],
            "db waits for web"
        );
        exit(&mut s, 30, 143, ms(t0, 5));
        assert!(signals(&s.take_actions()).is_empty());
        exit(&mut s, 20, 143, ms(t0, 10));
        assert_eq!(signals(&s.take_actions()), [(10, Signal::SIGTERM)]);
        assert!(s.take_actions().is_empty(), "no restarts while stopping");
        exit(&mut s, 10, 143, ms(t0, 20));
        assert!(s.is_halted(), "prompt exits halt at once");
        assert_eq!(s.records()[1].restarts, 0);
    }

    #[test]
    fn stop_by_hand_escalates_and_keeps_it_down() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        let rt = Runtime {
            keel: Supervision {
                stop_grace_period: Some(Duration::from_secs(3)),
                ..Supervision::default()
            },
            ..Runtime::default()
        };
        s.add(bundle(Kind::Service, "stubborn", Ok(rt)));
        s.add(bundle(Kind::Onboot, "000-x", Ok(Runtime::default())));
        s.boot();
        s.take_actions();
        s.spawned(1, 5, t0);
        exit(&mut s, 5, 0, t0);
        s.take_actions();
        run(&mut s, 0, 10, t0);
        assert_eq!(
            s.stop_service("nope", t0),
            Err(ControlError::Unknown("nope".into()))
        );
        assert_eq!(
            s.start_service("000-x"),
            Err(ControlError::NotAService("000-x".into()))
        );
        assert_eq!(
            s.start_service("stubborn"),
            Err(ControlError::AlreadyRunning("stubborn".into()))
        );
        s.stop_service("stubborn", t0).unwrap();
        assert_eq!(signals(&s.take_actions()), [(10, Signal::SIGTERM)]);
        s.tick(at(t0, 2));
        assert!(s.take_actions().is_empty());
        s.tick(at(t0, 3));
        assert_eq!(signals(&s.take_actions()), [(11, Signal::SIGKILL)]);
        exit(&mut s, 10, 137, at(t0, 3));
        assert_eq!(s.records()[0].status, Status::Stopped);
        assert_eq!(s.next_deadline(), None, "held: no restart");
        assert_eq!(
            s.kill("stubborn", Signal::SIGHUP),
            Err(ControlError::NotRunning("stubborn".into()))
        );
        s.start_service("stubborn").unwrap();
        assert_eq!(spawns(&s.take_actions()), [0]);
    }

    #[test]
    fn restart_and_kill_by_hand() {
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings::default());
        s.add(bundle(
            Kind::Service,
            "svc",
            Ok(with(RestartPolicy::Never, &[], Readiness::Started)),
        ));
        s.boot();
        s.take_actions();
        run(&mut s, 0, 10, t0);
        s.kill("svc", Signal::SIGUSR1).unwrap();
        assert_eq!(signals(&s.take_actions()), [(11, Signal::SIGUSR1)]);
        s.restart_service("svc", t0).unwrap();
        assert_eq!(signals(&s.take_actions()), [(10, Signal::SIGTERM)]);
        exit(&mut s, 10, 143, t0);
        assert_eq!(
            spawns(&s.take_actions()),
            [0],
            "restarted at once despite `never`"
        );
        s.shutdown(t0);
        assert_eq!(
            s.restart_service("svc", t0),
            Err(ControlError::ShuttingDown)
        );
    }

    #[test]
    fn huge_durations_never_panic() {
        use crate::time::MAX_WAIT;
        let t0 = Now::system();
        let mut s = Supervisor::new(Settings {
            onboot_timeout: Duration::MAX,
            stop_grace: Duration::MAX,
            ..Settings::default()
        });
        // Bundles are bounded when read from disk; these bypass that, as a bug would.
        let huge = Runtime {
            keel: Supervision {
                timeout: Some(Duration::from_secs(u64::MAX)),
                stop_grace_period: Some(Duration::MAX),
                ..Supervision::default()
            },
            ..Runtime::default()
        };
        s.add(bundle(Kind::Onboot, "000-default", Ok(Runtime::default())));
        s.add(bundle(Kind::Onboot, "001-huge", Ok(huge.clone())));
        s.add(bundle(Kind::Service, "a", Ok(huge.clone())));
        s.add(bundle(Kind::Service, "b", Ok(huge)));
        s.boot();
        assert_eq!(spawns(&s.take_actions()), [0]);
        s.spawned(0, 10, t0);
        let due = s.next_deadline().expect("a timeout");
        assert_eq!(due, t0.mono + MAX_WAIT, "capped, not overflowed");
        let late = Now {
            mono: due,
            wall: t0.wall,
        };
        s.tick(late);
        assert_eq!(signals(&s.take_actions()), [(10, Signal::SIGTERM)]);
        assert_eq!(s.next_deadline(), Some(due + MAX_WAIT), "the grace, capped");
        s.child_exited(10, 143, late);
        assert_eq!(spawns(&s.take_actions()), [1]);
        s.spawned(1, 20, late);
        assert_eq!(s.next_deadline(), Some(due + MAX_WAIT));
        exit(&mut s, 20, 0, late);
        assert_eq!(spawns(&s.take_actions()), [2, 3]);
        run(&mut s, 2, 30, late);
        run(&mut s, 3, 40, late);
        s.stop_service("a", late).unwrap();
        assert_eq!(signals(&s.take_actions()), [(30, Signal::SIGTERM)]);
        // Two huge grace periods and the kill waits add up without overflow.
        s.shutdown(late);
        assert_eq!(signals(&s.take_actions()), [(40, Signal::SIGTERM)]);
        assert_eq!(s.next_deadline(), Some(due + MAX_WAIT));
        exit(&mut s, 30, 143, late);
        exit(&mut s, 40, 143, late);
        assert!(s.is_halted());
    }

    #[test]
    fn control_access_lists_containers_with_a_cgroup() {
        let mut s = Supervisor::new(Settings::default());
        let granted = Runtime {
            keel: Supervision {
                control: keel_bundle::ControlGrant::Inspect,
                ..Supervision::default()
            },
            ..Runtime::default()
        };
        s.add(bundle(Kind::Service, "status", Ok(granted)));
        s.add(bundle(Kind::Service, "plain", Ok(Runtime::default())));
        let mut lost = bundle(Kind::Service, "lost", Ok(Runtime::default()));
        lost.cgroups_path = None;
        s.add(lost);
        let access = s.control_access();
        assert_eq!(
            access,
            [
                ContainerAccess {
                    id: "status".into(),
                    cgroup: "/keel/services/status".into(),
                    grant: keel_bundle::ControlGrant::Inspect,
                },
                ContainerAccess {
                    id: "plain".into(),
                    cgroup: "/keel/services/plain".into(),
                    grant: keel_bundle::ControlGrant::None,
                },
            ]
        );
    }
}
