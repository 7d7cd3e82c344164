//! Event-type patterns: `*` matches any run of characters (dots included), `?`
//! one character, anything else itself. `"*"` is every event, `"step.*"` every
//! step event, `"*.failed"` every failure, `"tool.called"` exactly that type.
//!
//! Hand-written rather than `globset`: the common shapes (all, exact, prefix,
//! suffix) are one comparison each, which keeps publish to many subscribers cheap.

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    All,
    Exact,
    /// `prefix*`
    Prefix(String),
    /// `*suffix`
    Suffix(String),
    /// Anything else: the general matcher over the pattern text.
    General,
}

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        let text = text.trim().to_string();
        let wild = |s: &str| s.contains(['*', '?']);
        let shape = if text.chars().all(|c| c == '*') && !text.is_empty() {
            Shape::All
        } else if !wild(&text) {
            Shape::Exact
        } else if let Some(p) = text.strip_suffix('*').filter(|p| !wild(p)) {
            Shape::Prefix(p.to_string())
        } else if let Some(s) = text.strip_prefix('*').filter(|s| !wild(s)) {
            Shape::Suffix(s.to_string())
        } else {
            Shape::General
        };
        Pattern { text, shape }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    #[inline]
    pub fn matches(&self, kind: &str) -> bool {
        match &self.shape {
            Shape::All => true,
            Shape::Exact => self.text == kind,
            Shape::Prefix(p) => kind.starts_with(p.as_str()),
            Shape::Suffix(s) => kind.ends_with(s.as_str()),
            Shape::General => wildcard(self.text.as_bytes(), kind.as_bytes()),
        }
    }
}

/// Iterative wildcard match with single-star backtracking: linear in practice,
/// never exponential.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "tool.called", true),
            ("**", "x", true),
            ("step.*", "step.started", true),
            ("step.*", "step.", true),
            ("step.*", "steps.started", false),
            ("step.*", "workflow.started", false),
            ("tool.*", "tool.failed", true),
            ("tool.called", "tool.called", true),
            ("tool.called", "tool.calledx", false),
            ("*.failed", "step.failed", true),
            ("*.failed", "tool.succeeded", false),
            ("workflow.*ed", "workflow.started", true),
            ("workflow.*ed", "workflow.error", false),
            ("*.*", "tool.called", true),
            ("*.*", "nodot", false),
            ("t??l.*", "tool.called", true),
            ("t?l.*", "tool.called", false),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxbxxcx", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(Pattern::new(p).matches(k), *want, "pattern {p:?} on {k:?}");
        }
    }

    #[test]
    fn general_matcher_agrees_with_a_reference() {
        fn reference(p: &[u8], t: &[u8]) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some(b'*'), _) => reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..])),
                (Some(b'?'), Some(_)) => reference(&p[1..], &t[1..]),
                (Some(a), Some(b)) if a == b => reference(&p[1..], &t[1..]),
                _ => false,
            }
        }
        let pats = ["*", "a*", "*a", "a*b", "*a*", "?*?", "a?*b", "**a**", "ab", "a.*.c", "*.*"];
        let texts = ["", "a", "b", "ab", "ba", "aab", "abab", "a.b.c", "a..c", "abc", "aXb", "."];
        for p in pats {
            for t in texts {
                assert_eq!(Pattern::new(p).matches(t), reference(p.as_bytes(), t.as_bytes()), "{p:?} on {t:?}");
            }
        }
    }
}
