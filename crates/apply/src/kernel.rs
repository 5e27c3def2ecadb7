//! Kernel modules and parameters: a file in /etc that systemd applies at
//! every boot, and, on the running node, the same settings right away.

use crate::applier::{io_msg, run, Applier, HEADER, ROOT_OWNER};
use maculaos_config::Config;
use maculaos_runner::Cmd;
use std::fs;
use std::io::ErrorKind;

const MODULES_FILE: &str = "/etc/modules-load.d/maculaos.conf";
const SYSCTL_FILE: &str = "/etc/sysctl.d/90-maculaos.conf";

pub(crate) fn modules(config: &Config, a: &mut Applier) -> Result<(), String> {
    const AREA: &str = "modules";
    let names: Vec<&str> = config.maculaos.modules.iter().map(|m| m.as_str()).collect();
    let written = if names.is_empty() {
        a.remove_file(AREA, MODULES_FILE)
    } else {
        let text = format!("{HEADER}{}\n", names.join("\n"));
        a.put_file(AREA, MODULES_FILE, text.as_bytes(), 0o644, ROOT_OWNER)
    };
    // The file failing should not keep the modules from loading now.
    if let Err(e) = written {
        a.error(AREA, e);
    }
    if !a.live() {
        return Ok(());
    }
    for name in names {
        // /sys/module names use '_' where modprobe accepts '-' too.
        if a.path("/sys/module").join(name.replace('-', "_")).exists() {
            continue;
        }
        a.act(AREA, ("load", "loaded"), name, || {
            run(Cmd::new("modprobe")
                .arg(name)
                .hint("the image lacks modprobe (Debian package kmod)"))
            .map_err(|e| format!("{name}: modprobe failed: {e}"))
        });
    }
    Ok(())
}

pub(crate) fn sysctl(config: &Config, a: &mut Applier) -> Result<(), String> {
    const AREA: &str = "sysctl";
    let params = &config.maculaos.sysctl;
    let written = if params.is_empty() {
        a.remove_file(AREA, SYSCTL_FILE)
    } else {
        let mut text = HEADER.to_string();
        for (k, v) in params {
            text.push_str(&format!("{k} = {v}\n"));
        }
        a.put_file(AREA, SYSCTL_FILE, text.as_bytes(), 0o644, ROOT_OWNER)
    };
    if let Err(e) = written {
        a.error(AREA, e);
    }
    if !a.live() {
        return Ok(());
    }
    for (key, value) in params {
        set_param(a, key.as_str(), value.as_str());
    }
    Ok(())
}

/// Write one parameter to /proc/sys if it differs.
pub(crate) fn set_param(a: &mut Applier, key: &str, value: &str) {
    const AREA: &str = "sysctl";
    let path = a.path("/proc/sys").join(proc_path(key));
    let current = match fs::read_to_string(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            a.error(AREA, no_such_param(key));
            return;
        }
        Err(e) => {
            a.error(AREA, format!("{key}: {}", io_msg("reading", &path, &e)));
            return;
        }
    };
    if same_value(&current, value) {
        return;
    }
    a.act(AREA, ("set", "set"), &format!("{key} = {value}"), || {
        fs::write(&path, value).map_err(|e| format!("{key}: the kernel refused `{value}`: {e}"))
    });
}

fn no_such_param(key: &str) -> String {
    format!("{key}: no such kernel parameter (`sysctl -a` lists them; a module may have to be loaded first)")
}

/// The file under /proc/sys of a sysctl name, as sysctl.d(5) reads it: if
/// the first separator is '.', dots and slashes swap (`net.ipv4.conf.eth0/100.rp_filter`
/// is `net/ipv4/conf/eth0.100/rp_filter`); if it is '/', the name is the path.
pub(crate) fn proc_path(key: &str) -> String {
    match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'.' => key
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => key.to_string(),
    }
}

