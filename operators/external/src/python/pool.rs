//! The interpreters of one node: started when a unit needs one and none is free, reused for the
//! node's other units, restarted after a crash or a timeout, ended with the node.

use std::sync::{Condvar, Mutex};

use arrow::record_batch::RecordBatch;
use unoflow_api::ExecContext;

use super::interpreter::{Interpreter, Launch};
use crate::call::{Call, Failure};

pub struct Pool {
    launch: Launch,
    /// The most interpreters alive at once.
    size: usize,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    idle: Vec<Interpreter>,
    /// Interpreters alive: idle, in a call, or starting.
    live: usize,
}

/// What a caller gets from the pool.
enum Turn {
    Reuse(Interpreter),
    /// No interpreter is free but another may start: the caller starts it.
    Start,
}

impl Pool {
    pub fn new(launch: Launch, size: usize) -> Self {
        Self { launch, size: size.max(1), state: Mutex::new(State { idle: Vec::new(), live: 0 }), freed: Condvar::new() }
    }

    fn take(&self) -> Turn {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(interpreter) = state.idle.pop() {
                return Turn::Reuse(interpreter);
            }
            if state.live < self.size {
                state.live += 1;
                return Turn::Start;
            }
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Returns an interpreter that can take another call, or makes room for a new one.
    fn give_back(&self, interpreter: Option<Interpreter>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match interpreter {
            Some(interpreter) => state.idle.push(interpreter),
            None => state.live -= 1,
        }
        self.freed.notify_one();
    }
}

impl Call for Pool {
    fn call(&self, ctx: &ExecContext, batch: &RecordBatch) -> Result<RecordBatch, Failure> {
        let cancelled = || ctx.is_cancelled();
        let mut interpreter = match self.take() {
            Turn::Reuse(interpreter) => interpreter,
            Turn::Start => match Interpreter::start(&self.launch, &cancelled) {
                Ok(interpreter) => interpreter,
                Err(e) => {
                    self.give_back(None);
                    return Err(Failure::Fatal(e));
                }
            },
        };
        let (result, healthy) = interpreter.call(&self.launch, batch, &cancelled);
        self.give_back(healthy.then_some(interpreter));
        result
    }

    fn name(&self) -> String {
        self.launch.name()
    }
}
