//! How a section reaches its service: `proxy` and `ca_file` (with what a section inherits), the proxy
//! variables of the environment, and the helpers `http` uses to build clients ([`check_proxy_url`],
//! [`redact_url`], [`load_ca_file`]).
//!
//! Invariants: only plain-http proxies are accepted (the CONNECT tunnel still carries TLS end to end); a
//! proxy URL is held as a [`Secret`] and shown only through [`redact_url`], so its credentials never reach
//! a message; a `ca_file` is accepted only when it holds at least one certificate; the environment's proxy
//! variables are read (and checked) once per file.

use std::path::{Path, PathBuf};

use super::reader::{Reader, Section};
use super::{ProxyConfig, Secret, Transport};

impl Reader<'_> {
    /// `proxy` and `ca_file` of a section, else those of `base`; a section without a base of its own
    /// (`own`) takes the proxy from the environment.
    pub(super) fn transport_of(
        &mut self,
        s: &mut Section,
        base: &Transport,
        own: bool,
    ) -> Transport {
        let proxy = match self.string(s, "proxy") {
            Some(text) => match text.trim() {
                "" | "none" | "direct" => ProxyConfig::Direct,
                url => match check_proxy_url(url) {
                    Ok(url) => ProxyConfig::Url(Secret::new(url)),
                    Err(why) => {
                        self.problem(s, "proxy", &format!("= {:?} {why}", redact_url(url)));
                        ProxyConfig::Direct
                    }
                },
            },
            None if own => self.environment_proxy(),
            None => base.proxy.clone(),
        };
        let ca_set = s.has("ca_file");
        let ca_file = match self.string(s, "ca_file") {
            Some(path) if path.trim().is_empty() => None,
            Some(path) => {
                let path = PathBuf::from(path.trim());
                match load_ca_file(&path) {
                    Ok(_) => Some(path),
                    Err(why) => {
                        self.problem(s, "ca_file", &why);
                        None
                    }
                }
            }
            None if own => None,
            None => base.ca_file.clone(),
        };
        // The setting to fix is where the value was written, or the section itself when it inherits none.
        let section = if !ca_set && !own && base.ca_file.is_some() {
            base.section.clone()
        } else {
            s.name.clone()
        };
        Transport {
            proxy,
            ca_file,
            section,
        }
    }

    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, upper case first then lower case, as curl
    /// reads them. A proxy URL that cannot be used is a problem: silently going direct would fail later
    /// with a less clear message.
    fn environment_proxy(&mut self) -> ProxyConfig {
        if let Some(proxy) = &self.env_proxy {
            return proxy.clone();
        }
        let read = |reader: &mut Self, names: [&str; 2]| -> Option<Secret> {
            let (name, value) = names.iter().find_map(|name| {
                (reader.env)(name)
                    .filter(|value| !value.trim().is_empty())
                    .map(|value| (*name, value))
            })?;
            match check_proxy_url(value.trim()) {
                Ok(url) => Some(Secret::new(url)),
                Err(why) => {
                    reader.problems.push(format!(
                        "the environment variable {name} = {:?} {why}",
                        redact_url(value.trim())
                    ));
                    None
                }
            }
        };
        let all = read(self, ["ALL_PROXY", "all_proxy"]);
        let https = read(self, ["HTTPS_PROXY", "https_proxy"]).or_else(|| all.clone());
        let http = read(self, ["HTTP_PROXY", "http_proxy"]).or(all);
        let no_proxy = ["NO_PROXY", "no_proxy"]
            .iter()
            .find_map(|name| (self.env)(name))
            .unwrap_or_default();
        let proxy = if https.is_none() && http.is_none() {
            ProxyConfig::Direct
        } else {
            ProxyConfig::Environment {
                http,
                https,
                no_proxy,
            }
        };
        self.env_proxy = Some(proxy.clone());
        proxy
    }
}

/// Checks a proxy URL and returns it with a scheme (`host:3128` means `http://host:3128`, as curl reads it).
/// Only plain-http proxies are supported: the tunnel they open (CONNECT) still carries TLS end to end.
pub fn check_proxy_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let full = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let uri: http::Uri = full.parse().map_err(|_| {
        "is not a proxy URL: write it like \"http://proxy.example.com:3128\"".to_string()
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "uses https://: a proxy reached over TLS is not supported; use http:// (the \
                        tunnel through it still carries TLS end to end)"
                    .to_string(),
            )
        }
        Some(other) => {
            return Err(format!(
                "uses {other}://: only HTTP proxies (CONNECT) are supported; write http://host:port"
            ))
        }
        None => {}
    }
    let host_ok = uri
        .authority()
        .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
        .is_some_and(|host_port| !host_port.is_empty() && !host_port.starts_with(':'));
    if !host_ok {
        return Err("has no host: write it like \"http://proxy.example.com:3128\"".to_string());
    }
    Ok(full)
}

/// A URL as it may be shown: without the `user:password@` part.
pub fn redact_url(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => text.to_string(),
    }
}

/// Reads a PEM bundle of CA certificates; an error says what is wrong with it, for `ca_file`.
pub fn load_ca_file(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let shown = path.display().to_string();
    let iter = rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|err| {
        format!("= {shown:?} cannot be read: {err} (a PEM file of CA certificates is expected)")
    })?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|err| format!("= {shown:?} is not a valid PEM bundle: {err}"))?;
    if certs.is_empty() {
        return Err(format!(
            "= {shown:?} holds no certificate: a PEM file with \"-----BEGIN CERTIFICATE-----\" blocks is expected"
        ));
    }
    Ok(certs)
}
