//! The one list of options: the sample file, the XML documentation and the README
//! table are checked against it by a test.

/// One `name = value` line as Asterisk's config engine read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub name: String,
    pub value: String,
    pub line: i32,
}

/// An option of a section of cdr_kafka.conf, as documented.
pub struct OptionDoc {
    pub name: &'static str,
    /// The default as written in the docs; empty when there is none.
    pub default: &'static str,
    /// The librdkafka property it sets, when it is a producer setting.
    pub librdkafka: Option<&'static str>,
    /// Of a destination section's option: the types that take it (`all`, `kafka`,
    /// `file`, `syslog` or `http`); empty for `[global]` and `[cel]`.
    pub types: &'static str,
    pub summary: &'static str,
}

const fn option(
    name: &'static str,
    default: &'static str,
    librdkafka: Option<&'static str>,
    summary: &'static str,
) -> OptionDoc {
    OptionDoc {
        name,
        default,
        librdkafka,
        types: "",
        summary,
    }
}

/// librdkafka's `client.id` default is `rdkafka`; ours says who is producing.
pub const DEFAULT_CLIENT_ID: &str = "asterisk-cdr_kafka";
pub const DEFAULT_TOPIC: &str = "asterisk_cdr";
pub const DEFAULT_FLUSH_TIMEOUT_MS: u64 = 5000;
/// Chosen by measurement (README, Performance): the CPU per CDR and the hangup-to-ack
/// latency targets both hold.
pub const DEFAULT_LINGER_MS: u64 = 100;
/// What res_kafka uses when a connection of kafka.conf names no brokers.
pub(super) const RES_KAFKA_DEFAULT_BROKERS: &str = "localhost:9092";

