//! `maculaos.edge.mqtt`: Debian's mosquitto, run from a configuration file
//! MaculaOS writes (its own listeners, users, persistence on /var), with the
//! users' passwords kept as mosquitto_passwd keeps them: `NAME:$7$ROUNDS$SALT$HASH`,
//! PBKDF2-HMAC-SHA512 with a random salt, both base64.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use maculaos_config::schema::Mqtt;
use sha2::Sha512;

/// mosquitto_passwd's rounds and salt length (mosquitto 2.0).
const ROUNDS: u32 = 101;
const SALT_LEN: usize = 12;

/// mosquitto's configuration for `m`; `passwd` is the password file's path.
pub(crate) fn conf(m: &Mqtt, passwd: &str) -> String {
    let mut out = String::from(
        "# The broker's messages go to the journal (`maculaos logs mosquitto`).\n\
         log_dest stderr\nlog_timestamp false\n\
         # Retained messages and durable sessions survive restarts and updates.\n\
         persistence true\npersistence_location /var/lib/mosquitto/\n\
         # Every listener shares the users below.\n\
         per_listener_settings false\n",
    );
    out.push_str(&format!("allow_anonymous {}\n", m.allow_anonymous));
    if !m.users.is_empty() {
        out.push_str(&format!("password_file {passwd}\n"));
    }
    out.push_str(&format!("listener {}\nprotocol mqtt\n", m.port));
    if let Some(ws) = m.websocket_port {
        out.push_str(&format!("listener {ws}\nprotocol websockets\n"));
    }
    out
}

/// The password file for `users` (name, password): a user whose line in
/// `existing` already matches its password keeps it (so that an unchanged
/// configuration writes the same file, and the broker is not restarted);
/// any other gets a new salt from `salt`.
pub fn passwords(
    users: &[(String, String)],
    existing: &str,
    mut salt: impl FnMut() -> [u8; SALT_LEN],
) -> String {
    let mut out = String::new();
    for (name, password) in users {
        let kept = existing.lines().find_map(|l| {
            let (n, hash) = l.split_once(':')?;
            (n == name && verify(hash, password)).then_some(hash)
        });
        let hash = match kept {
            Some(h) => h.to_string(),
            None => hash(password, &salt()),
        };
        out.push_str(&format!("{name}:{hash}\n"));
    }
    out
}

/// `$7$ROUNDS$SALT$HASH` for `password` with `salt`.
pub fn hash(password: &str, salt: &[u8]) -> String {
    format!(
        "$7${ROUNDS}${}${}",
        B64.encode(salt),
        B64.encode(derive(password, salt, ROUNDS))
    )
}

/// Whether `stored` (`$7$ROUNDS$SALT$HASH`) is `password`'s hash.
pub fn verify(stored: &str, password: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(""), Some("7"), Some(rounds), Some(salt), Some(want), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(rounds), Ok(salt), Ok(want)) =
        (rounds.parse::<u32>(), B64.decode(salt), B64.decode(want))
    else {
        return false;
    };
    // A file edited by hand with absurd rounds is not worth the CPU: make
    // a new hash instead.
    if rounds == 0 || rounds > 100_000 {
        return false;
    }
    derive(password, &salt, rounds).as_slice() == want.as_slice()
}

fn derive(password: &str, salt: &[u8], rounds: u32) -> [u8; 64] {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, rounds, &mut out);
    out
}

/// A new salt from the kernel's random number generator.
pub fn random_salt() -> [u8; SALT_LEN] {
    let mut s = [0u8; SALT_LEN];
    // getrandom(2) fails only on kernels older than 3.17; a fixed salt
    // would still hash, just without the salt's protection.
    let _ = getrandom::fill(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_as_mosquitto_passwd_does() {
        // Made by Debian 12's mosquitto_passwd (2.0.11): `mosquitto_passwd -c -b f sensor s3cret`.
        let made = "$7$101$yP9CWzewPg5oUqx8$4wDVA62T2tY4XsZhcIsVATp3OhXaOO7GMYQTvOu3MIBIXR0Nk2ugGZPuLn0YBN63BL9scnzJWvvzfmpAMU9vJA==";
        assert!(verify(made, "s3cret"));
        assert!(!verify(made, "s3cret "));
        let h = hash("pw", &[7; 12]);
        assert!(h.starts_with("$7$101$BwcHBwcHBwcHBwcH$"), "{h}");
        assert!(verify(&h, "pw") && !verify(&h, "pW"));
        assert!(!verify("$6$abc$def", "pw") && !verify("plain", "pw"));
    }

    #[test]
    fn unchanged_passwords_keep_their_lines() {
        let users = vec![
            ("a".to_string(), "one".to_string()),
            ("b".to_string(), "two".to_string()),
        ];
        let mut n = 0u8;
        let mut salt = || {
            n += 1;
            [n; 12]
        };
        let first = passwords(&users, "", &mut salt);
        assert_eq!(first.lines().count(), 2);
        assert_eq!(passwords(&users, &first, &mut salt), first);
        // b's password changed: only b's line is new.
        let users2 = vec![users[0].clone(), ("b".to_string(), "2".to_string())];
        let second = passwords(&users2, &first, &mut salt);
        assert_eq!(second.lines().next(), first.lines().next());
        assert_ne!(second.lines().nth(1), first.lines().nth(1));
        assert!(verify(
            second.lines().nth(1).unwrap().split_once(':').unwrap().1,
            "2"
        ));
    }
}
