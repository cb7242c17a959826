//! Getting a checked, loaded image out of the store for unpacking and running.

use std::sync::Arc;

use anyhow::Result;
use ferry_core::{Reference, Store};
use ferry_drivers::transfer::pull::PullOptions;
use ferry_drivers::transfer::signatures::verify_in_store;
use ferry_runtime::image::Image;
use ferry_signing::Policy;

use crate::commands::pull::pull_into;
use crate::Cli;

/// The image `reference` names, pulled first when the store lacks it, checked against the
/// trust policy, and loaded. A rejected image ends here, before anything is unpacked.
pub async fn checked_image(cli: &Cli, store: &Arc<Store>, reference: &Reference) -> Result<Image> {
    if store.find_image(reference).is_err() {
        pull_into(cli, store, reference, &PullOptions::default()).await?;
    }
    let policy = Policy::load_default(cli.policy.as_deref())?;
    let trusted = verify_in_store(store, &policy, reference)?;
    Ok(Image::load(store, &trusted)?)
}
