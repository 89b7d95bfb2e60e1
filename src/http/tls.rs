//! What a TLS failure means for the user: which host, what is wrong with its certificate, and which setting
//! fixes it (`<section>.ca_file`, or the URL when the name does not match).
//!
//! Invariants: a message names the host and never quotes anything but the certificate's public facts (its
//! names); a name mismatch lists the names the certificate covers, so the user can tell a wrong URL from
//! a TLS-inspecting proxy.

/// How many names of a certificate a message lists (a CDN's certificate may cover hundreds).
const MAX_NAMES_SHOWN: usize = 10;

/// The rustls error somewhere in an error's chain. hyper-rustls nests it in `io::Error`s, whose `source()`
/// skips the error they wrap: look inside each with `get_ref`.
pub(super) fn find_tls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    fn inside_io(io: &std::io::Error) -> Option<&rustls::Error> {
        let inner = io.get_ref()?;
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        inner.downcast_ref::<std::io::Error>().and_then(inside_io)
    }
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e.downcast_ref::<std::io::Error>().and_then(inside_io) {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// What a TLS failure means for the user: which host, what is wrong, and which setting fixes it.
pub fn describe_tls_error(err: &rustls::Error, host: &str, section: &str) -> String {
    use rustls::CertificateError as C;
    let setting = if section.is_empty() {
        "ca_file".to_string()
    } else {
        format!("{section}.ca_file")
    };
    let fix = format!(
        "if {host} (or a TLS-inspecting proxy on the way) uses a private or corporate CA, save that CA's \
         certificate as PEM and set {setting} = \"/path/to/ca.pem\" (TLS verification cannot be turned off)"
    );
    let destination = if section.is_empty() {
        "this destination"
    } else {
        section
    };
    match err {
        rustls::Error::InvalidCertificate(problem) => match problem {
            C::UnknownIssuer => format!(
                "the TLS certificate of {host} is signed by a CA this host does not trust (unknown issuer): {fix}"
            ),
            C::BadSignature => format!(
                "the TLS certificate of {host} has a bad signature (not signed by the CA it names): {fix}"
            ),
            C::NotValidForNameContext { presented, .. } => format!(
                "the TLS certificate of {host} is not valid for the name {host}: it covers {}; check the URL \
                 (base_url, intake_url or region) of {destination}, or whether a TLS-inspecting proxy \
                 answered in its place; a CA file cannot fix a name mismatch",
                names_covered(presented)
            ),
            C::NotValidForName => format!(
                "the TLS certificate of {host} is not valid for the name {host}: check the URL (base_url, \
                 intake_url or region) of {destination}; a CA file cannot fix a name mismatch"
            ),
            C::Expired | C::ExpiredContext { .. } => format!(
                "the TLS certificate of {host} has expired (or this host's clock is wrong): the server's \
                 certificate must be renewed; check the clock of this host"
            ),
            C::NotValidYet | C::NotValidYetContext { .. } => format!(
                "the TLS certificate of {host} is not valid yet: check the clock of this host"
            ),
            other => format!("the TLS certificate of {host} was refused ({other:?}): {fix}"),
        },
        other => format!("the TLS handshake with {host} failed: {other}"),
    }
}

/// The names a certificate covers, as a message shows them: quoted, at most [`MAX_NAMES_SHOWN`]. rustls
/// gives them as webpki writes them (`DnsName("example.com")`, `IpAddress(192.0.2.1)`); other kinds of
/// names (directory names, URIs) cannot match a host and are left out.
fn names_covered(presented: &[String]) -> String {
    let names: Vec<&str> = presented
        .iter()
        .filter_map(|name| {
            name.strip_prefix("DnsName(\"")
                .and_then(|n| n.strip_suffix("\")"))
                .or_else(|| {
                    name.strip_prefix("IpAddress(")
                        .and_then(|n| n.strip_suffix(')'))
                })
        })
        .collect();
    if names.is_empty() {
        return "no host name nor IP address at all (a common name alone is not accepted: the names \
                must be in the certificate's subjectAltName)"
            .to_string();
    }
    let shown: Vec<String> = names
        .iter()
        .take(MAX_NAMES_SHOWN)
        .map(|name| format!("{:?}", name.chars().take(256).collect::<String>()))
        .collect();
    let more = names.len().saturating_sub(MAX_NAMES_SHOWN);
    let only = if names.len() == 1 { "only " } else { "" };
    let mut text = format!("{only}{}", shown.join(", "));
    if more > 0 {
        text.push_str(&format!(" and {more} other names"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    #[test]
    fn a_name_mismatch_lists_the_names_covered() {
        let err =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("api.jumpcloud.com").expect("name"),
                presented: vec![
                    "DnsName(\"proxy.corp.example\")".to_string(),
                    "DnsName(\"*.corp.example\")".to_string(),
                    "IpAddress(192.0.2.1)".to_string(),
                    "DirectoryName".to_string(),
                ],
            });
        let text = describe_tls_error(&err, "api.jumpcloud.com", "jumpcloud");
        assert!(
            text.contains("is not valid for the name api.jumpcloud.com: it covers \"proxy.corp.example\", \"*.corp.example\", \"192.0.2.1\";"),
            "{text}"
        );
        let many: Vec<String> = (0..12)
            .map(|n| format!("DnsName(\"h{n}.example\")"))
            .collect();
        let err =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("x.example").expect("name"),
                presented: many,
            });
        let text = describe_tls_error(&err, "x.example", "sekoia");
        assert!(text.contains("\"h9.example\" and 2 other names"), "{text}");
        let err =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("x.example").expect("name"),
                presented: Vec::new(),
            });
        let text = describe_tls_error(&err, "x.example", "sekoia");
        assert!(
            text.contains("it covers no host name nor IP address at all"),
            "{text}"
        );
    }
}
