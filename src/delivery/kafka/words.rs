//! librdkafka's words about a broker connection (TLS, SASL, TCP) turned into an
//! operator's: what failed, with which of cdr_kafka.conf's options, and librdkafka's own
//! detail after it. Secrets are replaced wherever they would appear.

use rdkafka::error::RDKafkaErrorCode;

use super::{ProducerSettings, REDACTED};

/// What the messages name of a producer's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Words {
    protocol: String,
    ca: Option<String>,
    certificate: Option<String>,
    key: Option<String>,
    mechanism: Option<String>,
    username: Option<String>,
    secrets: Vec<String>,
}

impl Words {
    pub fn new(settings: &ProducerSettings) -> Self {
        let get = |name: &str| {
            settings
                .properties
                .iter()
                .find(|(property, _)| property == name)
                .map(|(_, value)| value.clone())
                .filter(|value| !value.is_empty())
        };
        Self {
            protocol: get("security.protocol").unwrap_or_else(|| "plaintext".into()),
            ca: get("ssl.ca.location"),
            certificate: get("ssl.certificate.location"),
            key: get("ssl.key.location"),
            mechanism: get("sasl.mechanisms"),
            username: get("sasl.username"),
            secrets: settings.secrets.clone(),
        }
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in self.secrets.iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret.as_str(), REDACTED);
        }
        text
    }

    /// An error librdkafka's error callback reported (`reason` is its text).
    pub fn broker_error(&self, code: Option<RDKafkaErrorCode>, reason: &str) -> String {
        let reason = self.redact(reason);
        let (broker, detail) = split_broker(&reason);
        let at = broker.map(|b| format!(" with {b}")).unwrap_or_default();
        let detail = strip_timing(detail);
        let lower = detail.to_ascii_lowercase();
        let text = if lower.contains("ssl handshake failed") || code == Some(RDKafkaErrorCode::SSL)
        {
            format!(
                "TLS handshake{at} failed: {} (librdkafka: {detail})",
                self.tls_cause(&lower)
            )
        } else if lower.contains("sasl") || code == Some(RDKafkaErrorCode::Authentication) {
            format!(
                "SASL authentication{at} failed: {} (librdkafka: {detail})",
                self.sasl_cause(&lower)
            )
        } else if lower.contains("connection refused") {
            format!(
                "cannot connect to {}: connection refused: no broker listens there (check brokers, and that the broker runs)",
                broker.unwrap_or("the broker")
            )
        } else if lower.contains("failed to resolve") {
            format!("cannot find the broker's address: {detail}")
        } else if lower.contains("incorrect security.protocol") {
            format!(
                "the broker{} closed the connection before answering: security_protocol = {} may not be what its listener speaks (librdkafka: {detail})",
                broker.map(|b| format!(" {b}")).unwrap_or_default(),
                self.protocol
            )
        } else {
            match code {
                Some(code) => format!("{code}: {reason}"),
                None => reason.clone(),
            }
        };
        text
    }

    fn tls_cause(&self, lower: &str) -> String {
        if lower.contains("certificate verify failed") {
            match &self.ca {
                Some(ca) => format!(
                    "the broker's certificate could not be verified with ssl_ca_location = {ca} \
                     (signed by another CA, expired, or issued for another host name)"
                ),
                None => "the broker's certificate could not be verified with the system's CAs \
                         (set ssl_ca_location to the CA that signed it)"
                    .into(),
            }
        } else if lower.contains("wrong version number")
            || lower.contains("packet length too long")
            || lower.contains("plaintext broker listener")
        {
            format!(
                "the broker does not speak TLS on this port (security_protocol = {} needs a TLS listener)",
                self.protocol
            )
        } else if lower.contains("certificate required") || lower.contains("handshake failure") {
            match (&self.certificate, &self.key) {
                (Some(_), Some(_)) => {
                    "the broker refused the handshake (does it accept ssl_certificate_location's certificate?)".into()
                }
                _ => "the broker wants a client certificate: set ssl_certificate_location and ssl_key_location".into(),
            }
        } else if lower.contains("unknown ca") || lower.contains("bad certificate") {
            format!(
                "the broker refused the client certificate ssl_certificate_location = {}",
                self.certificate.as_deref().unwrap_or("(not set)")
            )
        } else {
            "the connection could not be secured".into()
        }
    }

    fn sasl_cause(&self, lower: &str) -> String {
        let mechanism = self.mechanism.as_deref().unwrap_or("(not set)");
        if lower.contains("not supported by broker") || lower.contains("unsupported sasl") {
            format!("the broker does not offer sasl_mechanisms = {mechanism}")
        } else {
            format!(
                "the broker refused sasl_username = {} with its sasl_password (sasl_mechanisms = {mechanism}): is the user known to the broker, the password right?",
                self.username.as_deref().unwrap_or("(not set)")
            )
        }
    }

    /// Why librdkafka refused to create the producer (its text, as rdkafka displays it).
    pub fn creation_error(&self, text: &str) -> String {
        let text = self.redact(text);
        let detail = text
            .strip_prefix("Client creation error: ")
            .unwrap_or(&text);
        let file = |option: &str, value: &Option<String>, what: &str| {
            format!(
                "{option} = {}: {what} (librdkafka: {detail})",
                value.as_deref().unwrap_or("(not set)")
            )
        };
        if detail.starts_with("ssl.key.location failed") {
            file(
                "ssl_key_location",
                &self.key,
                "the private key cannot be read: a wrong key password (rdkafka.ssl.key.password), or not a PEM key",
            )
        } else if detail.starts_with("ssl.certificate.location failed") {
            file(
                "ssl_certificate_location",
                &self.certificate,
                "the client certificate cannot be read (a missing file, or not PEM)",
            )
        } else if detail.starts_with("ssl.ca.location failed") {
            file(
                "ssl_ca_location",
                &self.ca,
                "the CA certificates cannot be read (a missing file, or not PEM)",
            )
        } else {
            text.to_string()
        }
    }
}

