//! Changing user and group (nbdkit's `-u USER` and `-g GROUP`): start as root to bind a privileged
//! port or write a pid file in /run, then become an ordinary user before serving any client.
//!
//! Names or numeric ids are accepted. A user alone also brings the user's primary group and
//! supplementary groups (initgroups), so the server ends with exactly that user's rights; a group
//! sets the group and leaves no supplementary groups. The ids are looked up at start-up
//! ([`Credentials::resolve`]), so a typo fails before anything listens; privileges are dropped
//! after binding and writing the pid file ([`Credentials::drop_privileges`]).

use std::ffi::CString;
use std::path::Path;

use nix::unistd::{chown, initgroups, setgid, setgroups, setuid, Gid, Group, Uid, User};

use crate::{Error, Setting};

/// The user and group to become, looked up; empty when neither was asked for.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    uid: Option<Uid>,
    /// The user's name and primary group, when the user is in the passwd database.
    user_entry: Option<(CString, Gid)>,
    gid: Option<Gid>,
}

impl Credentials {
    /// Looks up `user` and `group` (names or numeric ids).
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Credentials, Error> {
        let mut creds = Credentials::default();
        if let Some(u) = user {
            let entry = match u.parse::<u32>() {
                Ok(n) => User::from_uid(Uid::from_raw(n)).ok().flatten(),
                Err(_) => User::from_name(u).ok().flatten(),
            };
            match (entry, u.parse::<u32>()) {
                (Some(e), _) => {
                    creds.uid = Some(e.uid);
                    let name = CString::new(e.name.clone())
                        .map_err(|_| Error::with_value(Setting::User, u, "bad user name"))?;
                    creds.user_entry = Some((name, e.gid));
                }
                (None, Ok(n)) => creds.uid = Some(Uid::from_raw(n)),
                (None, Err(_)) => return Err(Error::with_value(Setting::User, u, "not a valid user name or uid")),
            }
        }
        if let Some(g) = group {
            let gid = match g.parse::<u32>() {
                Ok(n) => Gid::from_raw(n),
                Err(_) => Group::from_name(g)
                    .ok()
                    .flatten()
                    .map(|e| e.gid)
                    .ok_or_else(|| Error::with_value(Setting::Group, g, "not a valid group name or gid"))?,
            };
            creds.gid = Some(gid);
        }
        Ok(creds)
    }

    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.uid.is_none() && self.gid.is_none()
    }

    /// Hands `path` to the new user and group, so that the server can still remove it after
    /// dropping privileges (the private directory of a private Unix socket).
    pub fn chown(&self, path: &Path) -> Result<(), Error> {
        if self.is_empty() {
            return Ok(());
        }
        let gid = self.gid.or(self.user_entry.as_ref().map(|(_, g)| *g));
        chown(path, self.uid, gid).map_err(|e| Error::plain(format!("chown {}: {e}", path.display())))
    }

    /// Becomes the user and group. Groups first: once the uid is not root, they cannot change.
    pub fn drop_privileges(&self) -> Result<(), Error> {
        if self.is_empty() {
            return Ok(());
        }
        if let Some(gid) = self.gid {
            setgroups(&[gid]).map_err(|e| Error::new(Setting::Group, format!("setgroups: {e}")))?;
            setgid(gid).map_err(|e| Error::with_value(Setting::Group, gid, format!("setgid: {e}")))?;
        } else if let Some((name, gid)) = &self.user_entry {
            initgroups(name, *gid).map_err(|e| Error::new(Setting::User, format!("initgroups: {e}")))?;
            setgid(*gid).map_err(|e| Error::new(Setting::User, format!("setgid {gid}: {e}")))?;
        } else if self.uid.is_some() {
            // A bare uid with no passwd entry: at least shed root's supplementary groups.
            setgroups(&[]).map_err(|e| Error::new(Setting::User, format!("setgroups: {e}")))?;
        }
        if let Some(uid) = self.uid {
            setuid(uid).map_err(|e| Error::with_value(Setting::User, uid, format!("setuid: {e}")))?;
        }
        tracing::debug!("changed to uid {} gid {}", Uid::current(), Gid::current());
        Ok(())
    }
}
