//! `keel update --to NEW DISK`: moves a stopped `--ab` disk to the version another `--ab` build
//! holds, offline, with [`keel_disk::update`] (the code `keelctl update` runs on a live
//! system). Here the new UKI's signature is checked with the db certificate of `--keys`.

use keel_disk::update::{self, SignatureError, Update, Updated};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Keys(#[from] crate::keys::Error),
    #[error(transparent)]
    Update(#[from] update::Error),
}

/// `keel update --to NEW DISK`: see the module comment. `keys`: the key set whose db
/// certificate must verify the new UKI.
pub fn update(disk: &Path, new: &Path, keys: Option<&Path>) -> Result<Updated, Error> {
    let cert = keys
        .map(|dir| crate::keys::certificate(dir, "db"))
        .transpose()?;
    let verify = |uki: &[u8]| -> Result<(), SignatureError> {
        match &cert {
            Some(cert) => crate::keys::verify_efi(cert, uki).map_err(Into::into),
            None => Ok(()),
        }
    };
    let update = Update::read(new, cert.is_some().then_some(&verify as _))?;
    Ok(update::apply(disk, &update, None, &mut |_| {})?)
}
