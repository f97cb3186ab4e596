//! A command channel into a mio-driven engine thread.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

/// Sends commands to an engine thread and wakes its poller.
pub struct CommandSender<C> {
    tx: Sender<C>,
    waker: Arc<mio::Waker>,
}

impl<C> Clone for CommandSender<C> {
    fn clone(&self) -> Self {
        CommandSender {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<C> CommandSender<C> {
    /// Queue a command; false if the thread is gone.
    pub fn send(&self, cmd: C) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        self.waker.wake().is_ok()
    }
}

/// A command channel whose waker is registered with `poll` under `token`.
pub fn command_channel<C>(
    poll: &mio::Poll,
    token: mio::Token,
) -> std::io::Result<(CommandSender<C>, Receiver<C>)> {
    let waker = Arc::new(mio::Waker::new(poll.registry(), token)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    Ok((CommandSender { tx, waker }, rx))
}
