//! PID 1's poll loop: signals (signalfd), the power button, the control socket, the console
//! prompt, the host channel, every shim's pipes and every exec session's output, with the
//! supervisor's deadlines as the poll timeout. Also the boot timeline and the final stop (kill
//! what is left, sync, unmount).

use crate::assess::{Assessor, Health, Verdict};
use crate::channel::{self, Channel};
use crate::cmdline::Cmdline;
use crate::console::{self, Console};
use crate::power;
use crate::shim::{ExecIo, Item, ShimIo, Stream};
use crate::sys;
use keel_bundle::ShimEvent;
use keel_supervisor::control::{self, Host, PowerRequest};
use keel_supervisor::exec::Execs;
use keel_supervisor::output::{LOG_FILE_BYTES, LOG_FILES, LogFile};
use keel_supervisor::{
    Action, ControlServer, Kind, Now, Request, Response, Supervisor, TimelineStep, readiness,
};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// How PID 1 should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

/// The boot timeline: named steps with their CLOCK_BOOTTIME, logged as they happen.
#[derive(Debug, Default)]
pub struct Timeline {
    steps: Vec<TimelineStep>,
}

impl Timeline {
    pub fn mark(&mut self, step: &str) {
        let t = sys::boottime();
        let boottime_ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        log::info!("timeline: {step}");
        self.steps.push(TimelineStep {
            boottime_ms,
            step: step.to_owned(),
        });
    }

    pub fn steps(&self) -> &[TimelineStep] {
        &self.steps
    }
}

/// What a poll slot belongs to.
#[derive(Debug, Clone, Copy)]
enum Token {
    Signal,
    Button(usize),
    Control(RawFd),
    Pipe(usize, Stream),
    Console,
    Channel,
    ExecOutput(usize),
}

/// How long after the loop starts PID 1 looks for the host channel's port (virtio-serial adds
/// ports asynchronously after its driver loads), and how often.
const CHANNEL_SEARCH: Duration = Duration::from_secs(30);
const CHANNEL_RETRY: Duration = Duration::from_millis(500);

/// The host channel's guest end.
enum HostChannel {
    /// Not found yet: look again at `next`, until `until`.
    Searching {
        next: Instant,
        until: Instant,
    },
    Open(Channel),
    /// No such port (not started by `keel run`), or it could not be opened.
    Absent,
}

/// Everything the loop owns.
pub struct Init {
    sup: Supervisor,
    timeline: Timeline,
    cmdline: Cmdline,
    signals: SignalFd,
    control: Option<ControlServer>,
    buttons: Vec<File>,
    shims: Vec<ShimIo>,
    /// `/var/log/<id>.log` of each record that wrote output.
    logs: HashMap<usize, LogFile>,
    power: Option<PowerAction>,
    /// Commands run in containers for the console and the host channel.
    execs: Execs,
    /// Their processes and output pipes.
    exec_io: Vec<ExecIo>,
    console: Option<Console>,
    channel: HostChannel,
    /// An A/B version on trial, watched until it is blessed or rejected.
    assess: Assessor,
    /// Its condition (kernel command line, YAML `health:`, defaults).
    health: Health,
}

