//! `-u USER` and `-g GROUP`: start as root to bind a privileged port or write a pid file in
//! /run, then become an ordinary user before serving any client.
//!
//! Names or numeric ids are accepted. `-u` alone also takes the user's primary group and
//! supplementary groups (initgroups), so the server ends with exactly that user's rights; `-g`
//! sets the group and leaves no supplementary groups. The ids are looked up at start-up, so a
//! typo fails before anything listens.

use std::ffi::CString;
use std::path::Path;

use nix::unistd::{chown, initgroups, setgid, setgroups, setuid, Gid, Group, Uid, User};

#[derive(Debug, Clone, Default)]
pub struct Credentials {
    uid: Option<Uid>,
    /// The user's name and primary group, when `-u` named a user in the passwd database.
    user_entry: Option<(CString, Gid)>,
    gid: Option<Gid>,
}

impl Credentials {
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Credentials, String> {
        let mut creds = Credentials::default();
        if let Some(u) = user {
            let entry = match u.parse::<u32>() {
                Ok(n) => User::from_uid(Uid::from_raw(n)).ok().flatten(),
                Err(_) => User::from_name(u).ok().flatten(),
            };
            match (entry, u.parse::<u32>()) {
                (Some(e), _) => {
                    creds.uid = Some(e.uid);
                    let name = CString::new(e.name.clone()).map_err(|_| format!("-u {u}: bad user name"))?;
                    creds.user_entry = Some((name, e.gid));
                }
                (None, Ok(n)) => creds.uid = Some(Uid::from_raw(n)),
                (None, Err(_)) => return Err(format!("-u {u}: not a valid user name or uid")),
            }
        }
        if let Some(g) = group {
            let gid = match g.parse::<u32>() {
                Ok(n) => Gid::from_raw(n),
                Err(_) => Group::from_name(g)
                    .ok()
                    .flatten()
                    .map(|e| e.gid)
                    .ok_or_else(|| format!("-g {g}: not a valid group name or gid"))?,
            };
            creds.gid = Some(gid);
        }
        Ok(creds)
    }

    pub fn is_empty(&self) -> bool {
        self.uid.is_none() && self.gid.is_none()
    }

    /// Hands `path` to the new user and group, so that the server can still remove it after
    /// dropping privileges (the private directory of `-U -`).
    pub fn chown(&self, path: &Path) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let gid = self.gid.or(self.user_entry.as_ref().map(|(_, g)| *g));
        chown(path, self.uid, gid).map_err(|e| format!("chown {}: {e}", path.display()))
    }

    /// Becomes the user and group. Groups first: once the uid is not root, they cannot change.
    pub fn drop_privileges(&self) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        if let Some(gid) = self.gid {
            setgroups(&[gid]).map_err(|e| format!("-g: setgroups: {e}"))?;
            setgid(gid).map_err(|e| format!("-g {gid}: setgid: {e}"))?;
        } else if let Some((name, gid)) = &self.user_entry {
            initgroups(name, *gid).map_err(|e| format!("-u: initgroups: {e}"))?;
            setgid(*gid).map_err(|e| format!("-u: setgid {gid}: {e}"))?;
        } else if self.uid.is_some() {
            // A bare uid with no passwd entry: at least shed root's supplementary groups.
            setgroups(&[]).map_err(|e| format!("-u: setgroups: {e}"))?;
        }
        if let Some(uid) = self.uid {
            setuid(uid).map_err(|e| format!("-u {uid}: setuid: {e}"))?;
        }
        tracing::debug!("changed to uid {} gid {}", Uid::current(), Gid::current());
        Ok(())
    }
}
