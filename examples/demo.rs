//! `make demo`: a tansu broker on 127.0.0.1, Asterisk 22 in the Debian unstable root with
//! cdr_kafka loaded, a few calls placed, and every record printed as it is read back from
//! the topic with kcat. Everything it starts is stopped when it ends.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::{cdr_kafka_conf, Asterisk, Root, Tansu};

const TOPIC: &str = "asterisk_cdr";

fn main() {
    let root = Root::from_env();
    println!("Starting tansu on 127.0.0.1...");
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC);
    println!("Starting Asterisk 22 in {}...", root.path.display());
    let conf = cdr_kafka_conf(
        &tansu.brokers(),
        TOPIC,
        "key = linkedid\nloguniqueid = yes\n",
    );
    let asterisk = Asterisk::start(&root, &conf, "Europe/Paris");
    print!("{}", asterisk.rx("module load cdr_kafka.so"));

    for (exten, what) in [
        (
            "answered",
            "an answered call through Dial, with a CDR variable and a quoted caller name",
        ),
        ("busy", "a call to a busy extension"),
        ("noanswer", "a call nobody answers"),
    ] {
        println!("Placing {what}...");
        asterisk.originate(exten);
        asterisk.wait_for_no_channels(Duration::from_secs(30));
    }

    let received = asterisk.wait_until_all_delivered(Duration::from_secs(30));
    let status = asterisk.rx("cdr kafka show status");
    let messages = root.consume(&tansu.brokers(), TOPIC, received, Duration::from_secs(30));
    println!(
        "\n{} records on topic {TOPIC} (read with kcat):",
        messages.len()
    );
    for message in &messages {
        println!(
            "\npartition {} offset {} key {}",
            message.partition,
            message.offset,
            message.key.as_deref().unwrap_or("(none)")
        );
        let headers: Vec<String> = message
            .headers
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        println!("headers {}", headers.join(" "));
        println!("{}", message.payload);
    }
    println!("\ncdr kafka show status:\n{status}");
}
