//! The container lifecycle state machine: which container runs when, what state each is in,
//! and when to signal whom. It does no I/O: PID 1 feeds it events (a shim was spawned, reported
//! an event, exited; time passed; shutdown was asked for) and carries out the [`Action`]s it
//! returns, so the whole policy is testable without root.
//!
//! Boot: onboot containers one at a time in lexical order, each with a timeout, then every
//! service at once. Shutdown: onshutdown containers one at a time (services still run), then
//! SIGTERM to each remaining shim (which forwards it), SIGKILL to the container after the grace
//! period, SIGKILL to the shim if it still lingers.

use crate::bundles::{Bundle, Kind};
use crate::output::LogRing;
use crate::protocol::ContainerInfo;
use keel_bundle::{ShimEvent, Supervision};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// How long to wait for a process after a SIGKILL before escalating or giving up.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Exit status of a shim that failed before the container started.
const SHIM_FAILED: i32 = 127;

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
            stop_grace: Duration::from_secs(5),
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
    /// When the last run was started.
    pub created: Option<SystemTime>,
    pub restarts: u32,
    pub supervision: Supervision,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The last lines of its output.
    pub logs: LogRing,
    started_at: Option<Instant>,
    started: bool,
    reported_exit: Option<i32>,
    timeout_at: Option<Instant>,
    timed_out: bool,
    stop: Option<Stop>,
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
        let (status, supervision, error) = match bundle.runtime {
            Ok(rt) => (Status::Pending, rt.keel, None),
            Err(e) => {
                log::error!("{} {}: {e}", bundle.kind.as_str(), bundle.id);
                (Status::Failed, Supervision::default(), Some(e))
            }
        };
        self.records.push(Record {
            id: bundle.id,
            kind: bundle.kind,
            bundle: bundle.dir,
            status,
            pid: None,
            shim_pid: None,
            exit_status: None,
            created: None,
            restarts: 0,
            supervision,
            error,
            logs: LogRing::new(self.settings.log_lines),
            started_at: None,
            started: false,
            reported_exit: None,
            timeout_at: None,
            timed_out: false,
            stop: None,
        });
    }

    pub fn records(&self) -> &[Record] {
        &self.records
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
            rec.timeout_at = Some(now.mono + timeout);
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
            ShimEvent::Exited { status } => rec.reported_exit = Some(status),
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
        rec.pid = None;
        rec.shim_pid = None;
        rec.timeout_at = None;
        rec.stop = None;
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
                log::warn!(
                    "{what}: exited with status {exit} after {} ms",
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
            deadline: now.mono + grace,
        });
    }

    /// Stops everything still running and waits (bounded) for it.
    fn stop_all(&mut self, now: Now) {
        let mut longest = Duration::ZERO;
        for index in 0..self.records.len() {
            let rec = &self.records[index];
            if rec.shim_pid.is_some() {
                let grace = rec
                    .supervision
                    .stop_grace_period
                    .unwrap_or(self.settings.stop_grace);
                longest = longest.max(grace);
                self.stop(index, now);
            }
        }
        self.phase = Phase::Stopping(now.mono + longest + 3 * KILL_WAIT);
        self.check_halted();
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
        let records = self
            .records
            .iter()
            .flat_map(|r| [r.timeout_at, r.stop.map(|s| s.deadline)])
            .flatten();
        let phase = match self.phase {
            Phase::Stopping(t) => Some(t),
            _ => None,
        };
        records.chain(phase).min()
    }

    /// Acts on every deadline that passed: onboot timeouts, stop escalation.
    pub fn tick(&mut self, now: Now) {
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
                        deadline: now.mono + KILL_WAIT,
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
                    deadline: now.mono + grace,
                });
            }
        }
        if let Phase::Stopping(limit) = self.phase
            && now.mono >= limit
        {
            log::error!("giving up waiting for containers to stop");
            self.phase = Phase::Halted;
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
            Phase::Stopping(_) => self.check_halted(),
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
                for index in 0..self.records.len() {
                    if self.records[index].kind == Kind::Service
                        && self.records[index].status == Status::Pending
                    {
                        self.start(index);
                    }
                }
                self.actions
                    .push(Action::Milestone("services started".into()));
            }
        }
    }

    fn start(&mut self, index: usize) {
        let rec = &mut self.records[index];
        log::info!("starting {} {}", rec.kind.as_str(), rec.id);
        rec.status = Status::Creating;
        rec.started = false;
        rec.timed_out = false;
        rec.reported_exit = None;
        rec.error = None;
        self.actions.push(Action::Spawn { index });
    }

    fn check_halted(&mut self) {
        if matches!(self.phase, Phase::Stopping(_))
            && self.records.iter().all(|r| r.shim_pid.is_none())
        {
            self.phase = Phase::Halted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_bundle::Runtime;

    fn bundle(kind: Kind, id: &str, runtime: Result<Runtime, String>) -> Bundle {
        Bundle {
            id: id.into(),
            kind,
            dir: PathBuf::from(format!("/containers/{}/{id}", kind.dir_name())),
            runtime,
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
        s.shim_event(100, ShimEvent::Exited { status: 3 });
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
        s.add(bundle(Kind::Service, "x", Ok(Runtime::default())));
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
        s.shim_event(20, ShimEvent::Exited { status: 0 });
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
        s.tick(at(t0, 15));
        assert_eq!(signals(&s.take_actions()), [(11, Signal::SIGKILL)]);
        s.tick(at(t0, 17));
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
        s.shim_event(10, ShimEvent::Exited { status: 143 });
        s.child_exited(10, 143, at(t0, 101));
        assert!(!s.is_halted());
        s.tick(at(t0, 105));
        assert_eq!(signals(&s.take_actions()), [(21, Signal::SIGKILL)]);
        s.shim_event(20, ShimEvent::Exited { status: 137 });
        s.child_exited(20, 137, at(t0, 105));
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
        s.shim_event(10, ShimEvent::Exited { status: 0 });
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
}
