//! The pairing code: a short secret shown only on the node's own console
//! (and in its QR code), which proves that whoever fills in the wizard can
//! see the node's screen.

use std::fmt;
use std::str::FromStr;

/// The symbols of a code: digits and capitals without those read as one
/// another (0/O, 1/I/L) and without U (U/V). 30 symbols, so 10 of them carry
/// 10·log2(30) ≈ 49 bits.
pub const ALPHABET: &[u8; 30] = b"23456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Symbols in a code.
pub const LEN: usize = 10;

/// A pairing code, generated once per boot.
///
/// It is shown as two groups of five, `XXXXX-XXXXX` ([`fmt::Display`]):
/// short enough to read aloud, and the same size twice so a missed symbol
/// is easy to spot. What the operator types is compared with
/// [`PairingCode::matches`], which ignores case, spaces and dashes.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode([u8; LEN]);

impl PairingCode {
    /// A new code from the kernel's random number generator (getrandom(2),
    /// which waits until the RNG is seeded: early at boot that matters).
    pub fn generate() -> anyhow::Result<PairingCode> {
        Self::generate_with(|buf| {
            getrandom::fill(buf).map_err(|e| anyhow::anyhow!("getrandom: {e}"))
        })
    }

    /// A code from `fill`, a source of random bytes. Every symbol is equally
    /// likely: a byte is used only below 240 (the largest multiple of 30 that
    /// fits a byte) and others are drawn again, because `byte % 30` over all
    /// 256 values would favour the first 16 symbols.
    fn generate_with(
        mut fill: impl FnMut(&mut [u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<PairingCode> {
        const LIMIT: u8 = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
        let mut out = [0u8; LEN];
        let mut n = 0;
        let mut buf = [0u8; 32];
        while n < LEN {
            fill(&mut buf)?;
            for &b in &buf {
                if b < LIMIT && n < LEN {
                    out[n] = ALPHABET[usize::from(b) % ALPHABET.len()];
                    n += 1;
                }
            }
        }
        Ok(PairingCode(out))
    }

    /// Whether `input` is this code: case does not matter, and spaces and
    /// dashes are ignored (people copy the grouping or add their own). The
    /// normalised bytes are compared in constant time, so how long an answer
    /// takes says nothing about how many symbols were right.
    pub fn matches(&self, input: &str) -> bool {
        let typed: Vec<u8> = input
            .bytes()
            .filter(|b| *b != b'-' && !b.is_ascii_whitespace())
            .map(|b| b.to_ascii_uppercase())
            .collect();
        // The length of a code is no secret: leaving early here reveals nothing.
        if typed.len() != LEN {
            return false;
        }
        let diff = typed
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // black_box: keeps the optimiser from turning the fold into an
        // early-exit comparison.
        std::hint::black_box(diff) == 0
    }

    /// The wizard's address with this code, for the QR code:
    /// `http://{host}/?code={code}` (the form's code field is filled from it).
    pub fn url(&self, host: &str) -> String {
        format!("http://{host}/?code={self}")
    }
}

impl fmt::Display for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only symbols of ALPHABET are ever stored, so this is ASCII.
        let s = String::from_utf8_lossy(&self.0);
        write!(f, "{}-{}", &s[..LEN / 2], &s[LEN / 2..])
    }
}

/// Not the code itself: a `{:?}` in a log must not print the secret.
impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(…)")
    }
}

/// Why a text is not a pairing code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCode(String);

impl fmt::Display for BadCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadCode {}

