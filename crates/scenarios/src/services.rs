//! The service manager (guide "Service Deployment"): an image made in the
//! test from busybox (`podman import`, then `podman save` to an archive),
//! deployed from the archive with a published port and a volume; reached
//! by curl on the host through a forward; listed, stopped, started,
//! restarted; refused cleanly for a corrupt archive, a bad reference, an
//! unreachable registry and a port in use, each leaving the running
//! service alone; running again after a reboot with its volume's data;
//! removed, its data kept.

use crate::harness::{ensure, wait_until, Ctx, CMD_TIMEOUT};
use anyhow::{Context, Result};
use maculaos_runner::Cmd;
use maculaos_vm::Ssh;
use std::time::Duration;

/// The archive the scenario makes in the guest.
const ARCHIVE: &str = "/var/tmp/web.tar";
/// `deploy`, `start`, `restart`, `remove` wait up to 2 minutes for the
/// container themselves, and print its log when it does not run: the test
/// waits longer than they do.
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
/// What the volume serves.
pub const PAGE: &str = "served-from-the-volume";

/// An image of busybox's httpd made from scratch in the guest as `tag`
/// (`podman import` of a root with busybox and its links), in root's store.
pub fn build_image(ssh: &Ssh, tag: &str) -> Result<()> {
    ssh.check_timeout(
        &format!(
            "set -e; d=$(mktemp -d); mkdir -p $d/bin $d/www; cp /bin/busybox $d/bin/; \
             for c in sh httpd sleep killall wget; do ln -s busybox $d/bin/$c; done; \
             sudo tar -C $d -cf /var/tmp/root.tar .; rm -rf $d; \
             sudo podman import --quiet --change 'CMD=[\"/bin/httpd\",\"-f\",\"-p\",\"80\",\"-h\",\"/www\"]' \
               /var/tmp/root.tar {tag} >/dev/null; sudo rm /var/tmp/root.tar"
        ),
        CMD_TIMEOUT,
    )?;
    Ok(())
}

/// The test image saved to [`ARCHIVE`] and removed from the store again
/// (so `deploy` has to load it).
fn make_archive(ssh: &Ssh) -> Result<()> {
    build_image(ssh, "localhost/web:1")?;
    ssh.check_timeout(
        "sudo podman save --quiet -o /var/tmp/web.tar localhost/web:1; \
         sudo podman rmi --force localhost/web:1 >/dev/null",
        CMD_TIMEOUT,
    )?;
    Ok(())
}

/// Deploy the test service on a node (for the update scenarios): the
/// archive made, the page in its volume, `web` on port 8080.
pub fn deploy_web(ssh: &Ssh) -> Result<()> {
    make_archive(ssh)?;
    ssh.check(&format!(
        "sudo mkdir -p /var/lib/maculaos/web && echo {PAGE} | sudo tee /var/lib/maculaos/web/index.html >/dev/null"
    ))?;
    ssh.check_timeout(
        &format!("maculaos deploy {ARCHIVE} --port 8080:80 --volume /var/lib/maculaos/web:/www"),
        DEPLOY_TIMEOUT,
    )?;
    expect_web(ssh, "after deploying it")
}

/// The test service answers on the node with its volume's page (polled
/// in the guest for up to 90 s: after a boot it starts with the boot's apply).
pub fn expect_web(ssh: &Ssh, when: &str) -> Result<()> {
    let out = ssh.run_timeout(
        &format!(
            "for i in $(seq 90); do curl -sf -m 5 http://127.0.0.1:8080/ | grep -qx {PAGE} && exit 0; sleep 1; done; \
             maculaos services; exit 1"
        ),
        CMD_TIMEOUT,
    )?;
    ensure(out.success(), || {
        format!(
            "the deployed service does not answer with its volume's page {when}:\n{}{}",
            out.stdout, out.stderr
        )
    })
}

