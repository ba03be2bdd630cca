//! What a Kubernetes worker pod gets besides its image: volumes (`--volume`), environment
//! variables (`--env`), and the rule that every file the DAG names is one the pod can see.
//!
//! A pod sees the paths this machine sees, where they are on a volume: the DAG file is mounted
//! at its own absolute path (so `${dag_dir}` and paths relative to the DAG resolve in the pod as
//! they do here), and each `--volume` at the path given. So a path the DAG resolves to here is
//! the same path in the pod, and it is checked here, before anything is submitted: it must be
//! under a mounted volume, or a URL (which every host fetches). Anything else is refused (exit 2)
//! rather than left for every pod to fail on, or, for an export, to write into the pod's own
//! disk, lost when it ends.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use unoflow_api::params::PathKind;

use crate::dag::FileParam;
use crate::error::{Error, Result};

/// The name of the pod volume holding the DAG file (from the ConfigMap): no `--volume` may use it.
pub const DAG_VOLUME: &str = "dag";

/// What `--volume` takes, for messages.
const VOLUME_FORM: &str = "NAME=CLAIM:/PATH (e.g. --volume data=datasets-claim:/mnt/data)";

/// `--volume NAME=CLAIM:/PATH`: the PersistentVolumeClaim CLAIM mounted at /PATH in every worker
/// pod, as the pod volume NAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The pod's volume name: a DNS-1123 label.
    pub name: String,
    /// The claim's name: a DNS-1123 subdomain.
    pub claim: String,
    /// Absolute, without `.`, `..`, empty segments, a trailing `/` or `:` (Kubernetes refuses a
    /// mount path with `:`).
    pub path: PathBuf,
}

impl FromStr for VolumeMount {
    type Err = String;

    fn from_str(spec: &str) -> std::result::Result<Self, String> {
        let bad = |why: &str| format!("--volume {spec:?}: {why}; the form is {VOLUME_FORM}");
        let Some((name, rest)) = spec.split_once('=') else { return Err(bad("no `=` after the volume's name")) };
        let Some((claim, path)) = rest.split_once(':') else { return Err(bad("no `:` between the claim and the mount path")) };
        if !is_dns_label(name) {
            return Err(bad(&format!("the volume name {name:?} is not a DNS label (lowercase letters, digits, inner `-`, at most 63)")));
        }
        if name == DAG_VOLUME {
            return Err(bad(&format!("the volume name `{DAG_VOLUME}` is the DAG file's own; choose another")));
        }
        if !is_dns_subdomain(claim) {
            return Err(bad(&format!(
                "{claim:?} is not a PersistentVolumeClaim name (lowercase letters, digits, `-` and `.`, at most 253)"
            )));
        }
        Ok(Self { name: name.to_string(), claim: claim.to_string(), path: mount_path(path).map_err(|why| bad(&why))? })
    }
}

impl fmt::Display for VolumeMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.name, self.claim, self.path.display())
    }
}

impl VolumeMount {
    /// Whether `path` (absolute) is this volume's mount path or below it.
    pub fn holds(&self, path: &Path) -> bool {
        path.starts_with(&self.path)
    }
}

/// A mount path as Kubernetes takes it and [`VolumeMount::holds`] can compare: absolute, each
/// segment a name (a `..` would make "under the volume" a lie), no `:`; a trailing `/` dropped.
fn mount_path(path: &str) -> std::result::Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!("the mount path {path:?} is not absolute"));
    }
    if path.contains(':') || path.chars().any(char::is_control) {
        return Err(format!("the mount path {path:?} has `:` or control characters, which Kubernetes refuses"));
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Err("a volume at `/` would hide the image".into());
    }
    if trimmed[1..].split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(format!("the mount path {path:?} has an empty, `.` or `..` segment; write it plainly"));
    }
    Ok(PathBuf::from(trimmed))
}

/// Refuses two volumes with one name or one mount path: Kubernetes would refuse the Job.
pub fn check_volumes(volumes: &[VolumeMount]) -> Result<()> {
    let (mut names, mut paths) = (BTreeSet::new(), BTreeSet::new());
    for v in volumes {
        if !names.insert(&v.name) {
            return Err(Error::Usage(format!("--volume {v}: a second volume named `{}`; give each its own name", v.name)));
        }
        if !paths.insert(&v.path) {
            return Err(Error::Usage(format!("--volume {v}: a second volume at {}; mount each at its own path", v.path.display())));
        }
    }
    Ok(())
}

/// A DNS-1123 label: a-z, 0-9 and inner `-`, 1 to 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A value from this shell, kept out of `Debug` output (it is usually a credential).
#[derive(Clone, PartialEq, Eq)]
pub struct ShellValue(pub String);

impl fmt::Debug for ShellValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShellValue(…)")
    }
}

/// Where a `--env` variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvFrom {
    /// Set in this shell: `submit` puts it in the job's own Secret (never in the manifest file).
    Shell(ShellValue),
    /// Unset here: the key of the same name in the `--secret` Secret.
    Secret(String),
}

/// One `--env NAME` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEnv {
    pub name: String,
    pub from: EnvFrom,
}

