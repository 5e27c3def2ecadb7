//! The checks a configuration can ask for: a systemd unit, an HTTP GET, a
//! TCP connection, the space left on a filesystem.

use crate::{Check, State};
use maculaos_config::values::Percent;
use maculaos_config::{CheckType, HealthCheck};
use maculaos_runner::RunError;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether `root` is the running system, whose systemd and clock a command
/// can ask about. Under any other root such checks are skipped.
pub(crate) fn is_running_system(root: &Path) -> bool {
    root == Path::new("/")
}

pub(crate) fn not_running_system(name: &str, root: &Path) -> Check {
    Check::new(
        name,
        State::Skip,
        format!("not checked: {} is not the running system", root.display()),
    )
}

/// `path` (absolute, as on the node) under `root`.
pub(crate) fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// One configured check, run now.
pub fn configured_check(root: &Path, check: &HealthCheck) -> Check {
    let name = check.name.as_str();
    let misconfigured = |what: &str| {
        Check::new(
            name,
            State::Fail,
            format!("a {} check needs {what}", check.kind),
        )
    };
    let timeout = check.timeout.get();
    if check.only_while_active {
        if let Some(unit) = check.unit_name() {
            if let Some(skip) = unit_not_running(root, name, &unit) {
                return skip;
            }
        }
    }
    match check.kind {
        CheckType::Process | CheckType::Unit => match check.unit_name() {
            Some(unit) => systemd_unit_check(root, name, &unit),
            None => misconfigured("`unit`"),
        },
        CheckType::Http => match &check.url {
            Some(url) => http_check(name, url.as_str(), timeout),
            None => misconfigured("`url`"),
        },
        CheckType::Tcp => match check.tcp_target() {
            Some((host, port)) => tcp_check(name, &host, port, timeout),
            None => misconfigured("`host` and `port`, or `address`"),
        },
        CheckType::Disk => match &check.path {
            Some(path) => disk_check(root, name, path.as_path(), check.disk_threshold()),
            None => misconfigured("`path`"),
        },
        CheckType::Command => match check.command.split_first() {
            Some((program, args)) => command_check(root, name, program, args, timeout),
            None => misconfigured("`command`"),
        },
    }
}

/// A skipped check when `unit` is not active: stopped on purpose, or being
/// started again by systemd (its own restarts come first). `None` when it
/// runs, or when that cannot be told (then the probe runs).
fn unit_not_running(root: &Path, name: &str, unit: &str) -> Option<Check> {
    if !is_running_system(root) {
        return Some(not_running_system(name, root));
    }
    let state = maculaos_runner::Cmd::new("systemctl")
        .args(["show", "-p", "ActiveState", "--value", unit])
        .quiet()
        .output()
        .ok()?;
    let state = state.trim();
    (state != "active" && !state.is_empty())
        .then(|| Check::new(name, State::Skip, format!("not checked: {unit} is {state}")))
}