/// Every option of `[global]`, in documentation order.
pub const OPTIONS: &[OptionDoc] = &[
    option("connection", "", None, "Name of a `type = connection` section of kafka.conf (res_kafka's file) to take the producer settings from; options set here override it."),
    option("brokers", "", Some("bootstrap.servers"), "Comma-separated `host:port` list of Kafka brokers. Required unless `connection` names them."),
    option("topic", DEFAULT_TOPIC, None, "Kafka topic the CDRs are published to. May be a template such as `cdr.${accountcode}` or `cdr.${CDR(tenant)}`: characters a topic cannot hold become `_`; a named value that is empty or absent sends the record to `topic_fallback`."),
    option("topic_fallback", "", None, "With a template `topic`: the topic of a record whose named value is empty or absent. Empty: asterisk_cdr."),
    option("key", "", None, "CDR field whose value is the message key: linkedid, uniqueid, channel, dstchannel, accountcode, src, dst, dcontext, tenantid, peertenantid. Empty: no key."),
    option("loguniqueid", "no", None, "Add the `uniqueid` field to each record."),
    option("loguserfield", "no", None, "Add the `userfield` field to each record."),
    option("usegmtime", "no", None, "Write times in UTC (`+0000`) instead of Asterisk's local time zone."),
    option("records", "cdr,cel", None, "Which records [global]'s Kafka destination takes: comma list of cdr, cel (with `[cel] enabled = yes`) and control (the module's start/stop records)."),
    option("missed", "include", None, "include, only or exclude missed calls (CDRs never answered: `answer` is null)."),
    option("filter", "", None, "`NAME OP VALUE`, OP one of = != ~ (regular expression) !~ in (comma list); NAME a record field or `CDR(variable)`. Repeatable: every filter must hold. An absent value compares as empty text."),
    option("control", "required", None, "required, optional, sufficient or alternative: how this destination's result weighs in a record's final status, as GnuGk's accounting stack defines them (destinations in file order, [global] first)."),
    option("give_up_after_ms", "0", None, "A record not confirmed within this many milliseconds counts as failed for the control flags (and bounds librdkafka's message_timeout_ms). 0: never; the record waits in the spool."),
    option("format", "contract", None, "contract (the record as documented, byte for byte), envelope (the record inside metadata: type, version, entity_id, system_name, record_id, emitted_at) or kv (`key=value;` line)."),
    option("fields", "", None, "Comma list of fields to write, in this order, each optionally renamed (`billsec:duration`). Empty: every field."),
    option("normalize", "none", None, "none, or snake_case: field names in snake_case (EntityID becomes entity_id)."),
    option("enabled", "yes", None, "no: [global]'s Kafka destination does not run (its producer still serves the Kafka destinations without brokers of their own)."),
    option("client_id", DEFAULT_CLIENT_ID, Some("client.id"), "Client id the broker sees."),
    option("security_protocol", "plaintext", Some("security.protocol"), "plaintext, ssl, sasl_plaintext or sasl_ssl."),
    option("sasl_mechanisms", "", Some("sasl.mechanisms"), "SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER."),
    option("sasl_username", "", Some("sasl.username"), "SASL user name."),
    option("sasl_password", "", Some("sasl.password"), "SASL password. Never logged or shown."),
    option("ssl_ca_location", "", Some("ssl.ca.location"), "File or folder of CA certificates that sign the brokers' certificates."),
    option("ssl_certificate_location", "", Some("ssl.certificate.location"), "Client certificate (PEM) for TLS client authentication."),
    option("ssl_key_location", "", Some("ssl.key.location"), "Private key (PEM) of the client certificate."),
    option("compression_codec", "none", Some("compression.codec"), "none, gzip, snappy, lz4 or zstd."),
    option("linger_ms", "100", None, "How long records gather before they are handed to librdkafka together, in milliseconds: fewer, larger batches cost the PBX less CPU; records reach the broker at most about this much later."),
    option("acks", "all", Some("acks"), "Broker acknowledgements required: all (or -1), 1 or 0."),
    option("enable_idempotence", "yes", Some("enable.idempotence"), "Idempotent producer: no duplicates or reordering from librdkafka's retries."),
    option("message_timeout_ms", "0", Some("message.timeout.ms"), "How long librdkafka tries to deliver a record before it is tried again from the spool, in milliseconds; 0: no limit, which keeps records of one key in order."),
    option("queue_buffering_max_messages", "20000", Some("queue.buffering.max.messages"), "Most records librdkafka holds in memory (about 1.5 KB each); the rest wait in the spool."),
    option("debug", "", Some("debug"), "librdkafka debug contexts (e.g. broker,topic,msg), logged at debug level."),
    option("flush_timeout_ms", "5000", None, "How long unload and reload wait for records in flight to be delivered, in milliseconds."),
    option("spool_dir", "", None, "Folder of the durable spool. Empty: cdr_kafka inside Asterisk's spool folder (astspooldir, usually /var/spool/asterisk/cdr_kafka). A folder that is shared or not Asterisk's own (such as /tmp) is never chmod'ed: the spool goes into its cdr_kafka subfolder. Takes effect at module load."),
    option("spool_sync", "interval", None, "When spooled records are forced to disk: always (every record, on the CDR thread; survives power loss), interval (every spool_sync_interval_ms) or never (the kernel decides). A crash of Asterisk alone loses nothing with any of them. Takes effect at module load."),
    option("spool_sync_interval_ms", "1000", None, "With spool_sync = interval: how often, in milliseconds."),
    option("spool_max_bytes", "0", None, "Most bytes of undelivered records the spool may hold; past it new CDRs are refused (logged, counted as refused). Delivered records do not count. 0: bounded by the disk."),
    option("rdkafka.<property>", "", None, "Any other librdkafka property, passed unchanged (e.g. `rdkafka.socket.keepalive.enable = true`)."),
];

pub const DEFAULT_CEL_TOPIC: &str = "asterisk_cel";

/// Every option of `[cel]`, in documentation order.
pub const CEL_OPTIONS: &[OptionDoc] = &[
    option("enabled", "no", None, "Publish CEL channel events too (a CEL backend is registered only when yes; reload switches it)."),
    option("topic", DEFAULT_CEL_TOPIC, None, "Kafka topic the CEL events are published to."),
    option("key", "linkedid", None, "CEL field whose value is the message key: linkedid, uniqueid, channame, accountcode, peeraccount, cid_num, exten, context, tenantid. Empty: no key. linkedid keeps one call's events in one partition, in order."),
    option("events", "", None, "Comma-separated CEL event names to publish (e.g. CHAN_START,HANGUP,LINKEDID_END). Empty: every event Asterisk's cel.conf enables."),
    option("usegmtime", "no", None, "Write eventtime in UTC (`+0000`) instead of Asterisk's local time zone."),
];
