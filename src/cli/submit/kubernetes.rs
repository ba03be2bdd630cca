//! The Kubernetes manifest `unoflow submit` writes: a ConfigMap holding the DAG file and an
//! Indexed Job of worker pods; and the Secret with `--env` values from the submitting shell,
//! which is applied from memory and never written to a file.
//!
//! The YAML is written by hand, every value from the user a double-quoted YAML string
//! ([`yaml_str`]): a YAML library would add a dependency for a fixed shape, and the tests check
//! the result against the Kubernetes API schema (`kubernetes-validate`).

use std::fmt::Write as _;

use super::pod::{DAG_VOLUME, EnvFrom, ShellValue};
use super::{Launch, worker_command};

const K8S_HEADER: &str = "# written by unoflow submit (rerunning it replaces this file)
#
# unoflow workers as a Kubernetes Indexed Job: the pod of completion index i is worker rank i (a
# worker reads JOB_COMPLETION_INDEX itself; --world below is the Job's size). The workers share the
# workspace's units through leases, so a pod that is preempted, evicted or fails leaves its units to
# the others, and committed work is kept.
#
# A pod sees the paths the submitting machine saw: the DAG file (from the ConfigMap below) at its
# own path there, so that paths relative to it and ${dag_dir} resolve as they did, and each volume
# (unoflow submit --volume NAME=CLAIM:/PATH) at its path. unoflow submit checked that every file the
# DAG names is on one of them, or a URL.
#
# Credentials for the workspace (the AWS_*, GOOGLE_*, AZURE_* variables) are never written here:
# they come from the keys of the Secret named in envFrom (unoflow submit --secret NAME), or from the
# cluster's workload identity. Variables passed with --env come from Secrets too: those set in the
# submitting shell from the Secret NAME-env that unoflow submit applies (kubectl, on its standard
# input), the others from the --secret Secret.
#
# Needs Kubernetes 1.29 or later (backoffLimitPerIndex, podFailurePolicy's FailIndex).
";

/// The Kubernetes manifest: a ConfigMap with the DAG file and an Indexed Job of `l.workers`
/// pods. Every value from the user is a quoted YAML string.
pub fn kubernetes_manifest(l: &Launch) -> String {
    let mut y = String::from(K8S_HEADER);
    k8s_config_map(&mut y, l);
    y.push_str("---\n");
    k8s_job(&mut y, l);
    y
}

fn k8s_config_map(y: &mut String, l: &Launch) {
    let name = yaml_str(&l.name);
    let config_map = yaml_str(&format!("{}-dag", l.name));
    let dag = yaml_str(&l.dag_text);
    let _ = write!(
        y,
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {config_map}
  labels:
    app.kubernetes.io/name: unoflow
    app.kubernetes.io/instance: {name}
data:
  dag.toml: {dag}
"
    );
}

fn k8s_job(y: &mut String, l: &Launch) {
    let name = yaml_str(&l.name);
    let image = yaml_str(l.image.as_deref().unwrap_or_default());
    let command = worker_command(l, &l.dag_path.to_string_lossy(), Some(l.workers))
        .iter()
        .map(String::as_str)
        .map(yaml_str)
        .collect::<Vec<_>>()
        .join(", ");
    let (workers, grace_s) = (l.workers, l.grace_s);
    let _ = write!(
        y,
        "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: unoflow
    app.kubernetes.io/instance: {name}
spec:
  completionMode: Indexed
  completions: {workers}
  parallelism: {workers}
  # Each index is retried on its own, up to 3 times, and the Job goes on while some indexes fail:
  # any worker finishes the units a failed one left.
  backoffLimitPerIndex: 3
  maxFailedIndexes: {workers}
  podFailurePolicy:
    rules:
      # Preemption, eviction, a node drained: not the worker's failure; the pod is replaced uncounted.
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
            status: \"True\"
      # Exit 2 is a usage error (the DAG or a flag): a retry would fail the same way.
      - action: FailIndex
        onExitCodes:
          containerName: worker
          operator: In
          values: [2]
  template:
    metadata:
      labels:
        app.kubernetes.io/name: unoflow
        app.kubernetes.io/instance: {name}
    spec:
      # podFailurePolicy needs Never: the Job replaces a failed pod, the kubelet does not restart it.
      restartPolicy: Never
      # On SIGTERM a worker stops taking units, commits what it runs, releases its leases and exits
      # 130; this is how long it has before SIGKILL.
      terminationGracePeriodSeconds: {grace_s}
      containers:
        - name: worker
          image: {image}
          command: [{command}]
"
    );
    k8s_container_rest(y, l);
}

