//! A build's log: every line goes to the jobs waiting on the build (a broadcast channel, so a
//! slow or gone client never holds the build up) and the last lines are kept for the error
//! message of a failed build.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// Lines of log tail quoted in a failed build's error.
pub const TAIL_LINES: usize = 20;
/// Longest line kept (longer ones are cut).
const MAX_LINE: usize = 2000;
/// Lines buffered per listener before a slow one starts missing lines.
const CHANNEL: usize = 1024;

/// One build's log.
#[derive(Debug)]
pub struct BuildLog {
    tx: broadcast::Sender<String>,
    /// A std `Mutex`: push and copy only, never held across an await.
    tail: Mutex<VecDeque<String>>,
}

impl Default for BuildLog {
    fn default() -> Self {
        Self::new()
    }
}

impl BuildLog {
    /// An empty log.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL);
        Self {
            tx,
            tail: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
        }
    }

    /// Appends text (split into lines; blank lines dropped).
    pub fn push(&self, text: &str) {
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let line = cut(line);
            {
                let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
            }
            // No listener is fine: the tail keeps what matters.
            let _ = self.tx.send(line);
        }
    }

    /// Lines pushed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }

    /// The last lines, joined with newlines.
    pub fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

fn cut(line: &str) -> String {
    if line.len() <= MAX_LINE {
        return line.to_string();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_and_listeners_get_each_line() {
        let log = BuildLog::new();
        let mut rx = log.subscribe();
        for i in 0..30 {
            log.push(&format!("line {i}\n\n"));
        }
        let tail = log.tail();
        assert!(tail.starts_with("line 10\n"), "{tail}");
        assert!(tail.ends_with("line 29"), "{tail}");
        assert_eq!(rx.try_recv().expect("first line"), "line 0");
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_LINE);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_LINE + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
