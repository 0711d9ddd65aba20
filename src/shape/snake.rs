//! The `normalize = snake_case` rule for key names: pure string work, no state.
//!
//! The rule, exactly: an underscore is put before an ASCII capital letter that is not the
//! first character when the character before it is an ASCII lower-case letter or digit (`myVar` → `my_var`, `var2X` → `var2_x`), or when it ends a
//! run of capitals and a lower-case letter follows (`HTTPServer` → `http_server`); then
//! every ASCII capital becomes lower case. So a run of capitals is one word (`EntityID` →
//! `entity_id`, `DNID` → `dnid`). Everything else is kept as it is: digits, existing
//! underscores, `-`, `.`, and non-ASCII letters, which neither change case nor count as
//! the letter before a capital (`préNom` → `prénom`: no Unicode tables, so the rule
//! gives the same answer everywhere). A name already in snake_case is unchanged.

use std::borrow::Cow;

/// `name` in snake_case; borrowed when it has no ASCII capital (the common case).
pub fn snake_case(name: &str) -> Cow<'_, str> {
    if !name.bytes().any(|byte| byte.is_ascii_uppercase()) {
        return Cow::Borrowed(name);
    }
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len() + 4);
    // Only ASCII bytes are inspected or changed, so every multi-byte character is copied
    // through whole and `out` stays valid UTF-8.
    for (index, character) in name.char_indices() {
        if character.is_ascii_uppercase() && index > 0 {
            let before = bytes[index - 1];
            let after = bytes.get(index + 1).copied();
            let follows_word = before.is_ascii_lowercase() || before.is_ascii_digit();
            let ends_capital_run =
                before.is_ascii_uppercase() && after.is_some_and(|b| b.is_ascii_lowercase());
            if follows_word || ends_capital_run {
                out.push('_');
            }
        }
        out.push(character.to_ascii_lowercase());
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn contract_names_become_snake_case() {
        for (name, expected) in [
            ("EntityID", "entity_id"),
            ("SystemName", "system_name"),
            ("durationsec", "durationsec"),
            ("cid_num", "cid_num"),
            ("peertenantid", "peertenantid"),
        ] {
            assert_eq!(snake_case(name), expected, "{name}");
        }
    }

    #[test]
    fn camel_case_variables_and_capital_runs() {
        for (name, expected) in [
            ("myVar", "my_var"),
            ("MyVar", "my_var"),
            ("HTTPServer", "http_server"),
            ("userID", "user_id"),
            ("DNID", "dnid"),
            ("X", "x"),
            ("var2X", "var2_x"),
            ("Var2Name", "var2_name"),
            ("HTTP2Server", "http2_server"),
            ("ABCdef", "ab_cdef"),
        ] {
            assert_eq!(snake_case(name), expected, "{name}");
        }
    }

    #[test]
    fn underscores_punctuation_and_non_ascii_are_kept() {
        for (name, expected) in [
            ("My_Var", "my_var"),
            ("_Private", "_private"),
            ("a__B", "a__b"),
            ("CDR-Var", "cdr-var"),
            ("x.Y", "x.y"),
            ("ÉtatFinal", "État_final"),
            ("préNom", "prénom"),
            ("", ""),
        ] {
            assert_eq!(snake_case(name), expected, "{name}");
        }
    }

    #[test]
    fn snake_case_is_idempotent() {
        for name in [
            "EntityID",
            "HTTPServer",
            "myVar",
            "var2X",
            "ÉtatFinal",
            "a__B",
        ] {
            let once = snake_case(name).into_owned();
            assert_eq!(snake_case(&once), once, "{name}");
        }
    }
}
