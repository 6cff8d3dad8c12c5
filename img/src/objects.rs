//! qemu's `--object TYPE,id=ID,key=value,...` for `nbdforge-img`: the objects qemu-nbd users
//! define (`secret`, `tls-creds-x509`, `tls-creds-psk`, `authz-simple`, `authz-list-file`), kept
//! by id for the options that name them (`--tls-creds`, `--tls-authz`, `key-secret=`).
//!
//! Values are parsed as qemu parses them: `,,` is a literal comma; an unknown type or property is
//! an error naming it. The files an object names are read when it is used, so errors there name
//! the object's id and the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::plugin::qemu_bool;

/// Which side of a TLS connection credentials are for (`endpoint=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The default: serving.
    Server,
    /// Connecting (`-L`).
    Client,
}

/// One `--object`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// `secret,id=,data=|file=`: a password or key, given inline or in a file.
    Secret { data: Option<String>, file: Option<PathBuf> },
    /// `tls-creds-x509,id=,dir=,endpoint=,verify-peer=`.
    TlsX509 { dir: PathBuf, endpoint: Endpoint, verify_peer: bool },
    /// `tls-creds-psk,id=,dir=,endpoint=,username=`: the keys in `dir/keys.psk`.
    TlsPsk { dir: PathBuf, endpoint: Endpoint, username: Option<String> },
    /// `authz-simple,id=,identity=`: one allowed identity (a PSK user name or certificate DN).
    AuthzSimple { identity: String },
    /// `authz-list-file,id=,filename=,refresh=`: rules in qemu's JSON format.
    AuthzListFile { filename: PathBuf, refresh: bool },
}

/// Every `--object`, by id.
#[derive(Debug, Default)]
pub struct Objects {
    by_id: BTreeMap<String, Object>,
}

/// Splits `a=b,c=d,,e` into properties, with `,,` standing for a comma.
pub fn split_properties(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                out.last_mut().expect("never empty").push(',');
            } else {
                out.push(String::new());
            }
        } else {
            out.last_mut().expect("never empty").push(c);
        }
    }
    out
}

fn parse_bool(kind: &str, key: &str, v: &str) -> Result<bool, String> {
    qemu_bool(v).ok_or_else(|| format!("--object {kind}: {key}={v}: expected 'on' or 'off'"))
}