/// Resolves `--env` names, each once: this shell's value where set (`lookup`), else the key of
/// `--secret`'s Secret. Unset with no `--secret` is a usage error: the pod would run without
/// it, and the DAG would read something else there than here.
pub fn pod_env(names: &[String], secret: Option<&str>, lookup: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Result<Vec<PodEnv>> {
    let mut seen = BTreeSet::new();
    let mut env = Vec::new();
    for name in names {
        check_env_name(name)?;
        if !seen.insert(name.as_str()) {
            continue;
        }
        let from = match (lookup(name), secret) {
            (Some(value), _) => EnvFrom::Shell(ShellValue(value.into_string().map_err(|_| {
                Error::Usage(format!("--env {name}: its value in this shell is not UTF-8 text, which a Secret's stringData needs"))
            })?)),
            (None, Some(secret)) => EnvFrom::Secret(secret.to_string()),
            (None, None) => {
                return Err(Error::Usage(format!(
                    "--env {name}: {name} is not set in this shell, and no --secret names a Secret to read it from; \
                     `export {name}=…` before submitting, or pass --secret SECRET naming a Secret with a key {name}"
                )));
            }
        };
        env.push(PodEnv { name: name.clone(), from });
    }
    Ok(env)
}

/// A variable name as shells and Kubernetes both take it; `JOB_COMPLETION_INDEX` is the
/// worker's rank, which Kubernetes sets.
fn check_env_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(Error::Usage(format!(
            "--env {name:?}: not a variable name (a letter or `_`, then letters, digits, `_`); --env takes the name only, \
             and the value comes from this shell"
        )));
    }
    if name == "JOB_COMPLETION_INDEX" {
        return Err(Error::Usage("--env JOB_COMPLETION_INDEX: Kubernetes sets it (each worker's rank); leave it out".into()));
    }
    if name == crate::exec::gang::HOST_ENV {
        return Err(Error::Usage(format!("--env {name}: the manifest sets it (each pod's own address); leave it out")));
    }
    Ok(())
}

/// The `${env:NAME}` references in a DAG's text that no `--env` passes: the pod would read
/// them from its own environment (the image's, or `--secret`'s keys), not from this shell.
pub fn unpassed_env_refs<'a>(dag_text: &'a str, env: &[PodEnv]) -> Vec<&'a str> {
    let mut names = BTreeSet::new();
    let mut rest = dag_text;
    while let Some(at) = rest.find("${env:") {
        rest = &rest[at + "${env:".len()..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if end > 0 && !env.iter().any(|e| e.name == rest[..end]) {
            names.insert(&rest[..end]);
        }
    }
    names.into_iter().collect()
}

/// Refuses the DAG's files that a pod would not see: every path it resolves to here must be
/// under a `--volume`. (URLs are not among `files`: every host fetches them.) All are named
/// at once, each with its node, parameter and fix.
pub fn check_files(files: &[FileParam<'_>], volumes: &[VolumeMount]) -> Result<()> {
    let unseen: Vec<String> =
        files.iter().filter(|f| !volumes.iter().any(|v| v.holds(Path::new(f.path)))).map(|f| unseen_file(f, volumes)).collect();
    if unseen.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "worker pods would not see {} the DAG names (a pod has its image, the DAG file at its path here, and the --volume \
         mounts):\n{}",
        if unseen.len() == 1 { "a file" } else { "files" },
        unseen.join("\n")
    )))
}

fn unseen_file(f: &FileParam<'_>, volumes: &[VolumeMount]) -> String {
    let (node, param, path) = (f.node, f.param, f.path);
    let folder = Path::new(path).parent().filter(|p| p.parent().is_some()).unwrap_or(Path::new(path));
    let mounted = match volumes {
        [] => "no --volume is mounted".to_string(),
        _ => format!("it is under no --volume ({})", volumes.iter().map(|v| v.path.display().to_string()).collect::<Vec<_>>().join(", ")),
    };
    match f.kind {
        PathKind::Input => format!(
            "  node `{node}`, parameter `{param}`: {path} is on this machine's disk and {mounted}; put it on a claim \
             mounted at a folder above it (--volume NAME=CLAIM:{}), or name it by URL (s3://, gs://, az://, https://)",
            folder.display()
        ),
        PathKind::Output => format!(
            "  node `{node}`, parameter `{param}`: {path} would be written on the pod's own disk, lost when it ends, as \
             {mounted}; mount a claim at a folder above it (--volume NAME=CLAIM:{}), or export with `unoflow run` \
             on this machine once the workers are done (from a DAG without that node)",
            folder.display()
        ),
    }
}

