//! Typed task definitions: a task's name with its input and output types, so the compiler
//! checks both the handler and every submission.

use std::fmt;
use std::marker::PhantomData;

use crate::limits::valid_task_name;

/// A task's name together with its input and output types.
///
/// Declare one per task, as a constant shared by the code that registers the handler and
/// the code that submits: [`TaskFlow::register`](crate::TaskFlow::register) then only
/// accepts a handler taking `In` and returning `Out`, and
/// [`TaskFlow::submit_task`](crate::TaskFlow::submit_task) only accepts an `In`. A name
/// that is not `[A-Za-z0-9._:-]{1,128}` fails to compile.
///
/// String names stay available for dynamic cases
/// ([`TaskFlow::submit`](crate::TaskFlow::submit) takes any `&str`); both reach the same
/// registered task.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use taskflow::{TaskContext, TaskDef, TaskError};
///
/// #[derive(Serialize, Deserialize)]
/// struct Pages {
///     count: u32,
/// }
///
/// const BUILD: TaskDef<Pages, u32> = TaskDef::new("build");
///
/// async fn build(_ctx: TaskContext, pages: Pages) -> Result<u32, TaskError> {
///     Ok(pages.count)
/// }
///
/// # async fn run(flow: taskflow::TaskFlow) -> taskflow::Result<()> {
/// flow.register(BUILD, build)?;
/// flow.submit_task(BUILD, Pages { count: 3 }, taskflow::SubmitOptions::new()).await?;
/// # Ok(())
/// # }
/// ```
///
/// A submission with the wrong input type does not compile:
///
/// ```compile_fail,E0308
/// # use taskflow::TaskDef;
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Pages { count: u32 }
/// const BUILD: TaskDef<Pages, u32> = TaskDef::new("build");
/// # async fn run(flow: taskflow::TaskFlow) -> taskflow::Result<()> {
/// flow.submit_task(BUILD, "three pages", taskflow::SubmitOptions::new()).await?;
/// # Ok(())
/// # }
/// ```
///
/// Nor does a handler that takes another input:
///
/// ```compile_fail
/// # use taskflow::{TaskContext, TaskDef, TaskError};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Pages { count: u32 }
/// const BUILD: TaskDef<Pages, u32> = TaskDef::new("build");
/// async fn build(_ctx: TaskContext, pages: String) -> Result<u32, TaskError> {
///     Ok(pages.len() as u32)
/// }
/// # fn run(flow: taskflow::TaskFlow) -> taskflow::Result<()> {
/// flow.register(BUILD, build)?;
/// # Ok(())
/// # }
/// ```
pub struct TaskDef<In, Out> {
    name: &'static str,
    types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> TaskDef<In, Out> {
    /// The definition of task `name`.
    ///
    /// # Panics
    ///
    /// If `name` is not `[A-Za-z0-9._:-]{1,128}`; in a `const` item that is a compile
    /// error.
    pub const fn new(name: &'static str) -> Self {
        assert!(
            valid_task_name(name),
            "a task name must be 1 to 128 of A-Z, a-z, 0-9, `.`, `_`, `:` and `-`"
        );
        Self {
            name,
            types: PhantomData,
        }
    }

    /// The task's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

// Manual impls: derives would require `In` and `Out` to be `Clone`, `Debug`, ….
impl<In, Out> Clone for TaskDef<In, Out> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<In, Out> Copy for TaskDef<In, Out> {}

impl<In, Out> fmt::Debug for TaskDef<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TaskDef").field(&self.name).finish()
    }
}

impl<In, Out> PartialEq for TaskDef<In, Out> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl<In, Out> Eq for TaskDef<In, Out> {}

/// Names a task at registration: a `&str` (input and output types taken from the
/// handler) or a [`TaskDef`] (the handler must match its types). Sealed.
pub trait TaskName<In, Out>: sealed::Sealed {
    /// The name.
    fn task_name(&self) -> &str;
}

impl<In, Out> TaskName<In, Out> for &str {
    fn task_name(&self) -> &str {
        self
    }
}

impl<In, Out> TaskName<In, Out> for TaskDef<In, Out> {
    fn task_name(&self) -> &str {
        self.name
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for &str {}
    impl<In, Out> Sealed for super::TaskDef<In, Out> {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_registered_names() {
        assert_eq!(
            TaskDef::<(), ()>::new("reports.build:v2").name(),
            "reports.build:v2"
        );
        for bad in ["", "has space", "é", &"x".repeat(129)] {
            assert!(!valid_task_name(bad), "{bad:?}");
            assert!(crate::limits::check_task_name(bad).is_err(), "{bad:?}");
        }
        assert!(valid_task_name(&"x".repeat(128)));
    }

    #[test]
    #[should_panic(expected = "a task name must be 1 to 128")]
    fn a_bad_name_panics_outside_const() {
        let name = String::from("no spaces");
        let leaked: &'static str = Box::leak(name.into_boxed_str());
        let _ = TaskDef::<(), ()>::new(leaked);
    }
}
