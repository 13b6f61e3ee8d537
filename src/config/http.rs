//! `[http]` and `[http.customer_api]`: the operations server (metrics, health) and the
//! customer API, with the limits that keep slow or hostile clients from holding them.

use serde::Deserialize;

use super::{check_listen, check_range, invalid, ConfigError};

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address of `/metrics`, `/healthz` and `/readyz`; port 0 picks a free one;
    /// empty disables the server.
    pub listen: String,
    /// `/healthz` fails when a loop has not reported for this long, seconds.
    pub liveness_timeout_secs: u64,
    /// A client must send a request's headers within this many seconds of connecting or
    /// of its previous answer; else the connection is closed (slow and idle clients).
    pub header_read_timeout_secs: u64,
    /// A request not answered within this many seconds gets 503.
    pub request_timeout_secs: u64,
    /// Open connections per listener; at the cap the oldest connection is closed for
    /// each new one, so that a probe always gets through.
    pub max_connections: usize,
    /// `GET /customers/{id}`: off unless `listen` is set.
    pub customer_api: CustomerApiConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".into(),
            liveness_timeout_secs: 30,
            header_read_timeout_secs: 5,
            request_timeout_secs: 10,
            max_connections: 256,
            customer_api: CustomerApiConfig::default(),
        }
    }
}

/// `[http.customer_api]`: the per-customer "why is this customer at risk?" API, on its
/// own listener (a NetworkPolicy can then admit its clients apart from Prometheus').
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomerApiConfig {
    /// Listen address of `GET /customers/{id}`; empty (the default) disables it.
    pub listen: String,
    /// A file of bearer tokens, one per line (`#` comments and blank lines skipped).
    pub tokens_file: String,
    /// The name of an environment variable holding bearer tokens, comma-separated.
    pub tokens_env: String,
    /// Serve without a token (only sensible on a loopback address).
    pub allow_unauthenticated: bool,
    /// Requests per second each client address may make (a token bucket).
    pub rate_per_sec: f64,
    /// Requests a client may make at once before the rate applies.
    pub rate_burst: u32,
}

impl Default for CustomerApiConfig {
    fn default() -> Self {
        CustomerApiConfig {
            listen: String::new(),
            tokens_file: String::new(),
            tokens_env: String::new(),
            allow_unauthenticated: false,
            rate_per_sec: 5.0,
            rate_burst: 20,
        }
    }
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_listen("http.listen", &self.listen, 8080)?;
        check_range(
            "http.liveness_timeout_secs",
            self.liveness_timeout_secs as f64,
            1.0,
            3600.0,
        )?;
        check_range(
            "http.header_read_timeout_secs",
            self.header_read_timeout_secs as f64,
            1.0,
            300.0,
        )?;
        check_range(
            "http.request_timeout_secs",
            self.request_timeout_secs as f64,
            1.0,
            300.0,
        )?;
        check_range(
            "http.max_connections",
            self.max_connections as f64,
            4.0,
            100_000.0,
        )?;
        let api = &self.customer_api;
        check_listen("http.customer_api.listen", &api.listen, 8082)?;
        check_range(
            "http.customer_api.rate_per_sec",
            api.rate_per_sec,
            0.01,
            1e6,
        )?;
        check_range(
            "http.customer_api.rate_burst",
            f64::from(api.rate_burst),
            1.0,
            1e6,
        )?;
        if !api.listen.is_empty()
            && api.tokens_file.is_empty()
            && api.tokens_env.is_empty()
            && !api.allow_unauthenticated
        {
            return Err(invalid(
                "http.customer_api.tokens_file",
                "\"\"",
                "a file of bearer tokens (or http.customer_api.tokens_env, the name of an environment variable holding them) when http.customer_api.listen is set, or allow_unauthenticated = true",
            ));
        }
        if !api.listen.is_empty() && api.listen == self.listen {
            return Err(invalid(
                "http.customer_api.listen",
                format!("\"{}\"", api.listen),
                "an address other than http.listen",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn the_customer_api_is_off_by_default_and_needs_tokens_when_on() {
        let c = Config::default();
        assert!(c.http.customer_api.listen.is_empty());
        let err = Config::from_toml("[http.customer_api]\nlisten = \"0.0.0.0:8081\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.customer_api.tokens_file"), "{err}");
        for ok in [
            "tokens_file = \"/etc/churnsignal/api-tokens\"",
            "tokens_env = \"CHURNSIGNAL_API_TOKENS\"",
            "allow_unauthenticated = true",
        ] {
            let toml = format!("[http.customer_api]\nlisten = \"127.0.0.1:8081\"\n{ok}\n");
            assert!(Config::from_toml(&toml).is_ok(), "{ok}");
        }
        let same = "[http]\nlisten = \"127.0.0.1:8080\"\n[http.customer_api]\nlisten = \"127.0.0.1:8080\"\nallow_unauthenticated = true\n";
        assert!(Config::from_toml(same).is_err());
    }

    #[test]
    fn bad_listen_address_is_named() {
        let err = Config::from_toml("[http]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(err.to_string().contains("http.listen"), "{err}");
    }
}
