//! `ferry verify REF`: the trust policy's verdict on a stored image, from the signatures the
//! store keeps for it, each listed with the policy key that made it.

use std::process::ExitCode;

use anyhow::Result;
use ferry_core::{Digest, Reference};
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

/// One stored signature as `ferry verify` lists it.
struct Listed {
    /// The payload (layer) digest.
    digest: Digest,
    /// The key of the policy rule that made it, if any.
    key_id: Option<String>,
    /// The `docker-reference` the payload claims (unverified unless a key made it).
    identity: Option<String>,
}

/// Prints each stored signature (the policy key that made it, what it names) and the
/// policy's verdict; exits 1 when it rejects.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let reference = parse_reference(&args.reference)?;
    let store = open_store(cli)?;
    let policy = Policy::load_default(cli.policy.as_deref())?;
    let record = store.find_image(&reference)?;
    let signatures = signatures_in_store(&store, &record.digest)?;
    let named = Reference::with_name(&record.name, record.tag.as_deref(), None)?;
    let keys = policy.keys_for(&named);
    let listed: Vec<Listed> = signatures
        .iter()
        .map(|s| Listed {
            digest: s.payload_digest(),
            key_id: s.signer(keys).map(|k| k.id().to_string()),
            identity: s.claimed_identity(),
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
            "signatures": listed.iter().map(|l| serde_json::json!({
                "key_id": l.key_id, "digest": l.digest, "identity": l.identity,
            })).collect::<Vec<_>>(),
        });
        match &outcome {
            Ok(trusted) => {
                out["verdict"] = "accepted".into();
                out["image"] = trusted.reference().to_string().into();
                out["proves_tag"] = trusted.proves_tag().into();
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
        for (i, l) in listed.iter().enumerate() {
            println!(
                "signature {}: key id {}, names {} ({})",
                i + 1,
                l.key_id.as_deref().unwrap_or("(no key of the policy rule)"),
                l.identity.as_deref().unwrap_or("(unreadable payload)"),
                l.digest
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
                    if !trusted.proves_tag() {
                        println!(
                            "note: the signatures name the repository {} without a tag: they prove the digest and the repository, not the tag",
                            record.name
                        );
                    }
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
