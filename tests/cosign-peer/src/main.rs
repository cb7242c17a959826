//! `cosign-peer`: the sigstore project's own cosign client (the `sigstore` crate) as a tiny
//! CLI, so ferry's tests can check ferry's signatures with a signer and verifier ferry did
//! not write. It talks to registries over plain HTTP (the tests' registries listen on
//! 127.0.0.1).
//!
//! ```text
//! cosign-peer generate DIR --password P    DIR/cosign.key (encrypted, cosign's form), DIR/cosign.pub
//! cosign-peer sign --key KEY --password P [--identity REF] IMAGE
//! cosign-peer verify --key PUB IMAGE       exit 0 iff a signature of IMAGE verifies with PUB
//! ```
//!
//! `sign` pushes a signature set of one layer, as the sigstore crate's `push_signature`
//! does: it replaces what the `.sig` tag held, so tests sign with the peer first.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand};
use sigstore::cosign::constraint::PrivateKeySigner;
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{
    verify_constraints, Client, ClientBuilder, Constraint, CosignCapabilities, SignatureLayer,
};
use sigstore::crypto::SigningScheme;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(about = "sign and verify images with the sigstore crate's cosign client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ECDSA P-256 key pair: DIR/cosign.key (encrypted) and DIR/cosign.pub.
    Generate {
        dir: PathBuf,
        #[arg(long)]
        password: String,
    },
    /// Sign IMAGE (NAME:TAG) with an encrypted cosign private key and push the signature.
    Sign {
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "")]
        password: String,
        /// The payload's `docker-reference` (default: IMAGE as given); the repository alone
        /// is what cosign (Go) writes.
        #[arg(long)]
        identity: Option<String>,
        image: OciReference,
    },
    /// Verify that a signature of IMAGE was made by the public key KEY.
    Verify {
        #[arg(long)]
        key: PathBuf,
        image: OciReference,
    },
}

fn client() -> anyhow::Result<Client> {
    let config = ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    };
    Ok(ClientBuilder::default()
        .with_oci_client_config(config)
        .build()?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate { dir, password } => {
            let signer = SigningScheme::ECDSA_P256_SHA256_ASN1.create_signer()?;
            let pair = signer.to_sigstore_keypair()?;
            let private = pair.private_key_to_encrypted_pem(password.as_bytes())?;
            std::fs::write(dir.join("cosign.key"), private.as_bytes())?;
            std::fs::write(dir.join("cosign.pub"), pair.public_key_to_pem()?)?;
        }
        Command::Sign {
            key,
            password,
            identity,
            image,
        } => {
            let mut client = client()?;
            let (sig_image, digest) = client.triangulate(&image, &Auth::Anonymous).await?;
            let mut layer = SignatureLayer::new_unsigned(&image, &digest)?;
            if let Some(identity) = identity {
                layer.simple_signing.critical.identity.docker_reference = identity;
            }
            let pem =
                Zeroizing::new(std::fs::read(&key).with_context(|| key.display().to_string())?);
            let signer = PrivateKeySigner::new_with_raw(
                pem,
                Zeroizing::new(password.into_bytes()),
                &SigningScheme::ECDSA_P256_SHA256_ASN1,
            )?;
            if !signer.add_constraint(&mut layer)? {
                bail!("signing {image} failed");
            }
            client
                .push_signature(None, &Auth::Anonymous, &sig_image, vec![layer])
                .await?;
            println!("signed {image} ({digest}) as {sig_image}");
        }
        Command::Verify { key, image } => {
            let pem = std::fs::read(&key).with_context(|| key.display().to_string())?;
            let verifier = PublicKeyVerifier::try_from(&pem[..])
                .map_err(|e| anyhow!("public key {}: {e}", key.display()))?;
            let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
            let layers = client()?
                .trusted_signature_layers(&Auth::Anonymous, &image)
                .await?;
            verify_constraints(&layers, constraints.iter()).map_err(|_| {
                anyhow!(
                    "{image}: none of its {} signatures verifies with {}",
                    layers.len(),
                    key.display()
                )
            })?;
            println!(
                "verified {image}: {} signatures, one by {}",
                layers.len(),
                key.display()
            );
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("cosign-peer: {e:#}");
        std::process::exit(1);
    }
}
