//! Errors that say which setting they are about, so that each front end can name the setting the
//! way its own command line does: the pid file is nbdkit's `-P FILE` and qemu-nbd's
//! `--pid-file=FILE`. The library never spells an option; [`Error::describe`] lets the caller.

use std::fmt;

/// A setting of the server process that an error can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The TCP port (or service name) to listen on.
    Port,
    /// The address to listen on.
    Address,
    /// A Unix socket at a given path.
    UnixSocket,
    /// A Unix socket in a new private directory.
    PrivateUnixSocket,
    /// Listening on AF_VSOCK.
    Vsock,
    /// The SELinux label given to the listening sockets.
    SelinuxLabel,
    /// The user to become after binding.
    User,
    /// The group to become after binding.
    Group,
    /// The pid file.
    PidFile,
    /// Exiting when the parent process exits.
    ExitWithParent,
    /// The captive command.
    Run,
    /// Locking the process's memory in RAM.
    LockMemory,
    /// Serving one client on stdin and stdout.
    Stdio,
}

impl Setting {
    /// A plain name for the setting, used by [`Error`]'s `Display`.
    pub fn plain_name(self) -> &'static str {
        match self {
            Setting::Port => "port",
            Setting::Address => "address",
            Setting::UnixSocket => "unix socket",
            Setting::PrivateUnixSocket => "private unix socket",
            Setting::Vsock => "vsock",
            Setting::SelinuxLabel => "selinux label",
            Setting::User => "user",
            Setting::Group => "group",
            Setting::PidFile => "pid file",
            Setting::ExitWithParent => "exit with parent",
            Setting::Run => "run",
            Setting::LockMemory => "lock memory",
            Setting::Stdio => "stdio",
        }
    }
}

/// Why something failed: a message, and the setting (with the value it was given, when that says
/// more) it is about, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The setting the error is about; None for errors about nothing the user chose.
    pub setting: Option<Setting>,
    /// The setting's value as the user gave it, when the message is clearer with it.
    pub value: Option<String>,
    /// What went wrong, without the setting: `not a valid user name or uid`.
    pub message: String,
}

impl Error {
    /// An error about `setting`.
    pub(crate) fn new(setting: Setting, message: impl Into<String>) -> Error {
        Error { setting: Some(setting), value: None, message: message.into() }
    }

    /// An error about `setting` having the value `value`.
    pub(crate) fn with_value(setting: Setting, value: impl fmt::Display, message: impl Into<String>) -> Error {
        Error { setting: Some(setting), value: Some(value.to_string()), message: message.into() }
    }

    /// An error about nothing the user chose.
    pub(crate) fn plain(message: impl Into<String>) -> Error {
        Error { setting: None, value: None, message: message.into() }
    }

    /// The message led by the setting as `name` spells it, given the setting and its value:
    /// nbdkit's front end turns (User, "alice") into `-u alice`, for
    /// `-u alice: not a valid user name or uid`.
    pub fn describe(&self, name: impl Fn(Setting, Option<&str>) -> String) -> String {
        match self.setting {
            Some(setting) => format!("{}: {}", name(setting, self.value.as_deref()), self.message),
            None => self.message.clone(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(|setting, value| match value {
            Some(value) => format!("{} {value}", setting.plain_name()),
            None => setting.plain_name().to_string(),
        }))
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::plain(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_lets_the_caller_name_the_setting() {
        let e = Error::with_value(Setting::User, "alice", "not a valid user name or uid");
        let nbdkit = |s: Setting, v: Option<&str>| {
            assert_eq!(s, Setting::User);
            format!("-u {}", v.unwrap())
        };
        assert_eq!(e.describe(nbdkit), "-u alice: not a valid user name or uid");
        assert_eq!(e.to_string(), "user alice: not a valid user name or uid");
        assert_eq!(Error::plain("fork: EAGAIN").describe(|_, _| unreachable!()), "fork: EAGAIN");
    }
}
