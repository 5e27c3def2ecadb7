//! Shell-style pattern matching as `fnmatch(3)` does it with no flags, which
//! is how kmod compares modules.alias patterns with device modaliases.

/// Whether `text` matches `pattern`: `*` any run of characters, `?` one
/// character, `[abc]`, `[a-z]`, `[!a-z]` / `[^a-z]` a character class
/// (`]` first in a class is literal), `\x` the literal `x`. A `[` without
/// its closing `]` is a literal `[`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text
    // index it has swallowed up to). One star is enough to backtrack to:
    // a later star can always absorb what an earlier one would.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if let Some(step) = match_one(&p, pi, t[ti]) {
            match step {
                Step::Star => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                }
                Step::Advance(next) => {
                    pi = next;
                    ti += 1;
                }
            }
            continue;
        }
        match star {
            Some((sp, st)) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

enum Step {
    /// A `*` at the current pattern position.
    Star,
    /// The text character matched; the pattern continues at this index.
    Advance(usize),
}

/// Match the pattern element at `pi` against `c`; `None` on mismatch or at
/// the end of the pattern.
fn match_one(p: &[char], pi: usize, c: char) -> Option<Step> {
    let &pc = p.get(pi)?;
    match pc {
        '*' => Some(Step::Star),
        '?' => Some(Step::Advance(pi + 1)),
        '[' => match match_class(p, pi, c) {
            Some((true, next)) => Some(Step::Advance(next)),
            Some((false, _)) => None,
            None => (c == '[').then_some(Step::Advance(pi + 1)),
        },
        '\\' if pi + 1 < p.len() => (p[pi + 1] == c).then_some(Step::Advance(pi + 2)),
        lit => (lit == c).then_some(Step::Advance(pi + 1)),
    }
}

/// Match the class starting with `[` at `start`. Returns whether `c` is in
/// it and the index after its `]`, or `None` when the class is not closed.
fn match_class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &pc = p.get(i)?;
        if pc == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let (lo, after) = class_char(p, i)?;
        i = after;
        // `a-z` is a range unless the `-` is last (`[a-]` holds `a` and `-`).
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&n| n != ']') {
            let (hi, after) = class_char(p, i + 1)?;
            i = after;
            matched |= lo <= c && c <= hi;
        } else {
            matched |= lo == c;
        }
    }
}

/// One possibly escaped character of a class and the index after it.
fn class_char(p: &[char], i: usize) -> Option<(char, usize)> {
    match p.get(i)? {
        '\\' => p.get(i + 1).map(|&c| (c, i + 2)),
        &c => Some((c, i + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match as m;

    #[test]
    fn literals_and_question_marks() {
        assert!(m("abc", "abc"));
        assert!(!m("abc", "abd"));
        assert!(!m("abc", "ab"));
        assert!(!m("ab", "abc"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("", ""));
        assert!(!m("", "a"));
    }

    #[test]
    fn stars() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("a*", "a"));
        assert!(m("a*c", "abbbc"));
        assert!(!m("a*c", "abbbd"));
        assert!(m("*b*d*", "abcd"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        assert!(m("**a", "a"));
        // Backtracking past a partial match.
        assert!(m("*aab", "aaaab"));
        assert!(m(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!m(
            "pci:v00001AF4d*sv*sd*bc01sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
    }

    #[test]
    fn classes() {
        assert!(m("[abc]", "b"));
        assert!(!m("[abc]", "d"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[a-c]x", "dx"));
        assert!(m("[!a-c]", "d"));
        assert!(!m("[!a-c]", "a"));
        assert!(m("[^0-9]", "z"));
        assert!(!m("[^0-9]", "5"));
        assert!(m("[]]", "]"));
        assert!(m("[!]]", "a"));
        assert!(!m("[!]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("[0-9A-F][0-9A-F]", "7E"));
        assert!(!m("[0-9A-F][0-9A-F]", "7G"));
        // Unterminated: a literal `[`.
        assert!(m("a[b", "a[b"));
        assert!(!m("a[b", "ab"));
        // The kind of class real aliases use.
        assert!(m(
            "usb:v*p*d*dc*dsc*dp*ic08isc0[1-6]ip50in*",
            "usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(m("acpi*:PNP0[Aa]0[0-9]:*", "acpi:PNP0A03:"));
        assert!(m("*[xy]", "aaay"));
    }

    #[test]
    fn escapes() {
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(m(r"[\]]", "]"));
        assert!(m("a\\", "a\\"));
    }
}