/// A command exits 0 within `timeout` (it is killed after that). Only its
/// exit is shown, not its output or arguments, which may hold secrets.
pub fn command_check(
    root: &Path,
    name: &str,
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Check {
    if !is_running_system(root) {
        return not_running_system(name, root);
    }
    let answer = maculaos_runner::Cmd::new(program)
        .args(args)
        .quiet()
        .run_within(timeout);
    match answer {
        Ok(()) => Check::new(name, State::Pass, "the command exited 0"),
        Err(RunError::Failed { status, .. }) => {
            Check::new(name, State::Fail, format!("the command failed ({status})"))
        }
        Err(RunError::NotFound { program, .. }) => Check::new(
            name,
            State::Fail,
            format!("the command cannot run: `{program}` is not installed"),
        ),
        // Not the error's text: it quotes the whole command line.
        Err(RunError::Io { source, .. }) => Check::new(
            name,
            State::Fail,
            format!("the command cannot run ({})", source.kind()),
        ),
    }
}

/// Every configured check, in the order of the configuration. They run at
/// the same time, so that slow ones (timeouts) do not add up.
pub fn configured_checks(root: &Path, checks: &[HealthCheck]) -> Vec<Check> {
    std::thread::scope(|s| {
        let running: Vec<_> = checks
            .iter()
            .map(|c| (c, s.spawn(move || configured_check(root, c))))
            .collect();
        running
            .into_iter()
            .map(|(c, h)| {
                h.join().unwrap_or_else(|_| {
                    Check::new(&c.name, State::Fail, "the check itself failed (panic)")
                })
            })
            .collect()
    })
}

/// A systemd unit of the running system is active (`systemctl is-active`).
pub fn systemd_unit_check(root: &Path, name: &str, unit: &str) -> Check {
    if !is_running_system(root) {
        return not_running_system(name, root);
    }
    let answer = maculaos_runner::Cmd::new("systemctl")
        .args(["is-active", unit])
        .quiet()
        .run();
    unit_answer(name, unit, answer)
}

/// The check for what `systemctl is-active UNIT` said: it exits 0 only when
/// the unit is active and prints the state either way.
pub(crate) fn unit_answer(name: &str, unit: &str, answer: Result<(), RunError>) -> Check {
    let state = match answer {
        Ok(()) => return Check::new(name, State::Pass, format!("{unit} active")),
        Err(RunError::Failed { tail, .. }) => tail
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("not active")
            .to_string(),
        Err(e) => format!("unknown: {e}"),
    };
    Check::new(name, State::Fail, format!("{unit} is {state}"))
}

/// An HTTP(S) GET of `url` answers 2xx or 3xx within `timeout`. Redirects
/// are not followed (a 3xx passes), proxies are not used: the check is of
/// the service, not of the way to it.
pub fn http_check(name: &str, url: &str, timeout: Duration) -> Check {
    let agent = match http_agent(url, timeout) {
        Ok(a) => a,
        Err(why) => return Check::new(name, State::Fail, format!("{url}: {why}")),
    };
    match agent.get(url).call() {
        Ok(resp) => {
            let status = resp.status();
            let text = match status.canonical_reason() {
                Some(r) => format!("{} {r}", status.as_u16()),
                None => status.as_u16().to_string(),
            };
            let ok = status.is_success() || status.is_redirection();
            let state = if ok { State::Pass } else { State::Fail };
            Check::new(name, state, format!("{url} answered {text}"))
        }
        Err(ureq::Error::Timeout(_)) => Check::new(
            name,
            State::Fail,
            format!("{url}: no answer within {}", human(timeout)),
        ),
        Err(e) => Check::new(name, State::Fail, format!("{url}: {e}")),
    }
}

/// A timeout as the configuration writes it (`5s`, `500ms`).
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn http_agent(url: &str, timeout: Duration) -> Result<ureq::Agent, String> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(timeout))
        .user_agent(format!("maculaos-health/{}", env!("CARGO_PKG_VERSION")));
    if url.starts_with("https://") {
        // The system's CA roots, as `maculaos upgrade` uses them.
        let loaded = rustls_native_certs::load_native_certs();
        if loaded.certs.is_empty() {
            return Err("no CA certificates found in /etc/ssl/certs: cannot check https".into());
        }
        let certs: Vec<ureq::tls::Certificate<'static>> = loaded
            .certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(config.build().into())
}

/// A TCP connection to `host:port` opens within `timeout` (per address the
/// name resolves to).
pub fn tcp_check(name: &str, host: &str, port: u16, timeout: Duration) -> Check {
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let addrs: Vec<_> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Check::new(name, State::Fail, format!("{shown}: cannot resolve: {e}"));
        }
    };
    let mut last = String::from("no address");
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => return Check::new(name, State::Pass, format!("{shown} accepts connections")),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = format!("no answer within {}", human(timeout));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Check::new(
        name,
        State::Fail,
        format!("cannot connect to {shown}: {last}"),
    )
}

/// How full the filesystem holding `path` is, in percent of the space a
/// user can have, rounded up (as `df` shows it).
pub fn disk_use(path: &Path) -> std::io::Result<u8> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    // libc's types: u64 on 64-bit Linux, narrower elsewhere.
    let frsize = (st.fragment_size() as u64).max(1);
    let blocks = st.blocks() as u64;
    let free = st.blocks_free() as u64;
    let avail = st.blocks_available() as u64;
    let used = blocks.saturating_sub(free).saturating_mul(frsize);
    let avail = avail.saturating_mul(frsize);
    Ok(use_percent(used, avail))
}

/// `used / (used + available)` in percent, rounded up.
pub(crate) fn use_percent(used: u64, avail: u64) -> u8 {
    let total = u128::from(used) + u128::from(avail);
    if total == 0 {
        return 0;
    }
    let pct = (u128::from(used) * 100).div_ceil(total);
    u8::try_from(pct.min(100)).unwrap_or(100)
}

/// The filesystem holding `path` (under `root`) is less full than `threshold`.
pub fn disk_check(root: &Path, name: &str, path: &Path, threshold: Percent) -> Check {
    match disk_use(&under(root, path)) {
        Ok(pct) => usage_check(name, path, pct, threshold),
        Err(e) => Check::new(name, State::Fail, format!("{}: {e}", path.display())),
    }
}

pub(crate) fn usage_check(name: &str, path: &Path, pct: u8, threshold: Percent) -> Check {
    let state = if pct >= threshold.get() {
        State::Fail
    } else {
        State::Pass
    };
    Check::new(
        name,
        state,
        format!("{} is {pct}% full (fails at {threshold})", path.display()),
    )
}
