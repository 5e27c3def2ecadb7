//! The interactive installer's questions, over any `BufRead` + `Write`
//! (the terminal in `maculaos install`, scripted input in tests): the disk,
//! then what the node's configuration needs on day one, then a
//! confirmation that takes typing the disk's path.

use crate::disks::{human_size, Disk};
use crate::error::InstallError;
use crate::node_config::{check_text, set, stored_yaml};
use crate::plan::{Plan, Refusal};
use maculaos_config::load::{check, Provenance};
use maculaos_config::values::{Hostname, SshKey};
use maculaos_config::Config;
use serde_yaml_ng::{Mapping, Value};
use std::io::{BufRead, Write};

/// The k3s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum K3sAnswer {
    /// No `k3s:` section (where a k3s binary is installed, it then runs as a
    /// server: the schema's default).
    None,
    Server,
    Agent {
        server_url: String,
        token: String,
    },
}

/// What the questions establish for the node's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    pub hostname: Option<Hostname>,
    pub ssh_key: Option<SshKey>,
    pub bootstrap: bool,
    pub gateway: bool,
    pub realm: Option<String>,
    pub k3s: K3sAnswer,
}

impl Answers {
    /// The answers as a config.yaml map, with only the keys answered (the
    /// rest stays at the image defaults).
    pub fn to_value(&self) -> Value {
        let mut m = Mapping::new();
        let s = |v: &str| Value::String(v.to_string());
        if let Some(h) = &self.hostname {
            set(&mut m, &["maculaos", "hostname"], s(h.as_str()));
        }
        if self.bootstrap {
            set(
                &mut m,
                &["maculaos", "mesh", "roles", "bootstrap"],
                Value::Bool(true),
            );
        }
        if self.gateway {
            set(
                &mut m,
                &["maculaos", "mesh", "roles", "gateway"],
                Value::Bool(true),
            );
        }
        if let Some(r) = &self.realm {
            set(&mut m, &["maculaos", "mesh", "realm"], s(r));
        }
        if let Some(k) = &self.ssh_key {
            set(
                &mut m,
                &["ssh_authorized_keys"],
                Value::Sequence(vec![s(k.as_str())]),
            );
        }
        match &self.k3s {
            K3sAnswer::None => {}
            K3sAnswer::Server => set(&mut m, &["k3s", "role"], s("server")),
            K3sAnswer::Agent { server_url, token } => {
                set(&mut m, &["k3s", "role"], s("agent"));
                set(&mut m, &["k3s", "server_url"], s(server_url));
                set(&mut m, &["k3s", "token"], s(token));
            }
        }
        Value::Mapping(m)
    }

    /// The config.yaml to store, checked by the config crate's parser.
    pub fn to_yaml(&self) -> Result<String, InstallError> {
        let yaml = stored_yaml(
            &self.to_value(),
            "from the answers to the interactive installer",
        )?;
        check_text("the configuration from your answers", &yaml)?;
        Ok(yaml)
    }
}

/// Asks questions on `out` and reads the answers from `input`, one line each.
pub struct Prompter<R, W> {
    input: R,
    out: W,
}

fn out_err(e: std::io::Error) -> InstallError {
    InstallError::Io {
        what: "writing to the terminal".into(),
        source: e,
    }
}

impl<R: BufRead, W: Write> Prompter<R, W> {
    pub fn new(input: R, out: W) -> Self {
        Prompter { input, out }
    }

    /// Print a line.
    pub fn say(&mut self, text: &str) -> Result<(), InstallError> {
        writeln!(self.out, "{text}").map_err(out_err)
    }

    /// Ask `question` and read one line (trimmed). The end of the input
    /// cancels the installation.
    pub fn ask(&mut self, question: &str) -> Result<String, InstallError> {
        write!(self.out, "{question} ")
            .and_then(|_| self.out.flush())
            .map_err(out_err)?;
        let mut line = String::new();
        let n = self
            .input
            .read_line(&mut line)
            .map_err(|e| InstallError::Io {
                what: "reading the answer".into(),
                source: e,
            })?;
        if n == 0 {
            return Err(InstallError::InputEnded);
        }
        Ok(line.trim().to_string())
    }

    /// A y/n question; an empty answer is `default`.
    pub fn yes_no(&mut self, question: &str, default: bool) -> Result<bool, InstallError> {
        let hint = if default { "[Y/n]" } else { "[y/N]" };
        loop {
            let a = self.ask(&format!("{question} {hint}"))?;
            match a.to_ascii_lowercase().as_str() {
                "" => return Ok(default),
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => self.say("Answer y or n.")?,
            }
        }
    }

