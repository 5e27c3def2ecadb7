//! `maculaos.gitops`: git over SSH on its own port. A second sshd (unit
//! `maculaos-git.service`) lets only the user `git` in, by key, and forces
//! every session through `maculaos git-serve ROOT`, which reads the command
//! git's client asked for (`SSH_ORIGINAL_COMMAND`) and allows only fetch,
//! push and archive of a repository under ROOT: no shell, no forwarding,
//! no path outside ROOT.

use maculaos_config::schema::Gitops;

/// The second sshd's configuration file, and the keys it accepts.
pub const SSHD_CONFIG: &str = "/etc/maculaos/git/sshd_config";
pub const AUTHORIZED_KEYS: &str = "/etc/maculaos/git/authorized_keys";
/// The account git's clients log in as (`ssh://git@NODE:23231/…`), made in
/// the image with /bin/sh as its shell and no password.
pub const USER: &str = "git";
/// Its home, and the repositories' default directory.
pub const HOME: &str = "/var/lib/git";

/// What a client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// clone, fetch, pull.
    UploadPack,
    /// push.
    ReceivePack,
    /// `git archive --remote`.
    UploadArchive,
}

impl Op {
    /// The program that serves it (in git's package).
    pub fn program(self) -> &'static str {
        match self {
            Op::UploadPack => "git-upload-pack",
            Op::ReceivePack => "git-receive-pack",
            Op::UploadArchive => "git-upload-archive",
        }
    }
}

/// One session's request: what, and on which repository (`team/app`,
/// kept under ROOT as `team/app.git`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub repo: String,
}

impl Request {
    /// The repository's directory under `root`.
    pub fn dir(&self, root: &str) -> String {
        format!("{}/{}.git", root.trim_end_matches('/'), self.repo)
    }
}

/// The request in `command`, as git's client sends it over SSH
/// (`git-upload-pack '/myrepo.git'`); anything else is refused with a
/// message for the person at the other end.
pub fn parse(command: Option<&str>) -> Result<Request, String> {
    const HELP: &str = "this is a git server: clone, fetch and push with \
                        git clone ssh://git@HOST:PORT/REPO.git";
    let command = command.map(str::trim).unwrap_or("");
    let (program, arg) = command.split_once(' ').ok_or(HELP)?;
    let op = match program {
        "git-upload-pack" => Op::UploadPack,
        "git-receive-pack" => Op::ReceivePack,
        "git-upload-archive" => Op::UploadArchive,
        _ => return Err(HELP.to_string()),
    };
    // git quotes the path in single quotes; a path with a quote of its own
    // (which git writes as '\'') is not a repository name this allows.
    let path = arg
        .trim()
        .strip_prefix('\'')
        .and_then(|p| p.strip_suffix('\''))
        .unwrap_or(arg.trim());
    let name = path.trim_start_matches("~/").trim_start_matches('/');
    let name = name.trim_end_matches('/');
    let name = name.strip_suffix(".git").unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && !part.ends_with(".git")
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if !ok {
        return Err(format!(
            "`{path}` is not a repository name here: letters, digits and '-_.', \
             folders with '/', such as /team/app.git"
        ));
    }
    Ok(Request {
        op,
        repo: name.to_string(),
    })
}

/// The second sshd's configuration for `g` (`HEADER` is added by apply).
pub(crate) fn sshd_config(g: &Gitops, serve: &str) -> String {
    format!(
        "Port {port}\n\
         # The node's own host keys: the same fingerprint as on port 22.\n\
         HostKey /var/lib/maculaos/ssh/ssh_host_ed25519_key\n\
         HostKey /var/lib/maculaos/ssh/ssh_host_ecdsa_key\n\
         PidFile none\n\
         AllowUsers {USER}\n\
         AuthenticationMethods publickey\n\
         AuthorizedKeysFile {AUTHORIZED_KEYS}\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin no\n\
         # No login session (logind, a user manager) per fetch.\n\
         UsePAM no\n\
         DisableForwarding yes\n\
         PermitTTY no\n\
         PermitUserRC no\n\
         PermitUserEnvironment no\n\
         PrintMotd no\n\
         ForceCommand {serve} {root}\n",
        port = g.port,
        root = g.data_path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_as_git_sends_them() {
        let r = parse(Some("git-upload-pack '/myrepo.git'")).unwrap();
        assert_eq!(r.op, Op::UploadPack);
        assert_eq!(r.repo, "myrepo");
        assert_eq!(r.dir("/var/lib/git"), "/var/lib/git/myrepo.git");
        for (cmd, repo) in [
            ("git-receive-pack '~/team/app.git'", "team/app"),
            ("git-upload-pack 'myrepo'", "myrepo"),
            ("git-upload-archive '/a/b/'", "a/b"),
            ("git-upload-pack /v1.2-x_y.git", "v1.2-x_y"),
        ] {
            assert_eq!(parse(Some(cmd)).unwrap().repo, repo, "{cmd}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for cmd in [
            None,
            Some(""),
            Some("sh"),
            Some("bash -c id"),
            Some("git-upload-pack '/../etc.git'"),
            Some("git-upload-pack '/a/../../b.git'"),
            Some("git-upload-pack '/.ssh'"),
            Some("git-upload-pack '/'"),
            Some("git-upload-pack 'a'\\''b'"),
            Some("git-upload-pack '/a b.git'"),
            Some("git-upload-pack '/a;id.git'"),
            Some("git-receive-pack '/a.git/b'"),
            Some("git-upload-pack '/a//b'"),
            Some("git upload-pack '/a.git'"),
        ] {
            assert!(parse(cmd).is_err(), "{cmd:?}");
        }
        assert!(parse(Some("sh")).unwrap_err().contains("git clone ssh://"));
    }
}