/// The page at the forwarded port, or why not.
pub fn page(port: u16) -> Result<String> {
    Cmd::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .quiet()
        .output()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Wait until the host's curl gets the page.
pub fn wait_page(ctx: &mut Ctx, port: u16, what: &str) -> Result<()> {
    wait_until(ctx.vm()?, what, Duration::from_secs(90), || {
        Ok(page(port).is_ok_and(|p| p.contains(PAGE)))
    })
}

/// `maculaos services --json`, as JSON.
pub fn services(ssh: &Ssh) -> Result<serde_json::Value> {
    let out = ssh.check("maculaos services --json")?;
    serde_json::from_str(&out).with_context(|| format!("`services --json`: {out}"))
}

/// The `field` `services --json` gives `name` ("absent" when not listed).
pub fn field_of(ssh: &Ssh, name: &str, field: &str) -> Result<String> {
    let all = services(ssh)?;
    Ok(all
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .and_then(|s| s[field].as_str())
        .unwrap_or("absent")
        .to_string())
}

/// The state `services --json` gives `name`.
fn state_of(ssh: &Ssh, name: &str) -> Result<String> {
    field_of(ssh, name, "state")
}

/// A command that must fail, naming `why`.
fn refused(ssh: &Ssh, cmd: &str, why: &str) -> Result<()> {
    let out = ssh.run_timeout(cmd, DEPLOY_TIMEOUT)?;
    let text = format!("{}{}", out.stdout, out.stderr);
    ensure(!out.success() && text.contains(why), || {
        format!(
            "`{cmd}` was not refused naming {why:?} (exit {}):\n{text}",
            out.status
        )
    })
}

pub fn services_deploy(ctx: &mut Ctx) -> Result<()> {
    let ssh = ctx.restore_with(1, |spec| spec.extra_forwards.push(8080))?;
    let port = ctx
        .vm()?
        .forwarded_port(8080)
        .context("no forward for the service's port")?;
    make_archive(&ssh)?;
    let none = ssh.check("maculaos services")?;
    ensure(none.contains("no services"), || {
        format!("`services` before any deploy:\n{none}")
    })?;

    // The volume's page first: the service serves what is on the node.
    ssh.check(&format!(
        "sudo mkdir -p /var/lib/maculaos/web && echo {PAGE} | sudo tee /var/lib/maculaos/web/index.html >/dev/null"
    ))?;
    let t = std::time::Instant::now();
    let deployed = ssh.check_timeout(
        &format!(
            "maculaos deploy {ARCHIVE} --port 8080:80 --volume /var/lib/maculaos/web:/www 2>&1"
        ),
        DEPLOY_TIMEOUT,
    )?;
    ensure(deployed.contains("web runs"), || {
        format!("`deploy {ARCHIVE}` did not say the service runs:\n{deployed}")
    })?;
    ctx.record("deploy from an archive", t.elapsed().as_secs_f64());
    wait_page(ctx, port, "the host's curl gets the service's page")?;
    let listed = ssh.check("maculaos services")?;
    ensure(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("running") && l.contains("8080:80")),
        || format!("`services` does not list web running on 8080:\n{listed}"),
    )?;
    let status = ssh.check("maculaos service status web")?;
    ensure(status.contains("State:     running"), || {
        format!("`service status web`:\n{status}")
    })?;
    let logs = ssh.check("maculaos logs web")?;
    ensure(logs.contains("maculaos-svc-web"), || {
        format!("`logs web` shows nothing of the service:\n{logs}")
    })?;

    // Bad input: each refused with its reason, the running service untouched.
    ssh.check(&format!(
        "head -c 100000 {ARCHIVE} | gzip | sudo tee /var/tmp/broken.tar.gz >/dev/null"
    ))?;
    refused(
        &ssh,
        "maculaos deploy /var/tmp/broken.tar.gz --name broken",
        "is not an image archive podman can load",
    )?;
    refused(
        &ssh,
        "maculaos deploy 'Not A Reference!'",
        "not an OCI image reference",
    )?;
    refused(
        &ssh,
        "maculaos deploy 127.0.0.1:9/nothing/here:1",
        "cannot pull 127.0.0.1:9/nothing/here:1",
    )?;
    refused(
        &ssh,
        &format!("maculaos deploy {ARCHIVE} --name web2 --port 8080:80"),
        "port 8080/tcp is already in use",
    )?;
    ensure(state_of(&ssh, "web2")? == "absent", || {
        "the refused web2 was left in the configuration".into()
    })?;
    ensure(page(port)?.contains(PAGE), || {
        "the running service stopped answering after the refused deploys".into()
    })?;

    // stop / start / restart.
    ssh.check("maculaos stop web")?;
    ensure(page(port).is_err(), || {
        "the page still answers after `maculaos stop web`".into()
    })?;
    ensure(state_of(&ssh, "web")? == "stopped", || {
        "`services` does not say web is stopped".into()
    })?;
    ssh.check_timeout("maculaos start web", DEPLOY_TIMEOUT)?;
    wait_page(ctx, port, "the page answers after `maculaos start web`")?;
    ssh.check_timeout("maculaos restart web", DEPLOY_TIMEOUT)?;
    wait_page(ctx, port, "the page answers after `maculaos restart web`")?;

    // A reboot: the unit is written again by the boot's apply, and the
    // image and the volume are on the data partition.
    let ssh = ctx.reboot(&ssh, "reboot with a deployed service")?;
    wait_page(ctx, port, "the page answers after a reboot")?;
    ensure(state_of(&ssh, "web")? == "running", || {
        "`services` does not say web runs after the reboot".into()
    })?;

    // remove: the service goes, its data stays.
    let removed = ssh.check_timeout("maculaos remove web", DEPLOY_TIMEOUT)?;
    ensure(removed.contains("web is removed"), || {
        format!("`remove web`:\n{removed}")
    })?;
    ensure(state_of(&ssh, "web")? == "absent", || {
        "web is still listed after `remove`".into()
    })?;
    ensure(page(port).is_err(), || {
        "the page still answers after `remove web`".into()
    })?;
    let kept = ssh.check("sudo cat /var/lib/maculaos/web/index.html")?;
    ensure(kept.contains(PAGE), || {
        "the volume's data went with `remove`".into()
    })?;
    let units = ssh.check("ls /etc/systemd/system/ | grep -c maculaos-svc- || true")?;
    ensure(units.trim() == "0", || {
        format!("units of removed services are left: {units}")
    })?;

    // Declared in the configuration instead: apply runs it (the image is
    // still in the store); deploy and remove leave another file's service
    // alone, and say where it is.
    ssh.check(
        "printf 'services:\n  other:\n    image: localhost/web:1\n    pull: never\n    ports: [\"8080:80\"]\n    volumes: [/var/lib/maculaos/web:/www]\n' \
         | sudo tee /var/lib/maculaos/config.d/50-other.yaml >/dev/null && sudo maculaos apply >/dev/null",
    )?;
    wait_page(
        ctx,
        port,
        "the page answers from a service declared in config.d",
    )?;
    refused(
        &ssh,
        &format!("maculaos deploy {ARCHIVE} --name other"),
        "services.other is declared in /var/lib/maculaos/config.d/50-other.yaml",
    )?;
    refused(
        &ssh,
        "maculaos remove other",
        "services.other is declared in /var/lib/maculaos/config.d/50-other.yaml",
    )?;
    ensure(state_of(&ssh, "other")? == "running", || {
        "a refused deploy or remove touched the declared service".into()
    })?;
    Ok(())
}
