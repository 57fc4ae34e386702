//! `$(VAR)` references in a container's `env` values, `command`, `args` and
//! `volumeMounts[].subPathExpr`, expanded as the kubelet does
//! (k8s.io/kubernetes third_party/forked/golang/expansion):
//!
//! - `$(NAME)` becomes NAME's value when `lookup` knows NAME;
//! - `$$` is an escaped `$`, so `$$(NAME)` is the literal text `$(NAME)`;
//! - anything else, an unknown name, a `$(` without its `)`, a `$` before another
//!   character or at the very end, is kept as written.

/// `input` with every `$(NAME)` that `lookup` resolves replaced by its value. An unknown
/// name is kept as `$(NAME)` (the caller can tell with [`references`]).
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if after.is_empty() {
            // A trailing `$` is kept as it is.
            out.push('$');
            rest = after;
            break;
        }
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(close) => {
                    let name = &body[..close];
                    match lookup(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[close + 1..];
                }
                None => {
                    // Incomplete: `$(` is kept and scanning goes on after it.
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            // `$` before any other character: both kept, scanning goes on after them.
            let c = after.chars().next().expect("checked non-empty above");
            out.push('$');
            out.push(c);
            rest = &after[c.len_utf8()..];
        }
    }
    out.push_str(rest);
    out
}

/// The names `input` refers to with `$(NAME)` (escaped `$$(NAME)` excluded), in order.
pub fn references(input: &str) -> Vec<String> {
    let names = std::cell::RefCell::new(Vec::new());
    expand(input, |name| {
        names.borrow_mut().push(name.to_string());
        None
    });
    names.into_inner()
}

/// The `NAME=value` list of a container's environment as a lookup for [`expand`]: the last
/// entry of a name wins, as in the environment itself.
pub fn env_lookup<'e>(env: &'e [String]) -> impl Fn(&str) -> Option<&'e str> + 'e {
    move |name: &str| {
        env.iter().rev().find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then_some(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<&'static str> {
        match name {
            "VAR_A" => Some("A"),
            "VAR_B" => Some("B"),
            "VAR_C" => Some("C"),
            "VAR_REF" => Some("$(VAR_A)"),
            "VAR_EMPTY" => Some(""),
            _ => None,
        }
    }

    /// The kubelet's cases (expand_test.go), input → output.
    #[test]
    fn expands_as_the_kubelet_does() {
        for (input, want) in [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_A)-$(VAR_A)", "A-A"),
            ("f000-$$VAR_A", "f000-$VAR_A"),
            ("foo\\$(VAR_C)bar", "foo\\Cbar"),
            ("foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
            ("foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
            ("$(VAR_A)$(VAR_B)", "AB"),
            ("$(VAR_A)-$(VAR_B)", "A-B"),
            ("$(VAR_A)$(VAR_B)$(VAR_C)", "ABC"),
            ("$(VAR_A)-$(VAR_B)-$(VAR_C)", "A-B-C"),
            ("$(VAR_REF)", "$(VAR_A)"),
            ("foo$(VAR_EMPTY)bar", "foobar"),
            ("$$(VAR_B)", "$(VAR_B)"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$(VAR_DNE)", "$(VAR_DNE)"),
            ("foo$(VAR_DNE)bar", "foo$(VAR_DNE)bar"),
            ("$(VAR_A", "$(VAR_A"),
            ("$(", "$("),
            ("$()", "$()"),
            ("$", "$"),
            ("foo$", "foo$"),
            ("$VAR_A", "$VAR_A"),
            ("$$", "$"),
            ("$$$", "$$"),
            ("$($(VAR_A))", "$($(VAR_A))"),
            ("($(VAR_A))", "(A)"),
            ("", ""),
            ("no references", "no references"),
        ] {
            assert_eq!(expand(input, vars), want, "input {input:?}");
        }
    }

    /// Go scans bytes and would turn a `$` before a multi-byte character into mojibake;
    /// here the character is kept whole.
    #[test]
    fn a_dollar_before_a_multibyte_character_keeps_it_whole() {
        assert_eq!(expand("$é$(VAR_A)", vars), "$éA");
    }

    #[test]
    fn references_lists_names_but_not_escaped_ones() {
        assert_eq!(
            references("$(A)-$$(B)-$(C"),
            vec!["A".to_string()],
            "escaped and incomplete references are not references"
        );
        assert_eq!(references("$(A)$(B)"), vec!["A", "B"]);
    }

    #[test]
    fn the_last_entry_of_a_name_wins() {
        let env = vec!["A=1".to_string(), "B=x=y".into(), "A=2".into()];
        let l = env_lookup(&env);
        assert_eq!(l("A"), Some("2"));
        assert_eq!(l("B"), Some("x=y"));
        assert_eq!(l("C"), None);
    }
}
