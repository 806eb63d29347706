//! What one call created, undone in reverse order unless the call commits: on an error, an
//! early return or a panic unwinding through it. A step is pushed only once its object was
//! really created by this call, so a failing call never removes what it found existing
//! (a retried ADD never harms the live attachment it collided with).

use crate::net::{Kernel, Netlink};
use crate::spec::Error;

type Step<'a> = (String, Box<dyn FnOnce() -> Result<(), Error> + 'a>);

#[derive(Default)]
pub struct Undo<'a> {
    steps: Vec<Step<'a>>,
}

impl<'a> Undo<'a> {
    pub fn new() -> Undo<'a> {
        Undo::default()
    }

    /// Records how to remove something this call just created; `what` names it in logs.
    pub fn push(&mut self, what: impl Into<String>, step: impl FnOnce() -> Result<(), Error> + 'a) {
        self.steps.push((what.into(), Box::new(step)));
    }

    /// Records that this call created link `name` through `nl`.
    pub fn delete_link(&mut self, k: &'a Kernel, nl: &'a Netlink, name: &str) {
        let name = name.to_string();
        self.push(format!("deleting {name}"), move || {
            k.run(nl.delete_link(&name)).map(|_| ())
        });
    }

    /// The call succeeded: keep everything.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some((what, step)) = self.steps.pop() {
            if let Err(e) = step() {
                eprintln!("undoing a failed call: {what}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn undoes_in_reverse_unless_committed() {
        let log = RefCell::new(Vec::new());
        {
            let mut u = Undo::new();
            u.push("a", || {
                log.borrow_mut().push("a");
                Ok(())
            });
            u.push("b", || {
                log.borrow_mut().push("b");
                Err(Error::new(1, "x"))
            });
        }
        assert_eq!(*log.borrow(), ["b", "a"]);
        let mut u = Undo::new();
        u.push("c", || {
            log.borrow_mut().push("c");
            Ok(())
        });
        u.commit();
        assert_eq!(log.borrow().len(), 2);
    }
}
