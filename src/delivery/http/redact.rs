//! What of an HTTP destination's settings may be shown (status, errors, refusal
//! reasons): the url with its secrets replaced, a header's name without its value.

use super::super::kafka::REDACTED;

/// A path segment at least this long with a digit in it is taken for a secret.
const SECRET_SEGMENT: usize = 16;

/// The pieces of `url` as written: `(scheme://, userinfo, host and port, path, query,
/// fragment)`, each without its separator.
fn url_parts(url: &str) -> (&str, Option<&str>, &str, &str, Option<&str>, Option<&str>) {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    (scheme, userinfo, host, path, query, fragment)
}

/// Whether a path segment looks like a key or token: at least `SECRET_SEGMENT`
/// characters with a digit among them (a UUID, a hex or base64 token, an account
/// number), not a word like `records`.
fn secret_segment(segment: &str) -> bool {
    segment.chars().count() >= SECRET_SEGMENT && segment.bytes().any(|b| b.is_ascii_digit())
}

/// The secrets of `url`: its userinfo, every query value, its fragment and the path
/// segments that look like keys.
fn secrets(url: &str) -> Vec<&str> {
    let (_, userinfo, _, path, query, fragment) = url_parts(url);
    let values = query.into_iter().flat_map(|query| {
        query
            .split('&')
            .map(|pair| pair.split_once('=').map_or(pair, |(_, value)| value))
    });
    let segments = path.split('/').filter(|s| secret_segment(s));
    userinfo
        .into_iter()
        .chain(values)
        .chain(fragment)
        .chain(segments)
        .filter(|secret| !secret.is_empty())
        .collect()
}

/// `text` (an error, a body) with `url` and its secrets replaced. A query value
/// shorter than 4 characters is only replaced within the url (elsewhere it would
/// garble the text, and cannot be much of a secret).
pub(super) fn redact(text: &str, url: &str) -> String {
    let mut text = text.replace(url, &redact_url(url));
    let (_, userinfo, ..) = url_parts(url);
    let mut secrets = secrets(url);
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    for secret in secrets {
        if secret.len() >= 4 || Some(secret) == userinfo {
            text = text.replace(secret, REDACTED);
        }
    }
    text
}

/// `url` as it may be shown (status, errors): scheme, host, port and the path's shape
/// kept; userinfo, every query value, the fragment and path segments that look like
/// keys replaced.
pub fn redact_url(url: &str) -> String {
    let (scheme, userinfo, host, path, query, fragment) = url_parts(url);
    let mut shown = scheme.to_string();
    if userinfo.is_some() {
        shown.push_str(REDACTED);
        shown.push('@');
    }
    shown.push_str(host);
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| if secret_segment(s) { REDACTED } else { s })
        .collect();
    shown.push_str(&segments.join("/"));
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}={REDACTED}"),
                None if pair.is_empty() => String::new(),
                None => REDACTED.to_string(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    if fragment.is_some() {
        shown.push('#');
        shown.push_str(REDACTED);
    }
    shown
}

/// The name of a `header = Name: value` line as it may be shown: what it starts with
/// that can be a header name, never the value (or a value written without the colon).
pub fn header_shown(text: &str) -> &str {
    let text = text.trim_start();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    &text[..text.find(|c: char| !token(c)).unwrap_or(text.len())]
}
