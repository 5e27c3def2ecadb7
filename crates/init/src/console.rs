//! Talking to the person at the console.

use crate::error::InitError;
use nix::unistd::{close, dup2};
use std::fmt::Display;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Print one progress line, `[  12.345] maculaos-init: <msg>`, stamped
/// with the time since the kernel started as the kernel stamps its own
/// lines, so a slow step shows on the console (no stamp before /proc is
/// mounted). Write errors are ignored: PID 1 must not die (println! would
/// panic) because the console is missing or broken.
pub fn say(msg: impl Display) {
    let stamp = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| crate::boot::parse_uptime_ms(&t))
        .map(stamp)
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{stamp}maculaos-init: {msg}");
    let _ = out.flush();
}

/// `[   7.820] ` for 7820 ms, the width of the kernel's stamps.
fn stamp(ms: u64) -> String {
    format!("[{:>5}.{:03}] ", ms / 1000, ms % 1000)
}

/// Print a message that may span lines (a failed tool's output tail):
/// `<label>: <first line>`, then the other lines indented under it.
pub fn say_block(label: &str, text: impl Display) {
    let text = text.to_string();
    let mut lines = text.lines();
    say(format!("{label}: {}", lines.next().unwrap_or_default()));
    for line in lines {
        say(format!("  {line}"));
    }
}

/// Print a warning: something went wrong that does not stop the boot.
pub fn warn(text: impl Display) {
    say_block("warning", text);
}

/// Make `console` (`/dev/console` on devtmpfs) our stdin, stdout and
/// stderr, so every program we start talks to it too. Opened without
/// becoming our controlling terminal: systemd, which inherits it, sets up
/// terminals itself.
pub fn reopen_console(console: &Path) -> Result<(), InitError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(console)
        .map_err(InitError::io("opening", console))?;
    let fd = file.into_raw_fd();
    for target in 0..=2 {
        if fd != target {
            dup2(fd, target).map_err(InitError::sys(format!(
                "making {} file descriptor {target}",
                console.display()
            )))?;
        }
    }
    // When 0, 1 or 2 were closed, open() may have returned one of them:
    // that one is in use now and must stay open.
    if fd > 2 {
        let _ = close(fd);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamp_like_the_kernel() {
        assert_eq!(super::stamp(7_820), "[    7.820] ");
        assert_eq!(super::stamp(123_456_789), "[123456.789] ");
    }
}