/// The kernel prints multi-value parameters with tabs (`32768\t60999`).
fn same_value(current: &str, wanted: &str) -> bool {
    current.split_whitespace().eq(wanted.split_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};

    #[test]
    fn sysctl_names_to_paths() {
        assert_eq!(proc_path("net.ipv4.ip_forward"), "net/ipv4/ip_forward");
        assert_eq!(
            proc_path("net.ipv4.conf.eth0/100.rp_filter"),
            "net/ipv4/conf/eth0.100/rp_filter"
        );
        assert_eq!(
            proc_path("net/ipv4/conf/eth0.100/rp_filter"),
            "net/ipv4/conf/eth0.100/rp_filter"
        );
        assert!(same_value("32768\t60999\n", "32768 60999"));
        assert!(!same_value("0\n", "1"));
        assert_eq!(
            no_such_param("net.x.y"),
            "net.x.y: no such kernel parameter (`sysctl -a` lists them; a module may have to be loaded first)"
        );
    }

    #[test]
    fn files_for_modules_and_sysctl() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let cfg = yaml(
            "maculaos: {modules: [br_netfilter, nf-conntrack], sysctl: {net.ipv4.ip_forward: 1, vm.swappiness: '10'}}",
        );
        let r = apply_twice(&cfg, &o);
        assert!(r
            .changes
            .contains(&"modules: wrote /etc/modules-load.d/maculaos.conf".to_string()));
        let m = fs::read_to_string(d.path().join("etc/modules-load.d/maculaos.conf")).unwrap();
        assert!(m.ends_with("\nbr_netfilter\nnf-conntrack\n"), "{m}");
        let s = fs::read_to_string(d.path().join("etc/sysctl.d/90-maculaos.conf")).unwrap();
        assert!(
            s.ends_with("\nnet.ipv4.ip_forward = 1\nvm.swappiness = 10\n"),
            "{s}"
        );
        apply_twice(&yaml(""), &o);
        assert!(!d.path().join("etc/modules-load.d/maculaos.conf").exists());
        assert!(!d.path().join("etc/sysctl.d/90-maculaos.conf").exists());
    }

    #[test]
    fn live_sysctl_writes_proc_and_names_unknown_parameters() {
        let d = tempfile::tempdir().unwrap();
        let proc = d.path().join("proc/sys");
        fs::create_dir_all(proc.join("kernel")).unwrap();
        fs::create_dir_all(proc.join("net/ipv4")).unwrap();
        fs::write(proc.join("net/ipv4/ip_forward"), "0\n").unwrap();
        // Already loaded: no modprobe (which would load a module on this machine).
        fs::create_dir_all(d.path().join("sys/module/br_netfilter")).unwrap();
        let mut o = opts(d.path());
        o.live = true;
        let ok = yaml(
            "maculaos: {hostname: n1, modules: [br-netfilter], sysctl: {net.ipv4.ip_forward: 1}}",
        );
        let r = apply_twice(&ok, &o);
        assert!(
            r.changes
                .contains(&"sysctl: set net.ipv4.ip_forward = 1".to_string()),
            "{r:?}"
        );
        assert_eq!(
            fs::read_to_string(proc.join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );

        let bad = yaml("maculaos: {hostname: n1, sysctl: {net.x.y: 1}}");
        let r = crate::apply(&bad, &o);
        assert_eq!(
            r.errors,
            vec![format!("sysctl: {}", no_such_param("net.x.y"))]
        );

        o.dry_run = true;
        fs::write(proc.join("net/ipv4/ip_forward"), "0\n").unwrap();
        let r = crate::apply(&ok, &o);
        assert!(
            r.changes
                .contains(&"would set net.ipv4.ip_forward = 1 (sysctl)".to_string()),
            "{r:?}"
        );
        assert_eq!(
            fs::read_to_string(proc.join("net/ipv4/ip_forward")).unwrap(),
            "0\n"
        );
    }
}
