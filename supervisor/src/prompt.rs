//! The prompt PID 1 serves on the console (YAML `console: inspect|admin`): a line editor
//! (cursor keys, history, ctrl-a/e/b/f/k/u/w/l/p/n) and a session that runs the same verbs as
//! `keelctl` through the same parser ([`crate::cli`]), refuses what the configured level does
//! not allow, and follows (`logs -f`, `top`, `exec`) by polling until ctrl-c. Pure: bytes in,
//! bytes out, requests through a callback — PID 1 owns the terminal and the clock.
//!
//! Everything a container could have written (log lines, exec output, process command lines)
//! is shown with control characters escaped, so no container can drive the operator's terminal,
//! unless the YAML asked for `console: {raw: true}` (then log and exec output pass unchanged).

use crate::access;
use crate::cli::{self, Command, EXEC_INTERVAL, FOLLOW_INTERVAL};
use crate::protocol::{Request, Response, Usage};
use keel_bundle::ControlGrant;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The prompt.
pub const PROMPT: &str = "keel> ";
/// Longest line the editor keeps (characters); more typing is ignored.
pub const MAX_LINE: usize = 4096;
/// Lines kept in the history.
pub const HISTORY: usize = 100;
/// How often `top` refreshes.
pub const TOP_INTERVAL: Duration = Duration::from_secs(2);
/// Lines `logs` shows when not told (`-n`).
pub const DEFAULT_LOG_LINES: usize = 50;

/// What a key completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// Enter: the line typed.
    Line(String),
    /// ctrl-c.
    Interrupt,
}

/// Where an escape sequence is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Escape {
    None,
    /// After ESC.
    Started,
    /// After `ESC [` or `ESC O`: parameter bytes so far.
    Sequence(Vec<u8>),
}

/// A one-line editor writing VT100 sequences.
#[derive(Debug)]
pub struct LineEditor {
    line: Vec<char>,
    cursor: usize,
    history: VecDeque<String>,
    /// The history entry shown (index from the newest), while browsing.
    browsing: Option<usize>,
    /// The line being typed before browsing started.
    draft: Vec<char>,
    escape: Escape,
    /// Bytes of an unfinished UTF-8 character.
    partial: Vec<u8>,
    /// The last byte was CR (a following LF is the same Enter).
    after_cr: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        LineEditor {
            line: Vec::new(),
            cursor: 0,
            history: VecDeque::new(),
            browsing: None,
            draft: Vec::new(),
            escape: Escape::None,
            partial: Vec::new(),
            after_cr: false,
        }
    }
}

impl LineEditor {
    /// Writes the prompt and the line, with the cursor in place.
    pub fn redraw(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r");
        out.extend_from_slice(PROMPT.as_bytes());
        out.extend(self.line.iter().collect::<String>().as_bytes());
        out.extend_from_slice(b"\x1b[K");
        let back = self.line.len() - self.cursor;
        if back > 0 {
            out.extend(format!("\x1b[{back}D").as_bytes());
        }
    }

