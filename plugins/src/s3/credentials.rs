//! Where the S3 plugin finds its credentials and region when the command line does not give
//! them, in the order boto3 (which nbdkit's S3 plugin uses) looks: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_DEFAULT_REGION`), then the profile (`profile=`, else `AWS_PROFILE`, else `default`) in
//! the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) and
//! in the config file (`AWS_CONFIG_FILE`, else `~/.aws/config`, where it is `[profile NAME]`).

use std::collections::HashMap;
use std::path::PathBuf;

/// What was found; any part may be missing.
#[derive(Default)]
pub struct Found {
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Where the keys came from, for `-v` (never the keys themselves).
    pub source: String,
}

/// Looks for credentials of `profile` (or the default one) and a region.
pub fn find(profile: Option<&str>) -> Found {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut found = Found {
        region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
        endpoint_url: env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")),
        ..Found::default()
    };
    // A profile named on the command line wins over keys in the environment, as in boto3.
    if profile.is_none() {
        if let (Some(a), Some(s)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            found.access_key = Some(a);
            found.secret_key = Some(s);
            found.session_token = env("AWS_SESSION_TOKEN");
            found.source = "the environment".into();
        }
    }
    let profile = profile.map(str::to_string).or_else(|| env("AWS_PROFILE")).unwrap_or_else(|| "default".into());
    let home = || env("HOME").map(PathBuf::from).unwrap_or_default().join(".aws");
    let credentials_file =
        env("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from).unwrap_or_else(|| home().join("credentials"));
    let config_file = env("AWS_CONFIG_FILE").map(PathBuf::from).unwrap_or_else(|| home().join("config"));
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    for (file, section) in [(&credentials_file, &profile), (&config_file, &config_section)] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        let Some(values) = ini_section(&text, section) else { continue };
        if found.access_key.is_none() {
            if let (Some(a), Some(s)) = (values.get("aws_access_key_id"), values.get("aws_secret_access_key")) {
                found.access_key = Some(a.clone());
                found.secret_key = Some(s.clone());
                found.session_token = values.get("aws_session_token").cloned();
                found.source = format!("{} [{section}]", file.display());
            }
        }
        if found.region.is_none() {
            found.region = values.get("region").cloned();
        }
        if found.endpoint_url.is_none() {
            found.endpoint_url = values.get("endpoint_url").cloned();
        }
    }
    found
}

/// The `key = value` lines of `[section]` in an INI file (keys lower-cased), if it is there.
fn ini_section(text: &str, section: &str) -> Option<HashMap<String, String>> {
    let mut values = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if values.is_some() {
                break;
            }
            if name.trim() == section {
                values = Some(HashMap::new());
            }
            continue;
        }
        if let (Some(map), Some((k, v))) = (values.as_mut(), line.split_once('=')) {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections() {
        let text =
            "[default]\naws_access_key_id = A\n# note\n[profile x]\nregion=eu-west-1\nAWS_SECRET_ACCESS_KEY = s\n";
        assert_eq!(ini_section(text, "default").unwrap()["aws_access_key_id"], "A");
        let x = ini_section(text, "profile x").unwrap();
        assert_eq!((x["region"].as_str(), x["aws_secret_access_key"].as_str()), ("eu-west-1", "s"));
        assert!(ini_section(text, "other").is_none());
    }
}