/// `ssl://127.0.0.1:9093/bootstrap: detail` into the broker's address and the detail.
fn split_broker(reason: &str) -> (Option<&str>, &str) {
    let Some((head, detail)) = reason.split_once(": ") else {
        return (None, reason);
    };
    let Some((_, rest)) = head.split_once("://") else {
        return (None, reason);
    };
    let address = rest.rsplit_once('/').map_or(rest, |(address, _)| address);
    (Some(address), detail)
}

/// Drops librdkafka's " (after 2ms in state SSL_HANDSHAKE)" tail.
fn strip_timing(detail: &str) -> &str {
    match detail.rfind(" (after ") {
        Some(at) if detail.ends_with(')') => &detail[..at],
        _ => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(properties: &[(&str, &str)], secrets: &[&str]) -> Words {
        Words::new(&ProducerSettings {
            properties: properties
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
        })
    }

    const WRONG_CA: &str = "ssl://127.0.0.1:19093/bootstrap: SSL handshake failed: \
        error:0A000086:SSL routines::certificate verify failed: broker certificate could not be \
        verified, verify that ssl.ca.location is correctly configured or root CA certificates are \
        installed (install ca-certificates package) (after 2ms in state SSL_HANDSHAKE)";

    #[test]
    fn a_certificate_not_signed_by_the_ca_names_ssl_ca_location() {
        let words = words(
            &[
                ("security.protocol", "ssl"),
                ("ssl.ca.location", "/etc/asterisk/ca.pem"),
            ],
            &[],
        );
        let text = words.broker_error(Some(RDKafkaErrorCode::SSL), WRONG_CA);
        assert!(
            text.starts_with(
                "TLS handshake with 127.0.0.1:19093 failed: the broker's certificate could not be \
                 verified with ssl_ca_location = /etc/asterisk/ca.pem"
            ),
            "{text}"
        );
        assert!(text.contains("certificate verify failed"), "{text}");
        assert!(!text.contains("after 2ms"), "{text}");
    }

    #[test]
    fn without_ssl_ca_location_the_systems_cas_are_named() {
        let text = words(&[("security.protocol", "ssl")], &[])
            .broker_error(Some(RDKafkaErrorCode::SSL), WRONG_CA);
        assert!(
            text.contains("with the system's CAs (set ssl_ca_location"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_scram_password_names_user_and_mechanism_never_the_password() {
        let words = words(
            &[
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.username", "alice"),
                ("sasl.password", "pw-0451"),
            ],
            &["pw-0451"],
        );
        let text = words.broker_error(
            Some(RDKafkaErrorCode::Authentication),
            "sasl_ssl://127.0.0.1:19093/bootstrap: SASL authentication error: SASL SCRAM \
             authentication failed: broker responded with invalid-proof pw-0451 (after 32ms in \
             state AUTH_REQ)",
        );
        assert!(
            text.starts_with(
                "SASL authentication with 127.0.0.1:19093 failed: the broker refused sasl_username \
                 = alice with its sasl_password (sasl_mechanisms = SCRAM-SHA-512)"
            ),
            "{text}"
        );
        assert!(!text.contains("pw-0451"), "{text}");
        assert!(text.contains(REDACTED), "{text}");
    }

    #[test]
    fn a_mechanism_the_broker_lacks_is_named() {
        let text = words(&[("sasl.mechanisms", "SCRAM-SHA-256")], &[]).broker_error(
            Some(RDKafkaErrorCode::Authentication),
            "sasl_ssl://k:9093/bootstrap: SASL handshake failed (start (-4)): SASL mechanism \
             SCRAM-SHA-256 not supported by broker",
        );
        assert!(
            text.contains("the broker does not offer sasl_mechanisms = SCRAM-SHA-256"),
            "{text}"
        );
    }

    #[test]
    fn a_closed_port_says_nothing_listens_there() {
        let text = words(&[("security.protocol", "ssl")], &[]).broker_error(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "ssl://127.0.0.1:19099/bootstrap: Connect to ipv4#127.0.0.1:19099 failed: \
             Connection refused (after 0ms in state CONNECT)",
        );
        assert_eq!(
            text,
            "cannot connect to 127.0.0.1:19099: connection refused: no broker listens there \
             (check brokers, and that the broker runs)"
        );
    }

    #[test]
    fn tls_to_a_plaintext_listener_says_so() {
        let text = words(&[("security.protocol", "ssl")], &[]).broker_error(
            Some(RDKafkaErrorCode::SSL),
            "ssl://k:9092/bootstrap: SSL handshake failed: error:0A00010B:SSL \
             routines::wrong version number: connecting to a PLAINTEXT broker listener? (after \
             1ms in state SSL_HANDSHAKE)",
        );
        assert!(
            text.contains(
                "the broker does not speak TLS on this port (security_protocol = ssl needs a TLS listener)"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_error_keeps_librdkafkas_words_redacted() {
        let text = words(&[], &["s3cret"]).broker_error(None, "something about s3cret");
        assert_eq!(text, "something about ********");
    }

    #[test]
    fn a_key_that_cannot_be_decrypted_names_the_key_and_its_password_option() {
        let words = words(
            &[
                ("ssl.key.location", "/etc/asterisk/client.key"),
                ("ssl.key.password", "kp-77"),
            ],
            &["kp-77"],
        );
        let text = words.creation_error(
            "Client creation error: ssl.key.location failed: error:0A080009:SSL routines::PEM lib",
        );
        assert_eq!(
            text,
            "ssl_key_location = /etc/asterisk/client.key: the private key cannot be read: a wrong \
             key password (rdkafka.ssl.key.password), or not a PEM key (librdkafka: \
             ssl.key.location failed: error:0A080009:SSL routines::PEM lib)"
        );
    }

    #[test]
    fn other_creation_errors_pass_redacted() {
        let text = words(&[], &["kp-77"]).creation_error("property 'x': bad kp-77");
        assert_eq!(text, "property 'x': bad ********");
    }
}