    /// Takes one byte of input; returns what it completed, writing the echo to `out`.
    pub fn feed(&mut self, byte: u8, out: &mut Vec<u8>) -> Option<Key> {
        let after_cr = std::mem::replace(&mut self.after_cr, false);
        match std::mem::replace(&mut self.escape, Escape::None) {
            Escape::Started => {
                if byte == b'[' || byte == b'O' {
                    self.escape = Escape::Sequence(Vec::new());
                }
                return None;
            }
            Escape::Sequence(mut params) => {
                if (0x30..=0x3f).contains(&byte) && params.len() < 8 {
                    params.push(byte);
                    self.escape = Escape::Sequence(params);
                } else {
                    self.sequence(&params, byte, out);
                }
                return None;
            }
            Escape::None => {}
        }
        match byte {
            b'\r' | b'\n' => {
                if byte == b'\n' && after_cr {
                    return None;
                }
                self.after_cr = byte == b'\r';
                out.extend_from_slice(b"\r\n");
                let line: String = self.line.drain(..).collect();
                self.cursor = 0;
                self.browsing = None;
                if !line.trim().is_empty() && self.history.back() != Some(&line) {
                    if self.history.len() == HISTORY {
                        self.history.pop_front();
                    }
                    self.history.push_back(line.clone());
                }
                return Some(Key::Line(line));
            }
            0x03 => {
                out.extend_from_slice(b"^C\r\n");
                self.line.clear();
                self.cursor = 0;
                self.browsing = None;
                return Some(Key::Interrupt);
            }
            0x1b => self.escape = Escape::Started,
            0x7f | 0x08 => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.line.remove(self.cursor);
                    self.redraw(out);
                }
            }
            0x04 => self.delete(out),
            0x01 => self.move_to(0, out),
            0x05 => self.move_to(self.line.len(), out),
            0x02 => self.move_to(self.cursor.saturating_sub(1), out),
            0x06 => self.move_to(self.cursor + 1, out),
            0x0b => {
                self.line.truncate(self.cursor);
                self.redraw(out);
            }
            0x15 => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
                self.redraw(out);
            }
            0x17 => {
                let mut start = self.cursor;
                while start > 0 && self.line[start - 1] == ' ' {
                    start -= 1;
                }
                while start > 0 && self.line[start - 1] != ' ' {
                    start -= 1;
                }
                self.line.drain(start..self.cursor);
                self.cursor = start;
                self.redraw(out);
            }
            0x0c => {
                out.extend_from_slice(b"\x1b[H\x1b[2J");
                self.redraw(out);
            }
            0x10 => self.older(out),
            0x0e => self.newer(out),
            b if b < 0x20 => {}
            b => self.byte(b, out),
        }
        None
    }

    /// The end of `ESC [ params final`.
    fn sequence(&mut self, params: &[u8], last: u8, out: &mut Vec<u8>) {
        match (params, last) {
            (_, b'A') => self.older(out),
            (_, b'B') => self.newer(out),
            (_, b'C') => self.move_to(self.cursor + 1, out),
            (_, b'D') => self.move_to(self.cursor.saturating_sub(1), out),
            (_, b'H') | (b"1" | b"7", b'~') => self.move_to(0, out),
            (_, b'F') | (b"4" | b"8", b'~') => self.move_to(self.line.len(), out),
            (b"3", b'~') => self.delete(out),
            _ => {}
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        self.partial.push(b);
        let c = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.chars().next(),
            Err(e) if e.error_len().is_none() && self.partial.len() < 4 => return,
            Err(_) => None,
        };
        self.partial.clear();
        let Some(c) = c else { return };
        if self.line.len() >= MAX_LINE {
            return;
        }
        self.line.insert(self.cursor, c);
        self.cursor += 1;
        if self.cursor == self.line.len() {
            out.extend(c.to_string().as_bytes());
        } else {
            self.redraw(out);
        }
    }

    fn delete(&mut self, out: &mut Vec<u8>) {
        if self.cursor < self.line.len() {
            self.line.remove(self.cursor);
            self.redraw(out);
        }
    }

    fn move_to(&mut self, to: usize, out: &mut Vec<u8>) {
        let to = to.min(self.line.len());
        if to != self.cursor {
            self.cursor = to;
            self.redraw(out);
        }
    }

    fn older(&mut self, out: &mut Vec<u8>) {
        let next = self.browsing.map_or(0, |i| i + 1);
        if next >= self.history.len() {
            return;
        }
        if self.browsing.is_none() {
            self.draft = self.line.clone();
        }
        self.show_history(Some(next), out);
    }

    fn newer(&mut self, out: &mut Vec<u8>) {
        match self.browsing {
            None => {}
            Some(0) => self.show_history(None, out),
            Some(i) => self.show_history(Some(i - 1), out),
        }
    }

    fn show_history(&mut self, entry: Option<usize>, out: &mut Vec<u8>) {
        self.browsing = entry;
        self.line = match entry {
            Some(i) => self.history[self.history.len() - 1 - i].chars().collect(),
            None => std::mem::take(&mut self.draft),
        };
        self.cursor = self.line.len();
        self.redraw(out);
    }
}

