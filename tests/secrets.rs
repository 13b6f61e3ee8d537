//! One sentinel secret through every path that could print it: configuration errors
//! (from the file and from the environment), librdkafka's errors, debug logs and
//! `Debug`. (HTTP, metrics and the logs of a running service: `kafka::secrets`.)

use std::path::PathBuf;
use std::process::Command;

use churnsignal::config::Config;

/// The secret every test here hides somewhere.
pub const SENTINEL: &str = "SENTINEL-hunter2-8d1f";

fn scratch(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("cs-secret-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

/// `churnsignal args...` with `env`: exit success and everything it printed.
fn churnsignal(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_churnsignal"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn configuration_errors_never_print_a_secret() {
    let files = [
        // a misspelt secret key: librdkafka does not know it
        format!("[kafka.properties]\n\"sasl.pasword\" = \"{SENTINEL}\"\n"),
        // TOML syntax errors on a secret's line
        format!("[kafka.properties]\n\"sasl.password\" = \"{SENTINEL}\n"),
        format!("[kafka.properties]\n\"sasl.password\" = \"{SENTINEL}\"\n\"sasl.password\" = \"{SENTINEL}\"\n"),
        format!("[kafka.properties]\n\"sasl.password\" = {SENTINEL}\n"),
        // a value of the wrong type
        format!("[kafka.properties]\n\"sasl.password\" = [\"{SENTINEL}\"]\n"),
        // values librdkafka refuses, under secret names (this build of librdkafka has
        // no OAuth/OIDC: it refuses the passphrase property itself)
        format!("[kafka.properties]\n\"ssl.key.password\" = \"{SENTINEL}\"\n\"sasl.oauthbearer.assertion.private.key.passphrase\" = \"{SENTINEL}\"\n\"sasl.mechanisms\" = \"{SENTINEL}\"\n"),
    ];
    for (i, text) in files.iter().enumerate() {
        let path = scratch(&format!("bad{i}.toml"), text);
        let p = path.to_str().unwrap();
        for cmd in [&["check-config", p][..], &["run", "--config", p][..]] {
            let (ok, out) = churnsignal(cmd, &[]);
            assert!(!ok, "file {i}, {cmd:?}: refused");
            assert!(!out.contains(SENTINEL), "file {i}, {cmd:?}: {out}");
            assert!(out.contains("invalid config"), "file {i}, {cmd:?}: {out}");
        }
        let _ = std::fs::remove_file(&path);
    }
    // From the environment: a misspelt variable, and a secret of the wrong shape.
    for (var, value) in [
        (
            "CHURNSIGNAL__KAFKA__PROPERTIES__SASL_PASWORD",
            SENTINEL.to_owned(),
        ),
        (
            "CHURNSIGNAL__KAFKA__PROPERTIES__SASL_PASSWORD",
            format!("[{SENTINEL}"),
        ),
        ("CHURNSIGNAL__KAFKA__SASL_PASSWORD", SENTINEL.to_owned()),
    ] {
        let (ok, out) = churnsignal(&["check-config"], &[(var, &value)]);
        assert!(!out.contains(SENTINEL), "{var}: {out}");
        let _ = ok;
    }
    // Debug of a configuration holding every kind of secret property.
    let cfg = Config::from_toml(&format!(
        "[kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.password\" = \"{SENTINEL}\"\n\"ssl.keystore.password\" = \"{SENTINEL}\"\n\"ssl.key.pem\" = \"{SENTINEL}\"\n\"ssl.key.password\" = \"{SENTINEL}\"\n"
    ))
    .unwrap();
    assert!(!format!("{cfg:?}").contains(SENTINEL));
    assert!(!format!("{:#?}", cfg.kafka).contains(SENTINEL));
}

#[test]
fn librdkafka_errors_and_debug_logs_never_print_a_secret() {
    // Secrets as a SASL password and key and keystore passwords, at debug level with
    // librdkafka's own configuration dump and its security and broker logs, against a
    // broker that is not there: once with a key librdkafka takes but cannot use (its
    // error ends the run at once), once without (the client runs and logs until the
    // start-up timeout).
    let config = |extra: &str| {
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\nstartup_timeout_secs = 3\n[kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"{SENTINEL}\"\n\"ssl.key.password\" = \"{SENTINEL}\"\n\"ssl.keystore.password\" = \"{SENTINEL}\"\n\"debug\" = \"conf,security,broker\"\n{extra}[http]\nlisten = \"\"\n[log]\nlevel = \"debug\"\n"
        )
    };
    for (name, text, expect) in [
        (
            "key",
            config(&format!("\"ssl.key.pem\" = \"{SENTINEL}\"\n")),
            "Client creation error",
        ),
        ("run", config(""), "librdkafka"),
    ] {
        let path = scratch(&format!("{name}.toml"), &text);
        let p = path.to_str().unwrap();
        let (ok, out) = churnsignal(&["check-config", p], &[]);
        assert!(ok, "{name}: {out}");
        let (ok, out) = churnsignal(&["run", "--config", p], &[("RUST_LOG", "debug")]);
        let _ = std::fs::remove_file(&path);
        assert!(!ok, "{name}: the client cannot start");
        assert!(
            out.contains("DEBUG") && out.contains(expect),
            "{name}: debug logs and {expect}: {out}"
        );
        assert!(!out.contains(SENTINEL), "{name}: {out}");
    }
}
