//! Users, roles and password hashes, kept in a TOML file (`--users FILE`):
//!
//! ```toml
//! [users.alice]
//! role = "analyst"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// What a user may do. Each role may do everything the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the tables of `tidepool.public`.
    Viewer,
    /// Also read `information_schema`.
    Analyst,
    /// Also append to `events` (INSERT, bulk ingest).
    Writer,
    /// Everything, DDL, COPY, SET and file access included.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Analyst, Role::Writer, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    pub fn can_write(self) -> bool {
        self >= Role::Writer
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .with_context(|| format!("unknown role '{s}' (roles: viewer, analyst, writer, admin)"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserEntry {
    pub role: Role,
    pub password_hash: String,
}

/// The users file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Users {
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the users file {}", path.display()))?;
        let users: Users = toml::from_str(&text)
            .with_context(|| format!("the users file {} is not valid", path.display()))?;
        for (name, entry) in &users.users {
            PasswordHash::new(&entry.password_hash).map_err(|e| {
                anyhow::anyhow!(
                    "the users file {}: user '{name}' has an unreadable password_hash ({e})",
                    path.display()
                )
            })?;
        }
        Ok(users)
    }

    /// Load `path`, or start an empty set if it does not exist yet.
    pub fn load_or_new(path: &Path) -> Result<Users> {
        if path.exists() {
            Users::load(path)
        } else {
            Ok(Users::default())
        }
    }

    /// Write the file atomically (a temporary file renamed over it), readable by the
    /// owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Add or replace a user.
    pub fn set(&mut self, name: &str, role: Role, password: &str) -> Result<()> {
        check_user_name(name)?;
        if password.len() < 8 {
            bail!("the password must have at least 8 characters");
        }
        self.users.insert(
            name.to_string(),
            UserEntry {
                role,
                password_hash: hash_password(password)?,
            },
        );
        Ok(())
    }

    /// The user's role if the password is theirs.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let entry = self.users.get(name)?;
        verify_password(&entry.password_hash, password).then_some(entry.role)
    }
}

pub fn check_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if !ok {
        bail!("invalid user name '{name}': use 1-64 letters, digits, '_', '-', '.' or '@'");
    }
    Ok(())
}

/// An argon2id hash with a random salt, in the PHC string format.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    Ok(hash.to_string())
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_only_against_its_own_hash() {
        let mut users = Users::default();
        users.set("ana", Role::Analyst, "correct horse").unwrap();
        users.set("wes", Role::Writer, "battery staple").unwrap();
        assert_eq!(users.verify("ana", "correct horse"), Some(Role::Analyst));
        assert_eq!(users.verify("ana", "battery staple"), None);
        assert_eq!(users.verify("nobody", "correct horse"), None);
        // The same password hashes differently each time (random salt).
        assert_ne!(
            hash_password("correct horse").unwrap(),
            users.users["ana"].password_hash
        );
    }

    #[test]
    fn the_file_round_trips_and_bad_entries_are_named() {
        let dir = std::env::temp_dir().join(format!("tidepool-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.toml");
        let mut users = Users::default();
        users.set("vic", Role::Viewer, "a long password").unwrap();
        users.save(&path).unwrap();
        let back = Users::load(&path).unwrap();
        assert_eq!(back.verify("vic", "a long password"), Some(Role::Viewer));

        std::fs::write(
            &path,
            "[users.vic]\nrole = \"boss\"\npassword_hash = \"x\"\n",
        )
        .unwrap();
        let err = format!("{:#}", Users::load(&path).unwrap_err());
        assert!(err.contains("boss"), "{err}");
        std::fs::write(
            &path,
            "[users.vic]\nrole = \"viewer\"\npassword_hash = \"x\"\n",
        )
        .unwrap();
        let err = format!("{:#}", Users::load(&path).unwrap_err());
        assert!(err.contains("user 'vic'"), "{err}");
    }

    #[test]
    fn short_passwords_and_odd_names_are_refused() {
        let mut users = Users::default();
        assert!(users.set("ana", Role::Viewer, "short").is_err());
        assert!(users.set("a b", Role::Viewer, "long enough").is_err());
        assert!("boss".parse::<Role>().is_err());
        assert_eq!("writer".parse::<Role>().unwrap(), Role::Writer);
    }
}