/// Component-wise normal form of an absolute path with no `..` (what [`VolumeMount::holds`]
/// compares), or `None`.
pub fn plain_absolute(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => out.push(component),
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return None,
        }
    }
    out.is_absolute().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(spec: &str) -> VolumeMount {
        spec.parse().unwrap()
    }

    #[test]
    fn volumes_parse_strictly() {
        let v = volume("data=datasets-claim:/mnt/data/");
        assert_eq!((v.name.as_str(), v.claim.as_str(), v.path.as_path()), ("data", "datasets-claim", Path::new("/mnt/data")));
        assert_eq!(v.to_string(), "data=datasets-claim:/mnt/data");
        assert_eq!(volume("w=my.claim:/w").claim, "my.claim");
        for (bad, want) in [
            ("data", "no `=`"),
            ("data=claim", "no `:`"),
            ("data=claim:mnt", "not absolute"),
            ("data=claim:", "not absolute"),
            ("data=claim:/", "hide the image"),
            ("data=claim:/a/../b", "`..`"),
            ("data=claim:/a//b", "empty"),
            ("data=claim:/a/./b", "`.`"),
            ("data=claim:/a:b", "`:`"),
            ("Data=claim:/a", "DNS label"),
            ("=claim:/a", "DNS label"),
            ("dag=claim:/a", "the DAG file's own"),
            ("data=Claim_1:/a", "PersistentVolumeClaim"),
            ("data=:/a", "PersistentVolumeClaim"),
        ] {
            let err = bad.parse::<VolumeMount>().unwrap_err();
            assert!(err.contains(want) && err.contains("NAME=CLAIM:/PATH"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_volume_holds_its_path_and_below_only() {
        let v = volume("d=c:/mnt/data");
        assert!(v.holds(Path::new("/mnt/data")) && v.holds(Path::new("/mnt/data/x/y.csv")));
        assert!(!v.holds(Path::new("/mnt/database")) && !v.holds(Path::new("/mnt")));
        assert!(check_volumes(&[volume("a=c:/x"), volume("b=c:/x/y")]).is_ok(), "nested mounts are fine");
        assert!(check_volumes(&[volume("a=c:/x"), volume("a=d:/y")]).is_err());
        assert!(check_volumes(&[volume("a=c:/x"), volume("b=d:/x/")]).is_err());
    }

    fn lookup(name: &str) -> Option<std::ffi::OsString> {
        (name == "TOKEN" || name == "EMPTY").then(|| if name == "TOKEN" { "s3cr3t".into() } else { "".into() })
    }

    #[test]
    fn env_values_come_from_this_shell_or_the_secret() {
        let names: Vec<String> = ["TOKEN", "EMPTY", "DINO_DIR", "TOKEN"].map(String::from).to_vec();
        let env = pod_env(&names, Some("creds"), &lookup).unwrap();
        assert_eq!(
            env,
            [
                PodEnv { name: "TOKEN".into(), from: EnvFrom::Shell(ShellValue("s3cr3t".into())) },
                PodEnv { name: "EMPTY".into(), from: EnvFrom::Shell(ShellValue(String::new())) },
                PodEnv { name: "DINO_DIR".into(), from: EnvFrom::Secret("creds".into()) },
            ]
        );
        assert!(!format!("{env:?}").contains("s3cr3t"), "values stay out of Debug");
        match pod_env(&["DINO_DIR".into()], None, &lookup) {
            Err(Error::Usage(m)) => assert!(m.contains("--env DINO_DIR") && m.contains("--secret") && m.contains("export"), "{m}"),
            other => panic!("{other:?}"),
        }
        for bad in ["1X", "A-B", "A=1", "", "JOB_COMPLETION_INDEX"] {
            assert!(matches!(pod_env(&[bad.into()], Some("s"), &lookup), Err(Error::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn env_references_not_passed_are_found() {
        let env = pod_env(&["A".into()], Some("s"), &|_| None).unwrap();
        let text = "x = \"${env:A}/${env:B:-d}\"\ny = \"${env:C}${env:B}$${env:}\"";
        assert_eq!(unpassed_env_refs(text, &env), ["B", "C"]);
    }

    #[test]
    fn files_must_be_on_a_volume() {
        let files = [
            FileParam { node: "items", param: "path", path: "/home/me/proj/data/items.jsonl", kind: PathKind::Input },
            FileParam { node: "out", param: "path", path: "/home/me/proj/exported", kind: PathKind::Output },
        ];
        let Err(Error::Usage(m)) = check_files(&files, &[]) else { panic!() };
        assert!(m.contains("node `items`, parameter `path`: /home/me/proj/data/items.jsonl"), "{m}");
        assert!(m.contains("--volume NAME=CLAIM:/home/me/proj/data)"), "{m}");
        assert!(m.contains("node `out`, parameter `path`: /home/me/proj/exported would be written"), "{m}");
        let Err(Error::Usage(m)) = check_files(&files, &[volume("d=c:/home/me/proj/data")]) else { panic!() };
        assert!(!m.contains("items.jsonl") && m.contains("under no --volume (/home/me/proj/data)"), "{m}");
        assert!(check_files(&files, &[volume("d=c:/home/me/proj")]).is_ok());
    }

    #[test]
    fn plain_absolute_paths() {
        assert_eq!(plain_absolute(Path::new("/a/./b/")), Some(PathBuf::from("/a/b")));
        assert_eq!(plain_absolute(Path::new("/a/../b")), None);
        assert_eq!(plain_absolute(Path::new("a/b")), None);
    }
}
