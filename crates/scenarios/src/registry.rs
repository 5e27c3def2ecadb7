//! Services from a registry (guide "Service Deployment", plan §4.9.2): an
//! image made in the test is pushed to Debian's docker-registry on the host
//! (password-protected, plain HTTP, reached through a guest forward) and
//! deployed by reference with the credentials and the registry's settings
//! from `maculaos.registry`; the health agent restarts the service when its
//! health check fails; it runs again after a reboot with its data; a `docker.io` reference is pulled from the mirror
//! configured for docker.io (the real one cannot be reached).

use crate::harness::{ensure, Ctx, CMD_TIMEOUT};
use crate::services::{build_image, field_of, page, wait_page, DEPLOY_TIMEOUT, PAGE};
use anyhow::{bail, Context, Result};
use maculaos_vm::{Ssh, GUEST_SERVICE_ADDR};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry's port as the guest sees it (at GUEST_SERVICE_ADDR).
const GUEST_PORT: u16 = 5000;
const USER: &str = "ci";
const PASSWORD: &str = "pushed-by-the-test";

/// docker-registry on 127.0.0.1, its data and log in `dir`; killed when
/// dropped.
struct Registry {
    child: Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `GET /v2/` answers on `port` (the status code), if anything.
fn v2_status(port: u16) -> Option<u16> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 32];
    let n = c.read(&mut head).ok()?;
    std::str::from_utf8(&head[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Registry {
    /// Start it with one user (bcrypt, the only hash it takes, made by
    /// the system's crypt through perl, which every Debian has) and wait
    /// until it asks for credentials. A port taken between choosing and
    /// binding it is tried again with another.
    fn start(dir: &Path) -> Result<Registry> {
        let hash = Command::new("perl")
            .args([
                "-e",
                "print crypt($ARGV[0], '$2y$05$' . join('', map { ('a'..'z')[rand 26] } 1..22))",
                PASSWORD,
            ])
            .output()
            .context("running perl to hash the registry's password")?;
        let hash = String::from_utf8_lossy(&hash.stdout).into_owned();
        ensure(hash.starts_with("$2y$"), || {
            format!("crypt made no bcrypt hash: {hash:?}")
        })?;
        std::fs::write(dir.join("htpasswd"), format!("{USER}:{hash}\n"))?;
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
                .local_addr()?
                .port();
            let config = dir.join("registry.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: maculaos-test\n\
                     auth:\n  htpasswd:\n    realm: maculaos-test\n    path: {htpasswd}\n",
                    data = dir.join("data").display(),
                    htpasswd = dir.join("htpasswd").display(),
                ),
            )?;
            let log = std::fs::File::create(dir.join("registry.log"))?;
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting docker-registry (apt-get install docker-registry)")?;
            let mut reg = Registry { child, port };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Some(status) = reg.child.try_wait()? {
                    last = format!(
                        "docker-registry exited ({status}): {}",
                        std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                    );
                    break;
                }
                if v2_status(port) == Some(401) {
                    return Ok(reg);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if last.is_empty() {
                last = "docker-registry did not answer within 30 s".into();
            }
        }
        bail!("{last}")
    }
}

/// The guest's name for the registry.
fn registry_host() -> String {
    format!("{GUEST_SERVICE_ADDR}:{GUEST_PORT}")
}

/// `maculaos.registry` for the test registry: no TLS, the password, and
/// the same registry as docker.io's mirror.
fn registry_config() -> String {
    let host = registry_host();
    format!(
        "maculaos:\n  registry:\n    insecure: [\"{host}\"]\n    mirrors:\n      docker.io: [\"http://{host}\"]\n    \
         auth:\n      \"{host}\": {{username: {USER}, password: {PASSWORD}}}\n"
    )
}

pub fn services_registry(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir.join("registry");
    std::fs::create_dir_all(&dir)?;
    let registry = Registry::start(&dir)?;
    let host_port = registry.port;
    let ssh = ctx.restore_with(2, |spec| {
        spec.extra_forwards.push(8080);
        spec.host_services.push((GUEST_PORT, host_port));
    })?;
    let port = ctx
        .vm()?
        .forwarded_port(8080)
        .context("no forward for the service's port")?;
    let host = registry_host();
    let image = format!("{host}/maculaos/web:1");

    // Without credentials the registry refuses the push: they come from
    // the configuration, through apply.
    build_image(&ssh, &image)?;
    let refused = ssh.run_timeout(
        &format!("sudo podman push --tls-verify=false {image}"),
        CMD_TIMEOUT,
    )?;
    ensure(!refused.success(), || {
        "the registry took a push without credentials".into()
    })?;
    ssh.check(&format!(
        "sudo mkdir -p /var/lib/maculaos/config.d && printf '{}' | sudo tee /var/lib/maculaos/config.d/40-registry.yaml >/dev/null && sudo maculaos apply >/dev/null",
        registry_config()
    ))?;
    let auth = ssh.check("sudo stat -c '%a %U' /run/containers/0/auth.json")?;
    ensure(auth.trim() == "600 root", || {
        format!("the registry credentials are not root's alone: {auth}")
    })?;
    let shown = ssh.check("maculaos config show")?;
    ensure(!shown.contains(PASSWORD), || {
        format!("`config show` shows the registry password:\n{shown}")
    })?;
    ssh.check_timeout(&format!("sudo podman push --quiet {image}"), CMD_TIMEOUT)?;
    ssh.check(&format!("sudo podman rmi --force {image} >/dev/null"))?;

    // Deployed by reference: pulled from the registry, with a health check
    // on its page. httpd runs in the background of a shell that stays, so
    // that killing httpd leaves the container running but not serving.
    ssh.check(&format!(
        "sudo mkdir -p /var/lib/maculaos/web && echo {PAGE} | sudo tee /var/lib/maculaos/web/index.html >/dev/null"
    ))?;
    let t = Instant::now();
    let deployed = ssh.check_timeout(
        &format!(
            "maculaos deploy {image} --name web --port 8080:80 --volume /www \
             --health-url http://127.0.0.1:8080/ --health-interval 2s \
             -- sh -c 'httpd -p 80 -h /www; exec sleep 2147483647' 2>&1"
        ),
        DEPLOY_TIMEOUT,
    )?;
    ensure(deployed.contains("web runs"), || {
        format!("`deploy {image}` did not say the service runs:\n{deployed}")
    })?;
    ctx.record("deploy from a registry (pull)", t.elapsed().as_secs_f64());
    wait_page(ctx, port, "the host's curl gets the pulled service's page")?;
    wait_health(ctx, &ssh, "healthy", "the agent finds the service healthy")?;

    // httpd dies, the container does not: only the health check sees it,
    // and the agent restarts the service.
    ssh.check("sudo podman exec maculaos-web killall httpd")?;
    wait_page(
        ctx,
        port,
        "the page answers again: the agent restarted the unhealthy service",
    )?;
    let log = ssh.check("journalctl -b -u maculaos-agent --no-pager -o cat")?;
    ensure(
        log.lines().any(|l| {
            l.contains("check service:web failed") && l.contains("restarting maculaos-svc-web")
        }),
        || format!("the agent's log does not say it restarted web:\n{log}"),
    )?;
    wait_health(ctx, &ssh, "healthy", "web healthy again after the restart")?;

    // A reboot: the pulled image is in the store on the data partition
    // (`pull: missing` does not ask the registry again), the data directory
    // keeps its page.
    let ssh = ctx.reboot(&ssh, "reboot with a pulled service")?;
    wait_page(
        ctx,
        port,
        "the pulled service's page answers after a reboot",
    )?;
    wait_health(ctx, &ssh, "healthy", "web healthy after the reboot")?;

    // Stopped on purpose: its check is skipped, not acted on.
    ssh.check("maculaos stop web")?;
    wait_health(
        ctx,
        &ssh,
        "not checked",
        "the stopped service's check skipped",
    )?;
    // Watched for five of its intervals: the agent leaves it stopped.
    let restarts = |ssh: &Ssh| -> Result<usize> {
        Ok(ssh
            .check("journalctl -b -u maculaos-agent --no-pager -o cat")?
            .lines()
            .filter(|l| l.contains("restarting maculaos-svc-web"))
            .count())
    };
    let before = restarts(&ssh)?;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(10) {
        let state = ssh.run("systemctl is-active maculaos-svc-web")?.stdout;
        ensure(state.trim() != "active" && page(port).is_err(), || {
            format!(
                "a service stopped with `maculaos stop` runs again ({})",
                state.trim()
            )
        })?;
        std::thread::sleep(Duration::from_secs(1));
    }
    ensure(restarts(&ssh)? == before, || {
        "the agent restarted a service stopped with `maculaos stop`".into()
    })?;

    // docker.io is out of reach: its mirror (the test registry, which has
    // maculaos/web:1) serves the reference.
    let mirrored = ssh.check_timeout(
        "maculaos deploy docker.io/maculaos/web:1 --name mirrored 2>&1",
        DEPLOY_TIMEOUT,
    )?;
    ensure(mirrored.contains("mirrored runs"), || {
        format!("`deploy docker.io/maculaos/web:1` through the mirror:\n{mirrored}")
    })?;
    drop(registry);
    Ok(())
}

/// Wait until `services --json` gives web's health as `want`.
fn wait_health(ctx: &mut Ctx, ssh: &Ssh, want: &str, what: &str) -> Result<()> {
    let mut last = String::new();
    let r = crate::harness::wait_until(ctx.vm()?, what, Duration::from_secs(90), || {
        last = field_of(ssh, "web", "health")?;
        Ok(last == want)
    });
    r.with_context(|| format!("web's health is {last:?}, not {want:?}"))
}