    /// Choose the disk from a numbered list of the candidates (path, model,
    /// size, what is on it now). `usable` says why a disk cannot be taken;
    /// such a disk is marked in the list and refused when chosen.
    pub fn pick_disk(
        &mut self,
        disks: &[Disk],
        usable: &dyn Fn(&Disk) -> Result<(), Refusal>,
    ) -> Result<Disk, InstallError> {
        let candidates: Vec<&Disk> = disks.iter().filter(|d| d.is_candidate()).collect();
        if candidates.is_empty() {
            return Err(InstallError::NoDisks);
        }
        self.say("Disks of this machine:")?;
        let checks: Vec<Result<(), Refusal>> = candidates.iter().map(|d| usable(d)).collect();
        for (i, (d, ok)) in candidates.iter().zip(&checks).enumerate() {
            let mut line = format!(
                "  {}) {}  {}  {}  — {}",
                i + 1,
                d.path,
                d.model_text(),
                human_size(d.size),
                d.describe()
            );
            if ok.is_err() {
                line.push_str("  [cannot install here]");
            }
            self.say(&line)?;
        }
        let usable_ones: Vec<usize> = checks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ok())
            .map(|(i, _)| i)
            .collect();
        if usable_ones.is_empty() {
            let reasons: Vec<String> = checks
                .iter()
                .filter_map(|c| c.as_ref().err().map(|r| format!("  {r}")))
                .collect();
            return Err(InstallError::NoUsableDisk {
                reasons: reasons.join("\n"),
            });
        }
        let default = match usable_ones.as_slice() {
            [only] => Some(*only),
            _ => None,
        };
        let n = candidates.len();
        loop {
            let q = match default {
                Some(i) => format!("Install on which disk? [1-{n}, empty: {}]", i + 1),
                None => format!("Install on which disk? [1-{n}]"),
            };
            let a = self.ask(&q)?;
            let pick = if a.is_empty() {
                default
            } else if let Ok(k) = a.parse::<usize>() {
                (1..=n).contains(&k).then(|| k - 1)
            } else {
                candidates.iter().position(|d| d.path == a || d.name == a)
            };
            let Some(i) = pick else {
                self.say(&format!("Type a number from 1 to {n}."))?;
                continue;
            };
            match &checks[i] {
                Ok(()) => return Ok(candidates[i].clone()),
                Err(r) => self.say(&format!("Cannot install there: {r}"))?,
            }
        }
    }

    /// The hostname; empty keeps the default (`macula-XXXX`).
    pub fn hostname(&mut self) -> Result<Option<Hostname>, InstallError> {
        loop {
            let a = self.ask("Hostname (empty: macula-XXXX, from the network card's address):")?;
            if a.is_empty() {
                return Ok(None);
            }
            match Hostname::try_from(a) {
                Ok(h) => return Ok(Some(h)),
                Err(e) => self.say(&e)?,
            }
        }
    }

    /// One SSH public key for the admin user `macula`. Empty only if the
    /// user confirms they want no SSH access.
    pub fn ssh_key(&mut self) -> Result<Option<SshKey>, InstallError> {
        loop {
            let a = self.ask(
                "SSH public key for the admin user macula (one line, as in ~/.ssh/id_ed25519.pub):",
            )?;
            if a.is_empty() {
                if self.yes_no(
                    "Without a key nobody can log in over SSH (only on the console). Go on without one?",
                    false,
                )? {
                    return Ok(None);
                }
                continue;
            }
            match SshKey::try_from(a) {
                Ok(k) => return Ok(Some(k)),
                Err(e) => self.say(&e)?,
            }
        }
    }

    /// Mesh roles (peer always; bootstrap, gateway) and the realm.
    pub fn mesh(&mut self) -> Result<(bool, bool, Option<String>), InstallError> {
        self.say("Every node is a mesh peer.")?;
        let bootstrap = self.yes_no(
            "Also a bootstrap node (an entry point other nodes join through)?",
            false,
        )?;
        let gateway = self.yes_no(
            "Also a gateway (relays traffic for peers behind NAT)?",
            false,
        )?;
        loop {
            let a = self
                .ask("Mesh realm, in reverse domain notation (such as io.macula; empty: none):")?;
            if a.is_empty() {
                return Ok((bootstrap, gateway, None));
            }
            match realm_problem(&a) {
                None => return Ok((bootstrap, gateway, Some(a))),
                Some(p) => self.say(&p)?,
            }
        }
    }

    /// The k3s role; an agent also gets its server's URL and the join token.
    pub fn k3s(&mut self) -> Result<K3sAnswer, InstallError> {
        loop {
            let a = self.ask("k3s role: none, server or agent? [none]")?;
            match a.to_ascii_lowercase().as_str() {
                "" | "none" => return Ok(K3sAnswer::None),
                "server" => return Ok(K3sAnswer::Server),
                "agent" => break,
                _ => self.say("Answer none, server or agent.")?,
            }
        }
        let server_url = loop {
            let a = self.ask("k3s server to join (https://HOST:6443):")?;
            let host = a.strip_prefix("https://").unwrap_or("");
            if !host.is_empty() && !host.contains(char::is_whitespace) {
                break a;
            }
            self.say(
                "Give the server's URL, starting with https://, such as https://10.0.0.5:6443.",
            )?;
        };
        let token = loop {
            let a = self
                .ask("k3s join token (on the server: /var/lib/rancher/k3s/server/node-token):")?;
            if !a.is_empty() && !a.contains(char::is_whitespace) {
                break a;
            }
            self.say("The token is one word; an agent cannot join without it.")?;
        };
        Ok(K3sAnswer::Agent { server_url, token })
    }

    /// All configuration questions, in order.
    pub fn answers(&mut self) -> Result<Answers, InstallError> {
        let hostname = self.hostname()?;
        let ssh_key = self.ssh_key()?;
        let (bootstrap, gateway, realm) = self.mesh()?;
        let k3s = self.k3s()?;
        Ok(Answers {
            hostname,
            ssh_key,
            bootstrap,
            gateway,
            realm,
            k3s,
        })
    }

    /// The last question: only typing the disk's path goes on.
    pub fn confirm_erase(&mut self, plan: &Plan) -> Result<bool, InstallError> {
        let dev = plan.device();
        let a = self.ask(&format!(
            "Type {dev} to erase it and install (anything else cancels):"
        ))?;
        Ok(a == dev)
    }
}