/// Reads a code back (a stored code, a test's): any case, with or without
/// spaces and dashes, but exactly 10 symbols of [`ALPHABET`].
impl FromStr for PairingCode {
    type Err = BadCode;
    fn from_str(s: &str) -> Result<PairingCode, BadCode> {
        let mut out = [0u8; LEN];
        let mut n = 0;
        for b in s.bytes().filter(|b| *b != b'-' && !b.is_ascii_whitespace()) {
            let b = b.to_ascii_uppercase();
            if !ALPHABET.contains(&b) {
                return Err(BadCode(format!(
                    "`{s}` is not a pairing code: it holds `{}`, which codes never use",
                    char::from(b)
                )));
            }
            if n == LEN {
                return Err(BadCode(format!(
                    "`{s}` is not a pairing code: it has more than {LEN} symbols"
                )));
            }
            out[n] = b;
            n += 1;
        }
        if n != LEN {
            return Err(BadCode(format!(
                "`{s}` is not a pairing code: it has {n} symbols, not {LEN}"
            )));
        }
        Ok(PairingCode(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn alphabet_has_no_look_alikes() {
        assert_eq!(ALPHABET.len(), 30);
        for c in b"01OILU" {
            assert!(!ALPHABET.contains(c), "{}", char::from(*c));
        }
        let unique: HashSet<_> = ALPHABET.iter().collect();
        assert_eq!(unique.len(), 30);
        // At least 49 bits of entropy.
        assert!((LEN as f64) * (ALPHABET.len() as f64).log2() >= 49.0);
    }

    #[test]
    fn generated_codes_are_grouped_from_the_alphabet_and_differ() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let c = PairingCode::generate().unwrap();
            let s = c.to_string();
            assert_eq!(s.len(), 11, "{s}");
            assert_eq!(&s[5..6], "-", "{s}");
            assert!(s
                .bytes()
                .filter(|b| *b != b'-')
                .all(|b| ALPHABET.contains(&b)));
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn bytes_from_240_up_are_drawn_again() {
        // First fill: only bytes ≥ 240 (all refused); second: 0..32.
        let mut calls = 0;
        let c = PairingCode::generate_with(|buf| {
            calls += 1;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = if calls == 1 {
                    240 + (i % 16) as u8
                } else {
                    i as u8
                };
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 2);
        assert_eq!(c.to_string(), "23456-789AB");
        // 30 maps back to the first symbol, not beyond the alphabet.
        let c = PairingCode::generate_with(|buf| {
            buf.fill(30 + 29);
            Ok(())
        })
        .unwrap();
        assert_eq!(c.to_string(), "ZZZZZ-ZZZZZ");
    }

    #[test]
    fn an_rng_failure_is_an_error() {
        let r = PairingCode::generate_with(|_| Err(anyhow::anyhow!("no entropy")));
        assert!(r.is_err());
    }

    #[test]
    fn matches_ignores_case_spaces_and_dashes() {
        let c: PairingCode = "ABCDE-FGHJK".parse().unwrap();
        for ok in [
            "ABCDE-FGHJK",
            "abcde-fghjk",
            "ABCDEFGHJK",
            " ab cd e - fg hjk ",
            "A-B-C-D-E-F-G-H-J-K",
            "abcdefghjk\n",
        ] {
            assert!(c.matches(ok), "{ok:?}");
        }
        for bad in [
            "",
            "ABCDE-FGHJ",
            "ABCDE-FGHJKK",
            "ABCDE-FGHJL",
            "ABCDE_FGHJK",
            "BBCDE-FGHJK",
            "ÄBCDE-FGHJK",
        ] {
            assert!(!c.matches(bad), "{bad:?}");
        }
    }

    #[test]
    fn parse_round_trips_and_refuses_what_is_not_a_code() {
        let c = PairingCode::generate().unwrap();
        let back: PairingCode = c.to_string().parse().unwrap();
        assert_eq!(back, c);
        assert_eq!(
            "23456 789ab".parse::<PairingCode>().unwrap().to_string(),
            "23456-789AB"
        );
        for bad in [
            "ABCDE-FGHJ",
            "ABCDE-FGHJKM",
            "ABCDE-FGHJ0",
            "ABCDE-FGHJI",
            "",
        ] {
            assert!(bad.parse::<PairingCode>().is_err(), "{bad}");
        }
        let e = "ABCDE-FGHJ1".parse::<PairingCode>().unwrap_err();
        assert!(e.to_string().contains("`1`"), "{e}");
    }

    #[test]
    fn debug_does_not_show_the_code() {
        let c: PairingCode = "ABCDE-FGHJK".parse().unwrap();
        assert!(!format!("{c:?}").contains("ABCDE"));
    }

    #[test]
    fn url_carries_the_grouped_code() {
        let c: PairingCode = "ABCDE-FGHJK".parse().unwrap();
        assert_eq!(
            c.url("macula-ab12.local"),
            "http://macula-ab12.local/?code=ABCDE-FGHJK"
        );
    }
}