impl Objects {
    /// Adds one `--object` value. Errors name the type, the property and the value.
    pub fn add(&mut self, value: &str) -> Result<(), String> {
        let mut props = split_properties(value).into_iter();
        let first = props.next().unwrap_or_default();
        let kind = first.strip_prefix("qom-type=").unwrap_or(&first).to_string();
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for p in props {
            let (k, v) = p.split_once('=').ok_or_else(|| format!("--object {kind}: '{p}' is not key=value"))?;
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("--object {kind}: {k} given twice"));
            }
        }
        let id =
            map.remove("id").filter(|i| !i.is_empty()).ok_or_else(|| format!("--object {kind}: id= is required"))?;
        let mut take = |key: &str| map.remove(key);
        let endpoint = |v: Option<String>| match v.as_deref() {
            None | Some("server") => Ok(Endpoint::Server),
            Some("client") => Ok(Endpoint::Client),
            Some(other) => Err(format!("--object {kind}: endpoint={other}: expected 'server' or 'client'")),
        };
        let required = |key: &str, v: Option<String>| v.ok_or_else(|| format!("--object {kind}: {key}= is required"));
        let object = match kind.as_str() {
            "secret" => {
                let (data, file) = (take("data"), take("file").map(PathBuf::from));
                if let Some(format) = take("format").filter(|f| f != "raw") {
                    return Err(format!("--object secret,id={id}: format={format}: only 'raw' is supported"));
                }
                if data.is_some() == file.is_some() {
                    return Err(format!("--object secret,id={id}: exactly one of data= and file= is required"));
                }
                Object::Secret { data, file }
            }
            "tls-creds-x509" => {
                let dir = PathBuf::from(required("dir", take("dir"))?);
                let endpoint = endpoint(take("endpoint"))?;
                let verify_peer = match take("verify-peer") {
                    Some(v) => parse_bool(&kind, "verify-peer", &v)?,
                    None => true,
                };
                Object::TlsX509 { dir, endpoint, verify_peer }
            }
            "tls-creds-psk" => {
                let dir = PathBuf::from(required("dir", take("dir"))?);
                let endpoint = endpoint(take("endpoint"))?;
                Object::TlsPsk { dir, endpoint, username: take("username") }
            }
            "authz-simple" => Object::AuthzSimple { identity: required("identity", take("identity"))? },
            "authz-list-file" => {
                let filename = PathBuf::from(required("filename", take("filename"))?);
                let refresh = match take("refresh") {
                    Some(v) => parse_bool(&kind, "refresh", &v)?,
                    None => false,
                };
                Object::AuthzListFile { filename, refresh }
            }
            _ => return Err(format!("--object: invalid object type: {kind}")),
        };
        if let Some(k) = map.keys().next() {
            return Err(format!("--object {kind},id={id}: property '{k}' not found"));
        }
        if self.by_id.insert(id.clone(), object).is_some() {
            return Err(format!("--object: attempt to add duplicate property '{id}'"));
        }
        Ok(())
    }

    /// The object `id`.
    pub fn get(&self, id: &str) -> Option<&Object> {
        self.by_id.get(id)
    }

    /// The value of the secret `id` (`data=`, or `file=`'s contents as they are).
    pub fn secret(&self, id: &str) -> Result<String, String> {
        match self.get(id) {
            Some(Object::Secret { data: Some(d), .. }) => Ok(d.clone()),
            Some(Object::Secret { file: Some(f), .. }) => {
                std::fs::read_to_string(f).map_err(|e| format!("secret {id}: file={}: {e}", f.display()))
            }
            Some(_) => Err(format!("object '{id}' is not a secret")),
            None => Err(format!("no secret with id '{id}'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_object_syntax() {
        let mut o = Objects::default();
        o.add("tls-creds-x509,id=tls0,dir=/etc/pki/a,,b,endpoint=server,verify-peer=off").unwrap();
        assert_eq!(
            o.get("tls0"),
            Some(&Object::TlsX509 { dir: "/etc/pki/a,b".into(), endpoint: Endpoint::Server, verify_peer: false })
        );
        o.add("secret,id=sec0,data=letmein").unwrap();
        assert_eq!(o.secret("sec0").unwrap(), "letmein");
        o.add("tls-creds-psk,id=p,dir=/k,username=alice,endpoint=client").unwrap();
        o.add("authz-simple,id=auth0,identity=CN=laptop.example.com,,O=Example").unwrap();
        assert_eq!(o.get("auth0"), Some(&Object::AuthzSimple { identity: "CN=laptop.example.com,O=Example".into() }));
    }

    #[test]
    fn bad_objects() {
        let e = |v: &str| Objects::default().add(v).unwrap_err();
        assert_eq!(e("tls-creds-x509,dir=/x"), "--object tls-creds-x509: id= is required");
        assert_eq!(e("frob,id=x"), "--object: invalid object type: frob");
        assert_eq!(e("secret,id=s,data=a,bogus=1"), "--object secret,id=s: property 'bogus' not found");
        assert_eq!(e("secret,id=s"), "--object secret,id=s: exactly one of data= and file= is required");
        assert_eq!(
            e("tls-creds-x509,id=t,dir=/d,endpoint=middle"),
            "--object tls-creds-x509: endpoint=middle: expected 'server' or 'client'"
        );
        let mut o = Objects::default();
        o.add("secret,id=s,data=x").unwrap();
        assert_eq!(o.add("secret,id=s,data=y").unwrap_err(), "--object: attempt to add duplicate property 's'");
    }
}