/// Why `realm` is not a realm, by the config crate's own check.
fn realm_problem(realm: &str) -> Option<String> {
    let mut c = Config::default();
    c.maculaos.mesh.realm = Some(realm.to_string());
    check(&c, &Provenance::new())
        .into_iter()
        .find(|p| p.message.starts_with("maculaos.mesh.realm"))
        .map(|p| {
            p.message
                .trim_start_matches("maculaos.mesh.realm: ")
                .to_string()
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::disks::tests::sample;
    use maculaos_boot::layout::MIB;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@host";

    fn prompter(input: &str) -> Prompter<&[u8], Vec<u8>> {
        Prompter::new(input.as_bytes(), Vec::new())
    }

    fn shown(p: &Prompter<&[u8], Vec<u8>>) -> String {
        String::from_utf8_lossy(&p.out).into_owned()
    }

    fn usable(d: &Disk) -> Result<(), Refusal> {
        Plan::new(d, Some("/dev/sr0"), true, 200 * MIB).map(|_| ())
    }

    #[test]
    fn picks_a_disk_by_number_or_path() {
        let disks = sample();
        // vda is mounted, nvme0n1 has active LVM: 2 (vdb) and 4 (sda) are usable.
        let mut p = prompter("1\n9\nx\n2\n");
        let d = p.pick_disk(&disks, &usable).unwrap();
        assert_eq!(d.path, "/dev/vdb");
        let out = shown(&p);
        assert!(
            out.contains("  1) /dev/vda  -  20 GiB  — GPT, 5 partitions"),
            "{out}"
        );
        assert!(out.contains("[cannot install here]"), "{out}");
        assert!(out.contains("  2) /dev/vdb  -  8 GiB  — blank\n"), "{out}");
        assert!(
            out.contains("Cannot install there: /dev/vda is in use (mounted: /var)"),
            "{out}"
        );
        assert!(out.contains("Type a number from 1 to 4."), "{out}");
        assert!(!out.contains("sr0"), "{out}");
        let mut p = prompter("/dev/sda\n");
        assert_eq!(p.pick_disk(&disks, &usable).unwrap().name, "sda");
    }

    #[test]
    fn one_usable_disk_is_the_default() {
        let disks: Vec<Disk> = sample().into_iter().filter(|d| d.name != "sda").collect();
        let mut p = prompter("\n");
        assert_eq!(p.pick_disk(&disks, &usable).unwrap().name, "vdb");
        assert!(shown(&p).contains("[1-3, empty: 2]"));
    }

    #[test]
    fn no_usable_disk_says_why_without_asking() {
        let disks: Vec<Disk> = sample()
            .into_iter()
            .filter(|d| d.name == "vda" || d.name == "nvme0n1")
            .collect();
        let mut p = prompter("");
        let e = p.pick_disk(&disks, &usable).unwrap_err().to_string();
        assert_eq!(
            e,
            "no disk here can take MaculaOS:\n  \
             /dev/vda is in use (mounted: /var): even --force does not erase a disk in use; unmount it or install onto another disk\n  \
             /dev/nvme0n1 is in use (holds active volumes: vg0-root (lvm)): even --force does not erase a disk in use; unmount it or install onto another disk"
        );
        assert!(!shown(&p).contains("Install on which disk?"));
    }

    #[test]
    fn no_disks() {
        let disks: Vec<Disk> = sample().into_iter().filter(|d| d.name == "sr0").collect();
        assert!(matches!(
            prompter("").pick_disk(&disks, &usable),
            Err(InstallError::NoDisks)
        ));
    }

    #[test]
    fn all_questions_for_an_agent() {
        let input = format!(
            "bad_host!\nedge-7\nnot a key\n{KEY}\ny\n\nmacula\nio.macula\nagent\nhttp://x\nhttps://10.0.0.5:6443\n\nK10abc::server:xyz\n"
        );
        let mut p = prompter(&input);
        let a = p.answers().unwrap();
        assert_eq!(a.hostname.as_ref().unwrap().as_str(), "edge-7");
        assert_eq!(a.ssh_key.as_ref().unwrap().as_str(), KEY);
        assert!(a.bootstrap && !a.gateway);
        assert_eq!(a.realm.as_deref(), Some("io.macula"));
        assert_eq!(
            a.k3s,
            K3sAnswer::Agent {
                server_url: "https://10.0.0.5:6443".into(),
                token: "K10abc::server:xyz".into()
            }
        );
        let out = shown(&p);
        assert!(out.contains("is not an SSH public key"), "{out}");
        assert!(
            out.contains("not a realm in reverse domain notation"),
            "{out}"
        );
        assert!(out.contains("starting with https://"), "{out}");
        let yaml = a.to_yaml().unwrap();
        let c = check_text("x", &yaml).unwrap();
        assert_eq!(c.maculaos.hostname.as_ref().unwrap().as_str(), "edge-7");
        assert_eq!(c.ssh_keys(), [KEY]);
        assert!(c.maculaos.mesh.roles.bootstrap && !c.maculaos.mesh.roles.gateway);
        assert_eq!(c.maculaos.mesh.realm.as_deref(), Some("io.macula"));
        assert_eq!(c.k3s.role, Some(maculaos_config::K3sRole::Agent));
        assert_eq!(c.k3s.server_url.as_deref(), Some("https://10.0.0.5:6443"));
        assert_eq!(c.k3s.token.as_deref(), Some("K10abc::server:xyz"));
        assert!(
            yaml.contains(
                "maculaos:\n  hostname: edge-7\n  mesh:\n    roles:\n      bootstrap: true\n"
            ),
            "{yaml}"
        );
    }

    #[test]
    fn defaults_and_no_ssh_key_only_when_confirmed() {
        // Empty key, "no" to going without: asked again; then empty + yes.
        let mut p = prompter("\n\nn\n\ny\n\n\n\nserver\n");
        let a = p.answers().unwrap();
        assert_eq!(
            a,
            Answers {
                hostname: None,
                ssh_key: None,
                bootstrap: false,
                gateway: false,
                realm: None,
                k3s: K3sAnswer::Server,
            }
        );
        assert_eq!(shown(&p).matches("SSH public key").count(), 2);
        let yaml = a.to_yaml().unwrap();
        assert!(yaml.ends_with("k3s:\n  role: server\n"), "{yaml}");
        let none = Answers {
            k3s: K3sAnswer::None,
            ..a
        };
        assert_eq!(
            check_text("x", &none.to_yaml().unwrap()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn the_input_ending_cancels() {
        let mut p = prompter("edge-1\n");
        assert!(matches!(p.answers(), Err(InstallError::InputEnded)));
    }

    #[test]
    fn the_confirmation_takes_the_disk_path() {
        let disks = sample();
        let vdb = disks.iter().find(|d| d.name == "vdb").unwrap();
        let plan = Plan::new(vdb, None, true, 200 * MIB).unwrap();
        let mut p = prompter("/dev/vdb\n");
        assert!(p.confirm_erase(&plan).unwrap());
        assert!(shown(&p).contains("Type /dev/vdb to erase it and install"));
        assert!(!prompter("yes\n").confirm_erase(&plan).unwrap());
        assert!(!prompter("\n").confirm_erase(&plan).unwrap());
        assert!(prompter("").confirm_erase(&plan).is_err());
    }
}
