//! The user guide's commands as a new operator types them: every node
//! command of the guide's code blocks (seeds/001, "System Management" to
//! "Troubleshooting"), run as written by the admin user over SSH. Each one
//! either does its job or fails only for a reason it states; the scenario
//! checks the exit status and the words of each, and reports every
//! mismatch at once.
//!
//! Commands of features not built yet (the embedded services) are listed in the README's feature table, not here: this list
//! grows with them.

use crate::harness::{ensure, Ctx, CMD_TIMEOUT};
use anyhow::Result;
use maculaos_vm::Ssh;

/// What a command must do.
enum Want {
    /// Exit 0, with these words in its output.
    Ok(&'static str),
    /// Exit non-zero, with these words (the reason) in its output.
    Fails(&'static str),
}

/// The guide's commands in its order, with what each must do on a
/// configured node that is in no mesh, has an empty standby slot and no
/// reachable update server (the saved node).
const GUIDE: &[(&str, Want)] = &[
    // System Management: the `maculaos` CLI.
    ("maculaos info", Want::Ok("Version")),
    ("maculaos mesh status", Want::Ok("no realm")),
    ("maculaos logs", Want::Ok("systemd")),
    ("maculaos health", Want::Ok("✓")),
    // Through sudo by itself (the guide writes no sudo); no update server
    // answers from inside the test network.
    ("maculaos upgrade", Want::Fails("upgrade.url")),
    ("maculaos rollback", Want::Fails("slot B")),
    // Updates.
    ("maculaos upgrade --check", Want::Fails("upgrade.url")),
    ("maculaos upgrade --download", Want::Fails("upgrade.url")),
    ("maculaos upgrade --apply", Want::Fails("upgrade.url")),
    // Service Deployment: no registry answers here, the archive is not
    // there, and no service is deployed (services-deploy does that).
    (
        "maculaos deploy ghcr.io/mycompany/myservice:latest",
        Want::Fails("cannot pull ghcr.io/mycompany/myservice:latest"),
    ),
    (
        "maculaos deploy /path/to/myservice.tar.gz",
        Want::Fails("/path/to/myservice.tar.gz: no such file"),
    ),
    ("maculaos services", Want::Ok("no services")),
    (
        "maculaos stop myservice",
        Want::Fails("no service myservice"),
    ),
    // Data Backup (a stick is mounted on /mnt first).
    (
        "maculaos backup /mnt/usb/backup.tar.gz",
        Want::Ok("/mnt/usb/backup.tar.gz"),
    ),
    (
        "maculaos restore /mnt/usb/backup.tar.gz",
        Want::Ok("restored"),
    ),
    // Recovery Mode: repair belongs to recovery mode and says so.
    ("maculaos repair", Want::Fails("recovery mode")),
    (
        "echo 'echo in-the-shell' | maculaos shell",
        Want::Ok("in-the-shell"),
    ),
    // Factory Reset: no terminal to ask, so nothing is done, and it says
    // how to do it anyway.
    ("maculaos factory", Want::Fails("--yes")),
    (
        "maculaos factory --keep-network",
        Want::Fails("except the network settings"),
    ),
    ("maculaos factory --full", Want::Fails("--yes")),
    // Troubleshooting.
    ("journalctl -b", Want::Ok("systemd")),
    // The test network has no DNS and no way out: the checks say so.
    (
        "maculaos network status",
        Want::Fails("Internet: api.github.com"),
    ),
    (
        "maculaos mesh ping bootstrap.macula.io",
        Want::Fails("mesh"),
    ),
    ("maculaos logs network", Want::Ok("systemd-networkd")),
    (
        "maculaos service status myservice",
        Want::Fails("no service myservice"),
    ),
    ("maculaos logs myservice", Want::Ok("No entries")),
    (
        "maculaos restart myservice",
        Want::Fails("no service myservice"),
    ),
    // Security: Firewall.
    ("maculaos firewall show", Want::Ok("22/tcp")),
    (
        "maculaos firewall allow 8080/tcp",
        Want::Ok("allowed 8080/tcp from anyone"),
    ),
];

/// Whether `out` is what `want` asks for.
fn matches(want: &Want, ok: bool, text: &str) -> bool {
    match want {
        Want::Ok(words) => ok && text.contains(words),
        Want::Fails(words) => !ok && text.contains(words),
    }
}

/// Run every command of [`GUIDE`] on `ssh`; the mismatches, each with what
/// the command printed.
fn run_guide(ssh: &Ssh) -> Result<Vec<String>> {
    let mut wrong = Vec::new();
    for (cmd, want) in GUIDE {
        let out = ssh.run_timeout(cmd, CMD_TIMEOUT)?;
        let text = format!("{}{}", out.stdout, out.stderr);
        if !matches(want, out.success(), &text) {
            let wanted = match want {
                Want::Ok(w) => format!("success with {w:?}"),
                Want::Fails(w) => format!("a failure naming {w:?}"),
            };
            wrong.push(format!(
                "`{cmd}`: wanted {wanted}, got exit {}:\n{}",
                out.status,
                tail(&text, 12)
            ));
        }
    }
    Ok(wrong)
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn guide_commands(ctx: &mut Ctx) -> Result<()> {
    let ssh = ctx.restore(0)?;
    // The guide's backup goes to a USB stick on /mnt/usb; a tmpfs stands
    // in for it (the root is read-only, /mnt is empty).
    ssh.check("sudo mount -t tmpfs -o size=256m stick /mnt && sudo mkdir /mnt/usb")?;
    let wrong = run_guide(&ssh)?;
    ensure(wrong.is_empty(), || {
        format!(
            "{} of the guide's {} commands did not do what they should:\n{}",
            wrong.len(),
            GUIDE.len(),
            wrong.join("\n\n")
        )
    })?;
    // A factory reset asked for with --yes but no reboot is waiting, and
    // withdrawn again: the node is left as it was.
    let asked = ssh.check("maculaos factory --keep-network --yes --no-reboot")?;
    ensure(asked.contains("next boot"), || {
        format!("`factory --yes --no-reboot` did not say when:\n{asked}")
    })?;
    let cancel = ssh.check("maculaos factory --cancel")?;
    ensure(cancel.contains("withdrawn"), || {
        format!("`factory --cancel` did not withdraw the reset:\n{cancel}")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_must_exit_as_wanted_and_say_the_words() {
        assert!(matches(&Want::Ok("x"), true, "a x b"));
        assert!(!matches(&Want::Ok("x"), false, "a x b"));
        assert!(!matches(&Want::Ok("x"), true, "a b"));
        assert!(matches(&Want::Fails("why"), false, "because why"));
        assert!(!matches(&Want::Fails("why"), true, "because why"));
    }
}
