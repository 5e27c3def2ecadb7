//! Which of two MaculaOS versions is newer.

use std::cmp::Ordering;

/// Order two MaculaOS versions (`0.1.0` < `0.2.0-rc.1` < `0.2.0` < `1.10.0`).
///
/// Why semver: every version we make is `MAJOR.MINOR.PATCH[-PRE][+BUILD]`
/// (the workspace version, which `--version` defaults to), so when both parse
/// we use the `semver` crate's precedence, build metadata ignored, as semver
/// says. Note semver compares alphanumeric pre-release parts as text
/// (`-rc10` < `-rc2`); write `-rc.1` … `-rc.10` to get numeric order.
///
/// A version that is not semver (`--version 0.3`, `2024.05.1`, `dev`) falls
/// back, for both sides, to a numeric dotted comparison (see
/// [`compare_dotted`]), so the order is total and never panics.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let strip = |s: &str| s.trim().trim_start_matches('v').to_string();
    let (a, b) = (strip(a), strip(b));
    match (semver::Version::parse(&a), semver::Version::parse(&b)) {
        (Ok(x), Ok(y)) => x.cmp_precedence(&y),
        _ => compare_dotted(&a, &b),
    }
}

/// Numeric dotted order: `CORE[-PRE][+BUILD]`, the build part ignored; core
/// parts compared as numbers when both are numbers (missing parts count as 0,
/// so `0.3` == `0.3.0`), else as text; a version with a pre-release part is
/// older than the same version without one; pre-release parts compare like
/// the core, part by part.
pub fn compare_dotted(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (&str, Option<&str>) {
        let v = v.split('+').next().unwrap_or_default();
        match v.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (v, None),
        }
    }
    fn parts(a: &str, b: &str, pad: bool) -> Ordering {
        let mut xa = a.split('.');
        let mut xb = b.split('.');
        loop {
            let (pa, pb) = match (xa.next(), xb.next()) {
                (None, None) => return Ordering::Equal,
                (Some(p), None) if pad => (p, "0"),
                (None, Some(p)) if pad => ("0", p),
                (Some(_), None) => return Ordering::Greater,
                (None, Some(_)) => return Ordering::Less,
                (Some(p), Some(q)) => (p, q),
            };
            let o = match (pa.parse::<u64>(), pb.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                // A number is older than text, as in semver.
                (Ok(_), Err(_)) => Ordering::Less,
                (Err(_), Ok(_)) => Ordering::Greater,
                (Err(_), Err(_)) => pa.cmp(pb),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
    }
    let (ca, pa) = split(a);
    let (cb, pb) = split(b);
    parts(ca, cb, true).then_with(|| match (pa, pb) {
        (None, None) => Ordering::Equal,
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(x), Some(y)) => parts(x, y, false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn semver_order() {
        let sorted = [
            "0.1.0",
            "0.2.0-rc.1",
            "0.2.0-rc.2",
            "0.2.0-rc.10",
            "0.2.0",
            "0.10.0",
            "1.9.0",
            "1.10.0",
        ];
        for (i, a) in sorted.iter().enumerate() {
            for (j, b) in sorted.iter().enumerate() {
                assert_eq!(compare_versions(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(compare_versions("0.2.0-rc1", "0.2.0"), Less);
        assert_eq!(compare_versions("1.0.0+abc", "1.0.0+def"), Equal);
        assert_eq!(compare_versions("v1.2.3", "1.2.3"), Equal);
    }

    #[test]
    fn dotted_fallback() {
        assert_eq!(compare_versions("0.3", "0.3.0"), Equal);
        assert_eq!(compare_versions("0.3", "0.2.9"), Greater);
        assert_eq!(compare_versions("2024.05.1", "2024.5.0"), Greater);
        assert_eq!(compare_versions("0.3-rc1", "0.3"), Less);
        assert_eq!(compare_versions("1.10", "1.9"), Greater);
        assert_eq!(compare_versions("dev", "0.1"), Greater);
        assert_eq!(compare_versions("1.0-rc.2", "1.0-rc.10"), Less);
    }
}
