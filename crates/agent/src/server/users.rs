//! User lookup from the sandbox's own `/etc/passwd` and `/etc/group`. The agent is static and
//! the image may have no NSS modules, so the files are parsed directly.

/// Path of the password database.
const PASSWD: &str = "/etc/passwd";

/// Path of the group database.
const GROUP: &str = "/etc/group";

/// A user a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name; the numeric uid as text when the uid has no passwd entry.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Supplementary group ids, the primary group included.
    pub groups: Vec<u32>,
}

/// Failure to resolve a user.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No passwd entry has the name.
    #[error("user `{0}` not found in /etc/passwd; pass an existing user name or a numeric uid")]
    NotFound(String),
}

/// Resolves a user name or numeric uid against the sandbox's passwd and group files. A missing
/// file counts as empty; `root` and numeric uids resolve without an entry.
pub fn resolve(spec: &str) -> Result<Account, UserError> {
    let passwd = std::fs::read_to_string(PASSWD).unwrap_or_default();
    let group = std::fs::read_to_string(GROUP).unwrap_or_default();
    resolve_in(spec, &passwd, &group)
}

fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<Account, UserError> {
    let numeric = spec.parse::<u32>().ok();
    let entry = passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|entry| match numeric {
            Some(uid) => entry.uid == uid,
            None => entry.name == spec,
        });

    let mut account = match (entry, numeric) {
        (Some(entry), _) => entry,
        (None, Some(uid)) => Account {
            name: spec.to_owned(),
            uid,
            gid: uid,
            home: "/".to_owned(),
            groups: Vec::new(),
        },
        (None, None) if spec == "root" => Account {
            name: "root".to_owned(),
            uid: 0,
            gid: 0,
            home: "/root".to_owned(),
            groups: Vec::new(),
        },
        (None, None) => return Err(UserError::NotFound(spec.to_owned())),
    };

    account.groups = supplementary_groups(&account.name, account.gid, group);
    Ok(account)
}

/// Parses `name:password:uid:gid:gecos:home:shell`; malformed lines are skipped.
fn parse_passwd_line(line: &str) -> Option<Account> {
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 || line.starts_with('#') {
        return None;
    }
    Some(Account {
        name: fields[0].to_owned(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: fields[5].to_owned(),
        groups: Vec::new(),
    })
}

/// Collects `primary` and the ids of groups listing `name` as a member
/// (`name:password:gid:member,member`).
fn supplementary_groups(name: &str, primary: u32, group: &str) -> Vec<u32> {
    let mut groups = vec![primary];
    for line in group.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            continue;
        }
        let Ok(gid) = fields[2].parse::<u32>() else {
            continue;
        };
        if fields[3].split(',').any(|member| member == name) && !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment\n\
        broken line\n\
        dev:x:1000:1000:Dev,,,:/home/dev:/bin/sh\n";
    const GROUP_TEXT: &str = "root:x:0:\n\
        dev:x:1000:\n\
        docker:x:998:dev,other\n\
        audio:x:29:other\n\
        wheel:x:10:dev\n";

    #[test]
    fn resolve_by_name_collects_groups() {
        let account = resolve_in("dev", PASSWD_TEXT, GROUP_TEXT).unwrap();
        assert_eq!(account.name, "dev");
        assert_eq!(account.uid, 1000);
        assert_eq!(account.gid, 1000);
        assert_eq!(account.home, "/home/dev");
        assert_eq!(account.groups, vec![1000, 998, 10]);
    }

    #[test]
    fn resolve_by_uid_finds_entry() {
        let account = resolve_in("1000", PASSWD_TEXT, GROUP_TEXT).unwrap();
        assert_eq!(account.name, "dev");
    }

    #[test]
    fn resolve_unknown_uid_uses_defaults() {
        let account = resolve_in("4242", PASSWD_TEXT, GROUP_TEXT).unwrap();
        assert_eq!(account.uid, 4242);
        assert_eq!(account.gid, 4242);
        assert_eq!(account.home, "/");
        assert_eq!(account.groups, vec![4242]);
    }

    #[test]
    fn resolve_root_without_passwd() {
        let account = resolve_in("root", "", "").unwrap();
        assert_eq!(account.uid, 0);
        assert_eq!(account.home, "/root");
    }

    #[test]
    fn resolve_unknown_name_fails() {
        let error = resolve_in("ghost", PASSWD_TEXT, GROUP_TEXT).unwrap_err();
        assert_eq!(
            error.to_string(),
            "user `ghost` not found in /etc/passwd; pass an existing user name or a numeric uid"
        );
    }
}
