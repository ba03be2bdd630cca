//! One long-lived Python interpreter running `runner.py`: started with the script loaded, then
//! called batch by batch over framed Arrow IPC on its standard input and output.

use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use unoflow_api::{Device, OpError, Resource};

use crate::call::Failure;
use crate::child::{StderrTail, describe, show_devices};
use crate::ipc;

const RUNNER: &str = include_str!("runner.py");

/// How often a wait for a reply looks at the run's cancellation.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

/// Everything needed to start an interpreter for a node.
#[derive(Debug, Clone)]
pub struct Launch {
    pub python: String,
    pub script: PathBuf,
    pub function: String,
    /// The keyword arguments, as JSON.
    pub params: serde_json::Value,
    /// The declared output columns.
    pub outputs: SchemaRef,
    pub timeout: Duration,
    pub resource: Resource,
    pub device: Device,
}

impl Launch {
    /// "`score.py`'s `aesthetic`", for messages.
    pub fn name(&self) -> String {
        let file = self.script.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        format!("`{file}`'s `{}`", self.function)
    }
}

/// A frame from the runner.
struct Frame {
    tag: u8,
    payload: Vec<u8>,
}

/// What came back for a request.
enum Reply {
    Frame(Frame),
    /// The interpreter closed its output: it exited or crashed. How, in words.
    Gone(String),
    TimedOut,
    Cancelled,
}

pub struct Interpreter {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: Receiver<std::io::Result<Frame>>,
    stderr: StderrTail,
}

impl Interpreter {
    /// Starts an interpreter and waits until it has loaded the script. Any failure here fails
    /// the node: the script cannot run at all.
    pub fn start(launch: &Launch, cancelled: &dyn Fn() -> bool) -> Result<Self, OpError> {
        let mut command = Command::new(&launch.python);
        command.args(["-u", "-c", RUNNER]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // The script's folder is its working directory: the files it opens by relative name
        // are found whichever folder `unoflow` runs in.
        if let Some(folder) = launch.script.parent() {
            command.current_dir(folder);
        }
        show_devices(&mut command, launch.resource, launch.device);
        let mut child = command.spawn().map_err(|e| OpError::Param {
            name: "python".into(),
            message: format!("cannot start `{}`: {e}; give an interpreter on PATH or its absolute path", launch.python),
        })?;
        let stderr = StderrTail::follow(child.stderr.take().expect("piped"), format!("[{}]", launch.script.display()));
        let frames = read_frames(child.stdout.take().expect("piped"));
        let mut interpreter = Self { stdin: child.stdin.take(), child, frames, stderr };
        let hello = serde_json::json!({
            "script": launch.script.to_string_lossy(),
            "function": launch.function,
            "params": launch.params,
        });
        let schema = ipc::encode_schema(&launch.outputs)?;
        let loading = |why: String| OpError::Execution(format!("{} could not start: {why}", launch.name()));
        interpreter.send(b'H', hello.to_string().as_bytes()).and_then(|()| interpreter.send(b'S', &schema)).map_err(loading)?;
        match interpreter.reply(Instant::now() + launch.timeout, cancelled) {
            Reply::Frame(Frame { tag: b'R', .. }) => Ok(interpreter),
            Reply::Frame(Frame { tag: b'F', payload }) => Err(OpError::Execution(String::from_utf8_lossy(&payload).into_owned())),
            Reply::Frame(Frame { tag, .. }) => Err(loading(format!("unexpected frame {:?} from the runner", tag as char))),
            Reply::Gone(how) => Err(loading(format!("the interpreter {how}"))),
            Reply::TimedOut => Err(loading(format!("loading took longer than timeout_s = {}", launch.timeout.as_secs()))),
            Reply::Cancelled => Err(OpError::Cancelled),
        }
    }

    /// Calls the function on `batch`. The flag says whether the interpreter can take the next
    /// call (it cannot after it crashed or was killed for its time).
    pub fn call(&mut self, launch: &Launch, batch: &RecordBatch, cancelled: &dyn Fn() -> bool) -> (Result<RecordBatch, Failure>, bool) {
        let request = match ipc::encode(batch) {
            Ok(bytes) => bytes,
            Err(e) => return (Err(Failure::Fatal(e)), true),
        };
        let reply = match self.send(b'B', &request) {
            Ok(()) => self.reply(Instant::now() + launch.timeout, cancelled),
            Err(_) => Reply::Gone(self.ended()),
        };
        let contract =
            |payload: &[u8]| Failure::Fatal(OpError::Execution(format!("{}: {}", launch.name(), String::from_utf8_lossy(payload))));
        match reply {
            Reply::Frame(Frame { tag: b'O', payload }) => match ipc::decode(&payload) {
                Ok(batch) => (Ok(batch), true),
                Err(why) => (Err(Failure::Fatal(OpError::Execution(format!("the runner's reply is {why}")))), false),
            },
            Reply::Frame(Frame { tag: b'E', payload }) => (Err(Failure::Rows(String::from_utf8_lossy(&payload).into_owned())), true),
            Reply::Frame(Frame { tag: b'C', payload }) => (Err(contract(&payload)), true),
            Reply::Frame(Frame { tag, .. }) => {
                (Err(contract(format!("unexpected frame {:?} from the runner", tag as char).as_bytes())), false)
            }
            Reply::Gone(how) => (Err(Failure::Rows(format!("the Python interpreter {how} while running {}", launch.name()))), false),
            Reply::TimedOut => {
                self.kill();
                let message = format!("{} ran past timeout_s = {} and was stopped", launch.name(), launch.timeout.as_secs());
                (Err(Failure::Rows(message)), false)
            }
            Reply::Cancelled => {
                self.kill();
                (Err(Failure::Fatal(OpError::Cancelled)), false)
            }
        }
    }

    fn send(&mut self, tag: u8, payload: &[u8]) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("its input is closed")?;
        let mut head = [0u8; 9];
        head[0] = tag;
        head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        stdin.write_all(&head).and_then(|()| stdin.write_all(payload)).and_then(|()| stdin.flush()).map_err(|e| e.to_string())
    }

