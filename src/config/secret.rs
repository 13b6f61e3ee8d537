//! Secrets: which configuration values are secret, and the one place that removes them
//! from text before it is printed. Values are registered when they are read (the
//! configuration's secret properties, webhook URLs, API tokens); [`redact`] replaces
//! each with `<redacted>`. The log writer and the command-line error printer pass
//! everything through it, so a secret that reaches a message by a path nobody foresaw
//! (a librdkafka error, a debug line) is still not printed.

use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret value is shown as.
pub const REDACTED: &str = "<redacted>";

/// Is a value under this key a secret (never printed)? Any key whose name says
/// password, secret, key, passphrase, token, credentials or JAAS.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "key",
        "passphrase",
        "token",
        "credential",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Secret values seen so far (shorter ones are too common to replace in text).
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Shortest value [`redact`] replaces.
const MIN_LEN: usize = 4;

/// Remembers `value` as a secret for [`redact`].
pub fn register(value: &str) {
    let v = value.trim();
    if v.len() < MIN_LEN {
        return;
    }
    let mut s = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !s.iter().any(|x| x == v) {
        s.push(v.to_owned());
        // Longest first: a secret that contains another is replaced whole.
        s.sort_by_key(|x| std::cmp::Reverse(x.len()));
    }
}

/// `text` with every registered secret value replaced by `<redacted>`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let s = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !s.iter().any(|v| text.contains(v.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for v in s.iter() {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), REDACTED);
        }
    }
    Cow::Owned(out)
}

/// A TOML error without the source line it quotes (the line may hold a secret): line,
/// column and the parser's message, with quoted values removed from the message when
/// the offending line's key is a secret (or the line has no key, as in an unterminated
/// string spanning lines).
pub fn toml_error(source: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else {
        return message;
    };
    let at = span.start.min(source.len());
    let before = &source[..at];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..at].chars().count() + 1;
    let line = source[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("");
    let secret_line = is_secret(key) || !line.contains('=');
    let message = if secret_line {
        without_quoted(&message)
    } else {
        message
    };
    format!("line {line_no}, column {column}: {message}")
}

/// `text` with the contents of every `"..."` and `'...'` replaced by `<redacted>`.
pub(crate) fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => {
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '\'' || c == '`' {
                    quote = Some(c);
                    out.push_str(REDACTED);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_are_recognised_by_name() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.config",
            "sasl.jaas.config",
            "SASL_PASSWORD",
            "api_token",
            "aws.credentials",
        ] {
            assert!(is_secret(k), "{k}");
        }
        for k in [
            "sasl.username",
            "security.protocol",
            "linger.ms",
            "ssl.ca.location",
        ] {
            assert!(!is_secret(k), "{k}");
        }
    }

    #[test]
    fn registered_values_are_replaced_wherever_they_appear() {
        register("sentinel-REDACT-1");
        register("ab");
        assert_eq!(
            redact("error: sentinel-REDACT-1 and sentinel-REDACT-1x"),
            "error: <redacted> and <redacted>x"
        );
        assert_eq!(
            redact("ab is too short to matter"),
            "ab is too short to matter"
        );
    }

    #[test]
    fn toml_errors_keep_the_place_but_not_a_secret_line() {
        for bad in [
            "[kafka.properties]\n\"sasl.password\" = \"hunter2-SENTINEL\n",
            "[kafka.properties]\n\"sasl.password\" = \"hunter2-SENTINEL\"\n\"sasl.password\" = \"hunter2-SENTINEL\"\n",
            "[kafka.properties]\n\"sasl.password\" = hunter2-SENTINEL\n",
        ] {
            let e = toml::from_str::<toml::Table>(bad).unwrap_err();
            let m = toml_error(bad, &e);
            assert!(!m.contains("hunter2"), "{m}");
            assert!(m.starts_with("line "), "{m}");
        }
        let bad = "[engine]\nbucket_days = 7\nx = [1,,\n";
        let e = toml::from_str::<toml::Table>(bad).unwrap_err();
        assert!(
            toml_error(bad, &e).starts_with("line 3"),
            "{}",
            toml_error(bad, &e)
        );
    }
}