/// What the session is doing.
#[derive(Debug)]
enum Mode {
    /// Showing the prompt, editing a line.
    Prompt,
    /// `logs -f`: asking for lines after `after`.
    Logs {
        id: String,
        after: u64,
        next: Instant,
    },
    /// `top`: refreshing, CPU measured against the previous sample.
    Top {
        earlier: Vec<Usage>,
        at: Instant,
        next: Instant,
    },
    /// `exec`: polling its output; how many ctrl-c were typed.
    Exec {
        exec: u64,
        after: u64,
        next: Instant,
        interrupts: u8,
    },
}

/// One console's prompt.
#[derive(Debug)]
pub struct Session {
    editor: LineEditor,
    access: ControlGrant,
    raw: bool,
    mode: Mode,
}

/// Carries a request to PID 1's handler.
pub type Handler<'a> = &'a mut dyn FnMut(Request) -> Response;

impl Session {
    /// A session allowing `access` (not [`ControlGrant::None`]: then PID 1 serves no prompt).
    pub fn new(access: ControlGrant, raw: bool) -> Self {
        Session {
            editor: LineEditor::default(),
            access,
            raw,
            mode: Mode::Prompt,
        }
    }

    /// The greeting and the first prompt.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        out.extend(
            format!(
                "\r\nkeel console ({}): type help for the commands\r\n",
                self.level()
            )
            .as_bytes(),
        );
        self.editor.redraw(out);
    }

    /// Whether the prompt is on screen (output from elsewhere must redraw it after).
    pub fn showing_prompt(&self) -> bool {
        matches!(self.mode, Mode::Prompt)
    }

    /// Writes the prompt and the line being edited again.
    pub fn redraw(&self, out: &mut Vec<u8>) {
        if self.showing_prompt() {
            self.editor.redraw(out);
        }
    }

    /// When [`Session::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.mode {
            Mode::Prompt => None,
            Mode::Logs { next, .. } | Mode::Top { next, .. } | Mode::Exec { next, .. } => {
                Some(*next)
            }
        }
    }

    /// Typed bytes.
    pub fn input(&mut self, bytes: &[u8], now: Instant, handler: Handler<'_>, out: &mut Vec<u8>) {
        for &b in bytes {
            match &mut self.mode {
                Mode::Prompt => match self.editor.feed(b, out) {
                    Some(Key::Line(line)) => {
                        self.line(&line, now, handler, out);
                        if self.showing_prompt() {
                            self.editor.redraw(out);
                        }
                    }
                    Some(Key::Interrupt) => self.editor.redraw(out),
                    None => {}
                },
                // ctrl-c (or q for top) ends following; other keys are ignored.
                Mode::Logs { .. } | Mode::Top { .. } if b == 0x03 || b == b'q' => {
                    out.extend_from_slice(b"\r\n");
                    self.back_to_prompt(out);
                }
                Mode::Exec {
                    exec, interrupts, ..
                } if b == 0x03 => {
                    // The first ctrl-c interrupts the command, the next ones kill it.
                    let signal = if *interrupts == 0 { 2 } else { 9 };
                    *interrupts = interrupts.saturating_add(1);
                    let exec = *exec;
                    out.extend_from_slice(b"^C");
                    if let Response::Error { message } = handler(Request::ExecKill { exec, signal })
                    {
                        self.say(&format!("error: {message}"), out);
                    }
                }
                _ => {}
            }
        }
    }

    /// Does what is due at `now`.
    pub fn tick(&mut self, now: Instant, handler: Handler<'_>, out: &mut Vec<u8>) {
        if self.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        match &mut self.mode {
            Mode::Prompt => {}
            Mode::Logs { id, after, next } => {
                let request = Request::Logs {
                    id: id.clone(),
                    lines: None,
                    after: Some(*after),
                };
                *next = now + FOLLOW_INTERVAL;
                match handler(request) {
                    Response::Logs { lines, next: n } => {
                        *after = n;
                        for l in lines {
                            self.container_text(&format!("{}\n", l.line), out);
                        }
                    }
                    other => self.ended(other, out),
                }
            }
            Mode::Top { earlier, at, next } => {
                *next = now + TOP_INTERVAL;
                match handler(Request::Top) {
                    Response::Top { init, containers } => {
                        let table = cli::top_table(
                            &init,
                            &containers,
                            Some((earlier, now.saturating_duration_since(*at))),
                        );
                        *earlier = containers;
                        *at = now;
                        out.extend_from_slice(b"\x1b[H\x1b[2J");
                        self.text(&table, out);
                        self.say("(ctrl-c or q: back to the prompt)", out);
                    }
                    other => self.ended(other, out),
                }
            }
            Mode::Exec {
                exec, after, next, ..
            } => {
                let request = Request::ExecOutput {
                    exec: *exec,
                    after: *after,
                };
                *next = now + EXEC_INTERVAL;
                match handler(request) {
                    Response::ExecOutput {
                        output,
                        next: n,
                        dropped,
                        exit_status,
                    } => {
                        *after = n;
                        if dropped > 0 {
                            self.say(&format!("[{dropped} bytes of output dropped]"), out);
                        }
                        self.container_text(&output, out);
                        if let Some(status) = exit_status {
                            if status != 0 {
                                self.say(&format!("[exit status {status}]"), out);
                            }
                            self.back_to_prompt(out);
                        }
                    }
                    other => self.ended(other, out),
                }
            }
        }
    }

    fn line(&mut self, line: &str, now: Instant, handler: Handler<'_>, out: &mut Vec<u8>) {
        let words = match split_words(line) {
            Ok(w) if w.is_empty() => return,
            Ok(w) => w,
            Err(e) => return self.say(&format!("error: {e}"), out),
        };
        let command = match cli::parse(&words) {
            Ok(c) => c,
            Err(e) => return self.say(&format!("error: {e}; type help"), out),
        };
        let request = match &command {
            Command::Help => {
                self.text(cli::COMMANDS, out);
                let note = match self.access {
                    ControlGrant::Admin => "this console may use every command".to_owned(),
                    _ => "this console may only read (console: inspect in the YAML): list, ps, logs, top, timeline".to_owned(),
                };
                return self.say(&format!("\n{note}"), out);
            }
            Command::Call(r) => r.clone(),
            Command::Logs { id, lines, .. } => Request::Logs {
                id: id.clone(),
                lines: Some(lines.unwrap_or(DEFAULT_LOG_LINES)),
                after: None,
            },
            Command::Top => Request::Top,
            Command::Exec { id, argv } => Request::Exec {
                id: id.clone(),
                command: argv.clone(),
            },
            // They read and write the boot disk: long work that PID 1's loop does not do.
            Command::Version | Command::Update { .. } => {
                return self.say(
                    "error: version and update run in keelctl (a shell on the system, or keel ctl exec), not at this prompt",
                    out,
                );
            }
        };
        let needs = access::needs(&request);
        if self.access < needs {
            return self.say(
                &format!(
                    "permission denied: this console is {}; {} needs admin (console: admin in the YAML)",
                    self.level(),
                    access::verb(&request)
                ),
                out,
            );
        }
        let response = handler(request);
        if let Response::Error { message } = &response {
            return self.say(&format!("error: {message}"), out);
        }
        match (command, response) {
            (Command::Logs { id, follow, .. }, Response::Logs { lines, next }) => {
                for l in lines {
                    self.container_text(&format!("{}\n", l.line), out);
                }
                if follow {
                    self.mode = Mode::Logs {
                        id,
                        after: next,
                        next: now + FOLLOW_INTERVAL,
                    };
                }
            }
            (Command::Top, Response::Top { init, containers }) => {
                self.text(&cli::top_table(&init, &containers, None), out);
                self.mode = Mode::Top {
                    earlier: containers,
                    at: now,
                    next: now + TOP_INTERVAL,
                };
            }
            (Command::Exec { .. }, Response::Exec { exec }) => {
                self.mode = Mode::Exec {
                    exec,
                    after: 0,
                    next: now,
                    interrupts: 0,
                };
                self.tick(now, handler, out);
            }
            (_, response) => match cli::render(response, false) {
                Ok(text) => self.text(&text, out),
                Err(message) => self.say(&format!("error: {message}"), out),
            },
        }
    }

    fn level(&self) -> &'static str {
        match self.access {
            ControlGrant::Admin => "admin",
            _ => "inspect",
        }
    }

    /// A follow mode got an unexpected answer: say it, back to the prompt.
    fn ended(&mut self, response: Response, out: &mut Vec<u8>) {
        let message = match response {
            Response::Error { message } => message,
            other => format!("unexpected answer {other:?}"),
        };
        self.say(&format!("error: {message}"), out);
        self.back_to_prompt(out);
    }

    fn back_to_prompt(&mut self, out: &mut Vec<u8>) {
        self.mode = Mode::Prompt;
        self.editor.redraw(out);
    }

    /// A line of keel's own text.
    fn say(&self, line: &str, out: &mut Vec<u8>) {
        self.text(line, out);
        out.extend_from_slice(b"\r\n");
    }

    /// Text that may hold what containers wrote (names, command lines): always escaped.
    fn text(&self, text: &str, out: &mut Vec<u8>) {
        out.extend(crlf(&cli::sanitize(text)).as_bytes());
    }

    /// Container output: escaped unless the YAML asked for raw output.
    fn container_text(&self, text: &str, out: &mut Vec<u8>) {
        if self.raw {
            out.extend(crlf(text).as_bytes());
        } else {
            self.text(text, out);
        }
    }
}