    fn reply(&mut self, deadline: Instant, cancelled: &dyn Fn() -> bool) -> Reply {
        loop {
            let wait = deadline.saturating_duration_since(Instant::now()).min(CANCEL_CHECK);
            match self.frames.recv_timeout(wait) {
                Ok(Ok(frame)) => return Reply::Frame(frame),
                Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => return Reply::Gone(self.ended()),
                Err(RecvTimeoutError::Timeout) if cancelled() => return Reply::Cancelled,
                Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => return Reply::TimedOut,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// How the interpreter ended, once its output closed: its exit and its last lines.
    fn ended(&mut self) -> String {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = match crate::child::wait(&mut self.child, deadline, &|| false) {
            Ok(crate::child::Waited::Exited(status)) => describe(status),
            _ => "stopped answering".into(),
        };
        format!("{status}{}", self.stderr.finish())
    }

    fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Interpreter {
    /// Closing its input ends the runner's loop; one that does not end soon is killed.
    fn drop(&mut self) {
        self.stdin = None;
        let _ = crate::child::wait(&mut self.child, Instant::now() + Duration::from_secs(2), &|| false);
    }
}

/// The runner's frames, read on a thread of their own so a wait for a reply can time out.
fn read_frames(stdout: std::process::ChildStdout) -> Receiver<std::io::Result<Frame>> {
    let (send, receive) = channel();
    std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        loop {
            let mut head = [0u8; 9];
            let frame = stdout.read_exact(&mut head).and_then(|()| {
                let length = u64::from_le_bytes(head[1..].try_into().expect("8 bytes")) as usize;
                let mut payload = vec![0u8; length];
                stdout.read_exact(&mut payload).map(|()| Frame { tag: head[0], payload })
            });
            let end = frame.is_err();
            if send.send(frame).is_err() || end {
                return;
            }
        }
    });
    receive
}
