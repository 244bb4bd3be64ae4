//! Signed checkpoints: the chain head (its place and hash) signed with the gateway's
//! checkpoint key (Ed25519, a compact JWS), written every few minutes by `serve` and
//! on demand by `thrive-gateway audit checkpoint`. Someone holding only the public
//! key and an export can check that the exported records are the ones the gateway
//! wrote: rewriting the chain would need the private key.

pub use crate::audit_record::CheckpointRow;
use crate::config::CheckpointSettings;
use crate::store::{AuditStore, StoreError};
use fhir_sdk::time::OffsetDateTime;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a checkpoint signs.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    seq: i64,
    hash: String,
    iat: i64,
}

const ISSUER: &str = "thrive-gateway";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("audit.checkpoint: cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("audit.checkpoint: {0} is not an Ed25519 key in PEM form: {1}")]
    Key(String, jsonwebtoken::errors::Error),
    #[error("audit.checkpoint.private_key_file is not set: this gateway cannot sign checkpoints")]
    NoPrivateKey,
    #[error("could not sign the checkpoint: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The public keys checkpoints are checked against, by key id.
#[derive(Clone)]
pub struct VerifyingKeys {
    keys: Vec<(String, DecodingKey)>,
}

impl std::fmt::Debug for VerifyingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("VerifyingKeys")
            .field("key_ids", &ids)
            .finish()
    }
}

impl VerifyingKeys {
    /// One key (`key_id`, public key PEM file).
    pub fn load(key_id: &str, public_key_file: &std::path::Path) -> Result<Self, CheckpointError> {
        let name = public_key_file.display().to_string();
        let pem =
            std::fs::read(public_key_file).map_err(|e| CheckpointError::Read(name.clone(), e))?;
        let key = DecodingKey::from_ed_pem(&pem).map_err(|e| CheckpointError::Key(name, e))?;
        Ok(Self {
            keys: vec![(key_id.to_owned(), key)],
        })
    }

    pub fn from_settings(s: &CheckpointSettings) -> Result<Self, CheckpointError> {
        Self::load(&s.key_id, &s.public_key_file)
    }

    /// Checks the signature and that it signs this checkpoint's place and hash.
    pub fn verify(&self, c: &CheckpointRow) -> Result<(), String> {
        let Some((_, key)) = self.keys.iter().find(|(id, _)| *id == c.key_id) else {
            return Err(format!(
                "signed with key `{}`, which is not configured",
                c.key_id
            ));
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.set_issuer(&[ISSUER]);
        let claims = jsonwebtoken::decode::<Claims>(&c.signature, key, &validation)
            .map_err(|_| "the signature does not verify".to_owned())?
            .claims;
        if claims.seq != c.seq || claims.hash != c.hash {
            return Err("the signature is for another place or hash".into());
        }
        Ok(())
    }
}

/// Signs chain heads.
#[derive(Clone)]
pub struct Signer {
    key_id: String,
    key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Signer {
    pub fn from_settings(s: &CheckpointSettings) -> Result<Self, CheckpointError> {
        let path = s
            .private_key_file
            .as_ref()
            .ok_or(CheckpointError::NoPrivateKey)?;
        let name = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| CheckpointError::Read(name.clone(), e))?;
        let key = EncodingKey::from_ed_pem(&pem).map_err(|e| CheckpointError::Key(name, e))?;
        Ok(Self {
            key_id: s.key_id.clone(),
            key,
        })
    }

    /// Signs the current chain head unless the latest checkpoint already covers it.
    /// Returns the new checkpoint, if one was written.
    pub async fn checkpoint(
        &self,
        store: &dyn AuditStore,
    ) -> Result<Option<CheckpointRow>, CheckpointError> {
        // What is pending sealed first, so the checkpoint covers every record written;
        // if sealing fails, the head as it is is still worth signing.
        if let Err(e) = store.seal_audit().await {
            tracing::warn!(error = %e, "pending audit records could not be sealed before the checkpoint");
        }
        let (seq, hash) = store.audit_head().await?;
        if seq == 0 {
            return Ok(None);
        }
        if let Some(last) = store.audit_checkpoints().await?.last()
            && last.seq >= seq
        {
            return Ok(None);
        }
        let now = crate::audit::truncate(OffsetDateTime::now_utc());
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: ISSUER.into(),
            seq,
            hash: hash.clone(),
            iat: now.unix_timestamp(),
        };
        let signature =
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(CheckpointError::Sign)?;
        let row = CheckpointRow {
            seq,
            hash,
            signed_at: now,
            key_id: self.key_id.clone(),
            signature,
        };
        store.insert_checkpoint(&row).await?;
        Ok(Some(row))
    }

    /// Writes a checkpoint every `interval` until `stop` turns true.
    pub async fn run(
        self,
        store: std::sync::Arc<dyn AuditStore>,
        interval: std::time::Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        super::every(interval, stop, || async {
            match self.checkpoint(store.as_ref()).await {
                Ok(Some(c)) => tracing::info!(seq = c.seq, "audit checkpoint signed"),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
            }
        })
        .await
    }
}