/// Newlines as CR LF: the console may be a raw terminal.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// Splits a command line into words: blanks separate, `'...'` and `"..."` quote, `\` escapes
/// the next character outside single quotes.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => match chars.next() {
                Some(next) => word.get_or_insert_with(String::new).push(next),
                None => return Err("a line cannot end with \\".into()),
            },
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ContainerInfo, InitUsage, LogLine};

    fn typed(editor: &mut LineEditor, bytes: &[u8]) -> (Vec<Key>, String) {
        let mut out = Vec::new();
        let keys = bytes
            .iter()
            .filter_map(|&b| editor.feed(b, &mut out))
            .collect();
        (keys, String::from_utf8_lossy(&out).into_owned())
    }

    fn line(s: &str) -> Key {
        Key::Line(s.into())
    }

    #[test]
    fn editing_keys_change_the_line() {
        let mut e = LineEditor::default();
        assert_eq!(typed(&mut e, b"lsit\r").0, [line("lsit")]);
        // Left twice and insert; left twice and backspace; right is bounded by the end.
        assert_eq!(typed(&mut e, b"lst\x1b[D\x1b[Di\r").0, [line("list")]);
        assert_eq!(
            typed(&mut e, b"lisst\x1b[D\x1b[D\x7f\x1b[C\x1b[C\x1b[C!\r").0,
            [line("list!")]
        );
        // Home, then insert; ctrl-e, ctrl-w deletes the last word; ctrl-u the rest.
        assert_eq!(
            typed(&mut e, b"ogs web\x01l\x05\x17x\r").0,
            [line("logs x")]
        );
        assert_eq!(typed(&mut e, b"junk\x15top\r").0, [line("top")]);
        // ctrl-k cuts from the cursor; delete key (ESC [ 3 ~) removes under it.
        assert_eq!(
            typed(&mut e, b"psxx web\x01\x1b[C\x1b[C\x0b\r").0,
            [line("ps")]
        );
        assert_eq!(typed(&mut e, b"pxs\x01\x1b[C\x1b[3~\r").0, [line("ps")]);
        // CR LF is one Enter; ctrl-c drops the line.
        assert_eq!(typed(&mut e, b"a\r\nb\n").0, [line("a"), line("b")]);
        assert_eq!(typed(&mut e, b"half\x03").0, [Key::Interrupt]);
        // UTF-8 arrives byte by byte.
        assert_eq!(typed(&mut e, "é\r".as_bytes()).0, [line("é")]);
        // Unknown sequences and control bytes are ignored.
        assert_eq!(typed(&mut e, b"\x1b[99Zok\x07\r").0, [line("ok")]);
    }

    #[test]
    fn history_walks_back_and_forth() {
        let mut e = LineEditor::default();
        typed(&mut e, b"list\rtop\rtop\r");
        // Repeats are kept once; up twice is "list", down once "top", down again the draft.
        assert_eq!(typed(&mut e, b"dr\x1b[A\x1b[A\r").0, [line("list")]);
        assert_eq!(
            typed(&mut e, b"dr\x1b[A\x1b[A\x1b[A\x1b[B\r").0,
            [line("top")]
        );
        assert_eq!(typed(&mut e, b"dr\x10\x0e\r").0, [line("dr")]);
        let (_, echo) = typed(&mut e, b"\x1b[A");
        assert!(echo.ends_with("keel> dr\x1b[K"), "{echo:?}");
        for i in 0..HISTORY + 10 {
            typed(&mut e, format!("c{i}\r").as_bytes());
        }
        assert_eq!(e.history.len(), HISTORY);
    }

    #[test]
    fn lines_are_bounded() {
        let mut e = LineEditor::default();
        let long = vec![b'a'; MAX_LINE + 100];
        typed(&mut e, &long);
        match typed(&mut e, b"\r").0.as_slice() {
            [Key::Line(l)] => assert_eq!(l.len(), MAX_LINE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(
            split_words(r#"exec web sh -c 'echo "hi there"' a\ b"#).unwrap(),
            ["exec", "web", "sh", "-c", "echo \"hi there\"", "a b"]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("x ''").unwrap(), ["x", ""]);
        assert!(split_words("echo 'open").is_err());
    }

    /// A fake PID 1: answers from a script, records the requests.
    struct Fake {
        asked: Vec<Request>,
    }

    impl Fake {
        fn answer(&mut self, r: Request) -> Response {
            self.asked.push(r.clone());
            match r {
                Request::List => Response::List {
                    containers: vec![ContainerInfo {
                        id: "web\x1b]0;pwned\x07".into(),
                        pid: 5,
                        status: "running".into(),
                        bundle: "/containers/services/web".into(),
                        created: String::new(),
                        owner: "root".into(),
                        restarts: 0,
                        kind: "service".into(),
                        exit_status: None,
                        exit_reason: None,
                        ready: true,
                    }],
                },
                Request::Logs { after, .. } => Response::Logs {
                    lines: vec![LogLine {
                        seq: after.unwrap_or(0),
                        line: format!("line {} \x1b[2J", after.unwrap_or(0)),
                    }],
                    next: after.unwrap_or(0) + 1,
                },
                Request::Top => Response::Top {
                    init: InitUsage {
                        rss_bytes: 1 << 20,
                        pss_bytes: 1 << 19,
                        buffered_bytes: 0,
                    },
                    containers: vec![],
                },
                Request::Exec { .. } => Response::Exec { exec: 1 },
                Request::ExecOutput { after, .. } => Response::ExecOutput {
                    output: if after == 0 {
                        "uid=0\n".into()
                    } else {
                        String::new()
                    },
                    next: 6,
                    dropped: 0,
                    exit_status: (after > 0).then_some(1),
                },
                Request::ExecKill { .. } => Response::Done {
                    message: "sent".into(),
                },
                _ => Response::Done {
                    message: "done".into(),
                },
            }
        }
    }

    fn session(access: ControlGrant, raw: bool) -> (Session, Fake) {
        (Session::new(access, raw), Fake { asked: vec![] })
    }

    fn type_in(s: &mut Session, f: &mut Fake, text: &str, now: Instant) -> String {
        let mut out = Vec::new();
        s.input(text.as_bytes(), now, &mut |r| f.answer(r), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn tick(s: &mut Session, f: &mut Fake, now: Instant) -> String {
        let mut out = Vec::new();
        s.tick(now, &mut |r| f.answer(r), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn inspect_may_read_but_not_act() {
        let (mut s, mut f) = session(ControlGrant::Inspect, false);
        let now = Instant::now();
        let out = type_in(&mut s, &mut f, "list\r", now);
        // The container-chosen name cannot set the terminal's title.
        assert!(out.contains("web\\x1b]0;pwned\\x07"), "{out:?}");
        assert!(!out.contains('\x07'));
        assert!(out.ends_with("keel> \x1b[K"), "{out:?}");
        for verb in ["stop web", "poweroff", "exec web id", "kill web", "reboot"] {
            let out = type_in(&mut s, &mut f, &format!("{verb}\r"), now);
            assert!(
                out.contains("permission denied: this console is inspect"),
                "{out}"
            );
        }
        assert_eq!(f.asked, [Request::List]);
        let out = type_in(&mut s, &mut f, "frob\r", now);
        assert!(out.contains("unknown command frob; type help"), "{out}");
        let out = type_in(&mut s, &mut f, "help\r", now);
        assert!(
            out.contains("logs [-f]") && out.contains("may only read"),
            "{out}"
        );
    }

    #[test]
    fn admin_may_act() {
        let (mut s, mut f) = session(ControlGrant::Admin, false);
        let out = type_in(&mut s, &mut f, "stop web\r", Instant::now());
        assert!(out.contains("done"), "{out}");
        assert_eq!(f.asked, [Request::Stop { id: "web".into() }]);
    }

    #[test]
    fn logs_follow_until_ctrl_c_and_escape_output() {
        let (mut s, mut f) = session(ControlGrant::Inspect, false);
        let t0 = Instant::now();
        let out = type_in(&mut s, &mut f, "logs -f web\r", t0);
        assert!(out.contains("line 0 \\x1b[2J"), "{out:?}");
        assert!(!s.showing_prompt());
        assert_eq!(s.next_deadline(), Some(t0 + FOLLOW_INTERVAL));
        // Nothing before the deadline, the next lines after it.
        assert_eq!(tick(&mut s, &mut f, t0), "");
        let out = tick(&mut s, &mut f, t0 + FOLLOW_INTERVAL);
        assert!(out.contains("line 1"), "{out:?}");
        // Typing other keys does nothing; ctrl-c returns to the prompt.
        assert_eq!(type_in(&mut s, &mut f, "x", t0), "");
        let out = type_in(&mut s, &mut f, "\x03", t0);
        assert!(out.ends_with("keel> \x1b[K"), "{out:?}");
        assert!(s.showing_prompt());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn raw_output_passes_escapes() {
        let (mut s, mut f) = session(ControlGrant::Inspect, true);
        let out = type_in(&mut s, &mut f, "logs web\r", Instant::now());
        assert!(out.contains("line 0 \x1b[2J"), "{out:?}");
    }

    #[test]
    fn exec_polls_to_its_end_and_ctrl_c_interrupts_then_kills() {
        let (mut s, mut f) = session(ControlGrant::Admin, false);
        let t0 = Instant::now();
        let out = type_in(&mut s, &mut f, "exec web id\r", t0);
        assert!(out.contains("uid=0\r\n"), "{out:?}");
        assert!(!s.showing_prompt());
        type_in(&mut s, &mut f, "\x03\x03", t0);
        let out = tick(&mut s, &mut f, t0 + EXEC_INTERVAL);
        assert!(out.contains("[exit status 1]"), "{out:?}");
        assert!(s.showing_prompt());
        assert_eq!(
            f.asked,
            [
                Request::Exec {
                    id: "web".into(),
                    command: vec!["id".into()]
                },
                Request::ExecOutput { exec: 1, after: 0 },
                Request::ExecKill { exec: 1, signal: 2 },
                Request::ExecKill { exec: 1, signal: 9 },
                Request::ExecOutput { exec: 1, after: 6 },
            ]
        );
    }

    #[test]
    fn top_refreshes_until_q() {
        let (mut s, mut f) = session(ControlGrant::Inspect, false);
        let t0 = Instant::now();
        let out = type_in(&mut s, &mut f, "top\r", t0);
        assert!(out.contains("PID 1: 1.0 MiB resident"), "{out}");
        let out = tick(&mut s, &mut f, t0 + TOP_INTERVAL);
        assert!(out.starts_with("\x1b[H\x1b[2J"), "{out:?}");
        type_in(&mut s, &mut f, "q", t0);
        assert!(s.showing_prompt());
    }
}
