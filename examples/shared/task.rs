//! The task domain of the tutorials: a task is created with a title, assigned to someone, and
//! completed. Tutorial 1 explains every piece; the later tutorials build on it.
//!
//! Shared by several examples, which do not all use every item.
#![allow(dead_code)]

use eventsource::Root;
use eventsource::prelude::*;
use serde::{Deserialize, Serialize};

// ----- Events: facts, in the past tense -----

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Task")]
pub(crate) struct TaskCreated {
    pub(crate) title: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Task")]
pub(crate) struct TaskAssigned {
    pub(crate) assignee: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(aggregate = "Task")]
pub(crate) struct TaskCompleted;

// ----- The aggregate: state, and one handler per event -----

#[derive(Default, Debug)]
pub(crate) struct Task {
    pub(crate) title: String,
    pub(crate) assignee: Option<String>,
    pub(crate) done: bool,
}

/// Why a command refuses: the aggregate's own, typed error.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum TaskError {
    #[error("the task already exists")]
    AlreadyCreated,
    #[error("a task needs a title")]
    NoTitle,
    #[error("the task is completed")]
    Completed,
    #[error("nobody is assigned to the task")]
    Unassigned,
}

#[aggregate(error = TaskError)]
impl Task {
    #[handles]
    fn created(&mut self, event: &TaskCreated) {
        self.title = event.title.clone();
    }

    #[handles]
    fn assigned(&mut self, event: &TaskAssigned) {
        self.assignee = Some(event.assignee.clone());
    }

    #[handles]
    fn completed(&mut self, _: &TaskCompleted) {
        self.done = true;
    }
}

// ----- Commands: check the rules, say what happened -----

impl Task {
    pub(crate) fn create(root: &Root<Task>, title: &str) -> Result<TaskCreated, TaskError> {
        if root.version() > 0 {
            return Err(TaskError::AlreadyCreated);
        }
        if title.trim().is_empty() {
            return Err(TaskError::NoTitle);
        }
        Ok(TaskCreated {
            title: title.to_owned(),
        })
    }

    pub(crate) fn assign(&self, assignee: &str) -> Result<TaskAssigned, TaskError> {
        if self.done {
            return Err(TaskError::Completed);
        }
        Ok(TaskAssigned {
            assignee: assignee.to_owned(),
        })
    }

    pub(crate) fn complete(&self) -> Result<TaskCompleted, TaskError> {
        if self.done {
            return Err(TaskError::Completed);
        }
        if self.assignee.is_none() {
            return Err(TaskError::Unassigned);
        }
        Ok(TaskCompleted)
    }
}