/// Wait-status as a shell would report it: exit code, or 128+signal.
fn exit_code(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

impl Init {
    pub fn new(sup: Supervisor, timeline: Timeline, cmdline: Cmdline, signals: SignalFd) -> Self {
        let control = match ControlServer::bind(Path::new(keel_bundle::CONTROL_SOCKET), 0) {
            Ok(mut s) => {
                // Which cgroup is which container, and what each may ask (`control:`).
                s.set_access(sup.control_access());
                Some(s)
            }
            Err(e) => {
                log::error!("control socket: {}", crate::chain(&e));
                None
            }
        };
        let system = match console::read_system(&Path::new("/").join(keel_bundle::SYSTEM_FILE)) {
            Ok(s) => s,
            Err(e) => {
                log::error!(
                    "{}; the console prompt stays off, health: is PID 1's default",
                    crate::chain(&e)
                );
                keel_bundle::System::default()
            }
        };
        crate::logger::set_raw(system.console.raw);
        let now = Instant::now();
        Init {
            console: Console::open(Path::new("/dev/console"), system.console),
            channel: HostChannel::Searching {
                next: now,
                until: now + CHANNEL_SEARCH,
            },
            exec_io: Vec::new(),
            assess: Assessor::Idle,
            health: Health::resolve(&cmdline, system.health.as_ref()),
            sup,
            timeline,
            cmdline,
            signals,
            control,
            buttons: power::open_buttons(),
            shims: Vec::new(),
            logs: HashMap::new(),
            power: None,
            execs: Execs::default(),
        }
    }

    /// Runs onboot, services and the loop until a shutdown finished; returns what to do next.
    pub fn run(mut self) -> PowerAction {
        self.sup.boot();
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        self.assess = Assessor::start(&cmdline, self.health.clone(), Instant::now());
        loop {
            self.act();
            if self.sup.is_halted() {
                break;
            }
            if self.power.is_none()
                && self.assess.check(self.sup.records(), Instant::now()) == Some(Verdict::Rejected)
            {
                self.request_stop(PowerAction::Reboot);
                continue;
            }
            self.poll_once();
        }
        self.timeline.mark("containers stopped");
        let action = self.power.unwrap_or(PowerAction::PowerOff);
        drop(self.control.take());
        let _ = std::fs::remove_file(keel_bundle::CONTROL_SOCKET);
        kill_remaining(&self.signals);
        action
    }

    /// Carries out the supervisor's decisions until it has none.
    fn act(&mut self) {
        loop {
            let actions = self.sup.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Spawn { index } => self.spawn(index),
                    Action::Signal { pid, signal } => {
                        if let Err(e) = sys::kill(pid, signal) {
                            log::debug!("kill {pid} {signal}: {e}");
                        }
                    }
                    Action::Milestone(step) => {
                        self.timeline.mark(&step);
                        if step == "services started"
                            && let Some(c) = self.console.as_mut()
                        {
                            c.greet();
                        }
                    }
                    Action::Probe { index, readiness } => {
                        let ok = readiness::probe(&readiness);
                        self.sup.probed(index, ok);
                    }
                }
            }
        }
    }

    fn spawn(&mut self, index: usize) {
        let Some(rec) = self.sup.records().get(index) else {
            return;
        };
        let (bundle, id) = (rec.bundle.clone(), rec.id.clone());
        match ShimIo::spawn(index, &bundle, &id) {
            Ok(io) => {
                let pid = io.pid;
                self.shims.push(io);
                self.sup.spawned(index, pid, Now::system());
            }
            Err(e) => self.sup.spawn_failed(
                index,
                format!("{}: {e}", keel_bundle::SHIM_PATH),
                Now::system(),
            ),
        }
    }

    fn poll_once(&mut self) {
        self.search_channel(Instant::now());
        let now = Instant::now();
        let deadline = [
            self.sup.next_deadline(),
            self.control.as_ref().and_then(ControlServer::next_deadline),
            self.console.as_ref().and_then(Console::next_deadline),
            self.execs.next_deadline(),
            self.assess.next_deadline(),
            match self.channel {
                HostChannel::Searching { next, .. } => Some(next),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match deadline {
            // Round up so we do not wake a millisecond early and spin.
            Some(d) => {
                let ms = d.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::try_from(ms.min(60_000)).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };

        let mut tokens = vec![Token::Signal];
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        for (i, b) in self.buttons.iter().enumerate() {
            tokens.push(Token::Button(i));
            fds.push(PollFd::new(b.as_fd(), PollFlags::POLLIN));
        }
        if let Some(c) = &self.control {
            for (fd, flags) in c.interest() {
                tokens.push(Token::Control(fd.as_raw_fd()));
                fds.push(PollFd::new(fd, flags));
            }
        }
        for (i, s) in self.shims.iter().enumerate() {
            for (fd, stream) in s.fds() {
                tokens.push(Token::Pipe(i, stream));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        if let Some(c) = &self.console {
            let mut flags = PollFlags::POLLIN;
            if c.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            tokens.push(Token::Console);
            fds.push(PollFd::new(c.fd(), flags));
        }
        if let HostChannel::Open(c) = &self.channel
            && let Some((read, write)) = c.interest()
        {
            let mut flags = PollFlags::empty();
            if read {
                flags |= PollFlags::POLLIN;
            }
            if write {
                flags |= PollFlags::POLLOUT;
            }
            tokens.push(Token::Channel);
            fds.push(PollFd::new(c.fd(), flags));
        }
        for (i, e) in self.exec_io.iter().enumerate() {
            if let Some(fd) = e.fd() {
                tokens.push(Token::ExecOutput(i));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => return,
            Err(e) => {
                log::error!("poll: {e}");
                // Do not spin on a persistent error.
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
        }
        let ready: Vec<(Token, PollFlags)> = fds
            .iter()
            .zip(&tokens)
            .filter_map(|(p, t)| {
                let r = p.revents().unwrap_or(PollFlags::empty());
                (!r.is_empty()).then_some((*t, r))
            })
            .collect();
        drop(fds);

        let mut control_ready = Vec::new();
        let mut sigchld = false;
        let (mut console_ready, mut channel_ready) = (None, None);
        for (token, revents) in ready {
            match token {
                Token::Signal => sigchld |= self.read_signals(),
                Token::Button(i) => {
                    if self.buttons.get_mut(i).is_some_and(power::read_press) {
                        log::info!("power button pressed");
                        self.request_stop(PowerAction::PowerOff);
                    }
                }
                Token::Control(fd) => control_ready.push((fd, revents)),
                Token::Pipe(i, stream) => self.read_pipe(i, stream, false),
                Token::Console => console_ready = Some(revents),
                Token::Channel => channel_ready = Some(revents),
                Token::ExecOutput(i) => self.read_exec(i, false),
            }
        }
        if sigchld {
            self.reap();
        }
        let power = self.serve_clients(&control_ready, console_ready, channel_ready);
        match power {
            Some((PowerRequest::PowerOff, origin)) => {
                log::info!("{origin}: power off");
                self.request_stop(PowerAction::PowerOff);
            }
            Some((PowerRequest::Reboot, origin)) => {
                log::info!("{origin}: reboot");
                self.request_stop(PowerAction::Reboot);
            }
            None => {}
        }
        self.run_execs();
        self.shims.retain(|s| !s.finished());
        self.sup.tick(Now::system());
        if let Some(c) = self.console.as_mut() {
            if crate::logger::take_prompt_overwritten() {
                c.redraw();
            }
            crate::logger::set_prompt_shown(c.showing_prompt());
        }
    }

    /// Answers the control socket's clients, the console and the host channel; returns a
    /// power request one of them made.
    fn serve_clients(
        &mut self,
        control_ready: &[(RawFd, PollFlags)],
        console_ready: Option<PollFlags>,
        channel_ready: Option<PollFlags>,
    ) -> Option<(PowerRequest, &'static str)> {
        let Init {
            sup,
            timeline,
            execs,
            control,
            console,
            channel,
            ..
        } = self;
        let mut power = None;
        // Who asked, for the log line of a power request.
        let origin = std::cell::Cell::new("keelctl");
        let mut handler = |r: Request| -> Response {
            let host = Host {
                proc_root: Path::new("/proc"),
                cgroup_root: Path::new("/sys/fs/cgroup"),
                timeline: timeline.steps(),
                buffered: execs.buffered(),
            };
            let (response, asked) = control::serve(sup, execs, r, host, Now::system());
            power = power.or(asked.map(|a| (a, origin.get())));
            response
        };
        if let Some(server) = control.as_mut() {
            server.handle(control_ready, Instant::now(), &mut handler);
            server.expire(Instant::now());
        }
        origin.set("console");
        if let Some(c) = console.as_mut() {
            if let Some(revents) = console_ready {
                if revents.contains(PollFlags::POLLOUT) {
                    c.writable();
                }
                if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                    c.readable(Instant::now(), &mut handler);
                }
            }
            c.tick(Instant::now(), &mut handler);
        }
        origin.set("keel ctl");
        if let HostChannel::Open(c) = channel
            && let Some(revents) = channel_ready
        {
            if revents.contains(PollFlags::POLLIN) {
                c.readable(&mut handler);
            }
            if revents.contains(PollFlags::POLLOUT) {
                c.writable();
            }
            if channel::no_host(revents) {
                c.hang_up();
            }
        }
        power
    }

    /// Looks for the host channel's port while it may still appear.
    fn search_channel(&mut self, now: Instant) {
        let HostChannel::Searching { next, until } = self.channel else {
            return;
        };
        if now < next {
            return;
        }
        let found = channel::find_port(
            Path::new("/sys/class/virtio-ports"),
            Path::new("/dev"),
            keel_bundle::HOST_CHANNEL,
        );
        self.channel = match found {
            Some(path) => match Channel::open(&path) {
                Ok(c) => {
                    log::info!("host channel on {}", path.display());
                    HostChannel::Open(c)
                }
                Err(e) => {
                    log::error!("host channel: cannot open {}: {e}", path.display());
                    HostChannel::Absent
                }
            },
            None if now >= until => {
                log::debug!("no host channel ({} port)", keel_bundle::HOST_CHANNEL);
                HostChannel::Absent
            }
            None => HostChannel::Searching {
                next: now + CHANNEL_RETRY,
                until,
            },
        };
    }

    /// Starts the exec sessions asked for, sends the signals asked for, forgets old sessions.
    fn run_execs(&mut self) {
        for spawn in self.execs.take_pending() {
            match ExecIo::spawn(spawn.exec, &spawn.container, &spawn.argv) {
                Ok(io) => {
                    log::info!(
                        "exec {} in {}: {}",
                        spawn.exec,
                        spawn.container,
                        keel_supervisor::cli::sanitize(&spawn.argv.join(" "))
                    );
                    self.execs.spawned(spawn.exec, io.pid);
                    self.exec_io.push(io);
                }
                Err(e) => self.execs.spawn_failed(
                    spawn.exec,
                    &format!("{}: {e}", keel_bundle::SHIM_PATH),
                    Instant::now(),
                ),
            }
        }
        for (pid, signal) in self.execs.take_signals() {
            match Signal::try_from(signal) {
                Ok(sig) => {
                    if let Err(e) = sys::kill(pid, sig) {
                        log::debug!("kill {pid} {sig}: {e}");
                    }
                }
                Err(e) => log::debug!("exec: signal {signal}: {e}"),
            }
        }
        self.execs.expire(Instant::now());
    }

    /// Moves what exec session `i`'s pipe holds into its session.
    fn read_exec(&mut self, i: usize, drain: bool) {
        if let Some(io) = self.exec_io.get_mut(i) {
            let bytes = io.read(drain);
            if !bytes.is_empty() {
                self.execs.output(io.exec, &bytes);
            }
        }
    }

    /// Reads pending signals; returns whether SIGCHLD was among them.
    fn read_signals(&mut self) -> bool {
        let mut sigchld = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => sigchld = true,
                // The host channel's port changed state (the host end connected).
                Signal::SIGIO => {
                    if let HostChannel::Open(c) = &mut self.channel {
                        c.wake();
                    }
                }
                // SIGTERM: `kill 1`; SIGPWR: power failure; SIGUSR1/2: busybox halt/poweroff.
                Signal::SIGTERM | Signal::SIGPWR | Signal::SIGUSR1 | Signal::SIGUSR2 => {
                    log::info!("{sig}: power off");
                    self.request_stop(PowerAction::PowerOff);
                }
                // Ctrl-alt-del (with the kernel's own handling disabled).
                Signal::SIGINT => {
                    log::info!("{sig}: reboot");
                    self.request_stop(PowerAction::Reboot);
                }
                other => log::debug!("ignoring {other}"),
            }
        }
        sigchld
    }

    fn request_stop(&mut self, action: PowerAction) {
        if self.power.is_none() {
            self.power = Some(action);
            self.timeline.mark("shutdown requested");
        }
        self.sup.shutdown(Now::system());
    }

    /// Reaps every exited child; shims are reported to the supervisor after their status pipe
    /// is drained (so their last events are seen), others are orphans.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return,
                Ok(s) => s,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    return;
                }
            };
            let Some((pid, code)) = exit_code(status) else {
                continue;
            };
            match self.shims.iter().position(|s| s.pid == pid && !s.reaped) {
                Some(i) => {
                    self.shims[i].reaped = true;
                    for stream in [Stream::Status, Stream::Stdout, Stream::Stderr] {
                        self.read_pipe(i, stream, stream == Stream::Status);
                    }
                    self.sup.child_exited(pid, code, Now::system());
                }
                None => match self.exec_io.iter().position(|e| e.pid == pid) {
                    Some(i) => {
                        self.read_exec(i, true);
                        let io = self.exec_io.remove(i);
                        self.execs.ended(io.exec, code, Instant::now());
                    }
                    None => log::debug!("reaped orphan {pid} ({code})"),
                },
            }
        }
    }

    fn read_pipe(&mut self, i: usize, stream: Stream, drain: bool) {
        let Some(io) = self.shims.get_mut(i) else {
            return;
        };
        let (index, pid) = (io.index, io.pid);
        let items = io.read(stream, drain);
        if items.is_empty() {
            return;
        }
        let (id, kind) = match self.sup.records().get(index) {
            Some(r) => (r.id.clone(), r.kind),
            None => return,
        };
        let to_console = kind != Kind::Service || self.cmdline.console;
        let stamp = keel_supervisor::time::rfc3339_millis(SystemTime::now());
        let tag = if stream == Stream::Stderr {
            "stderr"
        } else {
            "stdout"
        };
        let file = self.logs.entry(index).or_insert_with(|| {
            let path = Path::new(keel_bundle::LOG_DIR).join(format!("{id}.log"));
            LogFile::new(&path, LOG_FILE_BYTES, LOG_FILES)
        });
        for item in items {
            match item {
                Item::Output(line) => {
                    if to_console {
                        crate::logger::container_line(&id, &line);
                    }
                    let line = format!("{stamp} {tag} {line}");
                    file.write_line(&line);
                    self.sup.output(index, &line);
                }
                Item::Event(ev) => {
                    if let ShimEvent::Exited { status, .. } = ev {
                        log::debug!("{id}: shim reports exit {status}");
                    }
                    self.sup.shim_event(pid, ev);
                }
            }
        }
        file.flush();
    }
}

/// The end of the orderly stop: SIGTERM to every process left, a short wait, SIGKILL, reap.
fn kill_remaining(signals: &SignalFd) {
    const WAIT: Duration = Duration::from_secs(2);
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        sys::kill_all(sig);
        let start = Instant::now();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Err(nix::Error::ECHILD) => return,
                Ok(WaitStatus::StillAlive) => {
                    if start.elapsed() >= WAIT {
                        break;
                    }
                    let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                    let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u8));
                    while let Ok(Some(_)) = signals.read_signal() {}
                }
                _ => {}
            }
        }
    }
    if crate::logger::dropped_lines() > 0 {
        log::info!(
            "{} container output lines were dropped from the console",
            crate::logger::dropped_lines()
        );
    }
}
