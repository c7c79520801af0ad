//! Source URIs as people see them: secrets taken out, and a default name for each source.
//!
//! A camera URL often carries credentials (`rtsp://admin:s3cret@cam/stream`) or a token in
//! its query (`?token=…`). The URI is used as given only to open the stream; everywhere it is
//! shown (logs at any level, error lines, the page, `/status.json`, metrics, events) it goes
//! through [`redact`] first, and a source's default name never comes from those parts.

use std::borrow::Cow;

/// Query keys whose values are secrets (compared case-insensitively; `-` and `_` ignored).
const SECRET_KEYS: &[&str] = &[
    "token",
    "accesstoken",
    "authtoken",
    "auth",
    "authorization",
    "key",
    "apikey",
    "secret",
    "clientsecret",
    "password",
    "passwd",
    "pass",
    "pwd",
    "sig",
    "signature",
    "credential",
    "credentials",
    "session",
    "sessionid",
    "jwt",
    "code",
];

fn secret_key(k: &str) -> bool {
    let k: String = k
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_KEYS.contains(&k.as_str()) || k.ends_with("token") || k.ends_with("secret")
}

/// `uri` with the password of its user info and the values of token-like query keys replaced
/// by `***`. Anything that is not a URL (a file path, `camera:0`) comes back unchanged.
pub(crate) fn redact(uri: &str) -> Cow<'_, str> {
    let Some(scheme_end) = uri.find("://") else {
        return Cow::Borrowed(uri);
    };
    let rest_at = scheme_end + 3;
    let rest = &uri[rest_at..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let mut out = String::with_capacity(uri.len());
    out.push_str(&uri[..rest_at]);
    // The last '@' ends the user info: a password may itself contain '@'.
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[auth_end..];
    let (before_frag, frag) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    match before_frag.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if secret_key(k) => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
        }
        None => out.push_str(before_frag),
    }
    out.push_str(frag);
    if out == uri {
        Cow::Borrowed(uri)
    } else {
        Cow::Owned(out)
    }
}

/// A source's name when the config gives none: a file's stem; for a URL the stem of its last
/// path segment, else its host (never its user info, port or query); `fallback` otherwise.
pub(crate) fn default_name(uri: &str, fallback: &str) -> String {
    let stem = |s: &str| {
        std::path::Path::new(s)
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
    };
    let name = match uri.split_once("://") {
        None => stem(uri),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => stem(rest),
        Some((_, rest)) => {
            let end = rest.find(['?', '#']).unwrap_or(rest.len());
            let rest = &rest[..end];
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or("");
            let host = match host.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => host.split(':').next().unwrap_or(""),
            };
            path.rsplit('/')
                .find(|s| !s.is_empty())
                .and_then(stem)
                .or_else(|| (!host.is_empty()).then(|| host.to_string()))
        }
    };
    name.unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_redacted() {
        for (uri, want) in [
            (
                "rtsp://admin:s3cret@127.0.0.1:8554/cam",
                "rtsp://admin:***@127.0.0.1:8554/cam",
            ),
            ("rtsp://admin:p@ss@cam/x", "rtsp://admin:***@cam/x"),
            ("rtsp://admin@cam/x", "rtsp://admin@cam/x"),
            (
                "http://cam/x.mjpg?token=abc&res=hd",
                "http://cam/x.mjpg?token=***&res=hd",
            ),
            (
                "https://u:pw@h/p?a=1&API_KEY=k&X-Auth-Token=t#f",
                "https://u:***@h/p?a=1&API_KEY=***&X-Auth-Token=***#f",
            ),
            ("clips/a.mp4", "clips/a.mp4"),
            ("camera:0", "camera:0"),
        ] {
            assert_eq!(redact(uri), want, "{uri}");
        }
        assert!(matches!(redact("rtsp://cam/x"), Cow::Borrowed(_)));
    }

    #[test]
    fn default_names_never_carry_secrets() {
        for (uri, want) in [
            ("rtsp://admin:s3cret@127.0.0.1", "127.0.0.1"),
            ("rtsp://admin:s3cret@127.0.0.1:8554/", "127.0.0.1"),
            ("rtsp://admin:s3cret@cam.local:554/live/ch1.sdp?token=x", "ch1"),
            ("rtsp://[::1]:8554", "::1"),
            ("clips/carphone.mp4", "carphone"),
            ("file:///data/v.mp4", "v"),
            ("camera:0", "camera:0"),
        ] {
            let n = default_name(uri, "source0");
            assert_eq!(n, want, "{uri}");
            assert!(!n.contains("s3cret") && !n.contains("admin"), "{n}");
        }
    }
}