/// The worker container's environment, resources and the DAG's mount; the pod's volume.
fn k8s_container_rest(y: &mut String, l: &Launch) {
    if let Some(secret) = &l.secret {
        let secret = yaml_str(secret);
        let _ = write!(
            y,
            "          # The Secret's keys become the worker's environment: the workspace's credentials.
          envFrom:
            - secretRef:
                name: {secret}
"
        );
    }
    k8s_env(y, l);
    let _ = write!(y, "          resources:\n            requests:\n              cpu: \"{}\"\n", l.cpus_per_worker);
    if l.gpus_per_worker > 0 {
        let _ = write!(
            y,
            "            # The device plugin shows the pod only its GPUs, so cuda:0 is the first of them.
            limits:
              nvidia.com/gpu: {}
",
            l.gpus_per_worker
        );
    }
    let config_map = yaml_str(&format!("{}-dag", l.name));
    let dag_path = yaml_str(&l.dag_path.to_string_lossy());
    let _ = write!(
        y,
        "          volumeMounts:
            # The DAG file at its path on the submitting machine: relative paths resolve as there.
            - name: {DAG_VOLUME}
              mountPath: {dag_path}
              subPath: dag.toml
              readOnly: true
"
    );
    for v in &l.volumes {
        let _ = write!(y, "            - name: {}\n              mountPath: {}\n", v.name, yaml_str(&v.path.to_string_lossy()));
    }
    let _ = write!(
        y,
        "      volumes:
        - name: {DAG_VOLUME}
          configMap:
            name: {config_map}
"
    );
    for v in &l.volumes {
        let _ = write!(y, "        - name: {}\n          persistentVolumeClaim:\n            claimName: {}\n", v.name, yaml_str(&v.claim));
    }
}

/// The `--env` variables, each from a Secret's key of its name: the job's own Secret for values
/// from the submitting shell, `--secret`'s for the others. A key the Secret lacks stops the pod
/// before it starts (CreateContainerConfigError, naming the key), where `envFrom` alone would
/// start a worker without it.
fn k8s_env(y: &mut String, l: &Launch) {
    let _ = write!(
        y,
        "          env:
            # Workers that train together (a gang) reach its leader at its pod's address.
            - name: {}
              valueFrom:
                fieldRef:
                  fieldPath: status.podIP
",
        crate::exec::gang::HOST_ENV
    );
    let own = env_secret_name(l);
    for e in &l.env {
        let secret = match &e.from {
            EnvFrom::Shell(_) => own.as_str(),
            EnvFrom::Secret(secret) => secret.as_str(),
        };
        let _ = write!(
            y,
            "            - name: {0}
              valueFrom:
                secretKeyRef:
                  name: {1}
                  key: {0}
",
            yaml_str(&e.name),
            yaml_str(secret)
        );
    }
}

/// The Secret holding the `--env` values from the submitting shell.
pub fn env_secret_name(l: &Launch) -> String {
    format!("{}-env", l.name)
}

/// The Secret with the `--env` values set in the submitting shell, or `None` if there are none.
/// It is handed to `kubectl apply -f -` on standard input, never written to a file.
pub fn env_secret(l: &Launch) -> Option<String> {
    let values: Vec<(&str, &str)> = l
        .env
        .iter()
        .filter_map(|e| match &e.from {
            EnvFrom::Shell(ShellValue(value)) => Some((e.name.as_str(), value.as_str())),
            EnvFrom::Secret(_) => None,
        })
        .collect();
    if values.is_empty() {
        return None;
    }
    let (name, instance) = (yaml_str(&env_secret_name(l)), yaml_str(&l.name));
    let mut y = format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: unoflow
    app.kubernetes.io/instance: {instance}
type: Opaque
stringData:
"
    );
    for (key, value) in values {
        let _ = writeln!(y, "  {}: {}", yaml_str(key), yaml_str(value));
    }
    Some(y)
}

/// `s` as a YAML double-quoted string. A JSON string is one, except for characters JSON leaves
/// as they are and YAML does not (DEL, C1 controls, line separators, BOM): those are escaped.
pub(super) fn yaml_str(s: &str) -> String {
    let json = serde_json::to_string(s).expect("a string serializes to JSON");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if yaml_printable(c) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        }
    }
    out
}

/// Whether a YAML reader takes `c` as itself in a double-quoted string: YAML's printable
/// characters less the ones YAML 1.1 reads as line breaks, and the byte order mark.
fn yaml_printable(c: char) -> bool {
    matches!(
        c,
        ' '..='\u{7e}' | '\u{a0}'..='\u{2027}' | '\u{202a}'..='\u{d7ff}' | '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' | '\u{10000}'..
    )
}
