//! `ferry verify REF`: the trust policy's verdict on a stored image, from the signatures the
//! store keeps for it.

use std::process::ExitCode;

use anyhow::Result;
use ferry_core::Digest;
use ferry_drivers::transfer::signatures::{signatures_in_store, verify_in_store};
use ferry_drivers::ErrorKind;
use ferry_signing::{Acceptance, Policy};

use crate::commands::{open_store, parse_reference};
use crate::Cli;

/// Arguments of `ferry verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference as stored (`NAME:TAG`, or `NAME@DIGEST`).
    reference: String,
}

/// Prints each stored signature's key id and the policy's verdict; exits 1 when it rejects.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let reference = parse_reference(&args.reference)?;
    let store = open_store(cli)?;
    let policy = Policy::load_default(cli.policy.as_deref())?;
    let record = store.find_image(&reference)?;
    let signatures = signatures_in_store(&store, &record.digest)?;
    let listed: Vec<(Option<String>, Digest)> = signatures
        .iter()
        .map(|s| {
            (
                s.key_id_hint().map(ToString::to_string),
                Digest::sha256(&s.to_bytes()),
            )
        })
        .collect();
    let outcome = match verify_in_store(&store, &policy, &reference) {
        Ok(trusted) => Ok(trusted),
        Err(e) if e.kind == ErrorKind::Rejected => Err(e.message),
        Err(e) => return Err(e.into()),
    };
    let policy_file = policy.source().map(|p| p.display().to_string());
    if cli.json {
        let mut out = serde_json::json!({
            "name": record.name,
            "tag": record.tag,
            "digest": record.digest,
            "policy": policy_file,
            "signatures": listed.iter().map(|(key_id, digest)| serde_json::json!({
                "key_id": key_id, "digest": digest,
            })).collect::<Vec<_>>(),
        });
        match &outcome {
            Ok(trusted) => {
                out["verdict"] = "accepted".into();
                out["image"] = trusted.reference().to_string().into();
                out["signed_by"] = match trusted.how() {
                    Acceptance::SignedBy(keys) => keys.iter().map(ToString::to_string).collect(),
                    Acceptance::Unsigned => Vec::<String>::new(),
                }
                .into();
            }
            Err(reason) => {
                out["verdict"] = "rejected".into();
                out["reason"] = reason.clone().into();
            }
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if listed.is_empty() {
            println!("no signatures in the store for {}", record.digest);
        }
        for (i, (key_id, digest)) in listed.iter().enumerate() {
            println!(
                "signature {}: key id {} ({digest})",
                i + 1,
                key_id.as_deref().unwrap_or("(none given)")
            );
        }
        let by = policy_file.as_deref().unwrap_or("no policy file");
        match &outcome {
            Ok(trusted) => match trusted.how() {
                Acceptance::SignedBy(keys) => {
                    let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
                    println!(
                        "accepted {}: signed by {} ({by})",
                        trusted.reference(),
                        keys.join(", ")
                    );
                }
                Acceptance::Unsigned => {
                    println!(
                        "accepted {}: no signature required ({by})",
                        trusted.reference()
                    );
                }
            },
            Err(reason) => println!("rejected: {reason}"),
        }
    }
    Ok(if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
